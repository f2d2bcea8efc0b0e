"""The cross-step row cache's state: per (table, peer) the last reconstruction of each bag.

A receiver keeps, for each (table, source) chunk of the forward exchange, the reconstruction it
last decoded of each bag (keyed by the bag's id: ``ChunkLayout.keys``); the owner keeps an exact
mirror of every destination's cache. Which keys a cache holds, and where, depends only on the
ids of the steps so far (never on the values or on which rows hit), so both sides compute it
from what both know (the batch's ids, the step count) and agree without any index travelling;
the values are written by each side with the receiver's own arithmetic, so they agree bit for bit.

The index lives on the host, beside the ids it is computed from (bag deduplication's, numpy: one
``searchsorted`` over one sorted array of ``slot << 40 | id`` keys per step); the cached rows are a
``[slots * capacity, d]`` tensor on the exchange's device, read and written with index tensors
(no host read of device data). Eviction is deterministic: a slot holds at most ``capacity``
rows; a step's rows are all kept (refreshed) when they fit, and a new row takes a free place, the
lowest first; when a slot has too few, it frees its least recently used rows (the oldest step,
then the lowest place; never a row of this step), at least an eighth of its places at once (so a
full slot is not searched every step); when a step brings more rows than fit, its rows of the
lowest ids are kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlrm_comp.runtime import to_device

KEY_BITS = 40  # ids below 2**40 are cached (slot ids above them in one int64 key)
EVICT_BATCH = 8  # a full slot frees at least 1/8 of its places at once
_FAR = np.iinfo(np.int64).max


@dataclass
class CacheStep:
    """One side's view of one step: for every travelling row whether it is cached and where its
    cached copy is, and where its reconstruction is kept after the step (-1: not kept)."""

    cached: np.ndarray  # [R] bool
    read: np.ndarray  # [R] int64 place of the cached copy (0 where not cached)
    write: np.ndarray  # [R] int64 place its reconstruction goes, -1: not kept
    cached_t: torch.Tensor  # the same on the device
    read_t: torch.Tensor
    keep_rows: torch.Tensor  # rows that are kept, and their places
    keep_at: torch.Tensor


class CacheIndex:
    """Which key sits where, per slot (a (table, peer) pair), and when each place was last used."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.slots: dict[tuple[int, int], int] = {}
        self.keys = np.zeros(0, np.int64)  # sorted slot << KEY_BITS | id of every cached row
        self.places = np.zeros(0, np.int64)  # the place of each of them
        self.stamp = np.zeros(0, np.int64)  # [slots * capacity] the step a place was last used, -1: free
        self.key_at = np.zeros(0, np.int64)  # [slots * capacity] the key held there, -1: free
        self.step = 0

    def slot_of(self, pairs: list[tuple[int, int]]) -> np.ndarray:
        """Dense slot ids of ``(table, peer)`` pairs (new ones added, their places free)."""
        out = np.empty(len(pairs), np.int64)
        for i, pair in enumerate(pairs):
            s = self.slots.get(pair)
            if s is None:
                s = self.slots[pair] = len(self.slots)
            out[i] = s
        grow = len(self.slots) * self.capacity - len(self.stamp)
        if grow > 0:
            self.stamp = np.concatenate([self.stamp, np.full(grow, -1, np.int64)])
            self.key_at = np.concatenate([self.key_at, np.full(grow, -1, np.int64)])
        return out

    def advance(self, slot: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One step of rows (``slot``, ``key`` per row; key -1: not cacheable; keys distinct per
        slot): returns ``cached``, ``read`` and ``write`` (``CacheStep``) and updates the index."""
        self.step += 1
        t, cap = self.step, self.capacity
        ok = (key >= 0) & (key < (1 << KEY_BITS))
        ck = np.where(ok, (slot << KEY_BITS) | np.where(ok, key, 0), -1)
        i = np.minimum(np.searchsorted(self.keys, ck), max(len(self.keys) - 1, 0))
        found = ok & (self.keys[i] == ck) if len(self.keys) else np.zeros(len(key), bool)
        read = np.where(found, self.places[i] if len(self.keys) else 0, 0)
        self.stamp[read[found]] = t
        write = np.where(found, read, -1)
        new = np.flatnonzero(ok & ~found)
        if new.size:
            new = new[np.lexsort((key[new], slot[new]))]  # by slot, then id
            ns = slot[new]
            n_slots = len(self.stamp) // cap
            stamps = self.stamp.reshape(n_slots, cap)
            evict = np.bincount(ns, minlength=n_slots) - (stamps < 0).sum(1)
            over = np.flatnonzero(evict > 0)
            if over.size:  # a batch at a time: a full slot is not sorted again every step
                self._evict(over, np.maximum(evict[over], -(-cap // EVICT_BATCH)), t)
            free = np.flatnonzero(self.stamp < 0)  # place order: slot after slot
            first = np.searchsorted(free, np.arange(n_slots + 1) * cap)
            group = np.searchsorted(ns, ns, side="left")  # where each row's slot group starts in ``new``
            rank = np.arange(len(new)) - group
            keep = rank < (first[ns + 1] - first[ns])
            at = free[first[ns[keep]] + rank[keep]]
            write[new[keep]] = at
            kk = ck[new[keep]]
            self.stamp[at], self.key_at[at] = t, kk
            ins = np.searchsorted(self.keys, kk)
            self.keys, self.places = np.insert(self.keys, ins, kk), np.insert(self.places, ins, at)
        return found, read, write

    def _evict(self, over: np.ndarray, count: np.ndarray, t: int) -> None:
        """Free ``count`` places of each slot in ``over``: the least recently used (oldest step,
        then lowest place), never a row of this step."""
        cap = self.capacity
        sub = self.stamp.reshape(-1, cap)[over]
        score = np.where((sub >= 0) & (sub < t), sub * cap + np.arange(cap)[None, :], _FAR)
        k = int(min(count.max(), cap))
        part = np.argpartition(score, k - 1, axis=1)[:, :k] if k < cap else np.argsort(score, axis=1)
        vals = np.take_along_axis(score, part, 1)
        order = np.argsort(vals, axis=1)
        part, vals = np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)
        take = (np.arange(part.shape[1])[None, :] < count[:, None]) & (vals < _FAR)
        places = (over[:, None] * cap + part)[take]
        gone = np.sort(self.key_at[places])
        self.stamp[places], self.key_at[places] = -1, -1
        drop = np.searchsorted(self.keys, gone)
        self.keys, self.places = np.delete(self.keys, drop), np.delete(self.places, drop)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "step": self.step, "slots": [[t, p, s] for (t, p), s in self.slots.items()],
                "keys": self.keys.copy(), "places": self.places.copy(), "stamp": self.stamp.copy(),
                "key_at": self.key_at.copy()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"compress.row_cache_rows: the checkpoint's caches hold {state['capacity']} rows per "
                             f"table and destination, this run {self.capacity}")
        self.step = int(state["step"])
        self.slots = {(int(t), int(p)): int(s) for t, p, s in state["slots"]}
        for name in ("keys", "places", "stamp", "key_at"):
            setattr(self, name, np.asarray(state[name], dtype=np.int64).copy())


class RowCache:
    """One side's caches: the index (host) and the cached rows ``[slots * capacity, d]`` (device)."""

    def __init__(self, capacity: int, dim: int, device: torch.device | str = "cpu"):
        self.index = CacheIndex(capacity)
        self.dim = dim
        self.device = torch.device(device)
        self.values = torch.zeros(0, dim, device=self.device)

    def begin(self, pairs: list[tuple[int, int]], rows: np.ndarray, keys: np.ndarray) -> CacheStep:
        """Advance the index by one step of chunks ``pairs`` (``(table, peer)`` each) holding
        ``rows`` travelling rows each with ``keys``."""
        slot = np.repeat(self.index.slot_of(pairs), rows)
        cached, read, write = self.index.advance(slot, np.asarray(keys, dtype=np.int64))
        kept = np.flatnonzero(write >= 0)
        dev = lambda a: to_device(torch.from_numpy(np.ascontiguousarray(a)), self.device)  # noqa: E731
        return CacheStep(cached, read, write, dev(cached), dev(read), dev(kept), dev(write[kept]))

    def rows(self, step: CacheStep, dtype: torch.dtype) -> torch.Tensor:
        """``[R, d]`` each row's cached copy (zeros where it has none)."""
        self._fit(dtype)
        got = self.values.index_select(0, step.read_t) if len(self.values) else \
            torch.zeros(len(step.read), self.dim, dtype=dtype, device=self.device)
        return torch.where(step.cached_t[:, None], got, torch.zeros((), dtype=dtype, device=self.device))

    def store(self, step: CacheStep, y: torch.Tensor) -> None:
        """Keep this step's reconstructions ``y [R, d]`` (the receiver's values, hits included)."""
        self._fit(y.dtype)
        if len(step.keep_rows):
            self.values.index_copy_(0, step.keep_at, y.detach().index_select(0, step.keep_rows))

    def _fit(self, dtype: torch.dtype) -> None:
        need = len(self.index.stamp)
        if self.values.dtype != dtype and len(self.values) == 0:
            self.values = self.values.to(dtype)
        if len(self.values) < need:
            extra = torch.zeros(need - len(self.values), self.dim, dtype=self.values.dtype, device=self.device)
            self.values = torch.cat([self.values, extra])

    @property
    def memory_bytes(self) -> int:
        """Bytes this cache holds: its rows (device) and its index (host)."""
        ix = self.index
        return self.values.numel() * self.values.element_size() + sum(
            a.nbytes for a in (ix.keys, ix.places, ix.stamp, ix.key_at))

    def state_dict(self) -> dict:
        return {"index": self.index.state_dict(), "values": self.values.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.index.load_state_dict(state["index"])
        self.values = state["values"].to(self.device).clone()
