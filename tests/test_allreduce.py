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


def test_powersgd_refuses_state_saved_for_other_buckets():
    """The checkpoint's PowerSGD state is flat per DDP bucket: a bucket holding other parameters
    (DDP's initial order instead of its rebuilt one) stops the run instead of mixing them."""
    from torch import nn
    from dlrm_comp.train.powersgd import PowerSGD

    head = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    params = list(head.parameters())

    class Bucket:  # what DDP hands a communication hook, reduced to what the check reads
        def __init__(self, order):
            self.order = order

        def parameters(self):
            return [params[i] for i in self.order]

        def index(self):
            return 0

        def is_last(self):
            return True

    psgd = PowerSGD(head, rank=1, start_iter=2, seed=0)
    psgd._check_layout(Bucket([3, 2, 1, 0]))  # as saved: the rebuilt (ready) order
    psgd.expected = dict(psgd.layout)
    psgd._check_layout(Bucket([3, 2, 1, 0]))
    assert psgd.expected is None  # checked once, on the first step after the resume
    psgd.expected = dict(psgd.layout)
    with pytest.raises(RuntimeError, match="bucket 0 holding"):
        psgd._check_layout(Bucket([0, 1, 2, 3]))


@pytest.mark.multiprocess
def test_powersgd_keeps_a_dense_head_larger_than_ddps_first_bucket_in_one_bucket(tmp_path):
    """A 1.1 MB dense head (DDP's default first bucket holds 1 MB): with two buckets gloo could
    see PowerSGD's chained collectives launched in different orders on the two ranks (a Kaggle-
    shaped run aborted so); the head is one bucket, and the hook refuses more."""
    proc = torchrun(2, *train_cli(tmp_path / "run", "dist.allreduce_compression=powersgd", "dist.powersgd_start_iter=5",
                                  "model.bottom_mlp=13-512-512-4", "train.iterations=20"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["allreduce"]["cr"] > 1.5
