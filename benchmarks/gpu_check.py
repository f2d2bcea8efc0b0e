#!/usr/bin/env python
"""The GPU checks, as one JSON report (at most ~5 minutes on one GPU).

1. Single-GPU training of the debug config in off / simulate / codec / fp8 (short runs):
   step time, wire ratio, max error/bound, final AUC.
2. Throughput on the device, GB/s of fp32 input: the batched quantizer, bitpack, and nvcomp
   (ANS, Bitcomp, Cascaded) where the `nvidia-nvcomp-cu13` wheel is installed.
3. Host syncs per training step, counted by CUDA's sync debug mode (every synchronizing call
   warns) on a few steps of each mode, next to the exchange's own count of host reads.
4. The CUDA-only tests (`pytest -m cuda`).

blosc2, pysz and constriction are imported lazily by the modes that need them, so a stock CUDA
torch host runs the check with the core dependencies only.

    python benchmarks/gpu_check.py [--iterations 200] [--skip-tests]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.config import load_config  # noqa: E402
from dlrm_comp.train.loop import Trainer  # noqa: E402

MODES = ["off", "simulate", "codec", "fp8", "codec+dedup"]  # MODE+dedup: compress.dedup=on


def gbps(nbytes: int, fn, repeat: int = 50) -> float:
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return nbytes * repeat / (start.elapsed_time(stop) / 1e3) / 1e9


def throughput() -> dict:
    from dlrm_comp.compress.batch_quant import quantize_batch
    from dlrm_comp.compress.wire import bitpack
    x = torch.randn(26 * 2, 1024 * 64, device="cuda") * 0.05  # the Terabyte step: 52 chunks of 1024x64
    eb = torch.full((x.shape[0],), 0.02, dtype=torch.float64, device="cuda")
    q = quantize_batch(x, eb)
    out = {"shape": list(x.shape), "quantize_GBps": gbps(x.numel() * 4, lambda: quantize_batch(x, eb)),
           "bitpack_GBps": gbps(x.numel() * 4, lambda: bitpack(q.codes, q.bits), repeat=10)}
    try:
        from nvidia import nvcomp
    except ImportError:
        out["nvcomp"] = "not installed (pip install nvidia-nvcomp-cu13)"
        return out
    codes = q.low.reshape(-1).contiguous()
    for algo in ("ANS", "Bitcomp", "Cascaded"):
        codec = nvcomp.Codec(algorithm=algo, cuda_stream=torch.cuda.current_stream().cuda_stream)
        arr = nvcomp.as_array(codes)
        comp = codec.encode(arr)
        out[f"nvcomp_{algo}"] = {"cr_vs_fp32": x.numel() * 4 / comp.buffer_size,
                                 "encode_GBps": gbps(x.numel() * 4, lambda: codec.encode(arr), repeat=20),
                                 "decode_GBps": gbps(x.numel() * 4, lambda: codec.decode(comp), repeat=20)}
    return out


def train(label: str, iterations: int) -> dict:
    mode, _, dedup = label.partition("+")  # MODE+dedup: compress.dedup=on
    cfg = load_config([ROOT / "configs/debug.yaml"], [
        f"compress.mode={mode}", f"compress.dedup={'on' if dedup else 'off'}", f"train.iterations={iterations}", "train.device=cuda", "train.eval_every=0",
        "train.progress=false", "train.tensorboard=false", "data.num_val_samples=4096",
        f"train.print_every={iterations}", f"train.checkpoint_every={iterations}", "compress.print_tables=false"])
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):
        trainer = Trainer(cfg, out)
        t0 = time.perf_counter()
        summary = trainer.run()
        wall = time.perf_counter() - t0
        # host syncs per step: CUDA's sync debug mode warns on every synchronizing call
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for t in range(5):
                trainer.train_step(t)
        torch.cuda.set_sync_debug_mode("default")
    comp = summary.get("compression", {})
    exchange = trainer.exchange
    return {"mode": label, "wall_s": wall, "step_s_mean": summary["step_s_mean"], "auc": summary["final_eval"]["auc"],
            "cr": comp.get("cr"), "max_err_ratio": comp.get("max_err_ratio"),
            "syncs_per_step": len(caught) / 5, "exchange_host_reads": exchange.host_syncs if exchange else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_check", "error": "no CUDA device"}))
        sys.exit(1)
    report = {"benchmark": "gpu_check", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "throughput": throughput(), "training": [train(m, args.iterations) for m in MODES]}
    if not args.skip_tests:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
                              cwd=ROOT, capture_output=True, text=True)
        report["cuda_tests"] = {"returncode": proc.returncode, "tail": proc.stdout.strip().splitlines()[-3:]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
