"""End-to-end training: run directory contents, metrics formats, and resume equivalence."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlrm_comp.train.loop import InterruptedRun, Trainer
from dlrm_comp.train.logging import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def test_run_directory_and_formats(tiny_cfg, tmp_path):
    summary = Trainer(tiny_cfg(), tmp_path).run()
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (tmp_path / name).is_file()
    assert any((tmp_path / "tensorboard").iterdir())
    assert (tmp_path / "checkpoints").is_dir()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iteration"] for r in train] == [10, 20, 30, 40]
    assert [r["iteration"] for r in evals] == [20, 40]
    for r in train:
        assert set(r) >= {"kind", "iteration", "loss", "samples_per_s", "step_s"}
    for r in evals:
        assert set(r) >= {"auc", "logloss", "accuracy"}
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("final_eval", "bayes_auc", "iterations", "wall_s", "samples_per_s", "step_s_mean", "world_size"):
        assert key in on_disk
    assert on_disk["iterations"] == 40 and on_disk["world_size"] == 1
    assert 0.5 < on_disk["bayes_auc"] < 1.0
    assert math.isclose(on_disk["final_eval"]["auc"], summary["final_eval"]["auc"])


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_resume_matches_uninterrupted_run(tiny_cfg, tmp_path, optimizer):
    cfg = tiny_cfg(f"train.optimizer={optimizer}")
    straight = Trainer(cfg, tmp_path / "straight")
    straight.run()
    killed = Trainer(cfg, tmp_path / "killed")
    with pytest.raises(InterruptedRun):
        killed.run(stop_after=25)  # last checkpoint at 20: iterations 21-25 are lost and redone
    resumed = Trainer(cfg, tmp_path / "killed", resume=True)
    assert resumed.start_iteration == 0  # restored lazily in run()
    resumed.run()
    assert resumed.start_iteration == 20
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    iters = [r["iteration"] for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl") if r["kind"] == "train"]
    assert iters == [10, 20, 30, 40]  # records past the checkpoint were dropped, none duplicated


def test_resume_rejects_a_different_model(tiny_cfg, tmp_path):
    from dlrm_comp.config import ConfigError
    Trainer(tiny_cfg("train.iterations=10"), tmp_path).run()
    with pytest.raises(ConfigError, match="model"):
        Trainer(tiny_cfg("train.iterations=20", "model.emb_dim=8", "model.bottom_mlp=13-8-8"), tmp_path,
                resume=True).run()


def test_cli_trains_and_prints_auc(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch/train.py"), "--config", str(ROOT / "configs/debug.yaml"),
         "--set", "train.iterations=30", "train.eval_every=0", "train.progress=false", "train.device=cpu",
         "--set", "data.num_val_samples=4096", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "final AUC" in proc.stdout
