"""dist.allreduce_compression: DDP's dense allreduce through torch's own communication hooks
(fp16, bf16, PowerSGD), its bytes counted before and after, a killed run resumes exactly, and
bad settings are refused before work."""
import json

import pytest
import torch

from multiproc import SharedRun, straight_and_resumed, torchrun, train_cli
from dlrm_comp.config import ConfigError


@pytest.fixture(scope="module")
def hook_runs(tmp_path_factory):
    """2 ranks, the codec forward, the dense allreduce through a half-precision hook: one launch
    per hook, read by the hook's byte counts and (fp16) as the resume test's uninterrupted run."""
    root = tmp_path_factory.mktemp("hooks")
    return {hook: SharedRun(root / hook, 2, f"dist.allreduce_compression={hook}", "compress.mode=codec")
            for hook in ("fp16", "bf16")}


@pytest.mark.parametrize("override, named", [
    ("dist.allreduce_compression=zip", "dist.allreduce_compression"),
    ("dist.powersgd_rank=0", "dist.powersgd_rank"),
    ("dist.powersgd_start_iter=1", r"dist.powersgd_start_iter.*error feedback"),
    ("dist.powersgd_start_iter=-3", "dist.powersgd_start_iter"),
])
def test_bad_settings_are_refused_naming_the_key(tiny_cfg, override, named):
    with pytest.raises(ConfigError, match=named):
        tiny_cfg(override)


def test_one_process_warns_that_it_does_nothing(tiny_cfg, tmp_path, capsys):
    from dlrm_comp.train.loop import Trainer
    summary = Trainer(tiny_cfg("dist.allreduce_compression=fp16"), tmp_path / "run").run()
    assert "dist.allreduce_compression=fp16 does nothing in one process" in capsys.readouterr().err
    assert "allreduce" not in summary


@pytest.mark.multiprocess
@pytest.mark.parametrize("hook, cr", [("fp16", 2.0), ("bf16", 2.0)])
def test_half_precision_hooks_halve_the_allreduce(hook_runs, hook, cr):
    summary = json.loads((hook_runs[hook].finished() / "summary.json").read_text())
    ar = summary["allreduce"]
    assert ar["compression"] == hook and ar["bytes_raw"] > 0 and ar["cr"] == pytest.approx(cr)
    comp = summary["compression"]  # the exact backward crossed too: 40 steps x 32 rows x 4 dims x 4 B x 8 tables
    assert comp["bytes_wire"] == comp["bytes_sent"] + 40 * 32 * 4 * 4 * 8 + comp["bytes_meta"]
    assert comp["cr_wire"] < comp["cr"]
    assert summary["final_eval"]["auc"] > 0.5


@pytest.mark.multiprocess
def test_fp16_allreduce_resumes_exactly_after_a_kill(tmp_path, hook_runs):
    """Killed after 25 steps (checkpoint at 20), resumed to 40: every parameter equals the
    uninterrupted run's, and so do the allreduce's byte counts. (With the codec forward, as the
    hook's own test runs it: that run is the uninterrupted one.)"""
    (a, b), (sa, sb) = straight_and_resumed(tmp_path, "dist.allreduce_compression=fp16", "compress.mode=codec",
                                            straight=hook_runs["fp16"])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sa["allreduce"] == sb["allreduce"] and sa["allreduce"]["cr"] == 2.0


@pytest.mark.multiprocess
def test_powersgd_resumes_exactly_after_a_kill(tmp_path):
    """PowerSGD from iteration 5 (rank 1), killed after 25 steps (checkpoint at 20), resumed to
    40: every parameter equals the uninterrupted run's, and so do the allreduce's byte counts."""
    (a, b), (sa, sb) = straight_and_resumed(tmp_path, "dist.allreduce_compression=powersgd",
                                            "dist.powersgd_start_iter=5")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sa["allreduce"] == sb["allreduce"] and sa["allreduce"]["cr"] > 1.5


class _Bucket:
    """What DDP hands a communication hook, reduced to what PowerSGD reads: bucket ``index`` of
    ``count`` holding ``params[i] for i in order``."""

    def __init__(self, params, order, index=0, count=1):
        self.params, self.order, self._index, self.count = params, order, index, count
        self._buffer = torch.zeros(sum(params[i].numel() for i in order))

    def parameters(self):
        return [self.params[i] for i in self.order]

    def buffer(self):
        return self._buffer

    def index(self):
        return self._index

    def is_last(self):
        return self._index == self.count - 1


def test_powersgd_refuses_state_saved_for_other_buckets():
    """The checkpoint's PowerSGD state is flat per DDP bucket: a bucket holding other parameters
    (DDP's initial order instead of its rebuilt one, or other buckets) stops the run instead of
    mixing them; the layout is checked on the first step after the resume, every bucket."""
    from torch import nn
    from dlrm_comp.train.powersgd import PowerSGD

    head = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    params = list(head.parameters())
    psgd = PowerSGD(head, rank=1, start_iter=2, seed=0)
    psgd._check_layout(_Bucket(params, [3, 2, 1, 0]))  # as saved: the rebuilt (ready) order
    psgd.expected = dict(psgd.layout)
    psgd._check_layout(_Bucket(params, [3, 2, 1, 0]))
    assert psgd.expected is None  # checked once, on the first step after the resume
    psgd.expected = dict(psgd.layout)
    with pytest.raises(RuntimeError, match="bucket 0 holding"):
        psgd._check_layout(_Bucket(params, [0, 1, 2, 3]))

    two = [_Bucket(params, [3, 2], 0, 2), _Bucket(params, [1, 0], 1, 2)]  # saved on two buckets
    psgd = PowerSGD(head, rank=1, start_iter=2, seed=0)
    for bucket in two:
        psgd._check_layout(bucket)
    saved = dict(psgd.layout)
    psgd.expected = dict(saved)
    for bucket in two:
        psgd._check_layout(bucket)
    assert psgd.expected is None and psgd.layout == saved
    psgd.expected = dict(saved)
    with pytest.raises(RuntimeError, match="bucket 0 holding"):  # resumed on one bucket
        psgd._check_layout(_Bucket(params, [3, 2, 1, 0]))
    psgd.expected = dict(saved)
    psgd._check_layout(two[0])
    with pytest.raises(RuntimeError, match="bucket 1 holding"):  # another split
        psgd._check_layout(_Bucket(params, [2, 1, 0], 1, 2))
    psgd.expected = {**saved, 2: ("x",)}
    psgd._check_layout(two[0])
    with pytest.raises(RuntimeError, match="3 DDP buckets, this run has 2"):
        psgd._check_layout(two[1])


def test_powersgd_runs_a_bucket_only_once_the_previous_buckets_future_has_completed(monkeypatch):
    """Several buckets (dist.allreduce_compression=auto): each hook call returns a future at
    once, and torch's hook runs on bucket k (its first collective launched) only when bucket
    k-1's future has completed, so every rank launches every collective in bucket order; a
    bucket's future completes with torch's result; a failed bucket fails the later ones with its
    error, nothing more launched. (torch's hook, reduced to its launch: a future the test
    completes.)"""
    from torch import nn
    from dlrm_comp.train import powersgd
    from dlrm_comp.train.powersgd import PowerSGD

    launched, pending = [], {}

    def hook(state, bucket):
        launched.append(bucket.index())
        pending[bucket.index()] = torch.futures.Future()
        return pending[bucket.index()]
    monkeypatch.setattr(powersgd.psgd, "powerSGD_hook", hook)
    head = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    params = list(head.parameters())
    buckets = [_Bucket(params, order, k, 3) for k, order in enumerate(([3, 2], [1], [0]))]
    psgd = PowerSGD(head, rank=1, start_iter=2, seed=0)
    sent = []
    futures = [psgd(b, sent.append) for b in buckets]
    assert launched == [0] and not any(f.done() for f in futures)
    results = [torch.full((b.buffer().numel(),), float(k)) for k, b in enumerate(buckets)]
    pending[0].set_result(results[0])
    assert launched == [0, 1] and futures[0].done() and not futures[1].done()
    pending[1].set_result(results[1])
    assert launched == [0, 1, 2] and futures[1].done() and not futures[2].done()
    pending[2].set_result(results[2])
    assert all(torch.equal(f.value(), r) for f, r in zip(futures, results))
    assert sent == [b.buffer().numel() * 4 for b in buckets]  # the whole bucket: torch counted nothing
    assert set(psgd.layout) == {0, 1, 2}

    launched.clear()
    futures = [psgd(b, sent.append) for b in buckets]  # the next step: bucket 0 starts at once
    assert launched == [0]
    pending[0].set_exception(RuntimeError("a peer is gone"))
    assert launched == [0] and all(f.done() for f in futures)
    for f in futures:
        with pytest.raises(RuntimeError, match="a peer is gone"):
            f.wait()


@pytest.mark.multiprocess
def test_powersgd_keeps_a_dense_head_larger_than_ddps_first_bucket_in_one_bucket(tmp_path):
    """A 1.1 MB dense head (DDP's default first bucket holds 1 MB, so DDP would make two):
    under powersgd it is one bucket, three collectives a step (auto's PowerSGD runs on DDP's
    buckets, one after another: tests/test_allreduce_auto.py)."""
    proc = torchrun(2, *train_cli(tmp_path / "run", "dist.allreduce_compression=powersgd", "dist.powersgd_start_iter=5",
                                  "model.bottom_mlp=13-512-512-4", "train.iterations=20"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["allreduce"]["cr"] > 1.5
    saved = torch.load(tmp_path / "run/checkpoints/ckpt_000000020.rank0.pt", weights_only=False)
    assert list(saved["extensions"]["allreduce"]["powersgd"]["layout"]) == [0]
