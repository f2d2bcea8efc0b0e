from __future__ import annotations

import pytest

from dlrm_comp.compress.bounds import (
    TABLE_PRESETS,
    ErrorBoundPolicy,
    TableBoundSpec,
    rank_rule_lists,
    resolve_table_bounds,
)
from dlrm_comp.checks import ConfigError
from dlrm_comp.compress.decay import DecaySchedule

KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
          5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
TERABYTE = [9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352, 313829, 10, 2208, 11156,
            122, 4, 970, 14, 9994222, 7267859, 9946608, 415421, 12420, 101, 36]


def test_rank_rule_reproduces_terabyte_ref():
    assert rank_rule_lists("rank:top=7,bottom=9", TERABYTE) == TABLE_PRESETS["terabyte_ref"]
    spec_rank = TableBoundSpec(table_preset="rank:top=7,bottom=9")
    spec_ref = TableBoundSpec(table_preset="terabyte_ref")
    assert resolve_table_bounds(spec_rank, TERABYTE) == resolve_table_bounds(spec_ref, TERABYTE)


def test_rank_rule_reproduces_kaggle_tighten():
    top, bottom = rank_rule_lists("rank:top=8", KAGGLE)
    assert top == TABLE_PRESETS["kaggle_ref"][0] and bottom == ()
    # the reference loosen list is NOT the 6 smallest (it has table 24, lacks 5 and 13)
    assert rank_rule_lists("rank:bottom=6", KAGGLE)[1] != TABLE_PRESETS["kaggle_ref"][1]


def test_rank_tie_break_by_index():
    assert rank_rule_lists("rank:top=2,bottom=2", [5, 5, 5, 5, 5]) == ((0, 1), (2, 3))
    with pytest.raises(ConfigError, match="compress.table_preset: top.bottom = 6 exceeds"):
        rank_rule_lists("rank:top=3,bottom=3", [5, 5, 5, 5, 5])
    assert rank_rule_lists("rank:top=1,bottom=1", [7, 9, 9, 1, 1]) == ((1,), (3,))


def test_presets_and_values():
    b = resolve_table_bounds(TableBoundSpec(table_preset="kaggle_ref"), KAGGLE)
    assert len(b) == 26
    assert all(b[i] == 0.01 for i in (2, 3, 9, 11, 15, 20, 23, 25))
    assert all(b[i] == 0.05 for i in (8, 16, 19, 21, 22, 24))
    assert b[0] == 0.03
    assert resolve_table_bounds(TableBoundSpec(), [1, 2]) == [0.03, 0.03]


def test_explicit_lists_override_preset_list_of_same_kind():
    spec = TableBoundSpec(table_preset="kaggle_ref", tighten_tables=[0])
    b = resolve_table_bounds(spec, KAGGLE)
    assert b[0] == 0.01 and b[2] == 0.03  # preset tighten list replaced
    assert b[8] == 0.05  # preset loosen list kept


def test_validation_errors():
    with pytest.raises(ConfigError, match=r"compress.tighten_tables.*valid indices are 0\.\.2"):
        resolve_table_bounds(TableBoundSpec(tighten_tables=[3]), [1, 2, 3])
    with pytest.raises(ConfigError, match="both lists"):
        resolve_table_bounds(TableBoundSpec(tighten_tables=[1], loosen_tables=[1]), [1, 2, 3])
    with pytest.raises(ConfigError, match="compress.table_preset.*kaggle_ref"):
        resolve_table_bounds(TableBoundSpec(table_preset="kagle"), [1])
    for bad in (0.0, -0.1, 0.6, float("nan")):
        with pytest.raises(ConfigError, match="compress.base_error_bound"):
            TableBoundSpec(base_error_bound=bad).validate()
    with pytest.raises(ConfigError, match="compress.loosen_value"):
        TableBoundSpec(loosen_value=1.0).validate()
    with pytest.raises(ConfigError, match="compress.loosen_tables"):
        TableBoundSpec(loosen_tables=[-1]).validate()
    TableBoundSpec(table_preset="kaggle_ref").validate()


def test_policy():
    pol = TableBoundSpec(table_preset="kaggle_ref").build(KAGGLE, DecaySchedule(func="linear", constant=2.0, early_stage=100))
    assert pol.eb(0, 2) == pytest.approx(0.02)
    assert pol.eb(100, 2) == pytest.approx(0.01)
    assert pol.eb(50, 0) == pytest.approx(0.03 * 1.5)
    assert pol.all(100)[8] == 0.05
    capped = ErrorBoundPolicy((0.4,), DecaySchedule(func="constant", constant=2.0, early_stage=10))
    assert capped.eb(0, 0) == 0.5


def test_a_spec_built_without_the_config_loader_is_still_checked():
    """Library callers (the study tools, notebooks) get the config's errors at build, not a KeyError later."""
    from dlrm_comp.checks import ConfigError
    from dlrm_comp.compress.bounds import TableBoundSpec
    from dlrm_comp.compress.decay import DecaySchedule
    with pytest.raises(ConfigError, match="decay.func"):
        TableBoundSpec().build([10, 20], DecaySchedule(func="bogus"))
    with pytest.raises(ConfigError, match="decay.early_stage"):
        TableBoundSpec().build([10, 20], DecaySchedule(early_stage=0))
    with pytest.raises(ConfigError, match="base_error_bound"):
        TableBoundSpec(base_error_bound=-1.0).build([10, 20], DecaySchedule())
