"""SIGTERM (what CI cancellation and ``timeout`` send) ends an export the way Ctrl-C does: by an exception.

Python's default SIGTERM action kills the process on the spot: no ``finally`` block runs, so the
TFLite-Micro child process (``verify.run_tflm``) would be orphaned and its temporary folder, like the
export's staging folder, left behind. Inside :func:`sigterm_raises` the signal raises ``SystemExit(143)``
instead, and :func:`run` (the package's one way to start a child) then kills and waits for its child, so
every temporary folder is removed.

A SIGTERM that comes while a child is being started (after the fork, before ``Popen`` returns) would raise
where nothing knows the child's pid yet and orphan it; :func:`run` holds such a signal back until the child
can be killed.
"""

import contextlib
import signal
import subprocess
import threading


class _ChildStart(threading.local):
    """Per thread: whether a child is being started, and a SIGTERM held back meanwhile. Signal handlers run
    in the main thread, so the handler only ever reads the main thread's values."""
    starting = False
    held_signal = None


_child_start = _ChildStart()


def _raise_held_signal():
    signum, _child_start.held_signal = _child_start.held_signal, None
    if signum is not None:
        raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises SystemExit(128 + SIGTERM). Only where the process has the default
    handler and only in the main thread (where Python runs signal handlers); otherwise a no-op."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def raise_exit(signum, frame):
        if _child_start.starting:
            _child_start.held_signal = signum
            return
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(command, timeout=None, check=False, cwd=None, env=None):
    """``subprocess.run(command, capture_output=True, text=True, ...)`` that no SIGTERM orphans the child of.

    Returns a ``subprocess.CompletedProcess``; raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds
    and, with ``check``, ``subprocess.CalledProcessError`` on a non-zero exit, like ``subprocess.run``. On
    any exception once the child exists (a SIGTERM held back while it started included) the child is killed
    and waited for.
    """
    _child_start.starting = True
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=cwd, env=env)
    except BaseException:
        _child_start.starting = False
        _raise_held_signal()  # no child to kill: the SIGTERM ends the process rather than the start's error
        raise
    with process:  # its exit waits for the child
        try:
            _child_start.starting = False  # from here on a SIGTERM raises where the child is killed
            _raise_held_signal()
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            process.kill()
            raise
    if check and process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command, stdout, stderr)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
