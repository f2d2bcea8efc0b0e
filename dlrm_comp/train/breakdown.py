"""Step-time breakdown: where a training step's wall time goes, each phase timed where it happens.

Per step, on every rank (the `train` records hold interval means over steps and ranks):

- ``fwd_a2a_s``: the forward exchange's *exposed* time: launching it (``Exchange.start``: encode
  and post the collective) plus waiting for it after the bottom MLP (``PendingExchange.wait``:
  wait and decode), or the whole call when ``dist.overlap`` is off. Transfer time that hides
  behind the bottom MLP is not in it (it costs the step nothing).
- ``bwd_a2a_s``: the backward exchange's autograd nodes, each from its pre-hook to its
  post-hook: with ``dist.overlap`` the Wait node (encode, launch) and the Req node (wait,
  decode), the bottom MLP's backward running between them and not counted; else the one node
  that runs the gradient all-to-all.
- ``allreduce_s``: DDP's exposed wait for the dense gradients: from the moment autograd has run
  every node (a callback queued on the engine when backward starts runs before DDP's own
  finalize callback, which DDP queues only once its last bucket is ready) to the return of
  ``backward()``. Buckets reduced while the rest of the backward ran are hidden and not counted.
- ``codec_s``: encode + decode of this rank in both directions (the recorder's ``enc_s`` and
  ``dec_s``). It is measured inside the two exchange phases and taken out of them.
- ``compute_s``: the rest of the step (batch, lookups, MLPs, optimizer).

The phases are disjoint and sum to the step time. Beside them, ``cpu_s``: the process's CPU
seconds per step over the interval (every thread: the codec, gloo's, the allreduce hook's; the
ranks' mean), not a phase. Where ranks share cores (the link benchmark's 2 nodes x 2 ranks on a
2-core machine) the wall phases are mostly waits for the slowest rank, and CPU per step is what
a core per rank would make of the step. On CUDA the points are events on the current
stream, read only at print intervals (one synchronize per interval); on the CPU they are
``perf_counter`` readings, which include the collectives' waits. Not checkpointed: after a resume
the first interval covers the steps run since.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from dlrm_comp.stopwatch import Stopwatch

PHASES = ("fwd_a2a_s", "bwd_a2a_s", "allreduce_s", "compute_s", "codec_s")
TIMED_FIELDS = (*PHASES, "cpu_s")  # what ``interval()`` adds to a train record: measured, so never equal across runs


class StepBreakdown:
    """Collects the phase spans of training steps; ``interval()`` turns them into means."""

    def __init__(self, device: torch.device, codec_seconds: Callable[[str], float] | None = None,
                 reduce: Callable[[list[float]], list[float]] | None = None):
        """``codec_seconds(direction)``: this rank's encode + decode seconds of the open print
        interval (the recorder's); ``reduce``: the mean of a vector over the ranks."""
        self.clock = Stopwatch(device)
        self.codec_seconds = codec_seconds
        self.reduce = reduce
        self._spans: list[tuple[str, Any, Any]] = []  # the open step's
        self._steps: list[list[tuple[str, Any, Any]]] = []  # the open interval's, unresolved
        self._step_start = None
        self._engine_done = None
        self.run_sums = dict.fromkeys(("step_s", *PHASES), 0.0)
        self.run_cpu = 0.0  # CPU seconds of the run's intervals (the ranks' mean)
        self._cpu_at: float | None = None  # process CPU seconds at the open interval's first step
        self.exchange_s: dict[str, float] | None = None  # the last interval's exchange s/step per direction
        self.last: dict[str, float] | None = None  # the last interval's step and phases, s/step (None: no step)
        self.run_steps = 0

    # ------------------------------------------------------------------ marks, within a step
    @property
    def active(self) -> bool:
        return self._step_start is not None

    def begin_step(self) -> None:
        self._spans, self._engine_done = [], None  # nothing left from a failed step
        if self._cpu_at is None:  # the interval's first step: its CPU count starts here (not at start-up)
            self._cpu_at = time.process_time()
        self._step_start = self.clock.now()

    def timed(self, phase: str, fn: Callable, *args, **kwargs):
        """Call ``fn`` and add its duration to ``phase`` (only inside a training step)."""
        if not self.active:
            return fn(*args, **kwargs)
        a = self.clock.now()
        try:
            return fn(*args, **kwargs)
        finally:
            self._spans.append((phase, a, self.clock.now()))

    def watch_backward_exchange(self, *tensors: torch.Tensor) -> None:
        """Time the autograd nodes that produced ``tensors`` (the exchange's outputs, and with
        the Req/Wait split its request's token): their backwards are the gradient all-to-all."""
        if not self.active:
            return
        for t in tensors:
            node = t.grad_fn if t.requires_grad else None
            if node is not None:
                self._watch(node)

    def _watch(self, node) -> None:
        start = []

        def pre(grad_outputs):
            start.append(self.clock.now())

        def post(grad_inputs, grad_outputs):
            if start:
                self._spans.append(("bwd_a2a_s", start.pop(), self.clock.now()))
        node.register_prehook(pre)
        node.register_hook(post)

    def watch_allreduce(self, loss: torch.Tensor) -> None:
        """Mark the moment autograd has run every node: a callback queued when backward starts
        (the loss node's pre-hook) runs before DDP's finalize, which waits for the allreduce."""
        if loss.grad_fn is None or not self.active:
            return

        def mark():
            self._engine_done = self.clock.now()

        def pre(grad_outputs):
            torch.autograd.Variable._execution_engine.queue_callback(mark)
        loss.grad_fn.register_prehook(pre)

    def backward_returned(self) -> None:
        if self._engine_done is not None and self.active:
            self._spans.append(("allreduce_s", self._engine_done, self.clock.now()))
        self._engine_done = None

    def end_step(self) -> None:
        if not self.active:
            return
        self._spans.append(("step_s", self._step_start, self.clock.now()))
        self._steps.append(self._spans)
        self._spans, self._step_start = [], None

    # ------------------------------------------------------------------ reads, at print intervals
    def interval(self) -> dict[str, float]:
        """Means over the interval's steps (and the ranks): the `train` record's fields."""
        self.clock.settle()
        n = len(self._steps)
        sums = dict.fromkeys(("step_s", "fwd_a2a_s", "bwd_a2a_s", "allreduce_s"), 0.0)
        for spans in self._steps:
            for phase, a, b in spans:
                sums[phase] += self.clock.seconds(a, b)
        self._steps = []
        codec = {d: self.codec_seconds(d) if self.codec_seconds else 0.0 for d in ("fwd", "bwd")}
        fwd = max(sums["fwd_a2a_s"] - codec["fwd"], 0.0)
        bwd = max(sums["bwd_a2a_s"] - codec["bwd"], 0.0)
        codec_s = codec["fwd"] + codec["bwd"]
        compute = sums["step_s"] - fwd - bwd - sums["allreduce_s"] - codec_s
        cpu = time.process_time() - self._cpu_at if self._cpu_at is not None else 0.0
        self._cpu_at = None
        local = [sums["step_s"], fwd, bwd, sums["allreduce_s"], max(compute, 0.0), codec_s,
                 sums["fwd_a2a_s"], sums["bwd_a2a_s"], cpu]
        means = [v / n for v in local] if n else [0.0] * len(local)
        if self.reduce is not None:
            means = self.reduce(means)
        self.exchange_s = {"fwd": means[-3], "bwd": means[-2]} if n else None  # codec included: what a route costs
        self.run_cpu += means[-1] * n
        out = dict(zip(("step_s", *PHASES), means[:-3]))
        self.last = dict(out) if n else None
        for key, value in out.items():
            self.run_sums[key] += value * n
        self.run_steps += n
        out.pop("step_s")
        return {**out, "cpu_s": means[-1]}

    def summary(self) -> dict[str, Any]:
        """The run's `breakdown` section: mean seconds per step and each phase's share."""
        n = self.run_steps
        mean = {k: v / n for k, v in self.run_sums.items()} if n else dict.fromkeys(self.run_sums, 0.0)
        step = mean.pop("step_s")
        return {**mean, "step_s": step, "cpu_s": self.run_cpu / n if n else 0.0, "steps": n, "clock": self.clock.name,
                "shares": {k.removesuffix("_s"): (v / step if step else 0.0) for k, v in mean.items()}}


class TimedExchange:
    """The exchange as the training step calls it, with the forward timed around each call
    (``__call__``; ``start`` and the returned ``wait``) and the backward node watched; every
    other attribute is the exchange's own."""

    def __init__(self, exchange, breakdown: StepBreakdown):
        self._exchange, self._breakdown = exchange, breakdown

    def __call__(self, *args, **kwargs):
        received = self._breakdown.timed("fwd_a2a_s", self._exchange, *args, **kwargs)
        self._breakdown.watch_backward_exchange(*received[:1])
        return received

    def start(self, *args, **kwargs) -> "_TimedPending":
        return _TimedPending(self._breakdown.timed("fwd_a2a_s", self._exchange.start, *args, **kwargs),
                             self._breakdown)

    def __getattr__(self, name: str):
        return getattr(self._exchange, name)


class _TimedPending:
    """A forward exchange in flight: ``wait`` is the exposed part (what the bottom MLP did not hide)."""

    def __init__(self, pending, breakdown: StepBreakdown):
        self._pending, self._breakdown = pending, breakdown

    def wait(self):
        received = self._breakdown.timed("fwd_a2a_s", self._pending.wait)
        self._breakdown.watch_backward_exchange(*received[:1], self._pending.token)
        return received

    def __getattr__(self, name: str):
        return getattr(self._pending, name)

