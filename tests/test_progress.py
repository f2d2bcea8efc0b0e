"""Progress bars draw on a terminal only: a redirected stderr (a job's log) gets no carriage-return
frames, from training or the benchmark steps."""
from __future__ import annotations

import io
import sys

from dlrm_comp.progress import progress_bar
from dlrm_comp.train.loop import Trainer


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_draws_on_a_terminal_only(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress_bar(range(3), desc="t", mininterval=0)) == [0, 1, 2]
    assert "\r" in terminal.getvalue()
    assert progress_bar(range(3), enabled=False).disable
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress_bar(range(3), desc="t", mininterval=0)
    assert bar.disable and list(bar) == [0, 1, 2] and log.getvalue() == ""


def test_training_with_progress_on_writes_no_frames_to_a_log(tiny_cfg, tmp_path, capfd):
    Trainer(tiny_cfg("train.progress=true", "train.iterations=20", "train.tensorboard=false"), tmp_path).run()
    err = capfd.readouterr().err
    assert "\r" not in err and "train:" not in err
