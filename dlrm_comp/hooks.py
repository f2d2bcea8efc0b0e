"""Compression hooks on each embedding table's pooled output `[B, d]`.

A hook splits the rows into the chunks a W-rank all-to-all would send (rows `[q*B/W, (q+1)*B/W)`
to rank q, the last chunk taking the remainder), compresses and decodes each chunk with its own
value range under the table's current bound, and hands the decoded values to the upper layers.
The gradient passes straight through (d x_hat / d x = I), as in the reference. Evaluation batches
are never compressed, and `enabled=False` switches a hook off.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dlrm_comp.recorder import CompressionRecorder


def destination_rows(batch: int, destinations: int) -> list[tuple[int, int]]:
    """Row ranges per destination rank: B//W rows each, the last one takes the remainder."""
    if destinations < 1:
        raise ValueError(f"destinations must be >= 1, got {destinations}")
    per = batch // destinations
    bounds = [(q * per, (q + 1) * per) for q in range(destinations)]
    bounds[-1] = (bounds[-1][0], batch)
    return [(a, b) for a, b in bounds if b > a]


class _StraightThrough(torch.autograd.Function):
    """Forward: the hook's decoded values. Backward: the incoming gradient, unchanged (or, when a
    backward backend is set, round-tripped through it as the gradient all-to-all would carry it)."""

    @staticmethod
    def forward(ctx, pooled: torch.Tensor, hook: "CompressionHook") -> torch.Tensor:
        ctx.hook = hook
        return hook.compress(pooled.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hook = ctx.hook
        if hook.backward_backend is None:
            return grad, None
        return hook.roundtrip_chunks(grad.contiguous(), hook.backward_backend, hook.backward_bound, "bwd"), None


class CompressionHook(nn.Module):
    def __init__(self, table: int, backend, bound: Callable[[int], float | None],
                 recorder: CompressionRecorder | None = None, destinations: int = 1, codec_name: str = "",
                 backward_backend=None, backward_bound: Callable[[int], float | None] | None = None,
                 backward_codec_name: str = ""):
        super().__init__()
        self.table = table
        self.backend = backend
        self.bound = bound
        self.recorder = recorder
        self.destinations = destinations
        self.codec_names = {"fwd": codec_name or backend.name,
                            "bwd": backward_codec_name or getattr(backward_backend, "name", "")}
        self.backward_backend = backward_backend
        self.backward_bound = backward_bound
        self.enabled = True
        self.last_chunk: torch.Tensor | None = None  # the latest forward chunk (a sample for lossless tuning)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.enabled):
            return pooled
        return _StraightThrough.apply(pooled, self)

    def compress(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.roundtrip_chunks(pooled, self.backend, self.bound, "fwd")

    def roundtrip_chunks(self, x: torch.Tensor, backend, bound, direction: str) -> torch.Tensor:
        """Round-trip every destination chunk of `x`; record what each one cost."""
        eb_rel = bound(self.table) if backend.error_bounded else None
        out = torch.empty_like(x)
        if direction == "fwd":
            self.last_chunk = x[: destination_rows(x.shape[0], self.destinations)[0][1]]
        for start, stop in destination_rows(x.shape[0], self.destinations):
            x_hat, stats = backend.roundtrip(x[start:stop], eb_rel)
            out[start:stop] = x_hat
            if self.recorder is not None:
                self.recorder.record(self.table, direction, stats, eb_rel, self.codec_names[direction])
        return out

    def extra_repr(self) -> str:
        return f"table={self.table}, backend={self.backend.name}, destinations={self.destinations}"
