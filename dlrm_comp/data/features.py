"""Synthetic Criteo-like inputs for a range of rows: Zipf multi-hot bags and heavy-tailed dense.

Every value is a hash of (seed, split, row, field), so rows are independent of the batch size
that asks for them and splits with different stream keys never share a row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlrm_comp.data.hashing import derive_key, hash_u64, to_unit
from dlrm_comp.data.zipf import ZipfTables

_KIND_IDS, _KIND_BAGS, _KIND_DENSE, _KIND_LABEL = 1, 2, 3, 4
_M21 = np.uint64((1 << 21) - 1)


@dataclass
class Items:
    """All bag items of a row range, flat. Pooling 1 is row-major (row, table); multi-hot is
    table-major (table, row, slot), the order `indices` needs."""

    table: np.ndarray  # int64 [N]
    row: np.ndarray  # int64 [N], 0-based within the range
    ranks: np.ndarray  # int64 [N], popularity rank (0 = hottest)
    ids: np.ndarray  # int64 [N]
    bag_sizes: np.ndarray  # int64 [B, T]
    one_hot: bool  # True: N == B*T and item i is (row i // T, table i % T)

    @property
    def num_rows(self) -> int:
        return int(self.bag_sizes.shape[0])


@dataclass(frozen=True)
class DenseProfile:
    """Per-feature log-normal count parameters; a share of zeros like Criteo's missing counts."""

    mu: np.ndarray  # [D] log-scale location of the count
    sigma: np.ndarray  # [D] log-scale spread (heavy tail)
    zero_prob: np.ndarray  # [D] probability the count is 0 (missing -> 0)

    @staticmethod
    def create(num_dense: int, rng: np.random.Generator) -> DenseProfile:
        return DenseProfile(mu=rng.uniform(0.0, 3.5, num_dense), sigma=rng.uniform(0.6, 1.6, num_dense),
                            zero_prob=rng.uniform(0.05, 0.45, num_dense))


class FeatureSampler:
    """Draws the inputs (not labels) of rows [start, stop) of one split stream."""

    def __init__(self, zipf: ZipfTables, dense: DenseProfile, pooling_factor: int, seed: int):
        if pooling_factor < 1:
            raise ValueError(f"pooling_factor must be >= 1, got {pooling_factor}")
        self.zipf, self.dense_profile = zipf, dense
        self.pooling_factor, self.seed = pooling_factor, seed
        self.num_tables = len(zipf.cardinalities)
        self.num_dense = len(dense.mu)

    def key(self, stream: int, kind: int) -> int:
        return derive_key(self.seed, stream, kind)

    def dense(self, stream: int, rows: np.ndarray) -> np.ndarray:
        """log1p of log-normal counts (with zeros), float32 [B, D], like Criteo preprocessing."""
        d = self.num_dense
        h = hash_u64(self.key(stream, _KIND_DENSE), rows[:, None] * d + np.arange(d))
        scale = 1.0 / float(1 << 21)
        u1 = ((h >> np.uint64(43)).astype(np.float64) + 0.5) * scale
        u2 = ((h >> np.uint64(22)) & _M21).astype(np.float64) * (2.0 * np.pi * scale)
        u3 = ((h >> np.uint64(1)) & _M21).astype(np.float64) * scale
        normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(u2)
        p = self.dense_profile
        counts = np.floor(np.exp(p.mu + p.sigma * normal))
        counts[u3 < p.zero_prob] = 0.0
        return np.log1p(counts).astype(np.float32)

    def label_uniforms(self, stream: int, rows: np.ndarray) -> np.ndarray:
        return to_unit(hash_u64(self.key(stream, _KIND_LABEL), rows))

    def items(self, stream: int, rows: np.ndarray) -> Items:
        t_count, p = self.num_tables, self.pooling_factor
        b = len(rows)
        if p == 1:
            counters = rows[:, None] * t_count + np.arange(t_count)
            u = to_unit(hash_u64(self.key(stream, _KIND_IDS), counters))
            ranks = self.zipf.ranks(u)  # [B, T]
            ids = self.zipf.ids(ranks)
            return Items(table=np.tile(np.arange(t_count), b), row=np.repeat(np.arange(b), t_count),
                         ranks=ranks.ravel(), ids=ids.ravel(), bag_sizes=np.ones((b, t_count), np.int64),
                         one_hot=True)
        hb = hash_u64(self.key(stream, _KIND_BAGS), rows[:, None] * t_count + np.arange(t_count))
        sizes = 1 + (to_unit(hb) * p).astype(np.int64)  # uniform in [1, p]
        per_bag = sizes.T.ravel()  # table-major
        bag = np.repeat(np.arange(t_count * b), per_bag)
        starts = np.cumsum(per_bag) - per_bag
        slot = np.arange(len(bag)) - np.repeat(starts, per_bag)
        table, row = bag // b, bag % b
        counters = (rows[row] * t_count + table) * p + slot
        u = to_unit(hash_u64(self.key(stream, _KIND_IDS), counters))
        ranks = self.zipf.ranks(u, table)
        return Items(table=table, row=row, ranks=ranks, ids=self.zipf.ids(ranks, table), bag_sizes=sizes,
                     one_hot=False)

