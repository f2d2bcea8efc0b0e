"""SIGTERM / SIGINT: finish the current step, save a checkpoint, exit (schedulers send SIGTERM
some seconds before a kill). The first signal only raises a flag the loop polls; a second one acts
as usual (the handlers are restored at once), so a stuck run can still be interrupted."""
from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(KeyboardInterrupt):
    """The run stopped on a signal after saving a checkpoint at `iteration`; `--resume` continues it."""

    def __init__(self, signum: int, iteration: int, checkpoint: str | None):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (this rank saves none)"
        super().__init__(f"{name}: stopped after iteration {iteration}, {where}; continue with --resume")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopFlag:
    """Installs the handlers (main thread only) for the duration of a `with` block."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        if self.enabled:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()  # a second signal is not caught: it interrupts or terminates as usual

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
