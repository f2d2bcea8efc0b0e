"""The closed-loop bound controller on synthetic streams with a known ratio-vs-bound law, and in
the training loop (limits, decisions logged, resume)."""
import json
import math

import pytest

from dlrm_comp.adaptive.controller import ClosedLoopController, ControllerConfig, TableObservation
from dlrm_comp.config import ConfigError
from dlrm_comp.train.logging import read_jsonl
from dlrm_comp.train.loop import Trainer

# cr_i(eb) = c_i * eb ** k_i: tables that compress differently and respond differently
LAW = [(60.0, 0.35), (90.0, 0.5), (30.0, 0.25), (120.0, 0.45)]
BASE = [0.03, 0.01, 0.05, 0.03]
RAW = [4096.0, 4096.0, 8192.0, 2048.0]


def observe(ebs):
    return [TableObservation(raw, raw / (c * eb ** k), eb) for raw, (c, k), eb in zip(RAW, LAW, ebs)]


def wire_cr(ebs):
    obs = observe(ebs)
    return sum(o.bytes_raw for o in obs) / sum(o.bytes_sent for o in obs)


def run(ctrl, steps, drift=None, sensitivity=None):
    history = []
    for _ in range(steps):
        ebs = ctrl.effective(BASE)
        ctrl.update(observe(ebs), BASE, drift, sensitivity)
        history.append(wire_cr(ctrl.effective(BASE)))
    return history


@pytest.mark.parametrize("target", [8.0, 12.0, 20.0])
def test_reaches_target_and_stays(target):
    ctrl = ClosedLoopController(4, ControllerConfig(target_cr=target, eb_min=1e-4, eb_max=0.3))
    history = run(ctrl, 40)
    assert all(abs(h / target - 1) < 0.03 for h in history[-15:]), history
    # no oscillation at the end: consecutive changes shrink to nothing
    assert max(abs(a - b) for a, b in zip(history[-10:], history[-9:])) < 0.02 * target


def test_budget_bytes_goal():
    budget = sum(RAW) / 10.0
    ctrl = ClosedLoopController(4, ControllerConfig(budget_bytes=budget, eb_max=0.3))
    run(ctrl, 40)
    assert wire_cr(ctrl.effective(BASE)) == pytest.approx(10.0, rel=0.03)


@pytest.mark.parametrize("target,limit", [(1000.0, "eb_max"), (1.5, "eb_min")])
def test_limits_hold_when_the_target_is_out_of_reach(target, limit):
    cfg = ControllerConfig(target_cr=target, eb_min=0.005, eb_max=0.05)
    ctrl = ClosedLoopController(4, cfg)
    run(ctrl, 60)
    ebs = ctrl.effective(BASE)
    assert all(cfg.eb_min <= e <= cfg.eb_max for e in ebs)
    assert all(e == pytest.approx(getattr(cfg, limit)) for e in ebs)
    # no wind-up: once the target is reachable again it is reached promptly
    ctrl.cfg.target_cr = 12.0  # reachable inside [eb_min, eb_max] (the law gives about 8x to 20x there)
    run(ctrl, 25)
    assert wire_cr(ctrl.effective(BASE)) == pytest.approx(12.0, rel=0.05)


def test_guard_tightens_most_where_the_probe_says():
    ctrl = ClosedLoopController(4, ControllerConfig(target_cr=50.0, eb_max=0.3, drift_threshold=0.001))
    run(ctrl, 5)
    before = ctrl.effective(BASE)
    decisions = ctrl.update(observe(before), BASE, drift=0.01, sensitivity=[0.004, 0.0, 0.001, 0.002])
    after = ctrl.effective(BASE)
    shrink = [a / b for a, b in zip(after, before)]
    assert all(s < 1.0 or i == 1 for i, s in enumerate(shrink))
    assert shrink[0] == min(shrink) and shrink[1] <= 1.0
    assert all("guard" in d.reason for d in decisions)
    # below the threshold the probe does not interfere
    ctrl.update(observe(after), BASE, drift=0.0005, sensitivity=[1, 1, 1, 1])
    assert all(b >= a for a, b in zip(after, ctrl.effective(BASE)))


def test_state_round_trip_continues_the_same_decisions():
    a = ClosedLoopController(4, ControllerConfig(target_cr=12.0, eb_max=0.3))
    run(a, 7)
    b = ClosedLoopController(4, ControllerConfig(target_cr=12.0, eb_max=0.3))
    b.load_state_dict(a.state_dict())
    run(a, 6)
    run(b, 6)
    assert a.multipliers == b.multipliers and a.log_cr_ema == b.log_cr_ema


def test_closed_loop_needs_a_goal(tiny_cfg):
    with pytest.raises(ConfigError, match="adaptive.target_cr"):
        tiny_cfg("adaptive.policy=closed_loop")
    with pytest.raises(ConfigError, match="adaptive.target_cr"):
        tiny_cfg("adaptive.policy=closed_loop", "adaptive.target_cr=0.5")


CL = ("compress.mode=codec", "adaptive.policy=closed_loop", "adaptive.target_cr=6", "adaptive.interval=5",
      "adaptive.eb_min=0.002", "adaptive.eb_max=0.08", "adaptive.probe_batch=256", "compress.print_tables=false",
      "train.iterations=40")


def test_training_with_closed_loop_logs_and_summarises(tiny_cfg, tmp_path):
    summary = Trainer(tiny_cfg(*CL), tmp_path).run()
    section = summary["adaptive"]
    assert section["policy"] == "closed_loop" and section["changes"] > 0
    assert all(0.002 <= e <= 0.08 for e in section["eb_rel"])
    records = read_jsonl(tmp_path / "metrics.jsonl")
    decisions = [r for r in records if r["kind"] == "adaptive"]
    assert decisions and all({"table", "eb_rel", "codec", "reason"} <= set(r) for r in decisions)
    assert [r for r in records if r["kind"] == "probe"]
    assert json.loads((tmp_path / "summary.json").read_text())["adaptive"]["eb_rel"] == section["eb_rel"]


def test_closed_loop_resume_continues_identically(tiny_cfg, straight_and_resumed):
    straight, resumed = straight_and_resumed(tiny_cfg(*CL), stop_after=27)
    assert resumed["adaptive"]["eb_rel"] == straight["adaptive"]["eb_rel"]
    assert resumed["adaptive"]["changes"] == straight["adaptive"]["changes"]
    assert resumed["compression"]["bytes_sent"] == straight["compression"]["bytes_sent"]
    assert math.isclose(resumed["final_eval"]["auc"], straight["final_eval"]["auc"])


def test_lossless_selector_switches_only_past_hysteresis():
    import numpy as np

    from dlrm_comp.adaptive.lossless_select import LosslessSelector
    from dlrm_comp.compress.lossless import get_lossless
    rng = np.random.default_rng(0)
    codes = np.clip(rng.normal(25, 2, 16384), 0, 50).astype(np.uint8).tobytes()  # low-entropy codes
    identity = get_lossless("identity")
    eager = LosslessSelector(bandwidth_gbps=0.05, tradeoff=0.9, hysteresis=0.05)  # a slow link: ratio pays
    choice = eager.choose(0, codes, 1, identity)
    assert choice.switched and choice.codec.name != "identity" and choice.merit > choice.incumbent_merit
    stubborn = LosslessSelector(bandwidth_gbps=0.05, tradeoff=0.9, hysteresis=1e6)
    assert not stubborn.choose(0, codes, 1, identity).switched


def test_training_with_lossless_tuning(tiny_cfg, tmp_path):
    cfg = tiny_cfg("compress.mode=codec", "adaptive.lossless_tuning=true", "adaptive.interval=5",
                   "adaptive.tune_every=2", "compress.print_tables=false", "adaptive.hysteresis=0")
    trainer = Trainer(cfg, tmp_path)
    summary = trainer.run()
    ext = next(e for e in trainer.extensions if e.name == "compression")
    state = json.loads(json.dumps(ext.state_dict()["table_codecs"]))  # plain {name, **params} objects in checkpoints
    assert bool(state) == bool(summary["adaptive"]["codec_changes"])
    assert all(isinstance(v, dict) and "name" in v for v in state.values())
    ext.load_state_dict({"table_codecs": state})
    assert {str(t): s.to_dict() for t, s in ext.codecs.specs.items()} == state
    section = summary["adaptive"]
    assert section["lossless_tuning"] is True and len(section["codec"]) == len(summary["data"]["cardinalities"])
    assert summary["compression"]["max_err_ratio"] <= 1.0
    decisions = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "adaptive"]
    assert len(decisions) == section["codec_changes"]
    for r in decisions:
        assert r["reason"].startswith("btune") and r["codec"].startswith("codec:")


def test_probe_sends_what_training_sends(tiny_cfg, tmp_path):
    """The probe's compressed embeddings are the training exchange's: the `compress.chunks`
    per-destination chunks (each with its own range) and the bag dedup, not one chunk per table."""
    import torch
    import torch.nn.functional as F

    from dlrm_comp.exchange import CompressionPlan, Exchange, LoopbackTransport
    from dlrm_comp.train.probe import probe_drift
    trainer = Trainer(tiny_cfg(*CL, "compress.chunks=4", "compress.dedup=on"), tmp_path)
    ext = next(e for e in trainer.extensions if e.name == "compression")
    ext.before_step(0)
    host = trainer.source.batch("train", 0, 256)
    batch = host.to(trainer.device)
    model = trainer.model
    with torch.no_grad():
        pooled = model.lookup(batch.indices, batch.offsets)
        sent = ext.exchange.forward(pooled, compress=True, bags=host)
        clean = F.binary_cross_entropy_with_logits(model.head(batch.dense, pooled), batch.labels).item()
        lossy = F.binary_cross_entropy_with_logits(model.head(batch.dense, sent), batch.labels).item()
        one_chunk = Exchange(LoopbackTransport(1, trainer.device), ext.exchange.owners, ext.exchange.dim,
                             CompressionPlan(ext.plan.fwd, ext.plan.bwd)).forward(pooled, compress=True)
    drift, sensitivity = probe_drift(trainer, ext.exchange, 256)
    assert drift == pytest.approx(lossy - clean, abs=1e-7) and len(sensitivity) == len(pooled)
    assert not all(torch.equal(a, b) for a, b in zip(one_chunk, sent))


def test_a_controller_without_a_target_is_refused_at_construction():
    from dlrm_comp.checks import ConfigError
    with pytest.raises(ConfigError, match="adaptive.target_cr"):
        ClosedLoopController(4, ControllerConfig())
    with pytest.raises(ConfigError, match="adaptive.smoothing"):
        ClosedLoopController(4, ControllerConfig(target_cr=10.0, smoothing=0.0))
