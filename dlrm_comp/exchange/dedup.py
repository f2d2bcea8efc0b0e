"""Bag deduplication: one row per distinct bag of each (table x destination) chunk.

A table's pooled output is a function of its bag (the sequence of ids of one sample), so two
samples with the same bag have the same row. Sender and receiver both hold the global batch's
ids (every rank reads it; TorchRec's input distribution gives a receiver its own samples' ids),
so both compute the same distinct bags per chunk and no index travels: the sender sends each
distinct bag's row once (in bag order), the receiver expands them with the inverse. Backward is
the transpose: the receiver sums the gradients of rows that share a bag, the owner puts each
sum on the bag's first row (an EmbeddingBag gives identical bags identical Jacobians, so the
owner's table gradient is the same up to the order of the float summation).

The index is computed on the host from the ids (one linear pass over all tables per step, plus
a sort per multi-hot table to rank its id sequences), never from device tensors: no host sync. Every
rank holds the global batch here; with a TorchRec-style input distribution a receiver would hold
its own samples' ids, which is all the receiving side needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from dlrm_comp.compress import cpu_kernels


@dataclass
class BagIndex:
    """Distinct bags of every (table, slice) chunk of one global batch.

    For a table that is not deduplicated, every row is its own bag (the identity), so one layout
    serves every table; ``distinct`` still holds the measured count (what ``auto`` decides on)."""

    slices: list[tuple[int, int]]  # rows of each destination slice
    dedup: np.ndarray  # [T] bool: the tables deduplicated in this step
    distinct: np.ndarray  # [T, W] distinct bags per chunk (measured for every table)
    first: list[np.ndarray]  # per table: batch rows of each sent row, slice after slice, bags in order
    starts: np.ndarray  # [T, W+1] where each slice's sent rows begin in first[t]
    bag: list[np.ndarray]  # per table [B]: each row's position among its slice's sent rows
    layouts: dict = field(default_factory=dict, repr=False)  # the exchange's layouts of this index
    keys: list[np.ndarray | None] | None = None  # per table: a bag key of each sent row that is the same
    # in every step (the id of a single-hot bag; the row cache's key), None where no such key exists

    @property
    def counts(self) -> np.ndarray:
        """[T, W] rows each chunk sends."""
        return np.diff(self.starts, axis=1)

    @property
    def active(self) -> bool:
        return bool(self.dedup.any())

    def sent_rows(self, table: int, q: int) -> np.ndarray:
        return self.first[table][self.starts[table, q]:self.starts[table, q + 1]]


def bag_codes(indices: torch.Tensor, offsets: torch.Tensor) -> np.ndarray:
    """One int64 per row, equal iff the rows' bags (id sequences) are equal: the id itself for
    single-hot rows, a rank among the distinct padded id sequences otherwise (exact: no hash)."""
    ids = indices.detach().cpu().numpy().astype(np.int64, copy=False)
    offs = offsets.detach().cpu().numpy().astype(np.int64, copy=False)
    b = len(offs)
    sizes = np.diff(np.append(offs, len(ids)))
    if b and (sizes == 1).all():
        return ids[offs]
    width = int(sizes.max()) if b else 0
    padded = np.full((b, width + 1), -1, dtype=np.int64)
    padded[:, 0] = sizes
    if width:
        col = np.arange(len(ids)) - np.repeat(offs, sizes)
        padded[np.repeat(np.arange(b), sizes), col + 1] = ids
    return np.unique(padded, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def batch_codes(indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor], batch: int,
                with_ids: bool = False):
    """``[T, B]`` bag codes of a batch: one host copy for single-hot tables (the common case), a
    per-table ``bag_codes`` only for multi-hot ones. ``with_ids``: also the ``[T]`` mask of the
    tables whose codes are the ids themselves (single-hot: a key that means the same in every step)."""
    t_count = len(offsets)
    stable = np.zeros(t_count, bool)
    if not t_count:
        out = np.zeros((0, batch), np.int64)
        return (out, stable) if with_ids else out
    single = [len(i) == batch for i in indices]
    out = np.empty((t_count, batch), np.int64)
    if any(single):
        pick = [t for t, one in enumerate(single) if one]
        offs = torch.stack([offsets[t] for t in pick]).detach().cpu().numpy()
        ids = torch.stack([indices[t] for t in pick]).detach().cpu().numpy()
        one_per_row = (offs == np.arange(batch)[None, :]).all(axis=1)
        for k, t in enumerate(pick):
            out[t] = ids[k] if one_per_row[k] else bag_codes(indices[t], offsets[t])
            stable[t] = bool(one_per_row[k])
    for t in (t for t, one in enumerate(single) if not one):
        out[t] = bag_codes(indices[t], offsets[t])
    return (out, stable) if with_ids else out


def build_bag_index(indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
                    slices: list[tuple[int, int]], dedup: Sequence[bool]) -> BagIndex:
    """The distinct bags of every (table, slice) of a batch, in one linear pass over all tables
    (``cpu_kernels.distinct_rows``: each chunk's bags in order of first occurrence)."""
    t_count, w = len(offsets), len(slices)
    b = slices[-1][1] if slices else 0
    codes, stable = batch_codes(indices, offsets, b, with_ids=True)
    bounds = np.array([0] + [hi for _, hi in slices], np.int64)
    first_all = np.empty(t_count * b, np.int64)
    bag_all = np.empty((t_count, b), np.int64)
    counts = np.zeros(t_count * w, np.int64)
    cpu_kernels.distinct_rows(np.ascontiguousarray(codes), bounds, first_all, bag_all, counts)
    distinct = counts.reshape(t_count, w)
    dedup = np.asarray(dedup, dtype=bool)
    chunk_start = np.concatenate([[0], np.cumsum(counts)])
    rows, local, starts = _identity(slices, t_count)
    firsts, bags, keys = [], [], []
    for t in range(t_count):
        if dedup[t]:
            first, last = chunk_start[t * w], chunk_start[(t + 1) * w]
            firsts.append(first_all[first:last])
            starts[t] = chunk_start[t * w:(t + 1) * w + 1] - first
            bags.append(bag_all[t])
            keys.append(codes[t][firsts[-1]] if stable[t] else None)  # distinct per chunk: the cache's keys
        else:
            firsts.append(rows)
            bags.append(local)
            keys.append(None)
    return BagIndex(slices, dedup, distinct, firsts, starts, bags, keys=keys)


def _identity(slices: list[tuple[int, int]], num_tables: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row its own bag: the batch's rows, each row's position in its slice, and the
    per-table slice starts."""
    b = slices[-1][1] if slices else 0
    rows = np.arange(b)
    local = rows - np.repeat([lo for lo, _ in slices], [hi - lo for lo, hi in slices])
    starts = np.tile(np.array([0] + [hi for _, hi in slices], np.int64), (num_tables, 1))
    return rows, local, starts


def identity_index(num_tables: int, slices: list[tuple[int, int]]) -> BagIndex:
    """The layout of an exchange without deduplication."""
    rows, local, starts = _identity(slices, num_tables)
    full = np.tile(np.array([hi - lo for lo, hi in slices], np.int64), (num_tables, 1))
    return BagIndex(slices, np.zeros(num_tables, bool), full, [rows] * num_tables, starts, [local] * num_tables)


def sum_by_bag(rows: torch.Tensor, expand: torch.Tensor, total: int, sorted_order=None) -> torch.Tensor:
    """``[total, d]``: the sum of the ``rows`` that ``expand`` maps to each travelling row, each
    sum in row order. On the CPU ``index_add_`` runs sequentially (deterministic); on a device,
    where it would use atomics, ``segment_reduce`` over the rows sorted by target (``sorted_order``
    = ``(permutation, lengths)``, host-built) keeps it deterministic."""
    if sorted_order is None:
        out = rows.new_zeros(total, rows.shape[1])
        if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64) and not rows.requires_grad \
                and cpu_kernels.available():
            cpu_kernels.add_rows(rows.contiguous().numpy(), expand.numpy(), out.numpy())  # index_add_'s order
            return out
        return out.index_add_(0, expand, rows)
    perm, lengths = sorted_order  # host-built, valid by construction: unsafe=True skips two host reads
    return torch.segment_reduce(rows.index_select(0, perm), "sum", lengths=lengths, axis=0, unsafe=True)


def bag_order(expand: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """The stable permutation that groups rows by their travelling row, and the group sizes."""
    return np.argsort(expand, kind="stable"), np.bincount(expand, minlength=total)
