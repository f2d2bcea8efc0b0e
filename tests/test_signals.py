"""SIGTERM/SIGINT: the step finishes, a checkpoint is saved, and --resume continues exactly."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from tiny import TINY_OVERRIDES
from dlrm_comp.cli.train import main
from dlrm_comp.train.breakdown import TIMED_FIELDS
from dlrm_comp.train.extension import TrainingExtension
from dlrm_comp.train.logging import read_jsonl
from dlrm_comp.train.loop import Trainer
from dlrm_comp.train.signals import RunStopped

QUIET = ("train.tensorboard=false",)
TIMING = {"step_s", "samples_per_s", *TIMED_FIELDS}


class SignalAt(TrainingExtension):
    """Sends this process `signum` just before step `at` runs (as a scheduler would, mid-step)."""
    name = "signal_at"

    def __init__(self, at: int, signum: int):
        self.at, self.signum = at, signum

    def before_step(self, iteration: int) -> None:
        if iteration == self.at:
            os.kill(os.getpid(), self.signum)


def _records(run):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(run / "metrics.jsonl")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_then_resume_matches_uninterrupted(tiny_cfg, tmp_path, signum):
    cfg = tiny_cfg(*QUIET)
    straight = Trainer(cfg, tmp_path / "a")
    straight.run()
    stopped = Trainer(cfg, tmp_path / "b", extensions=[SignalAt(17, signum)])
    with pytest.raises(RunStopped) as info:
        stopped.run()
    assert info.value.iteration == 18 and info.value.exit_status == 128 + signum  # step 17 finished
    assert (tmp_path / "b" / "checkpoints" / "ckpt_000000018.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    resumed = Trainer(cfg, tmp_path / "b", resume=True, extensions=[])
    resumed.run()
    assert resumed.start_iteration == 18
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert _records(tmp_path / "a") == _records(tmp_path / "b")  # the half interval 11-18 was kept


def test_cli_exit_status_after_a_signal(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DLRM_COMP_SIGNAL_AT", "12:INT")
    argv = ["--set", *TINY_OVERRIDES, *QUIET, "train.progress=false", "--out", str(tmp_path)]
    assert main(argv) == 130
    assert "SIGINT: stopped after iteration 13" in capsys.readouterr().err
    monkeypatch.delenv("DLRM_COMP_SIGNAL_AT")
    assert main([*argv, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.multiprocess
def test_ranks_agree_on_the_stop_step(tiny_cfg, tmp_path):
    from multiproc import final_state, torchrun, train_cli
    proc = torchrun(2, *train_cli(tmp_path / "b"), env={"DLRM_COMP_SIGNAL_AT": "12", "DLRM_COMP_SIGNAL_RANK": "1"})
    assert proc.returncode != 0
    assert "SIGTERM: stopped after iteration 15" in proc.stderr  # the next agreement point (every 5 steps)
    ckpt = tmp_path / "b" / "checkpoints"
    assert (ckpt / "ckpt_000000015.rank0.pt").is_file() and (ckpt / "ckpt_000000015.rank1.pt").is_file()
    resumed = torchrun(2, *train_cli(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "iteration 15" in resumed.stdout
    single = Trainer(tiny_cfg(*QUIET, "compress.print_tables=false"), tmp_path / "single")
    single.run()
    a = final_state(tmp_path / "single", 40, 1, single.source.cardinalities)
    b = final_state(tmp_path / "b", 40, 2, single.source.cardinalities)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
