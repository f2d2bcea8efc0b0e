"""torchrun entry for tests/test_allreduce_auto.py: the training CLI with
``dist.allreduce_compression=auto``'s measurements replaced by the test's (``ALLREDUCE_AUTO_TIMES``:
seconds per step by setting, JSON; ``ALLREDUCE_AUTO_RETRIAL``: decisions per round of trials), so
that its decisions, and a resumed run's, are known in advance. The real measurement still runs
(its broadcast included) and must be a time."""
import json
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.train import allreduce_policy  # noqa: E402
from dlrm_comp.train.allreduce import AllreduceCompression  # noqa: E402

TIMES = json.loads(os.environ["ALLREDUCE_AUTO_TIMES"])
allreduce_policy.RETRIAL_EVERY = int(os.environ["ALLREDUCE_AUTO_RETRIAL"])
measured = AllreduceCompression.measure


def scheduled(self, iteration):
    real = measured(self, iteration)
    assert real is not None and real[0] >= real[1] >= 0 and real[0] > 0, real
    return TIMES[self.setting], TIMES[self.setting] / 2


AllreduceCompression.measure = scheduled
sys.argv = [str(ROOT / "launch/train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
