"""Turning Ctrl-C and SIGTERM into a polite request, so training can stop at a step boundary.

Python's default SIGINT handling raises KeyboardInterrupt wherever the program happens to be, for example
halfway through an optimizer step, which would leave nothing consistent to save. Inside StopSignals the
first signal only sets a flag the training loop polls; a second one stops at once, as usual.
"""

import logging
import signal
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)

# What signal.signal takes and returns: a function, SIG_DFL or SIG_IGN, or None for a handler not set from Python.
Handler = Callable[[int, FrameType | None], object] | int | None


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """A signal handler that stops the program as Ctrl-C does, wherever it is: with a KeyboardInterrupt
    named after the signal, so that `finally` blocks and context managers (an MLflow run) end cleanly."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


class StopSignals:
    """A context manager that records SIGINT/SIGTERM instead of acting on them immediately."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Handler] = {}

    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            # A second Ctrl-C means "now": fall back to the usual immediate interrupt.
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        log.warning(
            "%s received: stopping after this step and saving a checkpoint (again to stop at once)",
            signal.Signals(signum).name,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()
