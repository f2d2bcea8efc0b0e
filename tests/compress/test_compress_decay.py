from __future__ import annotations

import pytest

from dlrm_comp.checks import ConfigError
from dlrm_comp.compress.decay import DECAY_SCHEDULES, DecaySchedule


@pytest.mark.parametrize(
    "func,expected",
    [("linear", [2.0, 1.75, 1.5, 1.25]), ("log", [2.0, 1.6426, 1.3799, 1.172])],
)
def test_check_values(func, expected):
    s = DecaySchedule(func=func, constant=2.0, early_stage=65536)
    got = [s.multiplier(t) for t in (0, 16384, 32768, 49152)]
    assert got == pytest.approx(expected, abs=1e-4)


def test_step_integer_boundaries():
    s = DecaySchedule(func="step", constant=2.0, early_stage=65536)
    assert s.multiplier(6553) == 2.0
    assert s.multiplier(6554) == pytest.approx(1.9)
    assert s.multiplier(58983) == pytest.approx(1.1)
    assert s.multiplier(0) == 2.0


def test_constant_until_early_stage():
    s = DecaySchedule(func="constant", constant=3.5, early_stage=100)
    assert s.multiplier(99) == 3.5 and s.multiplier(100) == 1.0


@pytest.mark.parametrize("func", sorted(DECAY_SCHEDULES))
def test_every_schedule_ends_at_one(func):
    s = DecaySchedule(func=func, constant=2.0, early_stage=1000)
    assert all(s.multiplier(t) == 1.0 for t in (1000, 1001, 10**9))
    vals = [s.multiplier(t) for t in range(0, 1000, 50)]
    assert all(1.0 <= v <= 2.0 + 1e-12 for v in vals)
    assert vals == sorted(vals, reverse=True)  # non-increasing


def test_new_schedules_start_at_c():
    for func in ("cosine", "exponential", "linear", "log", "step", "constant"):
        assert DecaySchedule(func=func, constant=2.0, early_stage=1000).multiplier(0) == pytest.approx(2.0)
    assert DecaySchedule(func="none", constant=2.0, early_stage=1000).multiplier(0) == 1.0


def test_validation_messages():
    with pytest.raises(ConfigError, match="compress.decay.func: 'lienar' is not one of: .*linear"):
        DecaySchedule(func="lienar").validate("compress.decay")
    with pytest.raises(ConfigError, match="compress.decay.constant"):
        DecaySchedule(func="step", constant=0.5).validate("compress.decay")
    with pytest.raises(ConfigError, match="compress.backward.decay.early_stage"):
        DecaySchedule(func="step", constant=2.0, early_stage=0).validate("compress.backward.decay")
    with pytest.raises(ConfigError, match="decay.early_stage"):
        DecaySchedule(func="step", constant=2.0, early_stage=-5).validate("decay")
    DecaySchedule().validate("compress.decay")
