"""Config layering, env/--set precedence, and validation errors that name the field."""
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm_comp.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def _yaml(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_validate():
    cfg = load_config([], [], env={})
    assert cfg.compress.mode == "off" and cfg.model.interaction == "dot"


def test_layers_env_and_set_precedence(tmp_path):
    base = _yaml(tmp_path, "a.yaml", "compress:\n  base_error_bound: 0.02\n  decay:\n    func: log\n")
    over = _yaml(tmp_path, "b.yaml", "compress:\n  decay:\n    constant: 3\n")
    cfg = load_config([base, over], [], env={})
    assert cfg.compress.bounds.base_error_bound == 0.02
    assert cfg.compress.decay.func == "log" and cfg.compress.decay.constant == 3.0
    env = {"DECAY_FUNC": "linear", "EB_CONSTANT": "2.5", "TIGHTEN_EB_TABLES": "2 3,9", "BASE_ERROR_BOUND": "0.04"}
    cfg = load_config([base, over], [], env=env)
    assert cfg.compress.decay.func == "linear" and cfg.compress.decay.constant == 2.5
    assert cfg.compress.bounds.tighten_tables == [2, 3, 9] and cfg.compress.bounds.base_error_bound == 0.04
    cfg = load_config([base, over], ["compress.decay.func=step", "compress.base_error_bound=0.01"], env=env)
    assert cfg.compress.decay.func == "step" and cfg.compress.bounds.base_error_bound == 0.01


@pytest.mark.parametrize("override,needle", [
    ("compress.mode=zip", "compress.mode"),
    ("model.interaction=sum", "model.interaction"),
    ("train.optimizer=adam", "train.optimizer"),
    ("train.iterations=ten", "train.iterations"),
    ("train.lr=-1", "train.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("compress.base_error_bound=-0.1", "compress.base_error_bound"),
    ("model.bottom_mlp=13-x-16", "model.bottom_mlp"),
    ("model.bottom_mlp=12-64-16", "model.bottom_mlp"),
    ("train.nonsense=1", "train.nonsense"),
    ("data.source=parquet", "data.source"),
])
def test_validation_errors_name_the_field(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config([], [override], env={})
    assert needle in str(err.value)


def test_table_lists_from_the_environment_and_set():
    """The reference's list syntax (spaces or commas), for the env variables and for --set."""
    assert load_config([], [], env={"TIGHTEN_EB_TABLES": "2,3, 9 ,11"}).compress.bounds.tighten_tables == [2, 3, 9, 11]
    assert load_config([], [], env={"LOOSEN_EB_TABLES": "  "}).compress.bounds.loosen_tables == []
    with pytest.raises(ConfigError, match="compress.tighten_tables: .*not a list of table indices"):
        load_config([], [], env={"TIGHTEN_EB_TABLES": "2 x"})
    assert load_config([], ["compress.tighten_tables=1,2"], env={}).compress.bounds.tighten_tables == [1, 2]
    with pytest.raises(ConfigError, match="compress.loosen_tables"):
        load_config([], ["compress.loosen_tables=[-1]"], env={})


def test_flat_bound_keys_stay_in_the_compress_section():
    """The table bounds' config (TableBoundSpec) is read from and written to compress.* as before."""
    cfg = load_config([], ["compress.table_preset=kaggle_ref", "compress.loosen_value=0.1"], env={})
    assert cfg.compress.bounds.table_preset == "kaggle_ref" and cfg.compress.bounds.loosen_value == 0.1
    section = cfg.to_dict()["compress"]
    assert list(section)[:8] == ["mode", "base_error_bound", "tighten_tables", "tighten_value", "loosen_tables",
                                 "loosen_value", "table_preset", "nonfinite"]
    assert "bounds" not in section and section["table_preset"] == "kaggle_ref"
    with pytest.raises(ConfigError, match="compress.bogus: unknown key; .*base_error_bound.*table_preset"):
        load_config([], ["compress.bogus=1"], env={})


def test_decay_errors_name_their_section():
    with pytest.raises(ConfigError, match="compress.backward.decay.func: 'x' is not one of: .*cosine"):
        load_config([], ["compress.backward.decay.func=x"], env={})
    with pytest.raises(ConfigError, match="compress.decay.constant: must be a finite number >= 1"):
        load_config([], ["compress.decay.constant=0.5"], env={})


def test_probe_batch_covers_the_chunks():
    closed = ["adaptive.policy=closed_loop", "adaptive.target_cr=4", "compress.mode=codec", "compress.chunks=8"]
    with pytest.raises(ConfigError, match="adaptive.probe_batch: .*at least 8 rows"):
        load_config([], [*closed, "adaptive.probe_batch=4"], env={})
    load_config([], [*closed, "adaptive.probe_batch=0"], env={})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"], env={})


def test_cli_exit_status_2_on_bad_value(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "launch/train.py"), "--config", str(ROOT / "configs/debug.yaml"),
                           "--set", "compress.mode=bogus", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "compress.mode" in proc.stderr and "codec" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["debug.yaml", "kaggle.yaml", "terabyte.yaml"])
def test_shipped_configs_validate(name):
    load_config([ROOT / "configs" / name], env={})


def test_off_stays_a_string_in_files_and_set(tmp_path):
    path = _yaml(tmp_path, "off.yaml", "compress:\n  mode: off\n")
    assert load_config([path], env={}).compress.mode == "off"
    assert load_config([], ["compress.mode=off"], env={}).compress.mode == "off"
    assert load_config([], ["train.progress=false"], env={}).train.progress is False


@pytest.mark.parametrize("variant", sorted((ROOT / "configs" / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_ablation_variants_layer_over_debug(variant):
    cfg = load_config([ROOT / "configs" / "debug.yaml", variant], env={})
    assert cfg.name == variant.stem


def test_btune_variables_are_read_at_the_cli_layer_and_shown_in_the_config(monkeypatch):
    """BTUNE_TRADEOFF / BTUNE_PERF_MODE set adaptive.* where every other environment variable is
    read (so config.yaml shows them); the lossless selector in training never reads them."""
    from dlrm_comp.adaptive import lossless_select
    from dlrm_comp.config import load_config
    cfg = load_config([], [], env={"BTUNE_TRADEOFF": "0.9", "BTUNE_PERF_MODE": "DECOMP"})
    assert cfg.adaptive.tradeoff == 0.9 and cfg.adaptive.perf_mode == "DECOMP"
    seen = {}

    class Seen(Exception):
        pass

    def fake_tune(*args, **kwargs):
        seen.update(kwargs)
        raise Seen

    monkeypatch.setattr(lossless_select, "tune", fake_tune)
    monkeypatch.setenv("BTUNE_TRADEOFF", "0.1")
    with pytest.raises(Seen):
        lossless_select.LosslessSelector(tradeoff=0.5).choose(0, bytes(64), 1, None)
    assert seen["use_env"] is False and seen["tradeoff"] == 0.5


def test_a_partial_section_keeps_the_fields_own_defaults():
    """`compress.backward.decay` defaults to no decay; setting only its constant must not bring in
    the class default (step decay)."""
    from dlrm_comp.config import load_config
    cfg = load_config([ROOT / "configs/debug.yaml"], ["compress.backward.decay.constant=3"])
    assert cfg.compress.backward.decay.func == "none" and cfg.compress.backward.decay.constant == 3.0
    assert load_config([ROOT / "configs/debug.yaml"], ["compress.decay.constant=3"]).compress.decay.func == "step"


# ----------------------------------------------------------------------------- issue 24: silent and misleading
def test_a_duplicate_yaml_key_names_the_file_line_and_key(tmp_path):
    path = _yaml(tmp_path, "dup.yaml", "train:\n  iterations: 300\n  lr: 0.1\n  iterations: 200\n")
    with pytest.raises(ConfigError) as err:
        load_config([path], env={})
    assert str(path) in str(err.value) and "line 4" in str(err.value) and "'iterations'" in str(err.value)
    assert "first on line 2" in str(err.value)


def test_yaml_merge_keys_still_override(tmp_path):
    path = _yaml(tmp_path, "merge.yaml", "name: m\ntrain:\n  <<: {iterations: 7, lr: 0.3}\n  iterations: 9\n")
    cfg = load_config([path], env={})
    assert cfg.train.iterations == 9 and cfg.train.lr == 0.3


def test_config_directory_is_not_called_missing(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; name a YAML file"):
        load_config([tmp_path], env={})


def test_a_scalar_section_is_blamed_on_its_file_not_on_set(tmp_path):
    path = _yaml(tmp_path, "bad.yaml", "train: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config([path], ["train.iterations=3"], env={})
    assert str(path) in str(err.value) and "train: is a section" in str(err.value) and "--set" not in str(err.value)
    nested = _yaml(tmp_path, "nested.yaml", "compress:\n  decay: step\n")
    with pytest.raises(ConfigError, match="compress.decay: is a section"):
        load_config([nested], env={})


@pytest.mark.parametrize("env,needle", [({"DECAY_FUNC": "bogus"}, "DECAY_FUNC"),
                                        ({"EB_CONSTANT": "0.5"}, "EB_CONSTANT"),
                                        ({"BASE_ERROR_BOUND": "7"}, "BASE_ERROR_BOUND"),
                                        ({"TIGHTEN_EB_TABLES": "1 x"}, "TIGHTEN_EB_TABLES")])
def test_errors_from_environment_variables_name_the_variable(env, needle):
    with pytest.raises(ConfigError) as err:
        load_config([], [], env=env)
    assert needle in str(err.value)


def test_set_over_an_environment_variable_is_not_blamed_on_it():
    with pytest.raises(ConfigError) as err:
        load_config([], ["compress.decay.func=bogus"], env={"DECAY_FUNC": "step"})
    assert "DECAY_FUNC" not in str(err.value)


@pytest.mark.parametrize("override", ["train.seed=-1", "train.seed=99999999999999999999", "data.seed=-1",
                                      "data.seed=4294967296"])
def test_seeds_out_of_range_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0] + ": .* is not a seed in 0..4294967295"):
        load_config([], [override], env={})
    load_config([], ["train.seed=4294967295", "data.seed=0"], env={})


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", "", "~x"])
def test_a_name_stays_under_runs(name):
    with pytest.raises(ConfigError, match="name: .* plain folder name under runs/"):
        load_config([], [f"name={name}"], env={})


def test_closed_loop_and_lossless_tuning_need_a_mode_they_act_on():
    with pytest.raises(ConfigError, match="adaptive.policy: closed_loop .* compress.mode='fp16' has none"):
        load_config([], ["compress.mode=fp16", "adaptive.policy=closed_loop", "adaptive.target_cr=12"], env={})
    with pytest.raises(ConfigError, match="adaptive.lossless_tuning: .*compress.mode='sz'"):
        load_config([], ["compress.mode=sz", "adaptive.lossless_tuning=true"], env={})
    load_config([], ["compress.mode=simulate", "adaptive.policy=closed_loop", "adaptive.target_cr=12"], env={})
    load_config([], ["compress.mode=codec", "adaptive.lossless_tuning=true"], env={})


def test_a_negative_budget_is_blamed_on_budget_bytes():
    with pytest.raises(ConfigError, match="adaptive.budget_bytes: -5.0 must be > 0"):
        load_config([], ["compress.mode=codec", "adaptive.policy=closed_loop", "adaptive.budget_bytes=-5"], env={})


def test_the_top_mlp_error_shows_a_top_mlp_example():
    with pytest.raises(ConfigError, match="model.top_mlp: .*like '512-256-1'"):
        load_config([], ["model.top_mlp=8-x-1"], env={})


def test_lossless_stage_is_checked_at_load(monkeypatch):
    from dlrm_comp.compress.lossless import nvcomp_codec
    monkeypatch.setattr(nvcomp_codec, "nvcomp", None)  # as on a machine without CUDA or the wheel
    with pytest.raises(ConfigError, match="compress.lossless.name: 'nvcomp' cannot run here .*nvidia-nvcomp"):
        load_config([], ["compress.mode=codec", "compress.lossless.name=nvcomp"], env={})
    with pytest.raises(ConfigError) as err:
        load_config([], ["compress.mode=codec", "compress.lossless.name=zlib", "compress.lossless.params={level: x}"],
                    env={})
    text = str(err.value)
    assert "compress.lossless.params" in text and "its parameters: level, strategy" in text
    assert "invalid literal" not in text
    with pytest.raises(ConfigError, match="unknown parameter 'lvl'"):
        load_config([], ["compress.lossless.name=zlib", "compress.lossless.params={lvl: 3}"], env={})
    with pytest.raises(ConfigError, match="compress.lossless.name: 'lz9' is not one of: default"):
        load_config([], ["compress.lossless.name=lz9"], env={})


def test_ans_is_refused_for_training_with_the_reason(tmp_path):
    """The model-based coder needs symbol models every receiver holds; training does not ship
    them, so the CLI refuses it before work (it runs in the offline benchmark)."""
    with pytest.raises(ConfigError, match="compress.lossless.name: 'ans' .*offline benchmark only"):
        load_config([], ["compress.mode=codec", "compress.lossless.name=ans"], env={})
