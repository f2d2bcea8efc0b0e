"""`Trainer.steps`: the run one step at a time, as the throughput benchmark drives it."""
from __future__ import annotations

import json

from dlrm_comp.train.loop import Trainer


def test_steps_in_blocks_then_closed_early_leave_no_final_eval_or_checkpoint(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg("train.checkpoint_every=0", "train.eval_every=0", "train.tensorboard=false",
                               "compress.mode=codec", "compress.print_tables=false"), tmp_path, handle_signals=False)
    steps = trainer.steps()
    done = [next(steps) for _ in range(15)]
    assert done == list(range(1, 16)) and len(trainer.step_times) == 15
    steps.close()
    assert not (tmp_path / "summary.json").exists() and not list((tmp_path / "checkpoints").glob("*"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [10]  # the real interval records
    assert not any(r["kind"] == "eval" for r in records)


def test_steps_to_the_end_return_what_run_returns(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.tensorboard=false")
    steps = Trainer(cfg, tmp_path / "a").steps()
    assert list(steps) == list(range(1, 41))
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    ran = Trainer(cfg, tmp_path / "b").run()
    assert ran["final_eval"] == summary["final_eval"] and ran["iterations"] == summary["iterations"] == 40
