"""Zipf-like id sampling over [0, cardinality) with hot ids scattered by a fixed permutation.

Sampling uses the inverse CDF of a continuous power law on [0.5, C + 0.5) rounded to the nearest
integer rank (the midpoint rule for P(k) ~ k^-s), so it needs O(1) memory even for 10M-row tables.
Rank r is then mapped to id (a * r + b) mod C with gcd(a, C) = 1 and a / C near the golden ratio's
fraction (a Weyl sequence): a bijection that spreads consecutive hot ranks far apart over the table
instead of piling them up at 0 (as real hashed Criteo ids are spread).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ZipfTables:
    """Per-table sampling constants for one exponent; build with `ZipfTables.create`."""

    cardinalities: np.ndarray  # int64 [T]
    exponent: float
    perm_a: np.ndarray  # int64 [T], coprime with the cardinality
    perm_b: np.ndarray  # int64 [T]
    _base: float  # lo^(1-s)
    _span: np.ndarray  # float64 [T]: lo^(1-s) - hi^(1-s)  (or log(hi/lo) when s == 1)

    @staticmethod
    def create(cardinalities: list[int], exponent: float, rng: np.random.Generator) -> ZipfTables:
        if exponent <= 0:
            raise ValueError(f"zipf_exponent must be > 0, got {exponent}")
        cards = np.asarray(cardinalities, dtype=np.int64)
        if cards.ndim != 1 or (cards < 1).any():
            raise ValueError(f"every cardinality must be >= 1, got {list(cardinalities)}")
        a = np.ones_like(cards)
        b = np.zeros_like(cards)
        for t, c in enumerate(cards.tolist()):
            if c > 1:
                cand = max(1, int(c * (0.6180339887 + rng.uniform(-0.05, 0.05))) % c)
                while math.gcd(cand, c) != 1:
                    cand = cand % (c - 1) + 1
                a[t], b[t] = cand, int(rng.integers(0, c))
        lo, hi = 0.5, cards.astype(np.float64) + 0.5
        if abs(exponent - 1.0) < 1e-9:
            base, span = 0.0, np.log(hi / lo)
        else:
            q = 1.0 - exponent
            base, span = lo ** q, lo ** q - hi ** q
        return ZipfTables(cards, float(exponent), a, b, base, span)

    def ranks(self, u: np.ndarray, table: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Popularity ranks (0 = hottest) for uniforms `u`; `table` selects per-element tables
        (an index array the shape of `u`) or, by default, columns of a [..., T] array."""
        span, cards = self.span_of(table), self.cardinalities[table]
        if abs(self.exponent - 1.0) < 1e-9:
            x = 0.5 * np.exp(u * span)
        else:
            x = np.power(self._base - u * span, 1.0 / (1.0 - self.exponent))
        r = np.floor(x + 0.5).astype(np.int64) - 1
        return np.clip(r, 0, cards - 1, out=r)

    def ids(self, ranks: np.ndarray, table: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Map ranks to table ids with the fixed per-table permutation."""
        return (ranks * self.perm_a[table] + self.perm_b[table]) % self.cardinalities[table]

    def span_of(self, table: np.ndarray | slice) -> np.ndarray:
        return self._span[table]

    def probabilities(self, table: int, top: int) -> np.ndarray:
        """Exact probabilities of ranks 0..top-1 under the sampler (for tests and reports)."""
        c = int(self.cardinalities[table])
        edges = np.arange(min(top, c) + 1, dtype=np.float64) + 0.5  # rank r covers [r+0.5, r+1.5)
        if abs(self.exponent - 1.0) < 1e-9:
            cdf = np.log(edges / 0.5) / self._span[table]
        else:
            cdf = (self._base - edges ** (1.0 - self.exponent)) / self._span[table]
        return np.diff(cdf)
