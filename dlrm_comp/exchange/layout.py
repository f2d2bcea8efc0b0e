"""Where every row of one direction goes: the messages of both sides and the row maps.

Rows ``[q*B/W, (q+1)*B/W)`` of every owned table go to destination q (the last takes the
remainder), one message per destination. With bag deduplication (``dedup.py``) a chunk carries
one row per distinct bag of its slice; ``src`` picks the travelling rows out of the owner's
stacked tables and ``expand`` maps every consumer row back to its travelling row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlrm_comp.compress.codecs.base import ChunkLayout
from dlrm_comp.exchange.dedup import BagIndex, bag_order
from dlrm_comp.runtime import to_device


def destination_rows(batch: int, destinations: int) -> list[tuple[int, int]]:
    """Row ranges per destination: B//W rows each, the last one takes the remainder."""
    if destinations < 1:
        raise ValueError(f"destinations must be >= 1, got {destinations}")
    per = batch // destinations
    bounds = [(q * per, (q + 1) * per) for q in range(destinations)]
    bounds[-1] = (bounds[-1][0], batch)
    return [(a, b) for a, b in bounds if b > a]


@dataclass
class Layout:
    """Both sides of one direction of one step. ``owner`` holds the tables' messages (forward
    senders, backward receivers), ``consumer`` the dense side's. ``src`` picks the travelling
    rows out of the owner's stacked ``[T_own * B, d]`` tables, ``expand`` maps every consumer row
    ``(message, chunk, slice row)`` to its travelling row; both None where dedup is off for
    every table (then the rows are the slices themselves, and views or one stack do)."""

    owner: ChunkLayout
    consumer: ChunkLayout
    src: torch.Tensor | None
    expand: torch.Tensor | None
    index: BagIndex
    bag_order: tuple[torch.Tensor, torch.Tensor] | None = None  # ``dedup.sum_by_bag`` on a device


def _keys(index: BagIndex, messages: list[tuple[list[int], int]]) -> np.ndarray:
    """[R] the key of every travelling row of messages ``(tables, slice)``, -1 where a table has none."""
    parts = []
    for tables, q in messages:
        for t in tables:
            lo, hi = index.starts[t, q], index.starts[t, q + 1]
            k = index.keys[t]
            parts.append(k[lo:hi] if k is not None else np.full(hi - lo, -1, np.int64))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def build_layout(index: BagIndex, own: list[int], recv: list[list[int]], rank: int, loopback: bool, dim: int,
                 device: torch.device) -> Layout:
    """The layout of one direction: ``own`` the owned tables in message order, ``recv[p]`` the
    tables of source p's message in its order; ``rank`` this process (every virtual rank in loopback)."""
    slices = index.slices
    batch = slices[-1][1]
    counts = index.counts
    dedup = bool(index.active)
    keyed = index.keys is not None and any(k is not None for k in index.keys)
    owner = ChunkLayout([own] * len(slices), [counts[own, q] for q in range(len(slices))], list(slices), dim, dedup,
                        _keys(index, [(own, q) for q in range(len(slices))]) if keyed else None)
    mine_slice = list(slices) if loopback else [slices[rank]] * len(slices)
    consumer = ChunkLayout(recv, [counts[ts, (q if loopback else rank)] for q, ts in enumerate(recv)], mine_slice,
                           dim, dedup, _keys(index, [(ts, q if loopback else rank) for q, ts in enumerate(recv)])
                           if keyed else None)
    if not dedup:
        return Layout(owner, consumer, None, None, index)
    src = [pos * batch + index.sent_rows(t, q) for q in range(len(slices)) for pos, t in enumerate(own)]
    expand, base = [], 0
    for m, ts in enumerate(recv):
        s = m if loopback else rank
        lo, hi = slices[s]
        for t in ts:
            expand.append(base + index.bag[t][lo:hi])
            base += int(counts[t, s])
    flat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    src_h, expand_h = flat(src), flat(expand)
    dev_t = lambda a: to_device(torch.from_numpy(a), device)  # noqa: E731
    order = None
    if device.type != "cpu":
        perm, lengths = bag_order(expand_h, int(consumer.chunk_rows.sum()))
        order = (dev_t(perm), dev_t(lengths))
    return Layout(owner, consumer, dev_t(src_h), dev_t(expand_h), index, order)
