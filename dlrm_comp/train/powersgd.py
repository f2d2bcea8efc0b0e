"""PowerSGD on DDP's dense allreduce (torch's ``powerSGD_hook`` and ``PowerSGDState``), its
collectives launched in one order on every rank whatever the buckets, and resumable exactly
after a kill.

Why bucket k's PowerSGD waits for bucket k-1's: torch's hook chains three collectives per bucket
(the tensors it leaves whole, then P, then Q) and launches the second and third from the
previous one's completion callback, which on gloo runs on one of its worker threads. DDP's
Reducer calls the communication hook once per bucket, in bucket index order on every rank
(``mark_bucket_ready`` launches bucket k only once buckets 0..k-1 are launched), from the
backward's thread. Run as is on two buckets, bucket 0's P could be launched from a callback
before or after bucket 1's first collective from the backward, differently on each rank; gloo
matches collectives by launch order, so the ranks paired different tensors ("Received data size
doesn't match expected size", seen on the Kaggle shape's two buckets). So each bucket's
hook returns at once a future of its own, and torch's hook runs on bucket k only when bucket
k-1's PowerSGD future has completed (in its completion callback, which only launches and never
waits): every rank launches bucket 0's three collectives, then bucket 1's, and so on. The chain
orders DDP's collectives among themselves only, so nothing else may share DDP's group during the
backward: the embedding exchange has a group of its own, and under TorchRec, whose all-to-all is
on the default group, DDP has one (``torchrec_parallel.py``). Bucket 0's chain still overlaps the
rest of the backward, and the other settings (``auto``'s plain and 16-bit allreduces, one
collective each, launched from the backward's thread in bucket order) keep DDP's overlap on every
bucket. ``dist.allreduce_compression=powersgd`` keeps the dense head one bucket
(``bucket_kwargs``): the P and Q of all its matrices travel in one collective each, three a step,
where several buckets would chain three each.

Why the buckets are settled first: PowerSGD keeps its error feedback and its warm-start matrices
per DDP bucket, as flat tensors keyed by ``bucket.index()`` and laid out in the bucket's parameter
order. DDP builds its buckets in the module's parameter order and rebuilds them once, in the order
the gradients became ready, at the forward after a process's first backward. An uninterrupted run
compresses every step on the rebuilt buckets; a resumed process used to run its first step on the
initial ones, so the saved flat tensors were added to other parameters' gradients and the run
diverged from the uninterrupted one. Every run, fresh or resumed, therefore runs one backward of
the head on zeros before its first step, its allreduce left uncompressed and nothing stepped:
DDP rebuilds at the first step's forward, and PowerSGD only ever sees the rebuilt buckets. The
layout of every bucket is saved with the state and checked on resume, so a mismatch (another
parameter in a bucket, another number of buckets) stops the run instead of silently mixing
parameters.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

# the PowerSGDState slots a checkpoint holds (the process group is the run's, set at start-up)
SAVED_SLOTS = tuple(s for s in psgd.PowerSGDState.__slots__ if s not in ("process_group", "rng"))


def bucket_kwargs(allreduce_compression: str, head: nn.Module) -> dict[str, Any]:
    """DDP's bucket size for the dense head: one bucket holding every gradient under
    ``powersgd``, DDP's default buckets otherwise (``auto`` included: PowerSGD's collectives are
    serialised across buckets, the module docstring says why).

    One bucket under ``powersgd``: torch's hook batches the P (and Q) of every matrix in a bucket
    into one collective, so one bucket is three chained collectives a step where several buckets
    would be three each, one bucket after another."""
    if allreduce_compression != "powersgd":
        return {}
    size = sum(p.numel() * p.element_size() for p in head.parameters())
    return {"bucket_cap_mb": size / 2 ** 20 + 1}  # an explicit cap applies to DDP's first bucket too


def start_iteration(configured: int, iterations: int) -> int:
    """``dist.powersgd_start_iter``: 0 means 10% of the run (torch's advice), at least 2."""
    return configured if configured else max(2, iterations // 10)


def _uncounted(nbytes: int) -> None:
    pass


class PowerSGD:
    """torch's hook and state, the layout of the buckets they ran on, the chain that runs the
    buckets one after another, and the settle pass."""

    def __init__(self, head: nn.Module, rank: int, start_iter: int, seed: int, group=None):
        """``group``: DDP's process group (None: the default group)."""
        self.state = psgd.PowerSGDState(process_group=group, matrix_approximation_rank=rank,
                                        start_powerSGD_iter=start_iter, random_seed=seed)
        self.names = {p: n for n, p in head.named_parameters()}
        self.layout: dict[int, tuple[str, ...]] = {}  # bucket index -> its parameters, as run
        self.expected: dict[int, tuple[str, ...]] | None = None  # a checkpoint's layout, checked once
        self.settling = False
        self._previous: torch.futures.Future | None = None  # this step's last bucket's PowerSGD future so far

    def __call__(self, bucket, sent: Callable[[int], None] = _uncounted) -> torch.futures.Future:
        """The bucket's allreduce future, returned at once. Its PowerSGD work starts now on
        bucket 0, on a later bucket when the previous bucket's future has completed; ``sent`` is
        then handed the bytes it hands to the wire (torch's own counts: P, Q and the tensors left
        uncompressed; the whole bucket before the start iteration)."""
        if self.settling:
            return default_hooks.allreduce_hook(self.state.process_group, bucket)
        self._check_layout(bucket)
        previous = self._previous if bucket.index() else None
        if previous is None:  # the step's first bucket: nothing of this step in flight before it
            future = self._start(bucket, sent)
        else:
            future = self._after(previous, bucket, sent)
        self._previous = None if bucket.is_last() else future
        return future

    def _start(self, bucket, sent: Callable[[int], None]) -> torch.futures.Future:
        """torch's hook on ``bucket`` (its first collective launched now)."""
        buffer = bucket.buffer()
        before = self.state.total_numel_after_compression
        future = psgd.powerSGD_hook(self.state, bucket)
        numel = self.state.total_numel_after_compression - before
        sent((numel or buffer.numel()) * buffer.element_size())
        return future

    def _after(self, previous: torch.futures.Future, bucket, sent: Callable[[int], None]) -> torch.futures.Future:
        """A future of ``bucket``'s result whose PowerSGD work starts once ``previous`` has
        completed: from its completion callback, which launches and returns (a failed previous
        bucket fails this one, nothing launched)."""
        buffer = bucket.buffer()
        result = torch.futures.Future(devices=[buffer.device] if buffer.device.type == "cuda" else None)

        def deliver(done: torch.futures.Future) -> None:
            try:
                result.set_result(done.value())
            except Exception as exc:  # noqa: BLE001 -- handed to DDP, which raises it from the backward
                result.set_exception(exc)

        def start(done: torch.futures.Future) -> None:
            try:
                done.value()  # raises the previous bucket's error
                self._start(bucket, sent).add_done_callback(deliver)
            except Exception as exc:  # noqa: BLE001 -- as above
                result.set_exception(exc)

        previous.add_done_callback(start)  # at once if it has completed already
        return result

    def idle(self, bucket) -> None:
        """This step's allreduce is another setting's (``dist.allreduce_compression=auto``).

        PowerSGD's error feedback holds, per bucket, what its last compressed step left out of
        each rank's gradient (the rank's gradient less the decompressed mean). Switched off, that
        residual is added back, once, to the rank's bucket before the other setting's allreduce,
        and dropped from the state: the mean of the ranks' residuals is exactly what the
        compressed steps had not yet delivered, so nothing of the gradient is lost and nothing is
        added twice. Switched on again, PowerSGD starts its error feedback from zero (torch's
        hook creates it), its warm-start factors kept (any start is valid; a warm one converges
        sooner). Its iteration counter advances as if it ran (once a step, on the last bucket),
        so ``dist.powersgd_start_iter`` counts the run's steps whatever travelled."""
        if self.settling:
            return
        self._check_layout(bucket)
        residual = self.state.error_dict.pop(bucket.index(), None)
        if residual is not None:
            bucket.buffer().add_(residual)
        self.state.maybe_increase_iter(bucket)

    def _check_layout(self, bucket) -> None:
        """Record the bucket's parameters; on the first step after a resume, stop unless every
        bucket holds the checkpoint's (its parameters, in order, and the number of buckets)."""
        names = tuple(self.names[p] for p in bucket.parameters())
        index = bucket.index()
        if self.expected is not None:
            if self.expected.get(index) != names:
                raise RuntimeError(f"dist.allreduce_compression: the checkpoint's PowerSGD state belongs to DDP "
                                   f"bucket {index} holding {self.expected.get(index)}, this run's holds {names}; "
                                   "its error feedback would reach other parameters")
            if bucket.is_last():
                if len(self.expected) != index + 1:
                    raise RuntimeError(f"dist.allreduce_compression: the checkpoint's PowerSGD state belongs to "
                                       f"{len(self.expected)} DDP buckets, this run has {index + 1}")
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
