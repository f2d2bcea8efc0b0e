"""The step-time breakdown: its accounting (on a counting clock), and its fields in real runs."""
import json

import pytest
import torch

from dlrm_comp.train.breakdown import PHASES, StepBreakdown
from dlrm_comp.train.logging import read_jsonl
from dlrm_comp.train.loop import Trainer


class CountingClock:
    """Each reading is one tick later than the last: spans count the readings between them."""
    name = "ticks"

    def __init__(self):
        self.t = 0.0

    def now(self):
        self.t += 1.0
        return self.t

    @staticmethod
    def seconds(a, b):
        return b - a

    @staticmethod
    def settle():
        pass


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_phases_are_disjoint_and_codec_comes_out_of_the_exchange():
    bd = StepBreakdown("cpu", codec_seconds=lambda d: {"fwd": 1.0, "bwd": 0.5}[d])
    bd.clock = CountingClock()
    x = torch.ones(3, requires_grad=True)
    bd.begin_step()                                   # t=1
    y = bd.timed("fwd_a2a_s", _Square.apply, x)       # 2 -> 3: one tick
    bd.watch_backward_exchange(y)
    loss = y.sum()
    bd.watch_allreduce(loss)
    loss.backward()                                   # bwd pre 4, post 5; engine done 6
    bd.backward_returned()                            # 7
    bd.end_step()                                     # 8
    out = bd.interval()
    assert set(out) == {*PHASES, "cpu_s"}
    assert out["fwd_a2a_s"] == 0.0  # 1 tick of exchange minus 1.0 s of codec
    assert out["bwd_a2a_s"] == 0.5  # 1 tick minus 0.5
    assert out["allreduce_s"] == 1.0
    assert out["codec_s"] == 1.5
    assert out["compute_s"] == 7.0 - 0.0 - 0.5 - 1.0 - 1.5  # the step is 7 ticks
    assert x.grad is not None
    summary = bd.summary()
    assert summary["steps"] == 1 and summary["step_s"] == 7.0
    assert sum(summary["shares"].values()) == pytest.approx(1.0)


def test_outside_a_step_nothing_is_recorded():
    bd = StepBreakdown("cpu")
    assert bd.timed("fwd_a2a_s", lambda: 3) == 3  # evaluation batches pass straight through
    assert bd.interval() == {**dict.fromkeys(PHASES, 0.0), "cpu_s": 0.0}


def test_cpu_per_step_counts_from_the_intervals_first_step(monkeypatch):
    """``cpu_s``: process CPU seconds per step, from the interval's first step to its read (not
    from start-up: the run's set-up is in no interval), the run's mean in the summary."""
    import dlrm_comp.train.breakdown as breakdown
    cpu = iter([100.0, 106.0, 200.0, 204.0])  # first step, read; first step, read
    monkeypatch.setattr(breakdown.time, "process_time", lambda: next(cpu))
    bd = StepBreakdown("cpu")
    bd.clock = CountingClock()
    for _ in range(3):
        bd.begin_step()
        bd.end_step()
    assert bd.interval()["cpu_s"] == 2.0  # 6 s over 3 steps
    bd.begin_step()
    bd.end_step()
    assert bd.interval()["cpu_s"] == 4.0
    assert bd.summary()["cpu_s"] == 2.5  # 10 s over 4 steps
    assert "cpu" not in bd.summary()["shares"]  # not a phase of the step


@pytest.mark.parametrize("mode", ["off", "codec"])
def test_every_train_record_and_the_summary_carry_the_breakdown(tiny_cfg, tmp_path, mode):
    cfg = tiny_cfg(f"compress.mode={mode}", f"compress.backward.mode={mode}", "compress.chunks=2",
                   "compress.print_tables=false", "train.tensorboard=false")
    summary = Trainer(cfg, tmp_path).run()
    train = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert train
    for r in train:
        assert set(PHASES) <= set(r)
        assert all(r[k] >= 0 for k in PHASES)
        assert sum(r[k] for k in PHASES) <= r["step_s"] * (1 + 1e-9)  # timed inside the loop's step
        assert r["allreduce_s"] == 0.0  # one process: no DDP
        assert (r["codec_s"] > 0) == (mode != "off")
        assert r["cpu_s"] > 0
    on_disk = json.loads((tmp_path / "summary.json").read_text())["breakdown"]
    for key in (*PHASES, "step_s", "cpu_s"):
        assert on_disk[key] == pytest.approx(summary["breakdown"][key])
    assert on_disk["steps"] == 40 and on_disk["clock"] == "perf_counter"
    assert sum(on_disk["shares"].values()) == pytest.approx(1.0)


@pytest.mark.multiprocess
def test_two_ranks_time_the_allreduce_and_both_exchanges(codec_two_ranks):
    """2 torchrun ranks, the codec both ways (conftest's shared run of that configuration)."""
    run = codec_two_ranks.finished()
    train = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    for r in train:
        assert set(PHASES) <= set(r) and all(r[k] >= 0 for k in PHASES)
    breakdown = json.loads((run / "summary.json").read_text())["breakdown"]
    assert breakdown["steps"] == 40
    for phase in ("fwd_a2a", "bwd_a2a", "codec"):  # each was timed: a real exchange ran both ways
        assert breakdown[f"{phase}_s"] > 0
