"""Ctrl-C and SIGTERM during training wait for the end of the optimizer step.

Inside :class:`DeferredSignals` a SIGINT or SIGTERM only sets a flag; the trainer checks it
after each optimizer step, writes a step checkpoint and then hands the signal to the handler
that was installed before (the CLI's raises KeyboardInterrupt: exit 130). A second signal
before that boundary is handed over at once (a user who insists is not kept waiting), and one
still held when the block ends (it came after the last step's check) is handed over then.

Only signals that already had a Python handler are deferred: a process that lets SIGTERM kill
it (the default disposition) is still killed at once, and resumes from its latest checkpoint.
Outside the main thread signal handlers cannot be set, and nothing is deferred.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredSignals:
    """A context manager that holds SIGINT/SIGTERM until :meth:`deliver` is called."""

    def __init__(self, active: bool = True) -> None:
        self.active = active  # False: a no-op (nothing would write a checkpoint)
        self.pending: int | None = None  # the signal waiting for the step boundary
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.pending is not None

    def __enter__(self) -> DeferredSignals:
        if not self.active or threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler):  # SIG_DFL / SIG_IGN / None: left as they are
                self._previous[sig] = handler
                signal.signal(sig, self._hold)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signum, self.pending = self.pending, None
        if signum is not None and exc_type is None:  # arrived after the last step's check
            previous[signum](signum, None)

    def _hold(self, signum, frame) -> None:
        if self.pending is not None:  # the second one: no more waiting
            self._previous[signum](signum, frame)
            return
        self.pending = signum

    def deliver(self) -> bool:
        """Hand the held signal to the handler it would have reached (which may raise);
        False when none was held."""
        signum, self.pending = self.pending, None
        if signum is None:
            return False
        self._previous[signum](signum, None)
        return True
