"""QoS tuner: search space -> override YAML that load_config accepts, Pareto/picks, predictor,
resumable optuna study (SQLite), report and plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")  # the tune extra; absent on a bare GPU host

from plot_checks import assert_plot
from tiny import tiny_yaml

from dlrm_comp.config import load_config
from dlrm_comp.study import tune
from dlrm_comp.study.predict import QoSPredictor, features

STUDY_BASE = ("train.iterations=20", "train.eval_every=10", "train.tensorboard=false", "compress.mode=codec")
CARDS = [4096, 2048, 1000, 500, 100, 40, 10, 4]


@pytest.fixture
def base(tmp_path) -> Path:
    return tiny_yaml(tmp_path / "base.yaml", *STUDY_BASE, "compress.table_preset=none")


def _spec(base: Path, out: Path, **kw) -> tune.TuneSpec:
    kw.setdefault("trials", 3)
    return tune.TuneSpec(base=[str(base)], out=str(out), short_iterations=10, thresholds=[0.001, 0.01], seed=0,
                         **kw)


def test_tune_override_yaml_loads_for_every_sampled_config(tmp_path):
    """Sampled configs (random) become YAML overrides that load_config accepts on a base with other bounds."""
    base = tiny_yaml(tmp_path / "base.yaml", *STUDY_BASE, "compress.table_preset=rank:top=1,bottom=1")
    spec = tune.TuneSpec(base=[str(base)], out=str(tmp_path), modes=["codec", "sz", "int8", "fp16"])
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=1))
    seen_modes, seen_rules = set(), set()
    for i in range(40):
        trial = study.ask()
        params = tune.suggest(trial, spec, len(CARDS))
        path = tune.write_override(tmp_path / f"o{i}.yaml", tune.override_dict(params, 3000, f"pick_{i}"),
                                   comment=["a comment"])
        cfg = load_config([base, path], [])
        assert cfg.name == f"pick_{i}" and cfg.compress.mode == params["mode"]
        if params["mode"] not in ("int8", "fp16"):
            assert cfg.compress.bounds.base_error_bound == pytest.approx(params["base_error_bound"], rel=1e-3)
            assert cfg.compress.bounds.table_preset == params["table_preset"]
            assert cfg.compress.bounds.tighten_tables == [] and cfg.compress.bounds.loosen_tables == []
            if params["decay_func"] != "none":
                assert cfg.compress.decay.early_stage == max(1, round(params["early_frac"] * 3000))
            seen_rules.add(params["table_preset"])
        seen_modes.add(params["mode"])
        study.tell(trial, [0.0, 1.0])
    assert seen_modes == {"codec", "sz", "int8", "fp16"} and "none" in seen_rules and len(seen_rules) > 2
    # an uncompressed override keeps 'off' a string in YAML 1.1 readers too
    off = tune.write_override(tmp_path / "off.yaml", {"name": "x", "compress": {"mode": "off"}})
    assert load_config([base, off], []).compress.mode == "off"


def test_tune_pareto_and_picks():
    pts = [(0.0005, 4.0), (0.002, 10.0), (0.001, 8.0), (0.0012, 7.0), (-0.0001, 2.0), (0.003, 9.0)]
    front = tune.pareto(pts)
    assert front == [4, 0, 2, 1]
    rows = [{"number": i, "state": "complete", "qos": q, "gain": g, "params": {}} for i, (q, g) in enumerate(pts)]
    rows.append({"number": 9, "state": "pruned", "qos": None, "gain": None, "params": {}})
    picks = tune.choose(rows, [0.0, 0.001, 0.0025])
    assert picks[0.0]["number"] == 4 and picks[0.001]["number"] == 2 and picks[0.0025]["number"] == 1
    assert tune.choose(rows, [-1.0])[-1.0] is None


def test_tune_predictor_fits_and_prunes_confidently():
    rng = np.random.default_rng(0)
    X, y = [], []
    for _ in range(20):
        eb = float(10 ** rng.uniform(-2.5, -0.7))
        p = {"mode": "codec", "base_error_bound": eb, "table_preset": "none", "decay_func": "none"}
        x = features(p, CARDS, 100)
        X.append(x)
        y.append(0.01 * (np.log10(eb) + 2.5) + rng.normal(0, 1e-4))
    pred = QoSPredictor().fit(X, y)
    assert pred.sigma < 1e-3 and len(pred.history) == 20
    loose = features({"mode": "codec", "base_error_bound": 0.2, "table_preset": "none", "decay_func": "none"}, CARDS, 100)
    tight = features({"mode": "codec", "base_error_bound": 0.003, "table_preset": "none", "decay_func": "none"},
                     CARDS, 100)
    assert pred.should_prune(loose, limit=0.002)[0] is True
    assert pred.should_prune(tight, limit=0.002)[0] is False
    assert QoSPredictor().fit(X[:5], y[:5]).should_prune(loose, 0.002, min_fit=8)[0] is False  # too few to trust
    fixed = features({"mode": "int8"}, CARDS, 100)
    from dlrm_comp.compress.modes import FIXED_RATE
    assert fixed[4:].tolist() == [float(m == "int8") for m in FIXED_RATE]


def test_tune_study_resumes_after_kill(base, tmp_path, monkeypatch):
    """A search killed mid-trial resumes from the SQLite study: earlier trials are kept, the count is reached."""
    out = tmp_path / "tune"
    spec = _spec(base, out, trials=3, modes=["codec", "int8"])
    real = tune.train_in_process
    calls = {"n": 0}

    def dying(configs, overrides, out_dir):
        if "trial_0002" in str(out_dir):
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return real(configs, overrides, out_dir)

    monkeypatch.setattr(tune, "train_in_process", dying)
    with pytest.raises(KeyboardInterrupt):
        tune.optimize(spec, log=lambda s: None)
    assert (out / "study.db").exists()
    study = tune.open_study(spec)
    assert tune.count_finished(study) == 2
    first = {t.number: t.values for t in study.trials if t.values}
    monkeypatch.setattr(tune, "train_in_process", real)
    spec5 = _spec(base, out, trials=5, modes=["codec", "int8"])
    tune.optimize(spec5, log=lambda s: None)  # the same command (with more trials) continues the study
    study = tune.open_study(spec5)
    assert tune.count_finished(study) == 5
    assert {t.number: t.values for t in study.trials if t.number in first} == first
    assert (out / "baseline_short" / "summary.json").exists()
    # the report: picks as ready overrides, plots, which figures are predicted / measured
    result = tune.report(spec5, study)
    for thr, path in result["paths"].items():
        cfg = load_config([base, path], [])
        assert cfg.name == f"tuned_auc_drop_{thr:g}"
        assert cfg.compress.mode == result["picks"][thr]["params"]["mode"]
    text = (out / "report.md").read_text()
    assert "Which figures are which" in text and "short run" in text.lower()
    for name in ("qos_vs_gain", "history"):
        assert_plot(out / "plots" / f"{name}.png")
        assert f"plots/{name}.png" in text
    assert (out / "trials.csv").read_text().count("\n") == 6


def test_tune_validate_measures_full_runs(base, tmp_path):
    spec = _spec(base, tmp_path / "tune", trials=2, modes=["fp16"])
    tune.optimize(spec, log=lambda s: None)
    study = tune.open_study(spec)
    result = tune.report(spec, study)
    assert result["paths"], "fp16 keeps the AUC: every threshold has a pick"
    validation = tune.validate(spec, result["paths"], jobs=2, log=lambda s: None)
    for thr, v in validation.items():
        assert v["status"] == "ok" and 1.2 < v["cr"] <= 2.0 + 1e-9  # fp16 (frame headers on 4-wide rows)
        assert v["met"] == (v["qos"] <= thr)
    tune.report(spec, study, validation)
    assert "validated" in (tmp_path / "tune" / "report.md").read_text()


def test_tune_cli_rejects_bad_qos(tmp_path, base):
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "launch" / "tune.py"), "--config", str(base), "--qos", "auc",
                           "--out", str(tmp_path / "t")], capture_output=True, text=True)
    assert proc.returncode == 2
    proc = subprocess.run([sys.executable, str(root / "launch" / "tune.py"), "--config", str(base), "--modes", "zip",
                           "--out", str(tmp_path / "t")], capture_output=True, text=True)
    assert proc.returncode == 2 and "--modes" in proc.stderr
