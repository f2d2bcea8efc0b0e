"""Shared fixtures: a tiny, fast run config; hypothesis profile for a 2-core CI machine."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from dlrm_comp.config import load_config

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(1)  # small models: a second thread only adds contention

TINY_OVERRIDES = [
    "data.profile=tiny", "data.batch_size=32", "data.eval_batch_size=512", "data.num_val_samples=1024",
    "data.num_test_samples=1024", "model.emb_dim=4", "model.bottom_mlp=13-8-4", "model.top_mlp=8-1",
    "train.iterations=40", "train.print_every=10", "train.eval_every=20", "train.checkpoint_every=10",
    "train.progress=false", "train.lr=0.1", "train.device=cpu",  # pinned: the suite also passes on a GPU host
]


@pytest.fixture
def tiny_cfg():
    """A config that trains in well under a second; extend with `tiny_cfg(extra overrides)`."""
    def make(*extra: str, env: dict | None = None):
        return load_config([], [*TINY_OVERRIDES, *extra], env=env or {})
    return make


@pytest.fixture
def straight_and_resumed(tmp_path):
    """Summaries of one uninterrupted run and of the same run stopped after `stop_after`
    iterations then resumed: `straight_and_resumed(cfg, stop_after)`."""
    def run(cfg, stop_after: int):
        from dlrm_comp.train.loop import InterruptedRun, Trainer
        straight = Trainer(cfg, tmp_path / "straight").run()
        with pytest.raises(InterruptedRun):
            Trainer(cfg, tmp_path / "resumed").run(stop_after=stop_after)
        return straight, Trainer(cfg, tmp_path / "resumed", resume=True).run()
    return run


def pytest_collection_modifyitems(config, items):
    """`cuda` tests skip without a device; whole multi-process modules carry their marker."""
    no_cuda = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if item.get_closest_marker("multiprocess"):
            item.add_marker(pytest.mark.slow)
