"""The row cache as a stage of an error-bounded forward codec (``compress.row_cache``).

Between steps a row changes only by its own SGD updates, mostly by less than the bound, yet it
would travel again in full every step. With the stage, per (table, destination) chunk, every
row whose bag the receiver holds a cached reconstruction of is decided by the sender with the
receiver's arithmetic: a **hit** (the copy is within the chunk's bound: only a flag travels), or
a **changed cached row** (codes of its difference from the copy); a row not cached travels as
today's codes (``batch_quant.quantize_delta`` does all three in one batched call and proves the
bound for every row, hits included). Each side keeps its caches (``row_cache.RowCache``): the
owner the mirror of every destination's, updated with the reconstruction the receiver computes.

``codec`` sends the flags in each message's flag section (``wire.py``); ``simulate`` sends the
reconstruction, so only the owner's mirror exists and the flags are counted at their entropy.
Rows without a key the same in every step (multi-hot bags, tables without deduplication) are
never cached. Evaluation never reaches the stage (its batches travel uncompressed).
"""
from __future__ import annotations

import numpy as np
import torch

from dlrm_comp.compress.batch_quant import BatchQuant, quantize_batch
from dlrm_comp.compress.codecs.base import ChunkLayout, pad_chunks, unpad_chunks
from dlrm_comp.compress.row_cache import CacheStep, RowCache
from dlrm_comp.runtime import to_device


class CacheStage:
    """The sender's mirrors (``send``) and the receiver's caches (``recv``) of one forward codec
    (one process holds both: its own tables' mirrors and the caches of what it receives)."""

    def __init__(self, capacity: int, device: torch.device | str = "cpu"):
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.sides: dict[str, RowCache] = {}

    @staticmethod
    def active(layout: ChunkLayout) -> bool:
        return layout.keys is not None

    def side(self, name: str, dim: int) -> RowCache:
        cache = self.sides.get(name)
        if cache is None:
            cache = self.sides[name] = RowCache(self.capacity, dim, self.device)
        return cache

    def begin(self, name: str, layout: ChunkLayout) -> tuple[RowCache, CacheStep]:
        """One side's step over ``layout`` (chunks keyed by (table, message))."""
        cache = self.side(name, layout.dim)
        pairs = [(t, m) for m, ts in enumerate(layout.tables) for t in ts]
        return cache, cache.begin(pairs, layout.chunk_rows, layout.keys)

    def quantize(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout
                 ) -> tuple[BatchQuant, CacheStep, torch.Tensor, torch.Tensor]:
        """The sender's side of one step: the quantized chunks (hits decided), the step's cache
        view, the padded chunks and the receiver's reconstruction of every row (kept in the mirror)."""
        cache, step = self.begin("send", layout)
        rows, d = layout.chunk_rows, layout.dim
        base = cache.rows(step, x.dtype)
        chunks, counts = pad_chunks(x, rows, d)
        cached = pad_chunks(step.cached_t[:, None], rows, 1)[0]
        q = quantize_batch(chunks, eb, counts, base=pad_chunks(base, rows, d)[0], cached=cached)
        y = unpad_chunks(q.received(), rows, d)
        cache.store(step, y)
        return q, step, chunks, y

    @staticmethod
    def chunk_stats(q: BatchQuant, step: CacheStep, layout: ChunkLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Per chunk (device tensors): rows that hit, and the flags' bytes at their order-0 entropy."""
        rows, d = layout.chunk_rows, layout.dim
        c = len(rows)
        u = q.hit.shape[1] // d if d and c else 0
        valid = torch.arange(u, device=q.hit.device)[None, :] < to_device(torch.from_numpy(rows), q.hit.device)[:, None]
        hit = (q.hit.view(c, u, d)[:, :, 0] & valid).sum(1).to(torch.float64) if u else \
            torch.zeros(c, dtype=torch.float64, device=q.hit.device)
        cached = torch.zeros(c, dtype=torch.float64, device=q.hit.device).index_add_(
            0, to_device(torch.from_numpy(np.repeat(np.arange(c), rows)), q.hit.device), step.cached_t.to(torch.float64))
        return hit, flag_entropy_bytes(hit, cached)

    def memory_bytes(self) -> int:
        return sum(c.memory_bytes for c in self.sides.values())

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "sides": {k: v.state_dict() for k, v in self.sides.items()},
                "dims": {k: v.dim for k, v in self.sides.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.sides = {}
        for name, side in state.get("sides", {}).items():
            self.side(name, int(state["dims"][name])).load_state_dict(side)


def flag_entropy_bytes(hits: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Bytes of ``flags`` binary flags of which ``hits`` are set, at their order-0 entropy."""
    p = torch.where(flags > 0, hits / flags.clamp_min(1), 0.0)
    h = -(p * torch.log2(p.clamp_min(1e-300)) + (1 - p) * torch.log2((1 - p).clamp_min(1e-300)))
    return flags * h / 8.0


def message_flags(hit_rows: np.ndarray, cached: np.ndarray, layout: ChunkLayout) -> tuple[list[np.ndarray], np.ndarray]:
    """Per message the flags of its cached rows in row order (1: hit), and the flags per chunk."""
    bounds = np.concatenate([[0], np.cumsum(layout.message_rows)])
    flags = [hit_rows[a:b][cached[a:b]].astype(np.uint8) for a, b in zip(bounds[:-1], bounds[1:])]
    chunk = np.repeat(np.arange(len(layout.chunk_rows)), layout.chunk_rows)
    return flags, np.bincount(chunk[cached], minlength=len(layout.chunk_rows))
