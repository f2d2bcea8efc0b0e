"""Every device kernel compiles for the H100's target (sm_90) without a GPU, and its PTX keeps the
tested arithmetic: no fused multiply-add, no approximate division, no flush-to-zero
(``compress/device/ptx_check.py``; with Triton's default FMA contraction several kernels would
contract, which is what ``launches.launch`` turns off)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton does not import (the dev extra installs it)",
                    exc_type=ImportError)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_kernels_compile_for_sm90_with_the_tested_arithmetic():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "dlrm_comp.compress.device.ptx_check", "--arch", "90"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    kernels = {k.split("[")[0] for k in report}
    assert kernels == {"_range_kernel", "_code_kernel", "_finish_kernel", "_dequant_kernel", "_mx4_quant_kernel",
                       "_mx4_dequant_kernel", "_int8_encode_kernel", "_int8_decode_kernel", "_fp8_amax_kernel",
                       "_fp8_encode_kernel", "_fp8_decode_kernel", "_fp8_decode_messages_kernel"}
    assert len(report) == 24  # the quantizer's four kernels over four dtypes (and x_hat): 16; fixed-rate: 8
    bad = {k: v for k, v in report.items() if any(v.values())}
    assert not bad, bad
