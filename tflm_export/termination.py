"""SIGTERM (what CI cancellation and ``timeout`` send) ends an export the way Ctrl-C does: by an exception.

Python's default SIGTERM action kills the process on the spot: no ``finally`` block runs, so the
TFLite-Micro child process (``verify.run_tflm``) would be orphaned and its temporary folder, like the
export's staging folder, left behind. Inside :func:`sigterm_raises` the signal raises ``SystemExit(143)``
instead; ``subprocess.run`` then kills and waits for the child, and every temporary folder is removed.
"""

import contextlib
import signal
import threading


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises SystemExit(128 + SIGTERM). Only where the process has the default
    handler and only in the main thread (where Python runs signal handlers); otherwise a no-op."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def raise_exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
