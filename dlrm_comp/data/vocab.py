"""Frequency counting and id vocabularies for categorical columns too large for a Python dict.

Counts are kept as sorted numpy (key, count) arrays; per-chunk counts are merged lazily (when the
pending part outgrows the merged part) so the total cost stays O(n log n).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OOV_INDEX = 0  # values seen fewer than frequency_threshold times (or cut by max_ind_range)
MISSING_INDEX = 1  # empty field
FIRST_VALUE_INDEX = 2


class ValueCounter:
    """How often each uint64 value occurred."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.uint64)
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_len = 0

    def add(self, values: np.ndarray) -> None:
        keys, counts = np.unique(values.astype(np.uint64, copy=False), return_counts=True)
        self._pending.append((keys, counts))
        self._pending_len += len(keys)
        if self._pending_len > max(len(self.keys), 1 << 18):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self.keys, *(k for k, _ in self._pending)])
        counts = np.concatenate([self.counts, *(c for _, c in self._pending)])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.counts = np.bincount(inverse, weights=counts, minlength=len(self.keys)).astype(np.int64)
        self._pending, self._pending_len = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return self.keys, self.counts


@dataclass
class Vocabulary:
    """Value -> index for one column: frequent values get 2.. in descending frequency (ties by
    value), so hot ids are small; index 0 is the shared out-of-vocabulary id, 1 is missing."""

    sorted_keys: np.ndarray  # uint64, ascending
    index_of_key: np.ndarray  # int64, index of sorted_keys[i]

    @staticmethod
    def build(keys: np.ndarray, counts: np.ndarray, threshold: int, max_size: int = 0) -> Vocabulary:
        keep = counts >= max(threshold, 1)
        keys, counts = keys[keep], counts[keep]
        order = np.lexsort((keys, -counts))  # most frequent first
        if max_size > 0:
            order = order[:max(max_size - FIRST_VALUE_INDEX, 0)]
        chosen = keys[order]
        index = np.arange(FIRST_VALUE_INDEX, FIRST_VALUE_INDEX + len(chosen), dtype=np.int64)
        by_key = np.argsort(chosen, kind="stable")
        return Vocabulary(chosen[by_key], index[by_key])

    @property
    def size(self) -> int:
        return FIRST_VALUE_INDEX + len(self.sorted_keys)

    def lookup(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.sorted_keys, values)
        pos_c = np.minimum(pos, max(len(self.sorted_keys) - 1, 0))
        found = (pos < len(self.sorted_keys)) & (self.sorted_keys[pos_c] == values) if len(self.sorted_keys) \
            else np.zeros(len(values), dtype=bool)
        out = np.where(found, self.index_of_key[pos_c] if len(self.sorted_keys) else 0, OOV_INDEX)
        out[missing] = MISSING_INDEX
        return out.astype(np.int64)
