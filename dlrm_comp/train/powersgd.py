"""PowerSGD on DDP's dense allreduce (torch's ``powerSGD_hook`` and ``PowerSGDState``), resumable
exactly after a kill.

Why the buckets are settled first: PowerSGD keeps its error feedback and its warm-start matrices
per DDP bucket, as flat tensors keyed by ``bucket.index()`` and laid out in the bucket's parameter
order. DDP builds its buckets in the module's parameter order and rebuilds them once, in the order
the gradients became ready, at the forward after a process's first backward. An uninterrupted run
compresses every step on the rebuilt buckets; a resumed process used to run its first step on the
initial ones, so the saved flat tensors were added to other parameters' gradients and the run
diverged from the uninterrupted one. Every run, fresh or resumed, therefore runs one backward of
the head on zeros before its first step, its allreduce left uncompressed and nothing stepped:
DDP rebuilds at the first step's forward, and PowerSGD only ever sees the rebuilt buckets. The
bucket layout is saved with the state and checked on resume, so a mismatch stops the run instead
of silently mixing parameters.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

# the PowerSGDState slots a checkpoint holds (the process group is the run's, set at start-up)
SAVED_SLOTS = tuple(s for s in psgd.PowerSGDState.__slots__ if s not in ("process_group", "rng"))


def bucket_kwargs(allreduce_compression: str, head: nn.Module) -> dict[str, Any]:
    """DDP's bucket size for the dense head: one bucket holding every gradient under PowerSGD.

    torch's hook chains three collectives per bucket (the tensors it leaves whole, then P, then Q),
    launching the second and third from the first's completion callback. On gloo those callbacks
    run on its worker threads, so with two buckets the ranks could launch bucket 1's first
    collective and bucket 0's second in different orders, and gloo matches collectives by launch
    order ("Received data size doesn't match expected size", seen on the Kaggle shape's two
    buckets). With one bucket every collective of the step is launched in one chain."""
    if allreduce_compression not in ("powersgd", "auto"):  # auto: PowerSGD is one of its candidates
        return {}
    size = sum(p.numel() * p.element_size() for p in head.parameters())
    return {"bucket_cap_mb": size / 2 ** 20 + 1}  # an explicit cap applies to DDP's first bucket too


def start_iteration(configured: int, iterations: int) -> int:
    """``dist.powersgd_start_iter``: 0 means 10% of the run (torch's advice), at least 2."""
    return configured if configured else max(2, iterations // 10)


class PowerSGD:
    """torch's hook and state, the layout of the buckets they ran on, and the settle pass."""

    def __init__(self, head: nn.Module, rank: int, start_iter: int, seed: int):
        self.state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                        start_powerSGD_iter=start_iter, random_seed=seed)
        self.names = {p: n for n, p in head.named_parameters()}
        self.layout: dict[int, tuple[str, ...]] = {}  # bucket index -> its parameters, as run
        self.expected: dict[int, tuple[str, ...]] | None = None  # a checkpoint's layout, checked once
        self.settling = False

    def __call__(self, bucket) -> tuple[torch.futures.Future, int]:
        """The bucket's allreduce future and the bytes it hands to the wire (torch's own counts:
        P, Q and the tensors left uncompressed; the whole bucket before the start iteration)."""
        buffer = bucket.buffer()
        if self.settling:
            return default_hooks.allreduce_hook(None, bucket), buffer.numel() * buffer.element_size()
        self._check_layout(bucket)
        before = self.state.total_numel_after_compression
        future = psgd.powerSGD_hook(self.state, bucket)
        sent = self.state.total_numel_after_compression - before
        return future, (sent or buffer.numel()) * buffer.element_size()

    def idle(self, bucket) -> None:
        """This step's allreduce is another setting's (``dist.allreduce_compression=auto``).

        PowerSGD's error feedback holds, per bucket, what its last compressed step left out of
        each rank's gradient (the rank's gradient less the decompressed mean). Switched off, that
        residual is added back, once, to the rank's bucket before the other setting's allreduce,
        and dropped from the state: the mean of the ranks' residuals is exactly what the
        compressed steps had not yet delivered, so nothing of the gradient is lost and nothing is
        added twice. Switched on again, PowerSGD starts its error feedback from zero (torch's
        hook creates it), its warm-start factors kept (any start is valid; a warm one converges
        sooner). Its iteration counter advances as if it ran, so ``dist.powersgd_start_iter``
        counts the run's steps whatever travelled."""
        if self.settling:
            return
        self._check_layout(bucket)
        residual = self.state.error_dict.pop(bucket.index(), None)
        if residual is not None:
            bucket.buffer().add_(residual)
        self.state.maybe_increase_iter(bucket)

    def _check_layout(self, bucket) -> None:
        names = tuple(self.names[p] for p in bucket.parameters())
        index = bucket.index()
        if index or not bucket.is_last():
            raise RuntimeError("dist.allreduce_compression=powersgd: DDP split the dense gradients into several "
                               "buckets, whose collectives gloo could see launched in different orders on different "
                               "ranks; build the DDP head with powersgd.bucket_kwargs")
        if self.expected is not None:
            if self.expected.get(index) != names:
                raise RuntimeError(f"dist.allreduce_compression=powersgd: the checkpoint's PowerSGD state belongs to "
                                   f"DDP bucket {index} holding {self.expected.get(index)}, this run's holds {names}; "
                                   "its error feedback would reach other parameters")
            if bucket.is_last():
                self.expected = None
        self.layout[index] = names

    @torch.no_grad()
    def _zero_grads(self, head: nn.Module) -> None:
        for p in head.parameters():
            p.grad = None

    def settle(self, head: nn.Module, dense_width: int, tables: int, dim: int, device: torch.device) -> None:
        """One backward of the DDP head on zeros (every rank at once), uncompressed and not
        stepped, so that DDP rebuilds its buckets at the first training step's forward."""
        self.settling = True
        try:
            with torch.enable_grad():
                pooled = [torch.zeros(2, dim, device=device, requires_grad=True) for _ in range(tables)]
                head(torch.zeros(2, dense_width, device=device), pooled).sum().backward()
        finally:
            self.settling = False
            self._zero_grads(head)

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {"slots": {slot: getattr(s, slot) for slot in SAVED_SLOTS}, "rng": s.rng.get_state(),
                "layout": dict(self.layout)}

    def load_state_dict(self, saved: dict[str, Any], device: torch.device) -> None:
        for slot, value in saved["slots"].items():
            if isinstance(value, dict):  # the per-bucket tensors
                value = {k: v.to(device) for k, v in value.items()}
            setattr(self.state, slot, value)
        self.state.rng = np.random.RandomState()
        self.state.rng.set_state(saved["rng"])
        self.expected = dict(saved["layout"])
