"""Per-table error-bound control: the recorder's measured ratios drive each table's bound.

The reference recorded ratios and never used them. Here a policy turns each interval's
measurements into per-table bound multipliers:

- `static`: the reference's behaviour, multipliers stay 1 (bounds = table lists x decay).
- `closed_loop`: integral control in log space towards a target wire ratio (or a byte budget per
  iteration), with each table's ratio-vs-bound slope learned from its own history, the measured
  ratio smoothed (EMA) against oscillation, every move bounded per step, the effective bound
  clipped to `[eb_min, eb_max]`, and an accuracy guard: when a probe batch's loss with
  compressed embeddings exceeds the uncompressed loss by more than `drift_threshold`, every
  table tightens, most where the probe says the error matters.

`ControllerConfig` holds the controller's `adaptive.*` keys (the section adds the lossless
tuner's), validated once at config load; `build` makes the controller its policy asks for.
Pure logic with no torch or training imports, so tests drive it with synthetic streams.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Sequence

from dlrm_comp.checks import ConfigError, choice, non_negative, positive

POLICIES = ("static", "closed_loop")
PRIOR_SLOPE = 0.3  # d log(cr) / d log(eb) before a table has history
HISTORY = 8  # (log eb, log cr) points per table the slope is fitted on


@dataclass
class TableObservation:
    """One interval of one table: raw and sent bytes, and the effective bound it ran at."""
    bytes_raw: float
    bytes_sent: float
    eb_rel: float

    @property
    def cr(self) -> float:
        return self.bytes_raw / self.bytes_sent if self.bytes_sent > 0 else math.nan


@dataclass
class Decision:
    table: int
    eb_rel: float
    multiplier: float
    reason: str


@dataclass(kw_only=True)
class ControllerConfig:
    """`static` keeps the table lists x decay; `closed_loop` moves each table's bound towards
    `target_cr` (or `budget_bytes` per interval) within `[eb_min, eb_max]`, guarded by a probe
    of the loss drift."""
    policy: str = "static"
    target_cr: float = 0.0  # wire ratio goal (0: use budget_bytes)
    budget_bytes: float = 0.0  # bytes per interval goal (alternative to target_cr)
    eb_min: float = 1e-4
    eb_max: float = 0.2
    interval: int = 100  # iterations between control steps
    gain: float = 0.6  # fraction of the estimated log-error corrected per interval
    max_step: float = 0.35  # largest |change| of log(multiplier) per interval
    smoothing: float = 0.5  # EMA weight of the newest measured log-ratio
    drift_threshold: float = 0.002  # probe loss increase (compressed - uncompressed) that tightens
    guard_step: float = 0.3  # log-tightening of the most sensitive table when the guard fires
    probe_batch: int = 1024  # rows of the probe batch (0: no probe, no guard)

    def validate(self) -> None:
        choice("adaptive.policy", self.policy, POLICIES)
        if not 0 < self.eb_min <= self.eb_max <= 0.5:
            raise ConfigError(f"adaptive.eb_min/eb_max: need 0 < eb_min <= eb_max <= 0.5, got {self.eb_min}, {self.eb_max}")
        positive("adaptive.interval", self.interval)
        non_negative("adaptive.probe_batch", self.probe_batch)
        if self.policy == "closed_loop":
            self.validate_target()
        for name in ("gain", "max_step", "guard_step"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"adaptive.{name}: must be > 0")
        if not 0 < self.smoothing <= 1:
            raise ConfigError(f"adaptive.smoothing: {self.smoothing} must be in (0, 1]")

    def validate_target(self) -> None:
        """What the closed loop steers to: a wire ratio above 1, or a byte budget per interval."""
        for key in ("target_cr", "budget_bytes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"adaptive.{key}: {getattr(self, key)} must be > 0 (or 0: not used)")
        if self.target_cr <= 0 and self.budget_bytes <= 0:
            raise ConfigError("adaptive.target_cr: closed_loop needs a target wire ratio > 1 "
                              "(or adaptive.budget_bytes per interval)")
        if 0 < self.target_cr <= 1:
            raise ConfigError(f"adaptive.target_cr: {self.target_cr} must be > 1")

    def build(self, num_tables: int) -> "ClosedLoopController | None":
        """The controller of ``num_tables`` tables, or None for the static policy."""
        return ClosedLoopController(num_tables, self) if self.policy == "closed_loop" else None


@dataclass
class ClosedLoopController:
    num_tables: int
    cfg: ControllerConfig
    multipliers: list[float] = field(default_factory=list)
    log_cr_ema: float | None = None
    points: list[list[tuple[float, float]]] = field(default_factory=list)  # per table (log eb, log cr)
    changes: int = 0

    def __post_init__(self) -> None:
        self.cfg.validate()  # also for a controller built without the config loader
        self.cfg.validate_target()
        if not self.multipliers:
            self.multipliers = [1.0] * self.num_tables
        if not self.points:
            self.points = [[] for _ in range(self.num_tables)]

    # ------------------------------------------------------------------ bounds
    def effective(self, base: Sequence[float]) -> list[float]:
        """Effective bound per table: base (table lists x decay) x multiplier, clipped to limits."""
        return [min(max(b * m, self.cfg.eb_min), self.cfg.eb_max) for b, m in zip(base, self.multipliers)]

    def slope(self, table: int) -> float:
        """d log(cr) / d log(eb) of one table from its recent history (prior when flat)."""
        pts = self.points[table]
        if len(pts) >= 3:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            var = sum((x - mx) ** 2 for x in xs)
            if var > 1e-4:
                est = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
                return min(max(est, 0.05), 1.5)
        return PRIOR_SLOPE

    # ------------------------------------------------------------------ update
    def update(self, observations: Sequence[TableObservation], base: Sequence[float],
               drift: float | None = None, sensitivity: Sequence[float] | None = None) -> list[Decision]:
        """One control step from an interval's per-table observations; returns the changes made."""
        raw = sum(o.bytes_raw for o in observations)
        sent = sum(o.bytes_sent for o in observations)
        if raw <= 0 or sent <= 0:
            return []
        for i, o in enumerate(observations):
            if o.bytes_sent > 0 and o.eb_rel > 0:
                self.points[i] = (self.points[i] + [(math.log(o.eb_rel), math.log(o.cr))])[-HISTORY:]
        target_log = math.log(self.cfg.target_cr) if self.cfg.target_cr > 0 else math.log(raw / self.cfg.budget_bytes)
        measured = math.log(raw / sent)
        a = self.cfg.smoothing
        self.log_cr_ema = measured if self.log_cr_ema is None else a * measured + (1 - a) * self.log_cr_ema
        error = target_log - self.log_cr_ema
        weights = [o.bytes_sent / sent for o in observations]
        slope = sum(w * self.slope(i) for i, w in enumerate(weights)) or PRIOR_SLOPE
        step = max(-self.cfg.max_step, min(self.cfg.max_step, self.cfg.gain * error / slope))
        reason = f"cr {math.exp(self.log_cr_ema):.2f} vs target {math.exp(target_log):.2f}"
        guard = drift is not None and drift > self.cfg.drift_threshold
        moves = [step] * self.num_tables
        if guard:
            sens = list(sensitivity) if sensitivity is not None else [1.0] * self.num_tables
            top = max(max(sens), 1e-12)
            moves = [min(step, 0.0) - self.cfg.guard_step * max(s, 0.0) / top for s in sens]
            reason = f"guard: probe loss drift {drift:.5f} > {self.cfg.drift_threshold}"
        decisions = []
        before = self.effective(base)
        for i, move in enumerate(moves):
            m = self.multipliers[i] * math.exp(move)
            lo, hi = self.cfg.eb_min / max(base[i], 1e-12), self.cfg.eb_max / max(base[i], 1e-12)
            self.multipliers[i] = min(max(m, lo), hi)  # no windup past the limits
        after = self.effective(base)
        for i, (b, e) in enumerate(zip(before, after)):
            if abs(math.log(e / b)) > 1e-9:
                decisions.append(Decision(i, e, self.multipliers[i], reason))
        self.changes += len(decisions)
        return decisions

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"multipliers": list(self.multipliers), "log_cr_ema": self.log_cr_ema,
                "points": [list(p) for p in self.points], "changes": self.changes,
                "cfg": {f.name: getattr(self.cfg, f.name) for f in fields(ControllerConfig)}}  # informational

    def load_state_dict(self, state: dict) -> None:
        self.multipliers = list(state["multipliers"])
        self.log_cr_ema = state["log_cr_ema"]
        self.points = [[tuple(x) for x in p] for p in state["points"]]
        self.changes = state["changes"]
