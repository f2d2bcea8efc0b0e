"""Per-table relative error bounds (the reference's table-wise level) and the eb(t, i) policy.

Large tables are tightened (their rows are rarely seen, errors there hurt more in the reference
study) and small ones loosened. Bounds are relative to each chunk's value range and must lie in
(0, MAX_EB_REL]: at 0.5 one bin already spans the whole range, so larger values mean nothing.

Composition rule: a preset (or rank rule) supplies default tighten/loosen lists; an explicit
non-empty ``tighten_tables`` or ``loosen_tables`` REPLACES the preset's list of that kind (it
does not add to it), so an override file can restate one list without inheriting surprises.

`TableBoundSpec` is the component's config: the `compress.*` keys of the table-wise bounds,
validated once (at config load) and built into the `ErrorBoundPolicy` with the decay schedule.
The checks that need the table count (indices, rank rules) run when it is built.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

from dlrm_comp.checks import ConfigError
from dlrm_comp.compress.decay import DecaySchedule

MAX_EB_REL = 0.5
SECTION = "compress"  # the config section these keys live in (flat: compress.base_error_bound, ...)

TABLE_PRESETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "none": ((), ()),
    "kaggle_ref": ((2, 3, 9, 11, 15, 20, 23, 25), (8, 16, 19, 21, 22, 24)),
    "terabyte_ref": ((0, 9, 10, 19, 20, 21, 22), (5, 8, 12, 15, 16, 17, 18, 24, 25)),
}

_RANK_RE = re.compile(r"^rank:(?P<body>.*)$")


def _check_bound(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value <= MAX_EB_REL):
        raise ConfigError(f"{SECTION}.{name}: {value!r} must be in (0, {MAX_EB_REL}] (a relative error bound)")


def rank_rule_lists(rule: str, cardinalities: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """'rank:top=K,bottom=M' -> (K largest tables, M smallest of the rest); ties -> lower index first."""
    m = _RANK_RE.match(rule.strip())
    if not m:
        raise ConfigError(f"{SECTION}.table_preset: {rule!r} is not a rank rule 'rank:top=K,bottom=M'")
    counts = {"top": 0, "bottom": 0}
    for item in [s for s in re.split(r"[\s,]+", m.group("body")) if s]:
        key, _, val = item.partition("=")
        if key not in counts or not val.isdigit():
            raise ConfigError(f"{SECTION}.table_preset: bad rank rule item {item!r} in {rule!r}; use top=K and/or bottom=M")
        counts[key] = int(val)
    n = len(cardinalities)
    if counts["top"] + counts["bottom"] > n:
        raise ConfigError(f"{SECTION}.table_preset: top+bottom = {counts['top'] + counts['bottom']} exceeds the {n} tables")
    by_size = sorted(range(n), key=lambda i: (-cardinalities[i], i))
    top = tuple(sorted(by_size[: counts["top"]]))
    by_small = sorted((i for i in range(n) if i not in top), key=lambda i: (cardinalities[i], i))
    bottom = tuple(sorted(by_small[: counts["bottom"]]))  # never overlaps top, even with ties
    return top, bottom


def preset_lists(preset: str, cardinalities: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(tighten, loosen) lists of a named preset or rank rule."""
    if preset in TABLE_PRESETS:
        return TABLE_PRESETS[preset]
    if preset.strip().startswith("rank:"):
        return rank_rule_lists(preset, cardinalities)
    raise ConfigError(f"{SECTION}.table_preset: unknown preset {preset!r}; valid: {', '.join(TABLE_PRESETS)} "
                      "or 'rank:top=K,bottom=M'")


@dataclass(kw_only=True)
class TableBoundSpec:
    """Table-wise bound settings as the config and the reference env vars give them."""

    base_error_bound: float = 0.03
    tighten_tables: list[int] = field(default_factory=list)
    tighten_value: float = 0.01
    loosen_tables: list[int] = field(default_factory=list)
    loosen_value: float = 0.05
    table_preset: str = "none"

    def validate(self) -> None:
        for name in ("base_error_bound", "tighten_value", "loosen_value"):
            _check_bound(name, getattr(self, name))
        for name in ("tighten_tables", "loosen_tables"):
            tables = getattr(self, name)
            if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in tables):
                raise ConfigError(f"{SECTION}.{name}: {tables} must be table indices (integers >= 0)")
        if self.table_preset not in TABLE_PRESETS and not self.table_preset.strip().startswith("rank:"):
            preset_lists(self.table_preset, ())  # its error names the key and the accepted values

    def build(self, cardinalities: Sequence[int], decay: DecaySchedule) -> "ErrorBoundPolicy":
        """The policy of a model with these tables (index ranges and rank rules checked here; the
        values again, for callers that built the spec without the config loader)."""
        self.validate()
        decay.validate("decay")
        return ErrorBoundPolicy(tuple(resolve_table_bounds(self, cardinalities)), decay)


def resolve_table_bounds(spec: TableBoundSpec, cardinalities: Sequence[int]) -> list[float]:
    """Per-table relative bounds: base, with the tighten/loosen lists applied (see module doc)."""
    n = len(cardinalities)
    p_tight, p_loose = preset_lists(spec.table_preset, cardinalities)
    tighten = tuple(spec.tighten_tables) or p_tight
    loosen = tuple(spec.loosen_tables) or p_loose
    for name, lst in (("tighten_tables", tighten), ("loosen_tables", loosen)):
        bad = [i for i in lst if not 0 <= i < n]
        if bad:
            raise ConfigError(f"{SECTION}.{name}: table index {bad} out of range; valid indices are 0..{n - 1} "
                              f"({n} tables)")
    both = sorted(set(tighten) & set(loosen))
    if both:
        raise ConfigError(f"{SECTION}.tighten_tables/loosen_tables: table(s) {both} are in both lists")
    bounds = [float(spec.base_error_bound)] * n
    for i in tighten:
        bounds[i] = float(spec.tighten_value)
    for i in loosen:
        bounds[i] = float(spec.loosen_value)
    return bounds


@dataclass(frozen=True)
class ErrorBoundPolicy:
    """eb(t, i) = decay.multiplier(t) * bounds[i], capped at MAX_EB_REL (a looser bound means nothing)."""

    bounds: tuple[float, ...]
    decay: DecaySchedule = field(default_factory=DecaySchedule)

    def eb(self, t: int, i: int) -> float:
        return min(self.decay.multiplier(t) * self.bounds[i], MAX_EB_REL)

    def all(self, t: int) -> list[float]:
        m = self.decay.multiplier(t)
        return [min(m * b, MAX_EB_REL) for b in self.bounds]
