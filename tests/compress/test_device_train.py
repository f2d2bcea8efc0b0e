"""Training through the Triton kernels is training through the torch path: the same loss, the
same wire bytes, the same max error / bound, per mode (forward and backward compressed), with
the kernels launched a constant number of times per step. See ``device_env``."""
from __future__ import annotations

import pytest

from device_env import DEV, MARKS  # noqa: I001  (sets TRITON_INTERPRET first)
from dlrm_comp.compress.device import device_kernels, launches
from dlrm_comp.train.loop import Trainer

pytestmark = [*MARKS, pytest.mark.slow]
STEPS = 4


def _run(cfg, out, impl: str):
    with device_kernels(impl), launches.count() as n:
        summary = Trainer(cfg, out).run()
    comp = summary["compression"]
    back = comp.get("backward", {})
    return (summary["final_eval"]["logloss"], comp["bytes_sent"], comp["max_err_ratio"], back.get("bytes_sent"),
            back.get("max_err_ratio")), n.n


@pytest.mark.parametrize("mode,per_step", [("codec", 8), ("simulate", 8), ("fp8", 6), ("int8", 4), ("mx4", 4)])
def test_a_run_through_the_kernels_is_the_torch_run(tiny_cfg, tmp_path, mode, per_step):
    cfg = tiny_cfg(f"compress.mode={mode}", f"compress.backward.mode={mode}", f"train.iterations={STEPS}",
                   "train.print_every=2", "train.eval_every=0", f"train.checkpoint_every={STEPS}",
                   f"train.device={DEV.type}")
    ref, none = _run(cfg, tmp_path / "torch", "torch")
    got, launched = _run(cfg, tmp_path / "triton", "triton")
    assert got == ref and none == 0
    assert launched == STEPS * per_step  # both directions, every step
