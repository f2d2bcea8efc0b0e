"""compress.peers=auto: per class of peer and direction, compress where the speedup model says it
pays, with hysteresis; every rank decides the same; a raw class travels raw and a compressed one
compressed; switching between steps keeps the received rows right; records and resume."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dlrm_comp.compress.codecs.peers import PeerRoutedCodec, RouteCounts
from dlrm_comp.config import ConfigError
from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, LoopbackTransport, destination_rows
from dlrm_comp.train.peer_policy import (FIELDS, HYSTERESIS, CodecFigures, PeerPolicy, decide, figures_of,
                                         keep_or_switch, modeled_speedup, rank_row)
from dlrm_comp.distributed.link_probe import PROBE_MAX, PROBE_MIN, class_peers, probe_size

MODES = ("compress.peers=auto", "compress.mode=codec", "compress.backward.mode=codec", "compress.print_tables=false",
         "train.tensorboard=false")
AUTO = (*MODES, "compress.chunks=2")  # one process: 2 virtual destinations


# ------------------------------------------------------------------ the model and the decision (pure)
def test_the_speedup_model():
    f = CodecFigures(cr=10.0, tc=1e9, td=1e9)
    assert modeled_speedup(f, 0.0) == pytest.approx(10.0)  # free codec and a slow link: the ratio
    assert modeled_speedup(f, 1e8) == pytest.approx(1 / (0.1 + 0.2))
    assert modeled_speedup(f, math.inf) == 0.0  # no link: compressing only costs


@pytest.mark.parametrize("speedup, before, after", [
    (1.01, None, True), (0.99, None, False),  # the first decision: no margin
    (1.04, False, False), (1.06, False, True),  # off -> on above the margin only
    (0.96, True, True), (1 / HYSTERESIS - 0.01, True, False),  # on stays on down to 1/margin
])
def test_the_decision_has_hysteresis(speedup, before, after):
    assert decide(speedup, before) is after


def test_figures_take_the_summed_ratio_and_the_slowest_rank():
    rows = np.zeros((2, len(FIELDS)))
    col = {f: i for i, f in enumerate(FIELDS)}
    for r, (enc_s, dec_s) in enumerate(((1.0, 2.0), (4.0, 1.0))):
        rows[r, [col["enc_raw"], col["enc_sent"], col["enc_s"], col["dec_raw"], col["dec_s"]]] = \
            [400.0, 40.0 * (r + 1), enc_s, 400.0, dec_s]
    f = figures_of(rows)
    assert f == CodecFigures(cr=800 / 120, tc=100.0, td=200.0)
    assert figures_of(np.zeros((2, len(FIELDS)))) is None  # nothing coded: nothing measured


def test_a_ranks_row_splits_bytes_by_class():
    counts = RouteCounts(np.array([10.0, 20.0, 30.0]), np.array([10.0, 2.0, 3.0]), calls=2)
    row = dict(zip(FIELDS, rank_row(counts, [True, False, False])))
    assert (row["raw_local"], row["sent_local"], row["raw_remote"], row["sent_remote"]) == (10, 10, 50, 5)
    assert row["message_bytes"] == pytest.approx(60 / 6)


def test_probe_classes_and_size():
    nodes = ["a", "a", "b", "b"]
    assert class_peers(nodes, 0, "local") == [False, True, False, False]
    assert class_peers(nodes, 0, "remote") == [False, False, True, True]
    assert probe_size(10) == PROBE_MIN and probe_size(1e12) == PROBE_MAX and probe_size(PROBE_MIN + 1) == PROBE_MIN + 1


def _fake_dist(monkeypatch):
    from types import SimpleNamespace
    from dlrm_comp.distributed import link_probe
    fake = SimpleNamespace(barrier=lambda group: None, all_reduce=lambda t, op, group: None,
                           ReduceOp=SimpleNamespace(MAX="max"))
    monkeypatch.setattr(link_probe, "dist", fake)
    return link_probe


class _Link:
    """A transport over a token-bucket link: each exchange's bytes (the busiest peer's) take
    ``latency + max(0, bytes - burst) / rate`` on a clock the probe reads."""

    rank, group, device = 0, None, torch.device("cpu")

    def __init__(self, rate: float, burst: int, latency: float = 1e-4):
        self.rate, self.burst, self.latency, self.now, self.sends = rate, burst, latency, 0.0, []

    def clock(self) -> float:
        return self.now

    def exchange(self, send, in_splits, out_splits):
        from dlrm_comp.exchange.transport import _Done
        self.sends.append(list(in_splits))
        self.now += self.latency + max(0, max(in_splits) - self.burst) / self.rate
        return _Done(send)


def test_the_probe_sends_to_one_class_at_a_time(monkeypatch):
    """Rank 0 of nodes a, a, b: the local probe sends to rank 1 only, the remote one to rank 2
    only, doubling its size; what it sent is counted per class."""
    link_probe = _fake_dist(monkeypatch)
    link = _Link(rate=45e6, burst=450_000)
    sent = {}
    got = link_probe.probe_link(link, ["a", "a", "b"], PROBE_MIN, repeats=2, sent=sent, clock=link.clock)
    local = [s for s in link.sends if s[2] == 0]
    remote = [s for s in link.sends if s[1] == 0]
    assert len(local) + len(remote) == len(link.sends) and all(s[0] == 0 for s in link.sends)
    assert [s[1] for s in local][::2] == [PROBE_MIN << k for k in range(len(local) // 2)]  # doubling, 2 repeats
    assert len(local) > 2  # PROBE_MIN alone lasts less than MIN_SECONDS at 45 MB/s
    assert sent == {"local": 2 * sum(s[1] for s in local[::2]), "remote": 2 * sum(s[2] for s in remote[::2])}
    # B counts the busiest rank's bytes: rank 2 (node b) sends to two remote peers in the same time
    assert 45e6 < got["local"] < 1.21 * 45e6 and got["remote"] == pytest.approx(2 * got["local"])
    assert link_probe.probe_link(link, ["a", "b"], 1000, clock=link.clock)["local"] == math.inf  # only itself
    assert link_probe.probe_link(link, ["a", "a"], 1000, repeats=1, clock=link.clock)["remote"] is None  # one node


@pytest.mark.parametrize("rate", [45e6, 125e6, 625e6])  # up to 5 Gbit/s: 50 ms fit under the cap
def test_the_probe_grows_past_bursts_and_latency(monkeypatch, rate):
    """Whatever the rate, the probe times a transfer of at least MIN_SECONDS, so a burst of 10 ms
    of the rate (the benchmark's tbf) and 1 ms of latency move it by less than a fifth, where one
    transfer of the step's 0.5 MB said 4.4x at 360 Mbit/s."""
    link_probe = _fake_dist(monkeypatch)
    link = _Link(rate=rate, burst=int(rate / 100), latency=1e-3)
    got = link_probe.probe_link(link, ["a", "b"], 528_000, clock=link.clock)["remote"]
    assert rate * 0.97 < got < rate * 1.21
    if rate == 45e6:  # the benchmark's reference link: the step-sized transfer alone says 4.4x (as measured)
        assert 528_000 / (link.latency + max(0, 528_000 - link.burst) / rate) > 4 * rate
    fast = _Link(rate=100 * rate, burst=int(rate), latency=1e-3)  # 50 ms would need more than the cap
    link_probe.probe_link(fast, ["a", "b"], 528_000, clock=fast.clock)
    assert link_probe.PROBE_CAP / 2 < max(s[1] for s in fast.sends) <= link_probe.PROBE_CAP


def test_policy_masks_and_state_round_trip():
    policy = PeerPolicy(["fwd", "bwd"], ["a", "a", "b"], rank=0, destinations=3)
    assert policy.classes == ["local", "remote"] and policy.mask("fwd") == [False] * 3  # compressed until decided
    policy.compress["fwd"].update(local=False)
    policy.route["fwd"] = "remote"
    policy.seconds["fwd"] = {"raw": 0.02, "remote": 0.01}
    policy.samples["fwd"] = {"raw": 1, "remote": 3}
    policy.figures["fwd"] = CodecFigures(3.0, 1e8, 2e8)
    policy.decided["fwd"] = True
    assert policy.mask("fwd") == [True, True, False] and policy.mask("bwd") == [False] * 3
    again = PeerPolicy(["fwd", "bwd"], ["a", "a", "b"], rank=0, destinations=3)
    again.load_state_dict(json.loads(json.dumps(policy.state_dict())), None)
    assert again.state_dict() == policy.state_dict()
    one = PeerPolicy(["fwd"], None, rank=0, destinations=4)  # one process: one node, no remote class
    assert one.classes == ["local"]


def test_a_close_model_is_checked_against_the_measured_exchange():
    """Clearly faster by the model: taken as it is. Close to 1: each of the model's route and
    all raw travels one interval as a trial, then the faster by measurement wins, with
    hysteresis; all raw by the model needs no trial."""
    policy = PeerPolicy(["fwd"], ["a", "b"], rank=0, destinations=2)
    on = {"local": False, "remote": True}
    assert policy._measured_route("fwd", on, {"local": 0.0, "remote": 2.5}) == ("remote", False)
    assert policy._measured_route("fwd", {"local": False, "remote": False}, {"remote": 0.5}) == ("raw", False)
    assert policy._measured_route("fwd", on, {"local": 0.0, "remote": 1.2}) == ("raw", True)
    policy.seconds["fwd"]["raw"] = 0.030
    assert policy._measured_route("fwd", on, {"local": 0.0, "remote": 1.2}) == ("remote", True)
    policy.seconds["fwd"]["remote"] = 0.033  # compressed measured slower than raw: raw
    assert policy._measured_route("fwd", on, {"local": 0.0, "remote": 1.2}) == ("raw", False)
    policy.route["fwd"], policy.seconds["fwd"]["remote"] = "raw", 0.0295  # faster, but within the hysteresis
    assert policy._measured_route("fwd", on, {"local": 0.0, "remote": 1.2}) == ("raw", False)
    policy.seconds["fwd"]["remote"] = 0.020
    assert policy._measured_route("fwd", on, {"local": 0.0, "remote": 1.2}) == ("remote", False)
    policy.route["fwd"], policy.seconds["fwd"]["remote"] = "remote", 0.0305  # on: stays until 5% slower
    assert policy._measured_route("fwd", on, {"local": 0.0, "remote": 1.2}) == ("remote", False)


def test_trials_measure_the_route_that_travelled():
    """Each interval's exchange time is filed under the route that travelled in it (never the
    first interval's: the codec's warm-up), and a re-probe of the link measures routes again."""
    from types import SimpleNamespace
    from dlrm_comp.train import peer_policy as pp
    policy = PeerPolicy(["fwd"], ["a", "b"], rank=0, destinations=2)
    policy.measure_link = lambda iteration, transport, size: {"local": math.inf, "remote": 1e8}
    close = CodecFigures(cr=2.0, tc=1e9, td=1e9)  # modeled remote speedup 1/(0.5 + 0.2) = 1.43: close
    ex = SimpleNamespace(transport=SimpleNamespace(), route=lambda d, mask, fixed=False: None, routed=lambda d: None)
    records = []
    log = lambda kind, it, **r: records.append(r)  # noqa: E731
    routes = []
    for it, seconds in enumerate((0.5, 0.030, 0.020, 0.020), start=1):
        policy.figures["fwd"] = close
        policy.interval(it, ex, log, lambda line: None, {"fwd": seconds, "bwd": 0.0})
        routes.append((policy.route["fwd"], records[-1]["fwd"]["trial"]))
    assert routes == [("raw", True), ("remote", True), ("remote", False), ("remote", False)]
    assert policy.seconds["fwd"] == {"raw": 0.030, "remote": 0.020}  # 0.5 (warm-up) never filed
    policy.decisions = pp.PROBE_EVERY  # the next decision probes again: the routes are measured again
    policy.interval(5, ex, log, lambda line: None, {"fwd": 0.020, "bwd": 0.0})
    assert policy.seconds["fwd"] == {} and policy.route["fwd"] == "raw" and records[-1]["fwd"]["trial"]


def test_probes_grow_apart_while_the_routes_hold_and_close_up_when_they_change():
    """The link is probed when a round begins: PROBE_EVERY decisions apart, the gap doubling while
    the route holds (the records say the gap), back to PROBE_EVERY once a round changes it."""
    from types import SimpleNamespace
    from dlrm_comp.train import peer_policy as pp
    policy = PeerPolicy(["fwd"], ["a", "b"], rank=0, destinations=2)
    rates = {"remote": 1e7}
    probes = []

    def measure(iteration, transport, size):
        probes.append(iteration)
        return {"local": math.inf, **rates}
    policy.measure_link = measure
    clear = CodecFigures(cr=20.0, tc=1e10, td=1e10)  # compressing the remote class is clearly faster
    ex = SimpleNamespace(transport=SimpleNamespace(), route=lambda d, mask, fixed=False: None, routed=lambda d: None)
    records = []
    for it in range(1, 61):
        if it == 45:
            rates["remote"] = 1e12  # a link so fast that the codec no longer pays: the route changes
        policy.figures["fwd"] = clear
        policy.interval(it, ex, lambda kind, i, **r: records.append(r), lambda line: None)
    assert probes == [1, 9, 25, 57]  # decisions 0, 8, 24 (gap 16), 56 (gap 32)
    assert records[24]["round_gap"] == 32 and records[55]["round_gap"] == 32
    assert records[56]["fwd"]["route"] == "raw" and records[56]["round_gap"] == pp.PROBE_EVERY


# ------------------------------------------------------------------ routes switched between steps
def _exchange(t=3, w=4):
    plan = CompressionPlan(DirectionPlan("codec", t, eb_rel=[0.02] * t), DirectionPlan("codec", t, eb_rel=[0.02] * t))
    return Exchange(LoopbackTransport(w), [0] * t, 4, plan, local_peers=[True] * w)


def test_switching_routes_between_steps_keeps_the_rows_right():
    """Raw destinations receive the rows exactly and their bytes are the rows'; compressed ones
    within the bound and fewer bytes; the gradients come back the same way; across switches."""
    ex = _exchange()
    g = torch.Generator().manual_seed(3)
    for raw in ([False] * 4, [True, False, True, False], [True] * 4, [False, True, False, True]):
        ex.route("fwd", raw)
        ex.route("bwd", raw)
        pooled = [(torch.randn(26, 4, generator=g) * 0.05).requires_grad_(True) for _ in range(3)]
        grads = [torch.randn(26, 4, generator=g) for _ in range(3)]
        out = ex(pooled, compress=True)
        torch.autograd.backward(out, grads)
        counts = ex.routed("fwd").take_counts()
        bwd = ex.routed("bwd").take_counts()
        for dest, (a, b) in enumerate(destination_rows(26, 4)):
            for p, o, gr in zip(pooled, out, grads):
                chunk = p.detach()[a:b].double()
                err = float((o[a:b].double() - chunk).abs().max())
                if raw[dest]:
                    assert torch.equal(o[a:b], p.detach()[a:b]) and torch.equal(p.grad[a:b], gr[a:b])
                else:
                    assert 0 < err <= 0.02 * float(chunk.max() - chunk.min())
                    assert not torch.equal(p.grad[a:b], gr[a:b])
            for c in (counts, bwd):
                assert (c.sent[dest] == c.raw[dest]) if raw[dest] else (c.sent[dest] < c.raw[dest])
        coded = sum(not r for r in raw)
        assert (counts.enc_raw > 0) == bool(coded) and (counts.dec_raw > 0) == bool(coded)


def test_a_route_set_before_the_codec_exists_applies_to_it():
    ex = _exchange()
    ex.route("fwd", [True] * 4)
    assert ex.routed("fwd") is None
    pooled = [torch.randn(26, 4) for _ in range(3)]
    for p, o in zip(pooled, ex.forward(pooled, compress=True)):
        assert torch.equal(p, o)
    assert isinstance(ex.routed("fwd"), PeerRoutedCodec) and ex.routed("fwd").raw == [True] * 4


def test_a_route_is_measured_by_the_mean_of_its_intervals():
    """The route that keeps travelling is filed at every interval as the mean of all of them in
    the round, so one slow interval of the machine does not switch it away (with its last
    interval alone, 0.040 would lose to raw's one 0.030); a checkpoint keeps the counts."""
    from dlrm_comp.train.peer_policy import file_mean
    seconds, samples = {}, {}
    for value in (0.020, 0.022, 0.040):
        file_mean(seconds, samples, "remote", value)
    file_mean(seconds, samples, "raw", 0.030)
    assert seconds == {"remote": pytest.approx(0.082 / 3), "raw": 0.030} and samples == {"remote": 3, "raw": 1}
    assert keep_or_switch(seconds, "remote") == "remote"
    policy = PeerPolicy(["fwd"], ["a", "b"], rank=0, destinations=2)
    policy.seconds["fwd"], policy.samples["fwd"] = dict(seconds), dict(samples)
    again = PeerPolicy(["fwd"], ["a", "b"], rank=0, destinations=2)
    again.load_state_dict(json.loads(json.dumps(policy.state_dict())), None)
    file_mean(again.seconds["fwd"], again.samples["fwd"], "remote", 0.020)
    assert again.seconds["fwd"]["remote"] == pytest.approx(0.102 / 4)


def test_a_fixed_rate_route_is_the_third_candidate():
    """With compress.peers_fixed, a direction may travel whole in fp16: where the model is close
    (or says raw) and a link exists, raw, the model's route and fp16 each travel one interval as
    a trial, then the fastest by measurement wins with hysteresis; without a link (one node) raw
    stays untried; a model clearly faster needs no trial of raw, but fp16 is still tried (the
    model leaves out what overlaps), and wins where it measures faster."""
    clear_policy = PeerPolicy(["fwd"], ["a", "b"], rank=0, destinations=2, fixed="fp16")
    on, raw = {"local": False, "remote": True}, {"local": False, "remote": False}
    clear = {"local": 0.0, "remote": 2.5}
    assert clear_policy._measured_route("fwd", on, clear) == ("remote", True)
    clear_policy.seconds["fwd"]["remote"] = 0.030
    assert clear_policy._measured_route("fwd", on, clear) == ("fp16", True)
    clear_policy.seconds["fwd"]["fp16"] = 0.020
    clear_policy.route["fwd"] = "fp16"
    assert clear_policy._measured_route("fwd", on, clear) == ("fp16", False)  # raw never tried
    assert PeerPolicy(["fwd"], ["a", "b"], rank=0, destinations=2)._measured_route("fwd", on, clear) \
        == ("remote", False)  # no fixed-rate route: a clear model is taken as it is
    policy = PeerPolicy(["fwd"], ["a", "b"], rank=0, destinations=2, fixed="fp16")
    close = {"local": 0.0, "remote": 1.2}
    assert policy._measured_route("fwd", raw, {"remote": 0.5}, linked=False) == ("raw", False)
    assert policy._measured_route("fwd", raw, {"remote": 0.5}) == ("raw", True)  # raw by the model: fp16 tried
    policy.seconds["fwd"]["raw"] = 0.030
    assert policy._measured_route("fwd", raw, {"remote": 0.5}) == ("fp16", True)
    assert policy._measured_route("fwd", on, close) == ("remote", True)
    policy.seconds["fwd"]["remote"] = 0.033
    assert policy._measured_route("fwd", on, close) == ("fp16", True)
    policy.seconds["fwd"]["fp16"] = 0.024  # fp16 more than 5% faster than the incumbent
    policy.route["fwd"] = "raw"
    assert policy._measured_route("fwd", on, close) == ("fp16", False)
    policy.route["fwd"], policy.seconds["fwd"]["raw"] = "fp16", 0.0235  # raw faster, within the hysteresis
    assert policy._measured_route("fwd", on, close) == ("fp16", False)


def test_a_fixed_rate_route_sends_the_direction_whole_in_fp16():
    """Routed to fp16 both ways: every destination gets fp16 rows (what the fp16 mode sends,
    half the bytes) and the gradients come back in fp16; routed back, the codec's bound holds."""
    t, w = 3, 4
    plan = CompressionPlan(DirectionPlan("codec", t, eb_rel=[0.02] * t), DirectionPlan("codec", t, eb_rel=[0.02] * t))
    ex = Exchange(LoopbackTransport(w), [0] * t, 4, plan, local_peers=[True] * w, peers_fixed="fp16")
    g = torch.Generator().manual_seed(5)
    for fixed in (True, False):
        ex.route("fwd", [False] * w, fixed=fixed)
        ex.route("bwd", [False] * w, fixed=fixed)
        pooled = [(torch.randn(26, 4, generator=g) * 0.05).requires_grad_(True) for _ in range(t)]
        grads = [torch.randn(26, 4, generator=g) for _ in range(t)]
        out = ex(pooled, compress=True)
        torch.autograd.backward(out, grads)
        fwd, bwd = ex.routed("fwd").take_counts(), ex.routed("bwd").take_counts()
        for p, o, gr in zip(pooled, out, grads):
            if fixed:
                assert torch.equal(o, p.detach().half().float()) and torch.equal(p.grad, gr.half().float())
            else:
                err = (o.double() - p.detach().double()).abs().max()
                assert 0 < err <= 0.02 * float(p.detach().max() - p.detach().min())
        if fixed:
            assert np.array_equal(fwd.sent, fwd.raw / 2) and np.array_equal(bwd.sent, bwd.raw / 2)
            assert fwd.enc_raw == 0 and bwd.enc_raw == 0  # the codec did not run
    with pytest.raises(ValueError, match="compress.peers_fixed"):
        Exchange(LoopbackTransport(w), [0] * t, 4, plan, local_peers=[True] * w).route("fwd", [False] * w, fixed=True)


def test_the_policy_routes_the_exchange_to_its_fixed_rate_route_and_resumes_it():
    from types import SimpleNamespace
    policy = PeerPolicy(["fwd", "bwd"], ["a", "b"], rank=0, destinations=2, fixed="fp16")
    policy.route["fwd"] = "fp16"
    calls = {}
    ex = SimpleNamespace(route=lambda d, mask, fixed=False: calls.__setitem__(d, (mask, fixed)))
    policy.apply(ex)
    assert calls == {"fwd": ([True, True], True), "bwd": ([False, False], False)}
    again = PeerPolicy(["fwd", "bwd"], ["a", "b"], rank=0, destinations=2, fixed="fp16")
    again.load_state_dict(json.loads(json.dumps(policy.state_dict())), ex)
    assert again.route["fwd"] == "fp16" and calls["fwd"] == ([True, True], True)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("overrides, named", [
    (["compress.peers=auto", "compress.mode=int8"], "compress.peers: auto.*compress.mode='int8'"),
    (["compress.peers=auto", "compress.mode=codec", "compress.peers_fixed=fp8"],
     "compress.peers_fixed.*'fp8'.*off, fp16, bf16"),
    (["compress.peers=auto", "compress.mode=codec", "dist.size_exchange=slots"], "dist.size_exchange=exact"),
    (["compress.peers=auto", "compress.mode=codec", "compress.dedup=on", "compress.row_cache=on"],
     "compress.row_cache: 'on' with compress.peers=auto"),
])
def test_bad_settings_stop_before_work(tiny_cfg, overrides, named):
    with pytest.raises(ConfigError, match=named):
        tiny_cfg(*overrides)


# ------------------------------------------------------------------ training: records, switches, resume
LINKS = {10: 1e3, 20: math.inf, 30: 1e3, 40: math.inf}  # bytes/s per decision: slow link, none, slow, none


@pytest.fixture
def scheduled_links(monkeypatch):
    """The link measurements of the test's choosing, by iteration (deterministic decisions)."""
    from dlrm_comp.train import peer_policy
    monkeypatch.setattr(peer_policy, "PROBE_EVERY", 1)  # a probe at every decision
    monkeypatch.setattr(PeerPolicy, "measure_link",
                        lambda self, iteration, transport, size: {"local": LINKS[iteration]})


def _peers(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "peers"]


def test_one_process_decides_from_the_measurements_and_resumes_with_them(tiny_cfg, scheduled_links,
                                                                         straight_and_resumed, tmp_path):
    cfg = tiny_cfg(*AUTO, "train.eval_every=0", "train.keep_checkpoints=10")
    straight, resumed = straight_and_resumed(cfg, stop_after=25)
    records = _peers(tmp_path / "straight")
    assert [r["iteration"] for r in records] == [10, 20, 30, 40]
    for r, expected in zip(records, (True, False, True, False)):
        assert r["link_Bps"]["local"] == (None if math.isinf(LINKS[r["iteration"]]) else LINKS[r["iteration"]])
        for d in ("fwd", "bwd"):
            assert r[d]["compress"] == {"local": expected}
            assert r[d]["cr"] > 1 and r[d]["tc"] > 0 and r[d]["td"] > 0
            assert r[d]["speedup"]["local"] == (0.0 if not expected else pytest.approx(r[d]["cr"], rel=0.02))
    # the bytes of each interval travelled as the decision before it said (the first: compressed)
    for before, r in zip([True, True, False, True], records):
        for d in ("fwd", "bwd"):
            raw, sent = r[d]["bytes_raw"]["local"], r[d]["bytes_sent"]["local"]
            assert (sent < raw) if before else (sent == raw), (r["iteration"], d)
    # resumed from the checkpoint of 20 (raw) and stopped at 25: the saved decision, routed from its first step
    saved = torch.load(tmp_path / "resumed/checkpoints/ckpt_000000020.pt", weights_only=False)
    assert saved["extensions"]["compression"]["peers"]["compress"] == {"fwd": {"local": False}, "bwd": {"local": False}}
    again = _peers(tmp_path / "resumed")
    assert [r[d]["compress"] for r in again for d in ("fwd", "bwd")] == \
        [r[d]["compress"] for r in records for d in ("fwd", "bwd")]
    assert again[2]["fwd"]["bytes_sent"] == again[2]["fwd"]["bytes_raw"]
    assert resumed["final_eval"] == straight["final_eval"]
    assert resumed["compression"]["bytes_sent"] == straight["compression"]["bytes_sent"]


def test_the_link_is_probed_at_the_first_decision_then_every_probe_every_th(tiny_cfg, tmp_path, monkeypatch):
    from dlrm_comp.train import peer_policy
    from dlrm_comp.train.loop import Trainer
    probed = []
    monkeypatch.setattr(peer_policy, "PROBE_EVERY", 3)
    monkeypatch.setattr(PeerPolicy, "measure_link",
                        lambda self, iteration, transport, size: probed.append(iteration) or {"local": 1e3})
    Trainer(tiny_cfg(*AUTO, "train.eval_every=0", "train.iterations=50"), tmp_path / "run").run()
    assert probed == [10, 40]
    assert [r["link_Bps"]["local"] for r in _peers(tmp_path / "run")] == [1e3] * 5  # the last probe's, kept


def test_one_process_without_a_link_sends_raw_after_the_first_interval(tiny_cfg, tmp_path, capsys):
    from dlrm_comp.train.loop import Trainer
    Trainer(tiny_cfg(*AUTO, "train.eval_every=0", "train.iterations=20"), tmp_path / "run").run()
    records = _peers(tmp_path / "run")
    assert records[0]["link_Bps"] == {"local": None} and records[0]["probe_bytes"] is None
    assert all(r[d]["compress"] == {"local": False} for r in records for d in ("fwd", "bwd"))
    assert "[peers] iteration 10: fwd local=raw (0.00x)" in capsys.readouterr().out


# ------------------------------------------------------------------ two nodes: the ranks agree
@pytest.mark.multiprocess
def test_two_nodes_decide_alike_and_route_as_decided(tmp_path):
    """Two torchrun agents, one rank each, as two nodes: a real probe over gloo's loopback. Every
    rank holds the same decisions and figures at every checkpoint; each interval's bytes per class
    travelled as the decision before it said."""
    from multiproc import torchrun_nodes, train_cli
    out = tmp_path / "run"
    procs = torchrun_nodes(2, *train_cli(out, *MODES, "train.eval_every=0", "train.keep_checkpoints=10"))
    assert all(p.returncode == 0 for p in procs), procs[0].stderr[-3000:] + procs[1].stderr[-3000:]
    records = _peers(out)
    assert [r["iteration"] for r in records] == [10, 20, 30, 40]
    before = {d: {"local": True, "remote": True} for d in ("fwd", "bwd")}
    route = {d: None for d in ("fwd", "bwd")}  # the route before: fp16 (compress.peers_fixed) sends half
    for r in records:
        assert r["link_Bps"]["local"] is None and r["link_Bps"]["remote"] > 0  # one rank per node: no local link
        assert (r["probe_bytes"] >= 256 << 10) if r["iteration"] == 10 else r["probe_bytes"] is None  # probed once
        for d in ("fwd", "bwd"):
            assert set(r[d]["compress"]) == {"local", "remote"}
            for c in ("local", "remote"):
                raw, sent = r[d]["bytes_raw"][c], r[d]["bytes_sent"][c]
                expect = (2 * sent == raw) if route[d] == "fp16" else (sent < raw) if before[d][c] else (sent == raw)
                assert raw > 0 and expect, (r["iteration"], d, c, route[d])
            assert r[d]["compress"]["local"] is False  # the rank itself: no link to save
        before = {d: r[d]["compress"] for d in ("fwd", "bwd")}
        route = {d: r[d]["route"] for d in ("fwd", "bwd")}
    for it in (10, 20, 30, 40):
        states = [torch.load(out / f"checkpoints/ckpt_{it:09d}.rank{k}.pt", weights_only=False)
                  ["extensions"]["compression"]["peers"] for k in (0, 1)]
        assert states[0] == states[1]
        assert states[0]["compress"] == {d: records[it // 10 - 1][d]["compress"] for d in ("fwd", "bwd")}


def test_dedup_alone_has_nothing_to_route(tiny_cfg, tmp_path):
    from dlrm_comp.train.loop import Trainer
    trainer = Trainer(tiny_cfg("compress.peers=auto", "compress.dedup=on", "compress.chunks=2", "train.iterations=10",
                               "train.eval_every=0", "train.tensorboard=false"), tmp_path / "run")
    trainer.run()
    assert trainer.compression.peer_policy is None and not _peers(tmp_path / "run")


def test_every_destination_raw_travels_as_off_does():
    """With every destination raw, a direction is one tensor exchange of sizes known from the
    layout (no size exchange, no byte messages), counted as the routed codec counts raw ones."""
    from dlrm_comp.compress.codecs.peers import AllRawRoute
    ex = _exchange()
    sent_messages = []
    send = ex.sender.send
    ex.sender.send = lambda messages, *a, **k: sent_messages.append(len(messages)) or send(messages, *a, **k)
    pooled = [torch.randn(26, 4) for _ in range(3)]
    ex.route("fwd", [True, False, True, False])
    ex.forward(pooled, compress=True)
    assert sent_messages == [4]  # byte messages: through the size protocol
    ex.route("fwd", [True] * 4)
    assert isinstance(ex.codec(ex.plan.fwd), AllRawRoute)
    ex.routed("fwd").take_counts()
    local = ex.bytes_local
    for p, o in zip(pooled, ex.forward(pooled, compress=True)):
        assert torch.equal(p, o)
    assert sent_messages == [4]
    counts = ex.routed("fwd").take_counts()
    assert counts.calls == 1 and counts.enc_raw == 0 and np.array_equal(counts.sent, counts.raw)
    assert counts.raw.sum() == 3 * 26 * 4 * 4 and ex.bytes_local - local == counts.raw.sum()
