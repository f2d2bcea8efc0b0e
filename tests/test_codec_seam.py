"""The seams of the one-codec refactor: the step's bounds reach the codec as a value (never
through the plan), codec time is a stopwatch span read with the statistics, the lossless
package has no import cycle, and one set of names and defaults serves everyone."""
import numpy as np
import pytest
import torch

from dlrm_comp.compress.lossless import DEFAULT_LOSSLESS, build_lossless
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, LoopbackTransport
from dlrm_comp.exchange.plan import StepBounds
from dlrm_comp.recorder import CompressionRecorder
from dlrm_comp.stopwatch import Span, Stopwatch


def _forward(plan_eb: float, bounds: StepBounds | None, mode: str = "codec"):
    torch.manual_seed(0)
    pooled = [torch.randn(32, 8) for _ in range(3)]
    recorder = CompressionRecorder(3)
    plan = CompressionPlan(DirectionPlan(mode, 3, eb_rel=[plan_eb] * 3), DirectionPlan("off", 3))
    out = Exchange(LoopbackTransport(2), [0] * 3, 8, plan, recorder).forward(pooled, compress=True, bounds=bounds)
    rows = recorder.flush(1, lambda *a, **k: None)
    return pooled, out, rows, plan


@pytest.mark.parametrize("mode", ["codec", "simulate", "sz"])
def test_the_step_bounds_are_used_and_recorded_not_the_plans(mode):
    bounds = StepBounds.of([0.05, 0.02, 0.1], [0.01] * 3)
    pooled, out, rows, plan = _forward(0.001, bounds, mode)
    for t, (x, y) in enumerate(zip(pooled, out)):
        for lo, hi in ((0, 16), (16, 32)):
            chunk = x[lo:hi].double()
            bound = float(bounds.fwd[t]) * float(chunk.max() - chunk.min())
            assert float((y[lo:hi].double() - chunk).abs().max()) <= bound
    assert [r["eb_rel"] for r in sorted(rows, key=lambda r: r["table"])] == pytest.approx([0.05, 0.02, 0.1])
    assert plan.fwd.eb_rel == [0.001] * 3  # the plan's configured bounds are never written
    _, _, tight, _ = _forward(0.001, None, mode)  # no StepBounds: the plan's configured ones
    assert [r["eb_rel"] for r in tight] == pytest.approx([0.001] * 3)
    assert sum(r["bytes_sent"] for r in tight) > sum(r["bytes_sent"] for r in rows)


def test_training_passes_bounds_by_value(tiny_cfg, tmp_path):
    from dlrm_comp.train.loop import Trainer
    trainer = Trainer(tiny_cfg("compress.mode=codec", "compress.decay.func=linear", "compress.decay.early_stage=20",
                               "compress.decay.constant=2"), tmp_path / "run")
    ext = trainer.compression
    configured = list(ext.plan.fwd.eb_rel)
    seen = []
    original = type(trainer.exchange).__call__  # the step calls the instance: spy on its class

    def spy(self, pooled, compress, bags=None, bounds=None):
        seen.append(None if bounds is None else bounds.fwd.clone())
        return original(self, pooled, compress, bags=bags, bounds=bounds)
    type(trainer.exchange).__call__ = spy
    try:
        trainer.run()
    finally:
        type(trainer.exchange).__call__ = original
    assert ext.plan.fwd.eb_rel == configured  # never written by the training loop
    assert all(b is not None for b in seen) and len(seen) == 40
    assert float(seen[0][0]) == pytest.approx(2 * float(seen[-1][0]))  # the decay reached the exchange


class _DeviceSpan:
    """A span that is not on the host: the recorder may read it only with the statistics."""

    on_host = False

    def __init__(self, seconds):
        self.reads, self._s = 0, seconds

    def seconds(self):
        self.reads += 1
        return self._s


def test_device_spans_are_read_with_the_statistics_only():
    rec = CompressionRecorder(2)
    span = _DeviceSpan(0.004)
    rec.record_batch("fwd", np.array([0, 1]), torch.tensor([0, 1]), 64, torch.tensor([10.0, 10.0]), None, None,
                     span, 0.0, lambda: ([0.01, 0.01], ["a", "b"]), False)
    assert span.reads == 0  # recording never reads a device span
    assert rec.interval_seconds("fwd") == pytest.approx(0.004) and span.reads == 1
    interval = rec.take_interval()
    assert sum(t.enc_s for t in interval.values()) == pytest.approx(0.004) and span.reads == 1


def test_host_stopwatch_spans_and_timing():
    watch = Stopwatch("cpu")
    a = watch.now()
    span = watch.span(a)
    assert isinstance(span, Span) and span.on_host and span.seconds() >= 0
    out, seconds = watch.time(lambda: sum(range(1000)))
    assert out == 499500 and seconds >= 0 and watch.name == "perf_counter"


def test_the_lossless_package_has_no_import_cycle():
    """Every import (module-level or inside a function) between the lossless modules, as a
    graph: it has no cycle (it had base -> spec -> registry -> base)."""
    import ast
    from pathlib import Path
    pkg = Path(__file__).resolve().parents[1] / "dlrm_comp/compress/lossless"
    prefix = "dlrm_comp.compress.lossless."
    graph = {}
    for path in pkg.glob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        graph[path.stem] = {n.module[len(prefix):] for n in ast.walk(tree)
                            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(prefix)}

    def reaches(start, goal, seen=()):
        return any(m == goal or (m not in seen and reaches(m, goal, (*seen, m))) for m in graph.get(start, ()))
    assert "spec" in graph["base"] and "base" in graph["registry"]
    assert not [m for m in graph if reaches(m, m)], graph


def test_one_default_and_one_set_of_policy_names():
    from dlrm_comp.compress.errors import NONFINITE_POLICIES
    from dlrm_comp.config import load_config
    plan = DirectionPlan("codec", 2)
    assert all(c.spec == build_lossless(DEFAULT_LOSSLESS).spec for c in plan.coders)
    assert plan.nonfinite in NONFINITE_POLICIES
    with pytest.raises(ValueError, match="compress.nonfinite: must be one of error, passthrough"):
        DirectionPlan("codec", 2, nonfinite="raise")
    from dlrm_comp.config import ConfigError
    with pytest.raises(ConfigError, match="compress.nonfinite"):
        load_config([], ["compress.nonfinite=raise"], env={})


def test_bytes_are_whole_and_add_up(tiny_cfg, tmp_path):
    """Per table and in total, bytes_sent is whole bytes (a shared stream's bytes are split by
    largest remainders) and the tables add up to the total exactly."""
    from dlrm_comp.train.loop import Trainer
    comp = Trainer(tiny_cfg("compress.mode=codec", "compress.chunks=2"), tmp_path / "run").run()["compression"]
    per = [t["bytes_sent"] for t in comp["per_table"]]
    assert isinstance(comp["bytes_sent"], int) and all(isinstance(b, int) for b in per)
    assert sum(per) == comp["bytes_sent"] and comp["bytes_wire"] == comp["bytes_sent"]  # one process: no size exchange


def test_apportion_gives_whole_bytes_that_add_up():
    from dlrm_comp.compress.wire import apportion
    for total, share in ((10, [0.5, 0.25, 0.25]), (7, [1 / 3] * 3), (0, [1.0]), (101, [0.9, 0.1, 0.0])):
        out = apportion(total, np.asarray(share))
        assert out.sum() == total and (np.abs(out - total * np.asarray(share)) < 1).all()


@pytest.mark.parametrize("overlap", [False, True])
def test_the_step_bounds_reach_the_backward_and_the_overlapped_path(overlap):
    torch.manual_seed(0)
    pooled = [torch.randn(32, 8, requires_grad=True) for _ in range(3)]
    recorder = CompressionRecorder(3)
    plan = CompressionPlan(DirectionPlan("codec", 3, eb_rel=[0.001] * 3), DirectionPlan("codec", 3, eb_rel=[0.001] * 3))
    ex = Exchange(LoopbackTransport(2), [0] * 3, 8, plan, recorder)
    bounds = StepBounds.of([0.05, 0.02, 0.1], [0.07, 0.03, 0.09])
    out = ex.start(pooled, compress=True, bounds=bounds).wait() if overlap else ex(pooled, True, bounds=bounds)
    sum((o * o).sum() for o in out).backward()
    rows = recorder.flush(1, lambda *a, **k: None)
    for direction, expect in (("fwd", bounds.fwd), ("bwd", bounds.bwd)):
        got = [r["eb_rel"] for r in sorted(rows, key=lambda r: r["table"]) if r["direction"] == direction]
        assert got == pytest.approx(expect.tolist()), direction
