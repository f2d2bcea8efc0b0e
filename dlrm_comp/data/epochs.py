"""Training past one pass over a bounded split: iteration -> batch index, epoch by epoch.

Epoch 0 reads the batches in file (time) order, as a single pass always has; every later epoch
reads them in a permutation drawn from (seed, epoch) alone. The mapping is a pure function of the
iteration, so a resumed run (or another rank) sees exactly the batches an uninterrupted one would,
with no iterator state in the checkpoint.
"""
from __future__ import annotations

import numpy as np


class EpochSchedule:
    """`index(t)`: the batch of the training split that iteration `t` reads."""

    def __init__(self, batches_per_epoch: int | None, seed: int):
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1 (or None for a stream), got {batches_per_epoch}")
        self.batches_per_epoch = batches_per_epoch
        self.seed = int(seed)
        self._cached: tuple[int, np.ndarray] | None = None

    def epoch_of(self, iteration: int) -> int:
        return 0 if self.batches_per_epoch is None else iteration // self.batches_per_epoch

    def order(self, epoch: int) -> np.ndarray | None:
        """The batch order of `epoch` (None: file order)."""
        if self.batches_per_epoch is None or epoch == 0:
            return None
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xE90C, epoch]))
            self._cached = (epoch, rng.permutation(self.batches_per_epoch))
        return self._cached[1]

    def index(self, iteration: int) -> int:
        if iteration < 0:
            raise IndexError(f"iteration must be >= 0, got {iteration}")
        if self.batches_per_epoch is None:
            return iteration
        epoch, position = divmod(iteration, self.batches_per_epoch)
        order = self.order(epoch)
        return position if order is None else int(order[position])
