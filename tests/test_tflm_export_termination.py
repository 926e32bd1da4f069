"""tflm_export.termination: children started by ``run`` are killed and reaped whenever SIGTERM comes, also
in the window between the fork and the return of ``Popen`` (where a plain ``subprocess.run`` orphans them)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from test_tflm_export_common import live_parent, repo_root
from tflm_export import termination

# Runs termination.run under sigterm_raises in a fresh process (main thread, default SIGTERM handler) with a
# Popen that raises SIGTERM in the calling thread at a chosen point of the child's start; prints the pid of
# the child when there is one.
_SIGTERM_DURING_START = """
import signal, subprocess, sys
from tflm_export import termination

WHEN = sys.argv[1]

class SignalledPopen(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        if WHEN == "before_fork":
            signal.raise_signal(signal.SIGTERM)
        super().__init__(*args, **kwargs)
        print(self.pid, flush=True)
        signal.raise_signal(signal.SIGTERM)
        sum(range(1000))  # bytecodes for the handler to run at: still inside the start

subprocess.Popen = SignalledPopen
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
program = sleeper if WHEN == "after_fork" else ["/nonexistent/program"]
with termination.sigterm_raises():
    termination.run(program)
print("not interrupted", flush=True)
"""


def _sigterm_during_start(when):
    env = dict(os.environ, PYTHONPATH=repo_root())
    return subprocess.run([sys.executable, "-c", _SIGTERM_DURING_START, when], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads processes from /proc")
def test_a_sigterm_while_the_child_starts_kills_and_reaps_it():
    done = _sigterm_during_start("after_fork")
    child = int(done.stdout.split()[0])
    try:
        assert done.returncode == 128 + signal.SIGTERM, done.stderr
        assert "not interrupted" not in done.stdout
        assert live_parent(child) is None, "the child outlived its parent"
    finally:
        if live_parent(child) is not None:
            os.kill(child, signal.SIGKILL)


def test_a_sigterm_while_a_child_fails_to_start_still_ends_the_process():
    done = _sigterm_during_start("before_fork")
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "FileNotFoundError" not in done.stderr


def test_run_returns_the_output_and_checks_like_subprocess_run():
    done = termination.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    assert termination.run(failing).returncode == 3
    with pytest.raises(subprocess.CalledProcessError) as raised:
        termination.run(failing, check=True)
    assert raised.value.returncode == 3


def test_a_timeout_kills_the_child():
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        termination.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert time.monotonic() - started < 30
