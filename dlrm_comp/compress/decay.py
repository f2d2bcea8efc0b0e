"""Iteration-wise error-bound decay (the reference's DECAY_FUNC / EB_CONSTANT / EARLY_STAGE).

Early in training the embeddings are noisy anyway, so the bound starts C times looser and decays
to 1x at iteration E. Every schedule gives exactly 1 for t >= E. Schedules are functions of
p = t/E in [0, 1) and C >= 1. The schedule is its own config (`compress.decay`,
`compress.backward.decay`): the config validates it once at load, so a typo fails at start-up,
not deep inside training (a defect of the reference).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from dlrm_comp.checks import ConfigError, choice


def _linear(p: float, c: float) -> float:
    return c * (1.0 - p * (1.0 - 1.0 / c))


def _log(p: float, c: float) -> float:
    s = 1.0 - math.log(1.0 + p * (math.e - 1.0))
    return c * (s * (1.0 - 1.0 / c) + 1.0 / c)


def _step(p: float, c: float) -> float:
    # DecaySchedule.multiplier computes n with integers (10*t // E) and passes p = n/10 exactly;
    # flooring again here keeps the function correct when called directly with any p.
    n = math.floor(10.0 * p + 1e-9)
    return c * max(1.0 - n * (1.0 - 1.0 / c) / 10.0, 1.0 / c)


def _constant(p: float, c: float) -> float:
    return c


def _none(p: float, c: float) -> float:
    return 1.0


def _cosine(p: float, c: float) -> float:
    return 1.0 + (c - 1.0) * 0.5 * (1.0 + math.cos(math.pi * p))


def _exponential(p: float, c: float) -> float:
    return c * (1.0 / c) ** p


DECAY_SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "linear": _linear,
    "log": _log,
    "step": _step,
    "constant": _constant,
    "none": _none,
    "cosine": _cosine,
    "exponential": _exponential,
}


@dataclass(frozen=True, kw_only=True)
class DecaySchedule:
    """Multiplier m(t) applied to every table's base bound: eb(t, i) = m(t) * eb_table[i]."""

    func: str = "step"
    constant: float = 2.0
    early_stage: int = 65536

    def validate(self, key: str) -> None:
        """Raise ConfigError naming ``{key}.func`` (etc.) for a value this schedule cannot use."""
        choice(f"{key}.func", self.func, tuple(DECAY_SCHEDULES))
        if not math.isfinite(float(self.constant)) or float(self.constant) < 1.0:
            raise ConfigError(f"{key}.constant: must be a finite number >= 1, got {self.constant!r}")
        if isinstance(self.early_stage, bool) or int(self.early_stage) != self.early_stage or self.early_stage <= 0:
            raise ConfigError(f"{key}.early_stage: must be a positive integer, got {self.early_stage!r}")

    def multiplier(self, t: int) -> float:
        """m(t): C-scaled early, exactly 1.0 from iteration early_stage on (and for t < 0 -> m(0))."""
        t = max(int(t), 0)
        e = int(self.early_stage)
        if t >= e:
            return 1.0
        c = float(self.constant)
        if self.func == "step":
            return _step((10 * t // e) / 10.0, c)
        return DECAY_SCHEDULES[self.func](t / e, c)
