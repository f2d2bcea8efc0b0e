"""A run directory belongs to one run; checkpoints are verified; a kill anywhere resumes exactly."""
from __future__ import annotations

import os

import pytest
import torch

from dlrm_comp.config import ConfigError
from dlrm_comp.train import checkpoint as checkpoint_mod
from dlrm_comp.train.breakdown import TIMED_FIELDS
from dlrm_comp.train.checkpoint import CheckpointError, CheckpointManager, sidecar_of
from dlrm_comp.train.logging import MetricsLogger, read_jsonl
from dlrm_comp.train.loop import InterruptedRun, Trainer

QUIET = ("train.tensorboard=false",)
TIMING = {"step_s", "samples_per_s", "enc_s", "dec_s", "wall_s", *TIMED_FIELDS}


def _params(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _same_params(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _records(run):
    """metrics.jsonl without the timing fields (they differ between any two runs)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(run / "metrics.jsonl")]


@pytest.fixture
def straight(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg(*QUIET), tmp_path / "straight")
    trainer.run()
    return trainer


def _killed(cfg, out, at):
    with pytest.raises(InterruptedRun):
        Trainer(cfg, out).run(stop_after=at)


# ----------------------------------------------------------------------------- one run per directory
def test_fresh_run_refuses_another_runs_checkpoints(tiny_cfg, tmp_path):
    _killed(tiny_cfg(*QUIET), tmp_path, 25)
    with pytest.raises(ConfigError, match="--resume.*new --out.*--overwrite"):
        Trainer(tiny_cfg(*QUIET, "compress.mode=fp8"), tmp_path).run()


def test_fresh_run_refuses_a_finished_run(tiny_cfg, tmp_path, straight):
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(tiny_cfg(*QUIET), straight.out_dir).run()


def test_overwrite_clears_the_old_run(tiny_cfg, tmp_path, straight):
    (straight.out_dir / "checkpoints" / "ckpt_000000999.rank1.pt").write_bytes(b"other layout")
    again = Trainer(tiny_cfg(*QUIET), straight.out_dir, overwrite=True)
    again.run()
    names = sorted(p.name for p in (straight.out_dir / "checkpoints").iterdir())
    assert names == ["ckpt_000000030.pt", "ckpt_000000030.pt.sha256", "ckpt_000000040.pt", "ckpt_000000040.pt.sha256"]
    assert [r["iteration"] for r in read_jsonl(straight.out_dir / "metrics.jsonl") if r["kind"] == "train"] \
        == [10, 20, 30, 40]


def test_resume_refuses_a_different_mode_unless_allowed(tiny_cfg, tmp_path):
    _killed(tiny_cfg(*QUIET, "compress.mode=codec"), tmp_path, 25)
    with pytest.raises(ConfigError, match=r"compress\.mode: 'codec' in the checkpoint, 'fp8' now.*--resume-allow compress\.mode"):
        Trainer(tiny_cfg(*QUIET, "compress.mode=fp8"), tmp_path, resume=True).run()
    summary = Trainer(tiny_cfg(*QUIET, "compress.mode=fp8"), tmp_path, resume=True,
                      resume_allow=["compress.mode"]).run()
    assert summary["iterations"] == 40
    comp = summary["compression"]  # the fp8 segment's own figures, the codec segment's beside them
    codec, fp8 = comp["segments"]
    assert comp["mixed"] and comp["mode"] == "fp8" and comp["max_err_ratio"] is None and comp["cr"] <= 4
    assert (codec["mode"], codec["from_iteration"], codec["to_iteration"]) == ("codec", 0, 20)
    assert codec["fwd"]["cr"] > 4 and 0 < codec["fwd"]["max_err_ratio"] <= 1
    assert fp8 == {"from_iteration": 20, "mode": "fp8", "backward_mode": "off"}
    assert comp["bytes_raw"] == 20 * 32 * 4 * 4 * 8 == codec["fwd"]["bytes_raw"]  # 20 steps each


def test_a_closed_segment_keeps_its_last_unprinted_steps(tiny_cfg, tmp_path):
    """Printed every 15 steps, checkpointed at 20: the codec segment still counts steps 15-19."""
    _killed(tiny_cfg(*QUIET, "compress.mode=codec", "train.print_every=15"), tmp_path, 25)
    summary = Trainer(tiny_cfg(*QUIET, "compress.mode=fp8", "train.print_every=15"), tmp_path, resume=True,
                      resume_allow=["compress.mode"]).run()
    codec, _ = summary["compression"]["segments"]
    assert codec["to_iteration"] == 20 and codec["fwd"]["bytes_raw"] == 20 * 32 * 4 * 4 * 8


def test_resume_rejects_an_unknown_allow_key(tiny_cfg, tmp_path):
    _killed(tiny_cfg(*QUIET), tmp_path, 25)
    with pytest.raises(ConfigError, match="not a config key"):
        Trainer(tiny_cfg(*QUIET), tmp_path, resume=True, resume_allow=["compress.nope"]).run()


def test_resume_with_fewer_iterations_than_the_checkpoint_is_refused(tiny_cfg, tmp_path):
    _killed(tiny_cfg(*QUIET), tmp_path, 35)  # checkpoint at 30
    with pytest.raises(ConfigError, match=r"train\.iterations: the checkpoint is at iteration 30"):
        Trainer(tiny_cfg(*QUIET, "train.iterations=15"), tmp_path, resume=True).run()
    with pytest.raises(ConfigError, match=r"train\.iterations"):  # shorter than planned: a difference
        Trainer(tiny_cfg(*QUIET, "train.iterations=35"), tmp_path, resume=True).run()


def test_resume_may_grow_iterations_and_change_cadence(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*QUIET)
    _killed(cfg, tmp_path / "a", 25)
    longer = ["train.iterations=60", "train.eval_every=30", "train.print_every=20", "train.keep_checkpoints=3",
              "train.progress=false", "train.checkpoint_every=20"]
    summary = Trainer(tiny_cfg(*QUIET, *longer), tmp_path / "a", resume=True).run()
    assert summary["iterations"] == 60


def test_resume_detects_another_world_size_by_listing(tiny_cfg, tmp_path):
    _killed(tiny_cfg(*QUIET), tmp_path, 25)
    ckpt = tmp_path / "checkpoints"
    for p in list(ckpt.iterdir()):  # what a 2-process run leaves: per-rank names
        p.rename(ckpt / p.name.replace(".pt", ".rank1.pt"))
    (ckpt / "ckpt_000000020.rank0.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\), this run has 1"):
        Trainer(tiny_cfg(*QUIET), tmp_path, resume=True).run()


# ----------------------------------------------------------------------------- verifiable checkpoints
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "no_sidecar"])
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(tiny_cfg, tmp_path, straight, damage, capsys):
    cfg = tiny_cfg(*QUIET)
    _killed(cfg, tmp_path / "k", 35)  # checkpoints 20 and 30
    newest = tmp_path / "k" / "checkpoints" / "ckpt_000000030.pt"
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        sidecar_of(newest).unlink()
    resumed = Trainer(cfg, tmp_path / "k", resume=True)
    resumed.run()
    err = capsys.readouterr().err
    assert "ckpt_000000030.pt" in err and "skipping" in err
    assert resumed.start_iteration == 20
    _same_params(_params(straight), _params(resumed))
    assert _records(tmp_path / "k") == _records(straight.out_dir)


def test_no_intact_checkpoint_is_a_clear_error(tiny_cfg, tmp_path):
    _killed(tiny_cfg(*QUIET), tmp_path, 25)
    for p in (tmp_path / "checkpoints").glob("*.pt"):
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint.*ckpt_000000020.pt"):
        Trainer(tiny_cfg(*QUIET), tmp_path, resume=True).run()


def test_load_names_the_file_instead_of_a_bare_eoferror(tmp_path):
    path = tmp_path / "ckpt_000000001.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="ckpt_000000001.pt"):
        CheckpointManager.load(path)
    with pytest.raises(CheckpointError, match="unreadable.*EOFError"):
        CheckpointManager.load(path, verify=False)


# ----------------------------------------------------------------------------- kills at any point
def test_torn_metrics_line_is_dropped_on_resume(tiny_cfg, tmp_path, straight):
    cfg = tiny_cfg(*QUIET)
    _killed(cfg, tmp_path / "k", 25)
    with open(tmp_path / "k" / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "iteration": 30, "lo')  # a kill during a write
    resumed = Trainer(cfg, tmp_path / "k", resume=True)
    resumed.run()
    _same_params(_params(straight), _params(resumed))
    assert _records(tmp_path / "k") == _records(straight.out_dir)


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise point runs (not even `except Exception`)."""


def _kill_on_call(monkeypatch, target, name, n, before=None):
    """Make the n-th call of target.name die (after `before(args)` ran, to emulate a torn write)."""
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            if before is not None:
                before(*args, **kwargs)
            raise _Killed(f"{name} call {n}")
        return real(*args, **kwargs)
    monkeypatch.setattr(target, name, wrapper)


def _torn_line(self, kind, iteration, **fields):
    self._file.write(f'{{"kind": "{kind}", "iteration": {iteration}, "lo')
    self._file.flush()


@pytest.mark.parametrize("where,resumes_at", [("ckpt_tmp_written", 10), ("ckpt_sidecar_in_place", 10),
                                              ("metrics_mid_line", 30), ("metrics_early", 0), ("final_save", 30),
                                              ("after_final_save", 40)])
def test_kill_anywhere_then_resume_matches_uninterrupted(tiny_cfg, tmp_path, straight, monkeypatch, where,
                                                         resumes_at):
    cfg = tiny_cfg(*QUIET)
    out = tmp_path / "k"
    with monkeypatch.context() as m:
        if where == "ckpt_tmp_written":  # 2 os.replace per save: the sidecar, then the checkpoint
            _kill_on_call(m, checkpoint_mod.os, "replace", 3)  # second save (iteration 20), before any rename
        elif where == "ckpt_sidecar_in_place":
            _kill_on_call(m, checkpoint_mod.os, "replace", 4)  # sidecar of 20 renamed, checkpoint not
        elif where == "metrics_mid_line":
            _kill_on_call(m, MetricsLogger, "log", 5, before=_torn_line)  # train@40, after checkpoint 30
        elif where == "metrics_early":
            _kill_on_call(m, MetricsLogger, "log", 1, before=_torn_line)
        elif where == "final_save":
            _kill_on_call(m, checkpoint_mod.os, "replace", 8)  # the checkpoint rename of iteration 40
        else:
            _kill_on_call(m, Trainer, "_summary", 1)
        with pytest.raises(_Killed):
            Trainer(cfg, out).run()
    resumed = Trainer(cfg, out, resume=True)
    resumed.run()
    assert resumed.start_iteration == resumes_at
    _same_params(_params(straight), _params(resumed))
    assert _records(out) == _records(straight.out_dir)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".corrupt")]


def test_checkpoints_carry_the_run_identity(tiny_cfg, tmp_path, straight):
    state = CheckpointManager.load(straight.out_dir / "checkpoints" / "ckpt_000000040.pt")
    assert state["config"] == straight.cfg.to_dict()
    assert state["world_size"] == 1 and state["iteration"] == 40 and state["iterations"] == 40
    side = sidecar_of(straight.out_dir / "checkpoints" / "ckpt_000000040.pt").read_text().split()
    assert side[1] == "ckpt_000000040.pt" and len(side[0]) == 64
    assert not any(name.endswith(".tmp") for name in os.listdir(straight.out_dir / "checkpoints"))


@pytest.mark.slow
def test_real_sigkill_then_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    """A real kill -9 of the CLI at an arbitrary moment (mid-step, mid-write), then --resume."""
    from multiproc import kill_after_checkpoint
    straight = Trainer(load := tiny_cfg(*QUIET, "train.iterations=300", "train.eval_every=50"), tmp_path / "a")
    kill_after_checkpoint(tmp_path / "k", *QUIET, "train.iterations=300", "train.eval_every=50",
                          meanwhile=straight.run)  # the uninterrupted run trains while the CLI does
    resumed = Trainer(load, tmp_path / "k", resume=True)
    resumed.run()
    assert resumed.start_iteration >= 60
    _same_params(_params(straight), _params(resumed))
    assert _records(tmp_path / "k") == _records(tmp_path / "a")


# ----------------------------------------------------------------------------- issue 24
def test_a_fresh_run_refuses_a_crashed_runs_records(tiny_cfg, tmp_path, monkeypatch):
    """Killed before its first checkpoint: its metrics and TensorBoard events are another run's."""
    cfg = tiny_cfg()  # TensorBoard on: its events must not mix with the next run's
    out = tmp_path / "x"
    _killed(cfg, out, 5)
    assert (out / "metrics.jsonl").exists() and (out / "tensorboard").is_dir()
    with pytest.raises(ConfigError, match="stopped before its first checkpoint .*--overwrite"):
        Trainer(tiny_cfg("compress.mode=fp16"), out).run()
    assert (out / "metrics.jsonl").exists()
    old_events = set((out / "tensorboard").iterdir())
    Trainer(tiny_cfg("compress.mode=fp16"), out, overwrite=True).run()
    assert not old_events & set((out / "tensorboard").iterdir())
    assert read_jsonl(out / "metrics.jsonl")[0]["iteration"] == 10


def test_resume_after_a_kill_before_any_checkpoint_starts_clean(tiny_cfg, tmp_path, straight):
    cfg = tiny_cfg()
    _killed(cfg, tmp_path / "k", 5)
    resumed = Trainer(cfg, tmp_path / "k", resume=True)
    resumed.run()
    assert resumed.start_iteration == 0 and _records(tmp_path / "k") == _records(straight.out_dir)
    assert len(list((tmp_path / "k" / "tensorboard").iterdir())) == 1  # the killed run's events went


def test_resume_needs_a_run(tiny_cfg, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no run to continue"):
        Trainer(tiny_cfg(*QUIET), tmp_path / "empty", resume=True).run()
    assert not (tmp_path / "empty" / "metrics.jsonl").exists()


def test_a_torn_evaluation_at_the_resumed_iteration_is_run_again(tiny_cfg, tmp_path, capsys):
    """A finished run's final eval line cut short, then extended: the eval is written again."""
    cfg, longer = tiny_cfg(*QUIET), tiny_cfg(*QUIET, "train.iterations=60")
    for name in ("whole", "torn"):
        Trainer(cfg, tmp_path / name).run()
    path = tmp_path / "torn" / "metrics.jsonl"
    path.write_bytes(path.read_bytes()[:-40])
    assert read_jsonl(path)[-1]["kind"] != "eval"
    capsys.readouterr()
    for name in ("whole", "torn"):
        Trainer(longer, tmp_path / name, resume=True).run()
    err = capsys.readouterr().err
    assert "line" in err and "is torn and was dropped" in err and "evaluation at iteration 40 is run again" in err
    assert _records(tmp_path / "torn") == _records(tmp_path / "whole")


def test_resume_refuses_a_model_shape_change_before_loading(tiny_cfg, tmp_path, straight):
    allow = ("model.emb_dim", "model.bottom_mlp")
    bigger = tiny_cfg(*QUIET, "train.iterations=50", "model.emb_dim=8", "model.bottom_mlp=13-8-8")
    with pytest.raises(ConfigError, match=r"model's shape changed \(accepted with --resume-allow model.emb_dim "
                                          r"model.bottom_mlp\): bottom.2.bias: \[4\] in the checkpoint, \[8\] now"):
        Trainer(bigger, straight.out_dir, resume=True, resume_allow=allow).run()


def test_a_diverging_run_names_train_lr_and_keeps_its_last_checkpoint(tiny_cfg, tmp_path):
    from dlrm_comp.train.loop import Diverged
    out = tmp_path / "d"
    with pytest.raises(Diverged, match=r"diverged at iteration \d+: .*; lower train.lr \(now 1000\) .*the last "
                                       r"checkpoint .*ckpt_\d+.pt is kept: continue from it with --resume"):
        Trainer(tiny_cfg(*QUIET, "train.lr=1000", "train.checkpoint_every=1"), out).run()
    manager = CheckpointManager(out / "checkpoints")
    assert manager.iterations()  # never one of the diverged state: every kept checkpoint is finite
    for path in manager.existing():
        assert all(torch.isfinite(v).all() for v in CheckpointManager.load(path)["model"].values())
    with pytest.raises(Diverged, match="training loss is nan; .*no checkpoint was written before it"):
        Trainer(tiny_cfg(*QUIET, "train.lr=1e30", "train.optimizer=adagrad"), tmp_path / "d2").run()
