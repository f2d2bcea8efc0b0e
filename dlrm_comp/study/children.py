"""Child processes that die with the sweep or search that started them: a SIGTERM to the parent
(a scheduler's, a `kill`) would otherwise leave its training children running, orphaned, on the
cores the next attempt needs. Their checkpoints and the study's trials stay, so a rerun resumes."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Sequence


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class ChildProcesses:
    """For the `with` block: SIGTERM raises KeyboardInterrupt (main thread only), and leaving the
    block on an exception terminates the children still running (killed after `grace_s`).
    Children run one thread each (OMP/MKL), as several share the machine."""

    def __init__(self, grace_s: float = 10.0):
        self.grace_s = grace_s
        self.procs: list[subprocess.Popen] = []
        self._old_term = None
        self._installed = False

    def __enter__(self) -> ChildProcesses:
        try:
            self._old_term = signal.signal(signal.SIGTERM, _interrupt)
            self._installed = True
        except ValueError:  # not the main thread: the caller's own handling stays
            self._installed = False
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self._installed:  # a second SIGTERM (schedulers send several) must not cut the clean-up short
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.stop()
        if self._installed:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._old_term is None else self._old_term)

    def start(self, cmd: Sequence[str], log: Path) -> subprocess.Popen:
        """Run `cmd` with stdout and stderr appended to `log` (after a `$ cmd` line)."""
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(log, "a") as fh:
            fh.write(f"\n$ {' '.join(cmd)}\n")
            fh.flush()
            # SIGTERM held off between the start and the bookkeeping, so no child is ever untracked
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env)
                self.procs.append(proc)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return proc

    def wait(self) -> None:
        for proc in self.procs:
            proc.wait()

    def stop(self) -> None:
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            proc.terminate()
        for proc in live:
            try:
                proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
