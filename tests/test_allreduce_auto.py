"""dist.allreduce_compression=auto: the dense allreduce's setting chosen by measured trials at
print intervals (each candidate one interval, then the fastest with hysteresis, trials again
every RETRIAL_EVERY decisions), one hook switched between steps, PowerSGD's residual added back
when it is switched off, records, resume, config."""
from __future__ import annotations

import json

import pytest
import torch

from dlrm_comp.config import ConfigError
from dlrm_comp.train import allreduce_policy
from dlrm_comp.train.allreduce_policy import CANDIDATES, AllreducePolicy
from dlrm_comp.train.peer_policy import HYSTERESIS, first_unmeasured, keep_or_switch


# ------------------------------------------------------------------ the decision (injected timings)
def _run(policy: AllreducePolicy, times, intervals: int, every: int = 10, start: int = 10):
    """Drive ``policy`` through ``intervals`` print intervals of ``every`` steps from ``start``,
    the interval's setting measured as ``times(iteration, setting)``; the settings that ran after
    each decision and whether each was a trial."""
    out = []
    for k in range(intervals):
        it = start + k * every
        record = policy.interval(it, (times(it, policy.setting), times(it, policy.setting) / 2))
        out.append((record["setting"], record["trial"]))
    return out


def test_the_shared_trial_and_hysteresis_rules():
    assert first_unmeasured(["off", "fp16"], {"off": 1.0}) == "fp16"
    assert first_unmeasured(["off"], {"off": 1.0}) is None
    assert keep_or_switch({"off": 1.0, "fp16": 0.96}, "off") == "off"  # 4% faster: within the margin
    assert keep_or_switch({"off": 1.0, "fp16": 0.94}, "off") == "fp16"
    assert keep_or_switch({"off": 1.0, "fp16": 0.96}, "fp16") == "fp16"  # and back only beyond it
    assert keep_or_switch({"off": 0.94, "fp16": 1.0}, "fp16") == "off"
    assert keep_or_switch({"off": 1.0, "fp16": 2.0}, "powersgd") == "off"  # an unmeasured incumbent: the fastest


def test_each_candidate_is_tried_then_the_fastest_wins():
    """The first interval is warm-up (nothing filed); each candidate then travels one interval;
    the fastest by more than the margin wins over `off`, the incumbent until a decision."""
    policy = AllreducePolicy(CANDIDATES, powersgd_start=0)
    times = {"off": 0.010, "fp16": 0.0098, "powersgd": 0.0050}
    got = _run(policy, lambda it, s: times[s], 5)
    assert got == [("off", True), ("fp16", True), ("powersgd", True), ("powersgd", False), ("powersgd", False)]
    assert policy.seconds == times and policy.chosen == "powersgd"


def test_the_chosen_setting_is_measured_by_the_mean_of_its_intervals():
    """Once chosen, PowerSGD is filed at every interval as the mean of its intervals: one slow
    interval (0.0140, where its last alone would lose to fp16's 0.0098) keeps it."""
    policy = AllreducePolicy(CANDIDATES, powersgd_start=0)
    slow = {10 * k: 0.0140 for k in (6,)}  # the interval ending at iteration 60
    got = _run(policy, lambda it, s: slow.get(it, {"off": 0.010, "fp16": 0.0098, "powersgd": 0.0050}[s]), 7)
    assert [s for s, _ in got][3:] == ["powersgd"] * 4
    assert policy.samples["powersgd"] > 1 and policy.seconds["powersgd"] < 0.0098


def test_a_loss_keeps_off_and_a_gain_within_the_margin_does_not_switch():
    policy = AllreducePolicy(CANDIDATES, powersgd_start=0)
    times = {"off": 0.010, "fp16": 0.0097, "powersgd": 0.0140}  # fp16 3% faster, PowerSGD slower
    assert [s for s, _ in _run(policy, lambda it, s: times[s], 5)] == ["off", "fp16", "powersgd", "off", "off"]


def test_hysteresis_both_ways():
    """Incumbent PowerSGD: `off` 4% faster keeps it, 6% faster switches; incumbent `off`: the same
    margin back."""
    policy = AllreducePolicy(CANDIDATES, powersgd_start=0)
    policy.chosen = policy.setting = "powersgd"
    policy.since, policy.decisions = 30, 1
    policy.seconds = {"off": 0.0096, "fp16": 0.02}
    policy.interval(40, (0.0100, 0.005))  # PowerSGD measured 0.0100: off only 4% faster
    assert policy.setting == "powersgd" and policy.chosen == "powersgd"
    policy.seconds["off"] = 0.0094
    policy.interval(50, (0.0100, 0.005))
    assert policy.setting == "off" and policy.chosen == "off"
    policy.seconds["powersgd"] = 0.0091  # PowerSGD 3% faster than off's 0.0094 (filed below)
    policy.interval(60, (0.0094, 0.005))
    assert policy.setting == "off"
    policy.seconds["powersgd"] = 0.0088  # 6.4% faster
    policy.interval(70, (0.0094, 0.005))
    assert policy.setting == "powersgd"


def test_powersgd_is_tried_only_from_its_start_iteration():
    """Before dist.powersgd_start_iter torch's hook runs a plain allreduce: PowerSGD is not tried
    (nor filed) until an interval starts at or after it."""
    policy = AllreducePolicy(CANDIDATES, powersgd_start=35)
    times = {"off": 0.010, "fp16": 0.006, "powersgd": 0.004}
    got = _run(policy, lambda it, s: times[s], 5)
    assert got == [("off", True), ("fp16", True), ("fp16", False), ("powersgd", True), ("powersgd", False)]


def test_trials_run_again_every_retrial_every_decisions(monkeypatch):
    """At every RETRIAL_EVERY-th decision the measurements are dropped, the interval just run is
    filed as the first of the new round, and the others travel again: a setting that became
    faster is found."""
    monkeypatch.setattr(allreduce_policy, "RETRIAL_EVERY", 4)
    policy = AllreducePolicy(CANDIDATES, powersgd_start=0)
    fast_link = {"off": 0.010, "fp16": 0.012, "powersgd": 0.020}
    slow_link = {"off": 0.030, "fp16": 0.020, "powersgd": 0.012}
    got = _run(policy, lambda it, s: (fast_link if it <= 40 else slow_link)[s], 8)
    assert got == [("off", True), ("fp16", True), ("powersgd", True), ("off", False),
                       ("fp16", True), ("powersgd", True), ("powersgd", False), ("powersgd", False)]
    assert policy.seconds == slow_link


def test_rounds_grow_apart_while_the_choice_holds_and_close_up_when_it_changes():
    """RoundSchedule: a round that kept the choice doubles the gap (up to MAX_GAP x every), one
    that changed it resets the gap; the run's first round is not a kept choice."""
    from dlrm_comp.train.peer_policy import MAX_GAP, RoundSchedule
    rounds = RoundSchedule(4)
    assert not rounds.due(0) and not rounds.due(3) and rounds.due(4)
    rounds.end("off")  # the first round's end: no choice before it
    assert rounds.gap == 4
    starts = []
    for decision in range(1, 200):
        if rounds.due(decision):
            starts.append(decision)
            rounds.begin(decision, "off")
            rounds.end("off")  # kept
    assert starts[:6] == [4, 12, 28, 60, 92, 124] and rounds.gap == MAX_GAP * 4
    rounds.begin(200, "off")
    rounds.end("fp16")  # changed: measured again soon
    assert rounds.gap == 4 and rounds.due(204) and not rounds.due(203)
    old = RoundSchedule(8)
    old.load_state_dict(None, 19)  # a checkpoint from before the schedule: rounds at multiples of 8
    assert not old.due(19) and old.due(24)


def test_a_setting_that_keeps_winning_is_tried_against_ever_less_often():
    policy = AllreducePolicy(CANDIDATES, powersgd_start=0)
    times = {"off": 0.010, "fp16": 0.006, "powersgd": 0.012}
    got = _run(policy, lambda it, s: times[s], 60)
    trials = [k for k, (_, trial) in enumerate(got) if trial]
    assert trials == [0, 1, 2, 8, 9, 24, 25, 56, 57]  # rounds at decisions 8, 24, 56: gaps of 8, 16, 32
    assert policy.chosen == "fp16" and policy.rounds.gap == 64
    again = AllreducePolicy(CANDIDATES, powersgd_start=0)
    again.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert again.rounds.state_dict() == policy.rounds.state_dict()


def test_the_first_interval_of_the_run_is_warm_up_and_the_state_round_trips():
    policy = AllreducePolicy(CANDIDATES, powersgd_start=0)
    record = policy.interval(10, (5.0, 1.0))
    assert record["measured"] is None and policy.seconds == {} and record["hysteresis"] == HYSTERESIS
    record = policy.interval(20, (0.01, 0.004))
    assert record["measured"] == "off" and record["allreduce_s"] == {"off": 0.004}
    again = AllreducePolicy(CANDIDATES, powersgd_start=0)
    again.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert again.state_dict() == policy.state_dict()
    assert "fp16 (trial)" in AllreducePolicy.line(20, record, CANDIDATES)


# ------------------------------------------------------------------ PowerSGD switched off and on
class _Bucket:
    """What DDP hands a communication hook, reduced to what PowerSGD.idle reads."""

    def __init__(self, params, buffer):
        self.params, self._buffer = params, buffer

    def buffer(self):
        return self._buffer

    def parameters(self):
        return self.params

    def index(self):
        return 0

    def is_last(self):
        return True


def test_powersgd_switched_off_adds_its_residual_back_once():
    """The residual of the last compressed step goes into the next step's bucket, once, then
    PowerSGD's error feedback restarts from zero; its iteration counter advances meanwhile."""
    from torch import nn
    from dlrm_comp.train.powersgd import PowerSGD
    head = nn.Linear(3, 2)
    psgd = PowerSGD(head, rank=1, start_iter=2, seed=0)
    psgd.state.iter = 7
    residual = torch.tensor([0.5, -1.0, 2.0, 0.25, 1.5, -0.5, 3.0, 1.0])
    psgd.state.error_dict[0] = residual.clone()
    grads = torch.arange(8, dtype=torch.float32)
    bucket = _Bucket(list(head.parameters()), grads.clone())
    psgd.idle(bucket)
    assert torch.equal(bucket.buffer(), grads + residual) and psgd.state.error_dict == {}
    assert psgd.state.iter == 8
    again = _Bucket(list(head.parameters()), grads.clone())
    psgd.idle(again)  # added once only
    assert torch.equal(again.buffer(), grads) and psgd.state.iter == 9


class _Head(torch.nn.Module):
    """A dense head as the settle pass calls it: (dense, pooled embeddings) -> logits; 1.1 MB,
    more than DDP's first bucket: two buckets."""

    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                       torch.nn.ReLU(), torch.nn.Linear(512, 1))

    def forward(self, dense, pooled):
        return self.mlp(torch.cat([dense, *pooled], 1)).squeeze(1)


@pytest.fixture
def one_rank_group():
    """A one-rank gloo group in this process (as TorchRec's one-process runs make), gone after."""
    import torch.distributed as dist
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_the_hook_switches_settings_and_loses_no_gradient_to_powersgd(one_rank_group):
    """The one hook on a real DDP head of two buckets (one rank), its setting switched between
    steps as auto switches it: each off step delivers the gradient exactly; PowerSGD's steps
    deliver less (their residual pending, per bucket); the first step after PowerSGD adds every
    bucket's residual back, so from then the gradients delivered sum to the true ones exactly:
    switching loses nothing. PowerSGD's iterations count once a step; bytes per setting are
    counted."""
    import copy
    from types import SimpleNamespace
    from torch.nn.parallel import DistributedDataParallel
    from dlrm_comp.train.allreduce import AllreduceCompression
    from dlrm_comp.train.powersgd import bucket_kwargs
    torch.manual_seed(0)
    head = _Head()
    plain = copy.deepcopy(head)  # the true gradients (nothing is stepped)
    ddp = DistributedDataParallel(head, **bucket_kwargs("auto", head))
    trainer = SimpleNamespace(parallel=SimpleNamespace(head=ddp), iterations=100, rank=0, start_iteration=0,
                              device=torch.device("cpu"), source=SimpleNamespace(cardinalities=[10, 10]),
                              cfg=SimpleNamespace(data=SimpleNamespace(num_dense=8), model=SimpleNamespace(emb_dim=4)))
    hook = AllreduceCompression("auto", powersgd_rank=1, powersgd_start_iter=2)
    hook.bind(trainer)
    delivered = [torch.zeros_like(p) for p in head.parameters()]
    true = [torch.zeros_like(p) for p in head.parameters()]
    schedule = ["off", "off", "powersgd", "powersgd", "powersgd", "off", "off", "powersgd", "powersgd", "off"]
    for step, setting in enumerate(schedule):
        hook.setting = setting
        dense, pooled, y = torch.randn(8, 8), [torch.randn(8, 4), torch.randn(8, 4)], torch.rand(8)
        for module, sums in ((ddp, delivered), (plain, true)):
            torch.nn.functional.binary_cross_entropy_with_logits(module(dense, pooled), y).backward()
            for total, p in zip(sums, module.parameters()):
                total += p.grad
                p.grad = None
        exact = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(delivered, true))
        pending = set(hook.powersgd.state.error_dict)
        assert exact == (setting == "off") and pending == ({0, 1} if setting == "powersgd" else set()), (step, setting)
    assert set(hook.powersgd.layout) == {0, 1}
    assert hook.powersgd.state.iter == len(schedule)
    assert {c: v["steps"] for c, v in hook.by_setting.items()} == {"off": 5, "fp16": 0, "powersgd": 5}
    counts = hook.by_setting
    assert counts["off"]["bytes_sent"] == counts["off"]["bytes_raw"] > 4 * counts["powersgd"]["bytes_sent"]


# ------------------------------------------------------------------ config
def test_auto_is_accepted_and_an_unknown_value_lists_it(tiny_cfg):
    assert tiny_cfg("dist.allreduce_compression=auto").dist.allreduce_compression == "auto"
    with pytest.raises(ConfigError, match=r"dist.allreduce_compression: 'fastest' is not one of: .*powersgd, auto"):
        tiny_cfg("dist.allreduce_compression=fastest")
    with pytest.raises(ConfigError, match="dist.powersgd_rank"):  # auto's PowerSGD takes the same checks
        tiny_cfg("dist.allreduce_compression=auto", "dist.powersgd_rank=0")


def test_one_process_warns_that_auto_is_useless(tiny_cfg, tmp_path, capsys):
    from dlrm_comp.train.loop import Trainer
    summary = Trainer(tiny_cfg("dist.allreduce_compression=auto", "train.iterations=10", "train.eval_every=0",
                               "train.tensorboard=false"), tmp_path / "run").run()
    assert "warning: dist.allreduce_compression=auto is useless in one process" in capsys.readouterr().err
    assert "allreduce" not in summary


@pytest.mark.parametrize("setting, buckets", [("auto", 2), ("powersgd", 1), ("fp16", 2)])
def test_the_kaggle_shaped_head_keeps_ddps_buckets_except_under_powersgd(one_rank_group, setting, buckets):
    """The Kaggle config's dense head (1.9 MB) under DDP built with ``bucket_kwargs``, on the
    second step (DDP's buckets as rebuilt after the first backward, as every step runs on after
    the settle pass): DDP's default buckets (the first at least 1 MB, then the rest: the first's
    allreduce overlaps the rest of the backward) under auto as under the plain settings, one bucket
    under powersgd; the hook called in bucket order."""
    from pathlib import Path
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel
    from dlrm_comp.config import load_config
    from dlrm_comp.train.builders import build_model
    from dlrm_comp.train.parallel import DenseHead
    from dlrm_comp.train.powersgd import bucket_kwargs
    cfg = load_config([Path(__file__).resolve().parents[1] / "configs/kaggle.yaml"], env={})
    tables = 26  # the Kaggle profile's; the head does not hold the tables
    head = DenseHead(build_model(cfg, [2] * tables, owned_tables=[]))
    ddp = DistributedDataParallel(head, **bucket_kwargs(setting, head))
    seen = []

    def record(state, bucket):
        seen.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)
    ddp.register_comm_hook(None, record)
    for _ in range(2):  # the first backward on DDP's initial buckets, the second on its rebuilt ones
        seen.clear()
        dim = cfg.model.emb_dim
        ddp(torch.zeros(2, cfg.data.num_dense), [torch.zeros(2, dim) for _ in range(tables)]).sum().backward()
    assert seen == list(range(buckets))


def test_link_modes_named_auto_choose_the_allreduce_too():
    from dlrm_comp.bench.link_run import HEADLINE, modes
    table = modes()
    for name, overrides in table.items():
        if "auto" in name:
            assert overrides[-1] == "dist.allreduce_compression=auto"
            assert sum(o.startswith("dist.allreduce_compression=") for o in overrides) == 1, name
    assert "codec+bwd+dedup+auto" in HEADLINE and "codec+bwd+dedup+powersgd+auto" not in HEADLINE


# ------------------------------------------------------------------ two ranks: switches, records, resume
TIMES = {"off": 0.010, "fp16": 0.0098, "powersgd": 0.0050}
# with 4 decisions a round, print intervals of 10 steps and PowerSGD from iteration 5: what runs
# after each decision (10..80), and whether it is a trial
SCHEDULE = [("off", True), ("fp16", True), ("powersgd", True), ("powersgd", False),
            ("off", True), ("fp16", True), ("powersgd", False), ("powersgd", False)]
AUTO = ("dist.allreduce_compression=auto", "dist.powersgd_start_iter=5", "train.iterations=80", "train.eval_every=0",
        "train.keep_checkpoints=10")


def _launch(out, env: dict | None = None, resume: bool = False, overrides=AUTO, retrial: int = 4):
    """torchrun, 2 ranks, the tiny config with ``overrides``, through the wrapper that injects
    TIMES (``retrial``: decisions per round of trials)."""
    from pathlib import Path
    from multiproc import torchrun, train_cli
    cli = train_cli(out, *overrides)
    cli[0] = str(Path(__file__).with_name("allreduce_auto_run.py"))
    env = {"ALLREDUCE_AUTO_TIMES": json.dumps(TIMES), "ALLREDUCE_AUTO_RETRIAL": str(retrial), **(env or {})}
    return torchrun(2, *cli, *(["--resume"] if resume else []), env=env, timeout=400)


def _records(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "allreduce"]


@pytest.mark.multiprocess
@pytest.mark.timeout(900)
def test_switching_mid_run_trains_records_and_resumes_exactly(tmp_path):
    """2 ranks with the measurements injected: the settings run as SCHEDULE says (PowerSGD
    switched off at 50 with its residual pending in the checkpoint of 50, on again at 70), every
    rank holds the same decisions, the records and byte counts say what ran, the run trains, and
    a run killed after 55 steps and resumed from 50 ends with the uninterrupted run's parameters,
    records and counts exactly."""
    from multiproc import final_state, together
    straight, killed = together(lambda: _launch(tmp_path / "a"),
                                lambda: _launch(tmp_path / "b", env={"DLRM_COMP_FAIL_AT": "55"}))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert killed.returncode != 0
    assert "injected failure on rank 0 after iteration 55" in killed.stderr, killed.stderr[-3000:]
    resumed = _launch(tmp_path / "b", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ckpt_000000050" in resumed.stdout

    records = _records(tmp_path / "a")
    assert [r["iteration"] for r in records] == list(range(10, 81, 10))
    assert [(r["setting"], r["trial"]) for r in records] == SCHEDULE
    assert [r["measured"] for r in records] == [None, "off", "fp16", "powersgd", "powersgd", "off", "fp16", "powersgd"]
    assert records[4]["retrial"] and records[4]["seconds"] == {"powersgd": TIMES["powersgd"]}
    assert records[-1]["seconds"] == TIMES and records[-1]["chosen"] == "powersgd"
    assert "[allreduce] iteration 40: powersgd; measured per step" in straight.stdout

    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("a", "b"))
    by = sa["allreduce"]["by_setting"]
    assert {c: v["steps"] for c, v in by.items()} == {"off": 30, "fp16": 20, "powersgd": 30}
    assert by["off"]["bytes_sent"] == by["off"]["bytes_raw"] and 2 * by["fp16"]["bytes_sent"] == by["fp16"]["bytes_raw"]
    assert by["powersgd"]["bytes_sent"] * 1.5 < by["powersgd"]["bytes_raw"]
    assert sa["allreduce"]["setting"] == "powersgd" and sa["final_eval"]["auc"] > 0.5

    def saved(run, it, rank):
        path = tmp_path / run / f"checkpoints/ckpt_{it:09d}.rank{rank}.pt"
        return torch.load(path, weights_only=False)["extensions"]["allreduce"]
    at50 = [saved("a", 50, k) for k in (0, 1)]
    assert at50[0]["policy"] == at50[1]["policy"] and at50[0]["policy"]["setting"] == "off"
    assert all(s["powersgd"]["slots"]["error_dict"] for s in at50)  # the residual, added back at step 50
    assert saved("a", 60, 0)["powersgd"]["slots"]["error_dict"] == {}

    cards = sa["data"]["cardinalities"]
    a, b = (final_state(tmp_path / r, 80, 2, cards) for r in ("a", "b"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sb["allreduce"] == sa["allreduce"] and _records(tmp_path / "b") == records


# a 1.1 MB dense head: two DDP buckets under auto; intervals of 5 steps, no second round of
# trials: the warm-up interval, one of off and one of fp16, then PowerSGD (the fastest) from 15 on
TWO_BUCKETS = ("dist.allreduce_compression=auto", "dist.powersgd_start_iter=5", "model.bottom_mlp=13-512-512-4",
               "train.iterations=60", "train.print_every=5", "train.eval_every=0", "train.keep_checkpoints=10")


@pytest.mark.multiprocess
@pytest.mark.timeout(900)
def test_powersgd_on_two_buckets_under_auto_keeps_the_ranks_in_step_and_resumes_exactly(tmp_path):
    """2 ranks, auto choosing PowerSGD (injected measurements) on DDP's two buckets for 45 steps:
    six chained collectives a step, launched in one order on both ranks (else gloo pairs
    different tensors: "Received data size doesn't match expected size"); the state is kept per
    bucket, and a run killed after 35 steps and resumed from 30 ends with the uninterrupted run's
    parameters and counts exactly."""
    from multiproc import final_state, together
    straight, killed = together(lambda: _launch(tmp_path / "a", overrides=TWO_BUCKETS, retrial=100),
                                lambda: _launch(tmp_path / "b", env={"DLRM_COMP_FAIL_AT": "35"},
                                                overrides=TWO_BUCKETS, retrial=100))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert killed.returncode != 0
    assert "injected failure on rank 0 after iteration 35" in killed.stderr, killed.stderr[-3000:]
    resumed = _launch(tmp_path / "b", resume=True, overrides=TWO_BUCKETS, retrial=100)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ckpt_000000030" in resumed.stdout

    records = _records(tmp_path / "a")
    assert [r["setting"] for r in records] == ["off", "fp16"] + ["powersgd"] * 10
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("a", "b"))
    by = sa["allreduce"]["by_setting"]
    assert {c: v["steps"] for c, v in by.items()} == {"off": 10, "fp16": 5, "powersgd": 45}
    assert by["powersgd"]["bytes_sent"] * 1.5 < by["powersgd"]["bytes_raw"]
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"a/checkpoints/ckpt_000000030.rank{rank}.pt",
                           weights_only=False)["extensions"]["allreduce"]["powersgd"]
        assert set(saved["layout"]) == {0, 1} and set(saved["slots"]["error_dict"]) == {0, 1}

    cards = sa["data"]["cardinalities"]
    a, b = (final_state(tmp_path / r, 60, 2, cards) for r in ("a", "b"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sb["allreduce"] == sa["allreduce"] and _records(tmp_path / "b") == records
