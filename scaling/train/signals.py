"""Stop signals: handlers that only set a flag, remembering the handler that was there before.

The training loop polls `StopSignals.requested` at each step boundary, saves a checkpoint, flushes the
tracker and then calls `chain()`: the previous handler runs if it was a Python function (submitit's, which
calls `JobRunner.checkpoint()`, requeues and exits), otherwise the loop returns a KILLED result and a
relaunch resumes. Python's own SIGINT handler (which raises KeyboardInterrupt) is not chained: Ctrl-C then
also saves and returns cleanly.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """Context manager: install flag-setting handlers for `STOP_SIGNALS`, restore the old ones on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.previous: dict[int, Any] = {}
        self.received: int | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            log.warning("received %s: saving a checkpoint at the next step boundary", signal.Signals(signum).name)
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not in the main thread: stop signals are left to the caller")
            return self
        for sig in self.signals:
            self.previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def chain(self) -> bool:
        """Restore the old handlers and call the one of the signal received, if it is a Python function.

        Returns True if a previous handler was called (and returned)."""
        signum = self.received
        previous = self.previous.get(signum) if signum is not None else None
        self.restore()
        if signum is None or not callable(previous) or previous is signal.default_int_handler:
            return False
        log.info("calling the previous %s handler %r", signal.Signals(signum).name, previous)
        previous(signum, None)
        return True
