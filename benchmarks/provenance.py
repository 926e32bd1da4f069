"""What a benchmark result records about how it was produced: commit, command, machine, wall time."""

import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _git(*args):
    done = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


class Run:
    """Start it when the benchmark starts; :meth:`record` gives the provenance dict for the results."""

    def __init__(self):
        self.started = time.time()

    def record(self):
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "..", ":!results")  # results: outputs
        return {"commit": _git("rev-parse", "HEAD"), "uncommitted_changes": bool(dirty),
                "command": " ".join(["python"] + [os.path.relpath(sys.argv[0], os.path.dirname(HERE))] + sys.argv[1:]),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                           f"{platform.python_version()}",
                "wall_s": round(time.time() - self.started, 1)}
