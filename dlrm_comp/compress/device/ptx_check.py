"""Compile every device kernel for an NVIDIA target without a GPU, and read its PTX.

Why: the interpreter tests prove the arithmetic, but not that the kernels compile, nor that the
compiled code keeps that arithmetic. This drives each Python wrapper on small CPU tensors with
the launcher replaced by ``triton.compile`` (Triton's bundled ptxas; no driver needed) and counts,
in the PTX, the instructions that would break bit-identity: fused multiply-adds (``fma``),
approximate divisions (``div.approx``/``div.full``) and flush-to-zero (``.ftz``). All must be 0.

    python -m dlrm_comp.compress.device.ptx_check [--arch 90]   # JSON, one entry per kernel variant

Run it in a process without ``TRITON_INTERPRET`` (the kernels must be compiled functions).
"""
from __future__ import annotations

import argparse
import json
import re

import numpy as np
import torch

PATTERNS = {"fma": r"\bfma\.", "div_approx": r"\bdiv\.(?:approx|full)\.", "ftz": r"\.ftz\b"}


def _compiler(arch: int, out: dict, fp_fusion: bool = False):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import mangle_type

    target = GPUTarget("cuda", arch, 32)

    def compile_launch(kernel, grid, *args, **kwargs):
        names = kernel.arg_names
        sig, consts = {}, {}
        for name, value in zip(names, args):
            sig[name] = mangle_type(value)
        for name, value in kwargs.items():
            sig[name], consts[name] = "constexpr", value
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=target,
                                  options={"enable_fp_fusion": fp_fusion})
        ptx = compiled.asm["ptx"]
        key = f"{kernel.__name__}[{','.join(f'{k}={v}' for k, v in consts.items() if not isinstance(v, float))}]"
        out[key] = {p: len(re.findall(rx, ptx)) for p, rx in PATTERNS.items()}
    return compile_launch


def check(arch: int = 90, fp_fusion: bool = False) -> dict:
    """{kernel variant: {pattern: count}} for every kernel the wrappers launch (``fp_fusion``:
    compile as Triton would by default, to see what the launcher's option prevents)."""
    from dlrm_comp.compress.device import fixed, quant
    out: dict = {}
    launch = _compiler(arch, out, fp_fusion)
    quant.launch = fixed.launch = launch
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = torch.zeros(3, 40, dtype=dtype)
        for x_hat in (False, True):
            quant.quantize_batch(x, np.full(3, 0.01), np.array([40, 20, 40]), block=16, x_hat=x_hat)
        u8 = torch.zeros(3, 40, dtype=torch.uint8)
        f64 = torch.zeros(3, dtype=torch.float64)
        quant.dequantize_planes(torch.zeros(3, dtype=torch.uint8), f64, f64, torch.zeros(3, dtype=torch.int64), u8, u8,
                                x, dtype)
    rows = torch.zeros(10, 16)
    fixed.quantize_mx4(rows.view(-1, 32))
    fixed.dequantize_mx4(torch.zeros(5, 17, dtype=torch.uint8))
    fixed.int8_encode_rows(rows)
    fixed.int8_decode_rows(torch.zeros(10, 24, dtype=torch.uint8))
    chunk = torch.zeros(10, dtype=torch.int64)
    fixed.fp8_encode_rows(rows, chunk, 2)
    fixed.fp8_decode_rows(torch.zeros(10, 16, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8), chunk)
    fixed.fp8_decode_messages(torch.zeros(168, dtype=torch.uint8), torch.zeros(14, dtype=torch.int64), 10, 16, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    print(json.dumps(check(parser.parse_args().arch), indent=1))


if __name__ == "__main__":
    main()
