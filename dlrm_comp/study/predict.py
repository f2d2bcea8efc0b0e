"""A cheap predictor of the accuracy loss of a compression config, used to prune tuning trials.

Features come from the config alone (no training): the per-table bounds the config resolves to,
scaled by the decay schedule's mean multiplier over the run, summarised as the mean and max of
log10(eb) over tables and their cardinality-weighted mean; fixed-rate modes get one indicator
each. A ridge regression fitted on the trials measured so far maps features to the QoS loss
(e.g. AUC drop of a short run). Its leave-one-out residual gives the uncertainty used to prune:
a trial is skipped only when the prediction minus `z` residuals is still over every threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dlrm_comp.compress.bounds import TableBoundSpec
from dlrm_comp.compress.decay import DecaySchedule
from dlrm_comp.compress.modes import FIXED_RATE


def effective_bounds(params: dict, cardinalities: Sequence[int], iterations: int) -> list[float]:
    """Per-table bound times the decay schedule's mean multiplier over `iterations` (capped at 0.5)."""
    base = params["base_error_bound"]
    spec = TableBoundSpec(base_error_bound=base, tighten_value=params.get("tighten_value", base),
                          loosen_value=params.get("loosen_value", base), table_preset=params.get("table_preset", "none"))
    decay = DecaySchedule(func=params.get("decay_func", "none"), constant=float(params.get("decay_constant", 1.0)),
                          early_stage=max(1, int(params.get("early_stage", 1))))
    bounds = spec.build(cardinalities, decay).bounds
    ts = np.linspace(0, max(iterations - 1, 0), num=min(iterations, 200)).astype(int)
    mean_mult = float(np.mean([decay.multiplier(int(t)) for t in ts])) if len(ts) else 1.0
    return [min(b * mean_mult, 0.5) for b in bounds]


def features(params: dict, cardinalities: Sequence[int], iterations: int) -> np.ndarray:
    mode = params["mode"]
    fixed = [1.0 if mode == m else 0.0 for m in FIXED_RATE]
    if mode in FIXED_RATE:
        return np.array([1.0, 0.0, 0.0, 0.0, *fixed])
    eb = np.log10(np.array(effective_bounds(params, cardinalities, iterations)))
    w = np.log1p(np.asarray(cardinalities, dtype=float))
    w = w / w.sum()
    # centred on log10(0.03) (the reference's base bound) so the ridge penalty shrinks toward it
    c = math.log10(0.03)
    return np.array([1.0, float(eb.mean()) - c, float(eb.max()) - c, float((w * eb).sum()) - c, *fixed])


@dataclass
class QoSPredictor:
    ridge: float = 1e-3
    coef: np.ndarray | None = None
    sigma: float = math.inf  # leave-one-out residual RMS
    n: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)  # (loo prediction, measured)

    def fit(self, X: Sequence[np.ndarray], y: Sequence[float]) -> "QoSPredictor":
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        self.n = len(y)
        if self.n < 2:
            self.coef, self.sigma = None, math.inf
            return self
        self.coef = self._solve(X, y)
        loo = []
        for i in range(self.n):
            keep = np.arange(self.n) != i
            coef = self._solve(X[keep], y[keep])
            loo.append(float(X[i] @ coef))
        self.history = list(zip(loo, y.tolist()))
        self.sigma = float(np.sqrt(np.mean((np.array(loo) - y) ** 2)))
        return self

    def _solve(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        reg = self.ridge * np.eye(X.shape[1])
        reg[0, 0] = 0.0  # no penalty on the intercept
        return np.linalg.solve(X.T @ X + reg, X.T @ y)

    def predict(self, x: np.ndarray) -> float | None:
        return None if self.coef is None else float(np.asarray(x) @ self.coef)

    def should_prune(self, x: np.ndarray, limit: float, z: float = 2.0, min_fit: int = 8) -> tuple[bool, float | None]:
        """(prune?, prediction): prune when the config is confidently worse than `limit`."""
        pred = self.predict(x)
        if pred is None or self.n < min_fit or not math.isfinite(self.sigma):
            return False, pred
        return pred - z * self.sigma > limit, pred
