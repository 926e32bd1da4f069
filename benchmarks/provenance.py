"""Where a benchmark result comes from: the commit, the exact command, the machine and the wall time, recorded
in every result file beside the numbers."""

import os
import platform
import shlex
import subprocess
import sys
import time


def record(started):
    """The provenance fields of a run that began at ``time.perf_counter()`` value ``started``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown (not a git checkout)", ""
    import tensorflow as tf  # every benchmark has loaded it by now

    return {"commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "command": " ".join(shlex.quote(arg) for arg in ["python", *sys.argv]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                       f"TF {tf.__version__}",
            "wall_seconds": round(time.perf_counter() - started, 1)}
