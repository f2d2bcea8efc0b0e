"""The hidden teacher that turns synthetic inputs into click probabilities.

logit = bias + signal_strength * z, where z mixes four unit-variance parts: per-id weights
(first order), dot products of small latent id vectors for a few table pairs, a linear dense
term, and dense x sparse crosses. Per-id quantities are hashes of (seed, table, id), so huge
tables cost no memory. Every id's weight is damped by its popularity rank, so the hot ids a
model sees often carry the signal and the rarely-seen tail carries little (else nothing could
learn it quickly). The bias is solved so the mean click probability equals `click_rate`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlrm_comp.data.features import Items
from dlrm_comp.data.hashing import derive_key, hash_u64, to_normal, to_uniform_lanes


@dataclass(frozen=True)
class TeacherConfig:
    """Shape of the hidden signal; the shares are fractions of the variance of z."""

    share_sparse: float = 0.65
    share_pairs: float = 0.10  # products are slow for a plain MLP to learn: keep them a minority
    share_dense: float = 0.20
    share_cross: float = 0.05
    num_pairs: int = 6  # table pairs with a latent dot-product interaction
    latent_dim: int = 4  # <= 4 (16-bit lanes of one hash)
    num_cross: int = 4  # (dense feature, table) crosses
    head_size: float = 30.0  # popularity damping: weight scale (1 + rank / head_size) ** -tail_decay
    tail_decay: float = 1.0
    calibration_rows: int = 32768

    def __post_init__(self) -> None:
        if not 1 <= self.latent_dim <= 4:
            raise ValueError(f"latent_dim must be in [1, 4], got {self.latent_dim}")
        shares = (self.share_sparse, self.share_pairs, self.share_dense, self.share_cross)
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(f"teacher shares must be >= 0 with a positive sum, got {shares}")
        if self.head_size <= 0 or self.tail_decay < 0 or self.calibration_rows < 256:
            raise ValueError("head_size must be > 0, tail_decay >= 0, calibration_rows >= 256")


class Teacher:
    """Structure (which tables interact, dense weights) is drawn once from `rng`; calibration
    constants come from `calibrate` on a sample of rows."""

    def __init__(self, num_tables: int, num_dense: int, mean_bag: float, cfg: TeacherConfig, seed: int,
                 rng: np.random.Generator):
        self.cfg, self.num_tables, self.num_dense = cfg, num_tables, num_dense
        self.bag_norm = 1.0 / np.sqrt(mean_bag)  # a constant, so a sum-pooling model can represent it
        self.table_scale = np.exp(rng.normal(0.0, 0.6, num_tables))
        all_pairs = [(a, b) for a in range(num_tables) for b in range(a + 1, num_tables)]
        chosen = rng.choice(len(all_pairs), size=min(cfg.num_pairs, len(all_pairs)), replace=False) \
            if all_pairs else []
        self.pairs = [all_pairs[i] for i in sorted(chosen)]
        self.pair_tables = sorted({t for p in self.pairs for t in p})
        self.dense_weight = rng.normal(0.0, 1.0, num_dense)
        n_cross = min(cfg.num_cross, num_dense * num_tables)
        flat = rng.choice(num_dense * num_tables, size=n_cross, replace=False) if n_cross else []
        self.crosses = [(int(i) // num_tables, int(i) % num_tables) for i in sorted(flat)]
        self.cross_tables = sorted({t for _, t in self.crosses})
        keys = [[derive_key(seed, 0x7EAC, kind, t) for t in range(num_tables)] for kind in (1, 2, 3)]
        self.weight_key, self.latent_key, self.cross_key = (np.array(k, dtype=np.uint64) for k in keys)
        self.shares = np.array([cfg.share_sparse, cfg.share_pairs, cfg.share_dense, cfg.share_cross])
        # set by calibrate()
        self.dense_mean = np.zeros(num_dense)
        self.dense_std = np.ones(num_dense)
        self.component_scale = np.zeros(4)
        self.bias = 0.0
        self.signal_strength = 1.0

    # ------------------------------------------------------------------ parts of z
    def _popularity(self, ranks: np.ndarray) -> np.ndarray:
        base = 1.0 + ranks * (1.0 / self.cfg.head_size)
        return 1.0 / base if self.cfg.tail_decay == 1.0 else base ** -self.cfg.tail_decay

    def _bag_sums(self, items: Items, idx: np.ndarray, values: np.ndarray, tables: list[int]) -> np.ndarray:
        """Sum per-item `values` ([n] or [n, k] for the items `idx` of `tables`) per (row, table)."""
        b, sel = items.num_rows, len(tables)
        values = values.reshape(len(values), -1)
        if items.one_hot:
            return values.reshape(b, sel, -1)
        pos = np.full(self.num_tables, -1)
        pos[tables] = np.arange(sel)
        key = items.row[idx] * sel + pos[items.table[idx]]
        out = np.stack([np.bincount(key, weights=values[:, j], minlength=b * sel)
                        for j in range(values.shape[1])], axis=-1)
        return out.reshape(b, sel, -1)

    def _select(self, items: Items, tables: list[int]) -> np.ndarray:
        """Positions of the items of `tables` (row-major order kept for one-hot items)."""
        if items.one_hot:
            cols = np.asarray(tables)
            return (np.arange(items.num_rows)[:, None] * self.num_tables + cols).ravel()
        mask = np.zeros(self.num_tables, dtype=bool)
        mask[tables] = True
        return np.flatnonzero(mask[items.table])

    def components(self, items: Items, dense: np.ndarray) -> np.ndarray:
        """The four raw parts of z for each row: [4, B] (sparse, pairs, dense, cross)."""
        b = items.num_rows
        pop = self._popularity(items.ranks)
        w = to_normal(hash_u64(self.weight_key[items.table], items.ids)) * pop * self.table_scale[items.table]
        sparse = np.bincount(items.row, weights=w, minlength=b) * self.bag_norm
        pairs = np.zeros(b)
        if self.pairs:
            idx = self._select(items, self.pair_tables)
            t, ids = items.table[idx], items.ids[idx]
            lat = to_uniform_lanes(hash_u64(self.latent_key[t], ids), self.cfg.latent_dim) * pop[idx, None]
            bags = self._bag_sums(items, idx, lat, self.pair_tables) * self.bag_norm
            pos = {t: i for i, t in enumerate(self.pair_tables)}
            for ta, tb in self.pairs:
                pairs += np.einsum("bk,bk->b", bags[:, pos[ta]], bags[:, pos[tb]])
        x = (dense.astype(np.float64) - self.dense_mean) / self.dense_std
        dense_term = x @ self.dense_weight
        cross = np.zeros(b)
        if self.crosses:
            idx = self._select(items, self.cross_tables)
            c = to_normal(hash_u64(self.cross_key[items.table[idx]], items.ids[idx])) * pop[idx]
            bags = self._bag_sums(items, idx, c, self.cross_tables)[..., 0] * self.bag_norm
            pos = {t: i for i, t in enumerate(self.cross_tables)}
            for j, t in self.crosses:
                cross += x[:, j] * bags[:, pos[t]]
        return np.stack([sparse, pairs, dense_term, cross])

    # ------------------------------------------------------------------ logits
    def logits(self, items: Items, dense: np.ndarray) -> np.ndarray:
        z = self.component_scale @ self.components(items, dense)
        return self.bias + self.signal_strength * z

    def calibrate(self, items: Items, dense: np.ndarray, signal_strength: float, click_rate: float) -> None:
        """Standardise dense inputs and parts of z on a sample, then solve the bias for the click rate."""
        d = dense.astype(np.float64)
        self.dense_mean = d.mean(axis=0)
        self.dense_std = np.where(d.std(axis=0) > 1e-9, d.std(axis=0), 1.0)
        comps = self.components(items, dense)
        std = comps.std(axis=1)
        active = std > 1e-12
        shares = np.where(active, self.shares, 0.0)
        shares = shares / shares.sum()
        self.component_scale = np.where(active, np.sqrt(shares) / np.where(active, std, 1.0), 0.0)
        self.signal_strength = float(signal_strength)
        z = self.signal_strength * (self.component_scale @ comps)
        lo, hi = -40.0, 40.0
        for _ in range(80):  # mean sigmoid is increasing in the bias
            mid = 0.5 * (lo + hi)
            if np.mean(1.0 / (1.0 + np.exp(-(mid + z)))) < click_rate:
                lo = mid
            else:
                hi = mid
        self.bias = 0.5 * (lo + hi)

    def describe(self) -> dict:
        return {"pairs": [list(p) for p in self.pairs], "crosses": [list(c) for c in self.crosses],
                "bias": round(self.bias, 6), "signal_strength": self.signal_strength,
                "shares": {"sparse": self.cfg.share_sparse, "pairs": self.cfg.share_pairs,
                           "dense": self.cfg.share_dense, "cross": self.cfg.share_cross},
                "head_size": self.cfg.head_size, "tail_decay": self.cfg.tail_decay}
