"""Shared fixtures: the tiny run config (`tiny.py`) as a fixture; hypothesis profile for a 2-core CI machine."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from dlrm_comp.config import load_config
from tiny import TINY_OVERRIDES

# Without CUDA the Triton kernels run on CPU tensors through Triton's interpreter, which must be on
# before triton itself is imported (its standard library, tl.min and the rest, is decorated then).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(1)  # small models: a second thread only adds contention

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


@pytest.fixture(scope="session")
def codec_two_ranks(tmp_path_factory):
    """2 torchrun ranks of the tiny config with the codec forward and backward (bound 0.01, the
    size exchange `exact`: the defaults), 40 steps: one launch (on first use) shared by the
    tests that read such a run: its byte counts, its timing breakdown, the slot exchange's
    comparison, the uninterrupted side of a resume. `codec_two_ranks.finished()` is its directory."""
    from multiproc import CODEC_BOTH_WAYS, SharedRun
    return SharedRun(tmp_path_factory.mktemp("codec_two_ranks") / "run", 2, *CODEC_BOTH_WAYS)


def pytest_collection_modifyitems(config, items):
    """`cuda` tests skip without a device; whole multi-process modules carry their marker."""
    no_cuda = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if item.get_closest_marker("multiprocess"):
            item.add_marker(pytest.mark.slow)


# Packages of the core install that a bare GPU host may lack (its torch stack only; issue 21): a
# test that stops on importing one of them there is skipped, naming it. Where the package is
# installed (CI, a development machine) the same ImportError fails the test as usual.
OPTIONAL_ON_GPU_HOSTS = ("blosc2", "pysz", "constriction", "optuna", "torchrec", "fbgemm_gpu", "mpi4py",
                         "nbclient", "nbformat", "zstandard")


def _absent(package: str) -> bool:
    import importlib.util
    import sys
    if package in sys.modules and sys.modules[package] is None:  # blocked, as an absent package reads
        return True
    try:
        return importlib.util.find_spec(package) is None
    except (ImportError, ValueError):
        return True


def _missing_package(exc: BaseException) -> str | None:
    """The optional package whose absence raised ``exc``: its import failed, or the message (a
    rank's output in a multi-process test) names it as missing."""
    text = str(exc)
    name = (getattr(exc, "name", None) or "").split(".")[0] if isinstance(exc, ImportError) else ""
    for package in OPTIONAL_ON_GPU_HOSTS:
        named = name == package or any(sign in text for sign in (
            f"No module named '{package}'", f"import of {package} halted", f"needs {package}",
            f"needs the {package} package"))
        if named and _absent(package):
            return package
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or not report.failed:
        return
    missing = _missing_package(call.excinfo.value)
    if missing is not None:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1], f"needs {missing}, not installed on this host")
