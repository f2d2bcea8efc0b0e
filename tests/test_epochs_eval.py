"""Training past one epoch of a bounded split, and evaluation over every row of a split."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tiny import TINY_OVERRIDES
from dlrm_comp.config import ConfigError, load_config
from dlrm_comp.data.epochs import EpochSchedule
from dlrm_comp.train.breakdown import TIMED_FIELDS
from dlrm_comp.train.logging import read_jsonl
from dlrm_comp.train.loop import InterruptedRun, Trainer
from test_criteo import make_rows, write_tsv

QUIET = ("train.tensorboard=false",)


def test_epoch_schedule_is_a_pure_function_of_the_iteration():
    s = EpochSchedule(7, seed=3)
    first = [s.index(t) for t in range(7)]
    assert first == list(range(7))  # epoch 0: file order, as a single pass always was
    for epoch in (1, 2, 5):
        order = [s.index(epoch * 7 + i) for i in range(7)]
        assert sorted(order) == list(range(7))
        assert order == [EpochSchedule(7, seed=3).index(epoch * 7 + i) for i in range(7)]  # no hidden state
    assert [s.index(7 + i) for i in range(7)] != [s.index(14 + i) for i in range(7)]
    assert [s.index(7 + i) for i in range(7)] != [EpochSchedule(7, seed=4).index(7 + i) for i in range(7)]
    assert EpochSchedule(None, 0).index(10 ** 9) == 10 ** 9  # an unbounded stream is never wrapped


def _criteo_cfg(tmp_path, *extra):
    tsv = tmp_path / "day.tsv"
    if not tsv.exists():
        write_tsv(tsv, make_rows(400, seed=1))
    sets = [o for o in TINY_OVERRIDES if not o.startswith(("data.profile", "data.num_", "train.iterations"))]
    return load_config([], [*sets, *QUIET, "data.source=criteo", f"data.path=[{tsv}]", "data.max_ind_range=50",
                            f"data.cache_dir={tmp_path / 'cache'}", "train.checkpoint_every=5",
                            "train.print_every=5", "train.eval_every=0", *extra], env={})


def test_criteo_three_epochs_resume_exactly_across_an_epoch_boundary(tmp_path):
    cfg = _criteo_cfg(tmp_path, "train.epochs=3")
    straight = Trainer(cfg, tmp_path / "a")
    assert straight.schedule.batches_per_epoch == 11 and straight.iterations == 33  # 360 train rows / 32
    straight.run()
    with pytest.raises(InterruptedRun):
        Trainer(cfg, tmp_path / "b").run(stop_after=14)  # checkpoint at 10; epoch 1 starts at 11
    resumed = Trainer(cfg, tmp_path / "b", resume=True)
    resumed.run()
    assert resumed.start_iteration == 10
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    strip = lambda run: [{k: v for k, v in r.items() if k not in ("step_s", "samples_per_s", *TIMED_FIELDS)}  # noqa: E731
                         for r in read_jsonl(run / "metrics.jsonl")]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")


def test_iterations_past_one_epoch_wrap_instead_of_crashing(tmp_path):
    trainer = Trainer(_criteo_cfg(tmp_path, "train.iterations=25"), tmp_path / "run")
    summary = trainer.run()  # 25 > 11 batches per epoch: was IndexError at the end of the data
    assert summary["iterations"] == 25


def test_epochs_on_the_synthetic_stream_is_a_config_error(tiny_cfg):
    with pytest.raises(ConfigError, match="train.epochs"):
        tiny_cfg("train.epochs=2")


# ----------------------------------------------------------------------------- every row evaluated
def _trained(tiny_cfg, tmp_path, *extra):
    trainer = Trainer(tiny_cfg(*QUIET, "data.num_val_samples=1000", "train.iterations=20", *extra), tmp_path)
    trainer.run()
    return trainer


def test_eval_batch_larger_than_the_split_is_fine(tiny_cfg, tmp_path):
    trainer = _trained(tiny_cfg, tmp_path, "data.eval_batch_size=4096", "train.eval_every=10")
    evals = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["iteration"] for r in evals] == [10, 20]
    trainer.cfg.data.eval_batch_size = 1000  # the same 1000 rows in one exact batch
    assert trainer.evaluate()["auc"] == pytest.approx(evals[-1]["auc"], rel=1e-6)


def test_partial_last_batch_is_evaluated(tiny_cfg, tmp_path):
    trainer = _trained(tiny_cfg, tmp_path)
    whole = trainer.evaluate()
    trainer.cfg.data.eval_batch_size = 300  # 3 full batches and one of 100 rows
    pieces = trainer.evaluate()
    for key in whole:
        assert pieces[key] == pytest.approx(whole[key], rel=1e-6)
    trainer.cfg.train.eval_batches = 2  # a cap counts rows of whole batches
    capped = trainer.evaluate()
    trainer.cfg.data.eval_batch_size, trainer.cfg.train.eval_batches = 600, 0
    trainer.source.num_samples["val"] = 600
    assert capped["auc"] == pytest.approx(trainer.evaluate()["auc"], rel=1e-6)


def test_rows_match_batches(tiny_cfg, tmp_path):
    source = Trainer(tiny_cfg(*QUIET), tmp_path).source
    a = source.batch("val", 3, 100)
    b = source.rows("val", 300, 400)
    assert torch.equal(a.dense, b.dense) and torch.equal(a.labels, b.labels)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert source.num_rows("val") == 1024 and source.num_rows("train") is None
    with pytest.raises(IndexError):
        source.rows("val", 1000, 1025)


@pytest.mark.multiprocess
def test_distributed_evaluation_covers_uneven_rows(tiny_cfg, tmp_path):
    from multiproc import torchrun, train_cli
    sizes = ["data.num_val_samples=1001", "data.eval_batch_size=500", "train.eval_every=0"]
    single = Trainer(tiny_cfg(*QUIET, *sizes), tmp_path / "single").run()
    proc = torchrun(2, *train_cli(tmp_path / "multi", *sizes))  # batches of 500, 500 and a 1-row tail
    assert proc.returncode == 0, proc.stderr[-3000:]
    multi = json.loads((tmp_path / "multi" / "summary.json").read_text())
    for key in ("auc", "logloss", "accuracy"):
        assert np.isclose(multi["final_eval"][key], single["final_eval"][key], rtol=1e-4), key
