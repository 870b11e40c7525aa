"""Deferred signals (``training.interrupt``): a second signal is not held."""

from __future__ import annotations

import os
import signal

import pytest

from everlearn.training.interrupt import DeferredSignals


def test_a_second_signal_is_not_held():
    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with DeferredSignals() as held:
            os.kill(os.getpid(), signal.SIGINT)  # held: training finishes the step
            assert held.pending == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)  # the user insists
            with pytest.raises(KeyboardInterrupt):
                held.deliver()  # the first one, at the step boundary
            assert not held.deliver()
        assert signal.getsignal(signal.SIGINT) is handler
        with pytest.raises(KeyboardInterrupt):  # one held when the block ends is handed over
            with DeferredSignals():
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is handler
        with DeferredSignals(active=False):
            assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
