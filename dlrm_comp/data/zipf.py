"""Zipf-like id sampling over [0, cardinality) with hot ids scattered by a fixed permutation.

Sampling uses the inverse CDF of a continuous power law on [0.5, C + 0.5) rounded to the nearest
integer rank (the midpoint rule for P(k) ~ k^-s), so it needs O(1) memory even for 10M-row tables.
Rank r is then mapped to id (a * r + b) mod C with gcd(a, C) = 1 and a / C near the golden ratio's
fraction (a Weyl sequence): a bijection that spreads consecutive hot ranks far apart over the table
instead of piling them up at 0 (as real hashed Criteo ids are spread).

The exponent may differ per table: `fit_exponents` solves, per table, the exponent at which a
chunk of n rows holds a given fraction of distinct ids (the `criteo_like` profile matches the
fractions measured on real Criteo this way).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ZipfTables:
    """Per-table sampling constants (one exponent per table); build with `ZipfTables.create`."""

    cardinalities: np.ndarray  # int64 [T]
    exponent: np.ndarray  # float64 [T]
    perm_a: np.ndarray  # int64 [T], coprime with the cardinality
    perm_b: np.ndarray  # int64 [T]
    _base: np.ndarray  # float64 [T]: lo^(1-s)  (0 where s == 1)
    _span: np.ndarray  # float64 [T]: lo^(1-s) - hi^(1-s)  (or log(hi/lo) where s == 1)

    @staticmethod
    def create(cardinalities: list[int], exponent: float | list[float], rng: np.random.Generator) -> ZipfTables:
        cards = np.asarray(cardinalities, dtype=np.int64)
        if cards.ndim != 1 or (cards < 1).any():
            raise ValueError(f"every cardinality must be >= 1, got {list(cardinalities)}")
        s = np.broadcast_to(np.asarray(exponent, dtype=np.float64), cards.shape).copy()
        if not (np.isfinite(s) & (s > 0)).all():
            raise ValueError(f"zipf_exponent must be > 0, got {exponent}")
        a = np.ones_like(cards)
        b = np.zeros_like(cards)
        for t, c in enumerate(cards.tolist()):
            if c > 1:
                cand = max(1, int(c * (0.6180339887 + rng.uniform(-0.05, 0.05))) % c)
                while math.gcd(cand, c) != 1:
                    cand = cand % (c - 1) + 1
                a[t], b[t] = cand, int(rng.integers(0, c))
        base, span = _constants(cards, s)
        return ZipfTables(cards, s, a, b, base, span)

    def ranks(self, u: np.ndarray, table: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Popularity ranks (0 = hottest) for uniforms `u`; `table` selects per-element tables
        (an index array the shape of `u`) or, by default, columns of a [..., T] array."""
        span, cards, s, base = self.span_of(table), self.cardinalities[table], self.exponent[table], self._base[table]
        one = np.abs(s - 1.0) < 1e-9
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            power = np.power(base - u * span, 1.0 / np.where(one, 0.5, 1.0 - s))
        x = np.where(one, 0.5 * np.exp(np.where(one, u * span, 0.0)), power)
        r = np.floor(x + 0.5).astype(np.int64) - 1
        return np.clip(r, 0, cards - 1, out=r)

    def ids(self, ranks: np.ndarray, table: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Map ranks to table ids with the fixed per-table permutation."""
        return (ranks * self.perm_a[table] + self.perm_b[table]) % self.cardinalities[table]

    def span_of(self, table: np.ndarray | slice) -> np.ndarray:
        return self._span[table]

    def probabilities(self, table: int, top: int) -> np.ndarray:
        """Exact probabilities of ranks 0..top-1 under the sampler (for tests and reports)."""
        return _probabilities(int(self.cardinalities[table]), float(self.exponent[table]), top)


def _constants(cards: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = 0.5, cards.astype(np.float64) + 0.5
    one = np.abs(s - 1.0) < 1e-9
    q = np.where(one, 1.0, 1.0 - s)
    base = np.where(one, 0.0, lo ** q)
    span = np.where(one, np.log(hi / lo), lo ** q - hi ** q)
    return base, span


def _probabilities(card: int, s: float, top: int) -> np.ndarray:
    edges = np.arange(min(top, card) + 1, dtype=np.float64) + 0.5  # rank r covers [r+0.5, r+1.5)
    base, span = (float(v[0]) for v in _constants(np.array([card]), np.array([s])))
    if abs(s - 1.0) < 1e-9:
        cdf = np.log(edges / 0.5) / span
    else:
        cdf = (base - edges ** (1.0 - s)) / span
    return np.diff(cdf)


def expected_distinct_fraction(card: int, s: float, rows: int, head: int = 200_000) -> float:
    """E[distinct ids] / rows among ``rows`` draws: exact over the ``head`` hottest ranks, the
    tail counted as n * P(tail) (its ids almost never repeat)."""
    p = _probabilities(card, s, head)
    tail = max(0.0, 1.0 - float(p.sum()))
    return float((-np.expm1(rows * np.log1p(-np.minimum(p, 1.0 - 1e-16)))).sum() + rows * tail) / rows


def fit_exponents(cardinalities: list[int], fractions: list[float], rows: int) -> list[float]:
    """Per table, the exponent at which ``rows`` draws hold ``fractions[t]`` distinct ids (by
    bisection; clamped to [0.05, 8] where the cardinality cannot reach the fraction)."""
    if len(cardinalities) != len(fractions):
        raise ValueError(f"{len(fractions)} distinct fractions for {len(cardinalities)} tables")
    out = []
    for card, target in zip(cardinalities, fractions):
        lo, hi = 0.05, 8.0  # the fraction falls as the exponent grows
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if expected_distinct_fraction(int(card), mid, rows) > target:
                lo = mid
            else:
                hi = mid
        out.append(round(0.5 * (lo + hi), 4))
    return out
