"""Where a benchmark result comes from: the commit, the exact command, the machine and the wall time,
recorded in every result file beside the numbers."""

import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _git(*args):
    try:
        done = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class Run:
    """Start it when the benchmark starts; :meth:`record` gives the provenance dict for the results."""

    def __init__(self):
        self.started = time.perf_counter()

    def record(self):
        # results/ holds this run's own outputs: writing them does not make the measured code uncommitted
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "..", ":!results")
        tensorflow = sys.modules.get("tensorflow")
        machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                   f"{platform.python_version()}" + (f", TF {tensorflow.__version__}" if tensorflow else ""))
        script = os.path.relpath(os.path.abspath(sys.argv[0]), os.path.dirname(HERE))
        return {"commit": _git("rev-parse", "HEAD") or "unknown (not a git checkout)",
                "uncommitted_changes": bool(dirty),
                "command": " ".join(shlex.quote(arg) for arg in ["python", script, *sys.argv[1:]]),
                "machine": machine, "wall_s": round(time.perf_counter() - self.started, 1)}


def describe(record):
    """One markdown sentence: the command, commit, machine and wall time of a :meth:`Run.record`."""
    dirty = " (with uncommitted changes)" if record["uncommitted_changes"] else ""
    return (f"Produced by `{record['command']}` at commit {record['commit']}{dirty} on {record['machine']} "
            f"in {record['wall_s']:.0f} s.")
