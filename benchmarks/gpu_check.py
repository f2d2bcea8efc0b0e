#!/usr/bin/env python
"""The GPU checks in one run (about 5 minutes on one GPU): JSON on stdout, a short table on stderr.

0. `nvcomp_probe`: nvcomp's batched ANS through its C API, round-tripped once in a child process
   (where it fails, the rest runs with the device path's identity stage, and the report says so).
1. `steps`: the training step of every mode against `off`, on the debug config and the
   Terabyte-shaped one (`configs/terabyte.yaml`, `data.max_ind_range=200000`), in interleaved
   blocks of the Trainer's own steps (as `train_throughput.py`); per mode the median step and its
   ratio to off, and per step (from `torch.profiler` over a few steps) the kernel launches, the
   host-to-device and device-to-host copies and the synchronizing calls, beside CUDA's sync debug
   mode's count of host syncs.
2. `stages`: quantize and reconstruct throughput on the Terabyte step's forward (52 chunks of
   1024x64 fp32, Gaussian with a scale per chunk, relative bound 0.02) per implementation
   (Triton, the torch ops, `torch.compile` of them: `compress/device/throughput.py`, with their
   launch counts) beside a device copy's bandwidth; the lossless stage on the same codes: nvcomp
   ANS over one buffer (the `gpu` extra) against zstd level 1 on the host, ratio and GB/s.
3. `codecs`: every mode's whole codec (`compress/codecs/offline.roundtrip`: quantize, assemble,
   lossless, and back) on the same chunks: ratio, encode and decode GB/s, max error / bound, and
   the modeled speedup `1 / (1/CR + B (1/Tc + 1/Td))` at 100, 200 and 400 Gbit/s per GPU.
3b. `device_codec`: `codec` on its device message path (`compress.message_path=device`,
   `compress/device_wire.py`) over the same chunks as two destinations' messages (26 tables x 2,
   1024 x 64 each): encode (quantize, assemble, the one lossless call: nvcomp ANS on CUDA where
   the `gpu` extra imports, else the identity stage) and decode GB/s of fp32 input, its ratio
   beside zstd level 1 on the same uncoded messages (a call per destination, on the host) and the
   host path's own ratio, and the modeled speedup at 100, 200 and 400 Gbit/s from those figures;
   `lossless_sweep`: the lossless stage alone (nvcomp's ANS) by chunk size and interleaved states.
4. `distributed`: torchrun with NCCL at world size 1 (NCCL refuses two ranks on one GPU), and two
   gloo ranks with CUDA compute, each training the debug config with compression.
5. `cuda_tests`: the suite's CUDA-only tests (`pytest -m cuda`); tests needing optional packages
   (optuna, blosc2, pysz, constriction, torchrec) skip on a host without them.

    python benchmarks/gpu_check.py [--iterations 60] [--skip-tests] [--skip-distributed] [--out FILE]

`--device cpu --quick` runs every section on the CPU at a toy size (the test suite does, so this
script cannot rot between GPU sessions); its figures mean nothing for a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.bench.report import speedup  # noqa: E402
from dlrm_comp.compress.batch_quant import quantize_batch  # noqa: E402
from dlrm_comp.compress.codecs.offline import roundtrip  # noqa: E402
from dlrm_comp.compress.timing import best_time  # noqa: E402

# codec: compress.message_path=auto, the device message path on CUDA with nvcomp; codec+host: the host path beside it
MODES = ["off", "simulate", "codec", "codec+host", "codec+dedup", "fp16", "bf16", "fp8", "int8", "mx4"]
CONFIGS = {"debug": ("configs/debug.yaml", []),
           "terabyte": ("configs/terabyte.yaml", ["data.max_ind_range=200000"])}
LINKS_GBIT = (100, 200, 400)
STEP_SHAPE, QUICK_SHAPE = (52, 1024 * 64), (4, 64 * 16)  # the Terabyte step's forward chunks; a toy
COPY_NAMES = {"h2d": ("HtoD",), "d2h": ("DtoH",)}
LAUNCH_NAMES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")
SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy ")


def _train_throughput():
    """`benchmarks/train_throughput.py`'s `Run` (one config x mode, stepped in blocks)."""
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks/train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- 0. nvcomp's probe
PROBE = """
import sys, torch
from dlrm_comp.compress.device_stages import ChunkedStage
from dlrm_comp.compress.nvcomp_batched import BatchedAns
g = torch.Generator().manual_seed(0)
codes = torch.randint(0, 6, (3_000_000,), generator=g).to(torch.uint8).cuda()
sizes = [1_000_000, 16, 1_999_984]
stage = ChunkedStage(BatchedAns())
coded, coded_sizes = stage.encode(codes, sizes)
host = coded_sizes.tolist()
out, starts = stage.decode(coded[:sum(host)], host, sizes)
same = all(torch.equal(out[s:s + n], codes[a:a + n]) for s, n, a in zip(starts, sizes, [0, 1_000_000, 1_000_016]))
print(same, codes.numel() / sum(host))
"""


def nvcomp_probe(device: torch.device) -> dict:
    """nvcomp's batched ANS through its C API (``compress/nvcomp_batched.py``) once, in a child
    process: a wrong call there can crash a process, and this one holds the whole report. Where
    it fails, the run goes on with the device path's identity stage (and says so)."""
    from dlrm_comp.compress import device_stages
    if device.type != "cuda" or not device_stages.nvcomp_ready():
        return {"ran": False, "why": "no CUDA device" if device.type != "cuda" else
                "nvcomp's library is absent (pip install '.[gpu]')"}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    words = proc.stdout.split()
    ok = proc.returncode == 0 and words[:1] == ["True"]
    if not ok:
        device_stages.nvcomp_ready = lambda: False  # codec's `auto` takes the host path, as without nvcomp
    return {"ran": True, "ok": ok, "returncode": proc.returncode, "cr": float(words[1]) if ok else None,
            "error": None if ok else (proc.stderr or proc.stdout)[-2000:]}


# ----------------------------------------------------------------------------- 1. steps
def step_counts(trainer, steps: int, device: torch.device) -> dict:
    """Per step: kernel launches, copies each way and synchronizing calls (torch.profiler), and
    host syncs by CUDA's sync debug mode (every synchronizing call warns)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = trainer.start_iteration + len(trainer.step_times) + 1000  # fresh batches, past the timed ones
    _sync(device)
    with profile(activities=activities) as prof:
        for t in range(start, start + steps):
            trainer.train_step(t)
        _sync(device)
    names = [e.name for e in prof.events()]

    def count(keys) -> float:
        return sum(1 for n in names if any(k in n for k in keys)) / steps
    out = {"kernel_launches": count(LAUNCH_NAMES), "h2d_copies": count(COPY_NAMES["h2d"]),
           "d2h_copies": count(COPY_NAMES["d2h"]), "sync_calls": count(SYNC_NAMES)}
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for t in range(start + steps, start + 2 * steps):
                trainer.train_step(t)
        torch.cuda.set_sync_debug_mode("default")
        out["host_syncs"] = len(caught) / steps
    return out


def steps(configs: list[str], modes: list[str], iterations: int, block: int, warmup: int, device: torch.device,
          extra: list[str]) -> list[dict]:
    tt = _train_throughput()
    rows = []
    for name in configs:
        path, overrides = CONFIGS[name]
        blocks = max(1, iterations // block)
        runs = [(mode, tt.Run(ROOT / path, [*overrides, *extra, f"train.device={device}",
                                            f"train.iterations={warmup + blocks * block + 10_000}",
                                            *tt.mode_overrides(mode)], warmup, blocks * block))
                for mode in modes]
        for _ in range(blocks):  # interleaved: a noisy moment costs every mode alike
            for _, run in runs:
                run.step(block)
        off = None
        for mode, run in runs:
            median = statistics.median(run.times)
            counts = step_counts(run.trainer, 3, device)
            result = run.result()
            off = off if off is not None else median
            rows.append({"config": name, "mode": mode, "batch_size": result["batch_size"],
                         "step_ms": median * 1e3, "vs_off": median / off, **counts})
    return rows


# ----------------------------------------------------------------------------- 2. stages
def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds else float("inf")


def stages(device: torch.device, quick: bool) -> dict:
    """Quantize and reconstruct per implementation (`compress/device`: Triton, the torch ops, and
    `torch.compile` of them; the CPU smoke run: the torch ops), a device copy beside them, and the
    lossless stage on the codes of the path training takes."""
    from dlrm_comp.compress.device import available as triton_available
    from dlrm_comp.compress.device.throughput import IMPLS, quantize_throughput, step_batch
    shape = QUICK_SHAPE if quick else STEP_SHAPE
    impls = [i for i in IMPLS if device.type == "cuda" and (i != "triton" or triton_available())] or ["torch"]
    kernels = [quantize_throughput(device, impl, *shape, repeat=3 if quick else 20) for impl in impls]
    chosen = kernels[0]  # the path training takes: Triton where it imports, else the torch ops
    x = step_batch(device, *shape)
    eb = torch.full((x.shape[0],), 0.02, dtype=torch.float64, device=device)
    nbytes = x.numel() * x.element_size()
    q = quantize_batch(x, eb)
    out = {"shape": list(x.shape), "bytes": nbytes, "quantize_GBps": chosen["quantize_GBps"],
           "reconstruct_GBps": chosen["reconstruct_GBps"], "device_copy_GBps": chosen["copy_GBps"],
           "kernels": kernels}
    codes = q.low.reshape(-1).contiguous()
    host_codes = codes.cpu().numpy().tobytes()
    import zstandard
    zc = zstandard.ZstdCompressor(level=1)
    per_chunk = len(host_codes) // x.shape[0]
    blocks = [host_codes[i:i + per_chunk] for i in range(0, len(host_codes), per_chunk)]
    coded, zstd_s = best_time(lambda: [zc.compress(b) for b in blocks], 3)
    out["zstd1_host"] = {"cr_vs_fp32": nbytes / sum(map(len, coded)), "encode_GBps": gbps(nbytes, zstd_s)}
    out["nvcomp_ans"] = nvcomp_ans(codes, nbytes, out["zstd1_host"]["cr_vs_fp32"], device)
    return out


def nvcomp_ans(codes: torch.Tensor, nbytes: int, zstd_cr: float, device: torch.device) -> dict | str:
    if device.type != "cuda":
        return "needs a CUDA device"
    try:
        from nvidia import nvcomp
    except ImportError:
        return "not installed (pip install '.[gpu]': nvidia-nvcomp-cu13)"
    codec = nvcomp.Codec(algorithm="ANS", cuda_stream=torch.cuda.current_stream().cuda_stream)
    arr = nvcomp.as_array(codes)
    comp = codec.encode(arr)
    _, enc_s = best_time(lambda: codec.encode(arr), 10, device=device)
    _, dec_s = best_time(lambda: codec.decode(comp), 10, device=device)
    cr = nbytes / comp.buffer_size
    return {"cr_vs_fp32": cr, "cr_vs_zstd1": cr / zstd_cr, "encode_GBps": gbps(nbytes, enc_s),
            "decode_GBps": gbps(nbytes, dec_s)}


# ----------------------------------------------------------------------------- 3. codecs
def codecs(device: torch.device, quick: bool) -> list[dict]:
    from dlrm_comp.compress.device.throughput import step_batch
    x = step_batch(device, *(QUICK_SHAPE if quick else STEP_SHAPE))
    dim = 16 if quick else 64
    chunks = [c.reshape(-1, dim) for c in x]
    rows = []
    for mode in [m for m in MODES if m != "off" and "+" not in m]:
        rt = roundtrip(mode, chunks, 0.02, reps=2 if quick else 5)
        tc, td = rt.bytes_raw / rt.enc_s, rt.bytes_raw / rt.dec_s
        rows.append({"mode": mode, "cr": rt.cr, "encode_GBps": tc / 1e9, "decode_GBps": td / 1e9,
                     "max_err_ratio": rt.max_err_ratio,
                     **{f"speedup_{g}gbit": speedup(rt.cr, tc, td, g * 1e9 / 8) for g in LINKS_GBIT}})
    return rows


def device_codec(device: torch.device, quick: bool) -> dict:
    """`codec`'s device message path on the Terabyte step's forward (see the module docstring)."""
    import numpy as np
    from dlrm_comp.compress import device_wire
    from dlrm_comp.compress.codecs.base import ChunkLayout
    from dlrm_comp.compress.device.throughput import step_batch
    from dlrm_comp.compress.modes import build_codec
    from dlrm_comp.exchange.plan import DirectionPlan
    chunks, n = QUICK_SHAPE if quick else STEP_SHAPE
    dim = 16 if quick else 64
    tables, rows = chunks // 2, n // dim
    x = step_batch(device, chunks, n).reshape(-1, dim)
    eb = torch.full((chunks,), 0.02, dtype=torch.float64, device=device)
    lay = ChunkLayout([list(range(tables))] * 2, [np.full(tables, rows, np.int64)] * 2,
                      [(0, rows), (rows, 2 * rows)], dim)
    plan = DirectionPlan("codec", tables, eb_rel=[0.02] * tables, message_path="device")
    codec = build_codec("codec", plan, None, device)
    reps = 3 if quick else 20
    enc, enc_s = best_time(lambda: codec.encode(x, eb, lay), reps, device=device)
    got = device_wire.DeviceReceived.looped(enc.payload, enc.sizes)
    y, dec_s = best_time(lambda: codec.decode(got, lay, x.dtype), reps, device=device)
    codec.check_messages()
    nbytes = x.numel() * x.element_size()
    cr = nbytes / sum(got.sizes)
    err = float(enc.err_ratio.max())
    tc, td = nbytes / enc_s, nbytes / dec_s
    out = {"shape": [chunks, n], "messages": 2, "stage": plan.device_stage, "cr": cr,
           "encode_GBps": tc / 1e9, "decode_GBps": td / 1e9, "max_err_ratio": err,
           "bit_identical_to_host_path": None, "zstd1_cr": None, "cr_vs_zstd1": None, "host_path_cr": None,
           **{f"speedup_{g}gbit": speedup(cr, tc, td, g * 1e9 / 8) for g in LINKS_GBIT}}
    raw = device_wire.assemble(*_quantized(codec, x, eb, lay))  # the uncoded messages
    try:
        import zstandard
        zc = zstandard.ZstdCompressor(level=1)
        host = raw.cpu().numpy().tobytes()
        at = np.concatenate([[0], np.cumsum(codec._device_layout(lay, x.dtype, device).sizes)])
        z = sum(len(zc.compress(host[a:b])) for a, b in zip(at[:-1], at[1:]))
        out["zstd1_cr"] = nbytes / z
        out["cr_vs_zstd1"] = cr / out["zstd1_cr"]
    except ImportError:
        out["zstd1_cr"] = "zstandard not installed"
    try:
        host_plan = DirectionPlan("codec", tables, eb_rel=[0.02] * tables, message_path="host")
        host_codec = build_codec("codec", host_plan, None, device)
        henc = host_codec.encode(x, eb, lay)
        out["host_path_cr"] = nbytes / sum(len(m) for m in henc.messages)
        y_host = host_codec.decode(henc.messages, lay, x.dtype)
        out["bit_identical_to_host_path"] = bool(torch.equal(y.view(torch.int32), y_host.view(torch.int32)))
    except ImportError as e:  # the default host coder's package absent on a bare GPU host
        out["host_path_cr"] = f"not measured: {e}"
    sizes = codec._device_layout(lay, x.dtype, device).sizes
    out["lossless_sweep"] = lossless_sweep(raw, sizes, nbytes, out["zstd1_cr"], device, 3 if quick else 20)
    return out


SWEEP_CHUNKS = (1 << 16, 1 << 18, 1 << 20)  # the chunked stage's chunk: nvcomp's advice, and larger


def lossless_sweep(raw: torch.Tensor, sizes: list[int], nbytes: int, zstd_cr, device: torch.device,
                   reps: int) -> list[dict] | str:
    """The device path's lossless stage alone on the uncoded messages: nvcomp's ANS by chunk size
    and interleaved states (a chunk's framing and nvcomp's per-sub-chunk states cost ratio, fewer
    chunks cost parallelism): ratio (fp32 bytes over coded), its share of zstd level 1's, and
    encode and decode GB/s of fp32 input, to choose ``ChunkedStage``'s defaults by measurement."""
    from dlrm_comp.compress import device_stages, nvcomp_batched
    if device.type != "cuda" or not device_stages.nvcomp_ready():
        return "not run: needs CUDA and nvcomp's library"
    rows = []
    for chunk in SWEEP_CHUNKS:
        for states in (0, 1):
            stage = device_stages.ChunkedStage(nvcomp_batched.BatchedAns(states), chunk)
            (coded, coded_sizes), enc_s = best_time(lambda: stage.encode(raw, sizes), reps, device=device)
            host = [int(v) for v in coded_sizes.tolist()]
            got = coded[:sum(host)]
            (out, starts), dec_s = best_time(lambda: stage.decode(got, host, sizes), reps, device=device)
            same = all(torch.equal(out[a:a + n], raw[b:b + n]) for a, n, b in
                       zip(starts, sizes, [0, *itertools.accumulate(sizes)][:-1]))
            cr = nbytes / sum(host)
            rows.append({"chunk": chunk, "states_per_lane": states, "cr": cr, "round_trip": same,
                         "cr_vs_zstd1": cr / zstd_cr if isinstance(zstd_cr, float) else None,
                         "encode_GBps": nbytes / enc_s / 1e9, "decode_GBps": nbytes / dec_s / 1e9})
    return rows


def _quantized(codec, x, eb, lay):
    from dlrm_comp.compress.batch_quant import quantize_batch
    from dlrm_comp.compress.codecs.base import pad_chunks
    chunks, counts = pad_chunks(x, lay.chunk_rows, lay.dim)
    return quantize_batch(chunks, eb, counts), chunks, codec._device_layout(lay, x.dtype, x.device)


# ----------------------------------------------------------------------------- 4. distributed
def nccl_world1(device: torch.device) -> None:
    """The exchange over NCCL in one process (NCCL refuses two ranks on one GPU, and the trainer
    starts no process group for one process): codec forward within its bound, fp16 backward, with
    exact sizes and with slots. Prints one JSON line; exits non-zero on a failure. (On the CPU:
    the same over gloo, for the smoke run.)"""
    import torch.distributed as dist

    from dlrm_comp.exchange import CompressionPlan, DirectionPlan, Exchange, ProcessGroupTransport
    from dlrm_comp.recorder import CompressionRecorder
    port = os.environ.get("GPU_CHECK_PORT", "29517")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    tables, batch, dim, eb = 5, 256, 16, 0.02
    result = {}
    for sizes in ("exact", "slots"):
        plan = CompressionPlan(DirectionPlan("codec", tables, eb_rel=[eb] * tables), DirectionPlan("fp16", tables))
        lossy = Exchange(ProcessGroupTransport(None, device), [0] * tables, dim, plan, CompressionRecorder(tables),
                         size_exchange=sizes)
        pooled = [(torch.randn(batch, dim, device=device) * (t + 1)).requires_grad_() for t in range(tables)]
        for _ in range(3):  # slots learn their sizes over a few steps
            got = lossy(pooled, compress=True)
        with torch.no_grad():
            ratio = max(float((g - p).abs().max() / (eb * (p.max() - p.min()))) for g, p in zip(got, pooled))
        sum(g.sum() * (t + 1) for t, g in enumerate(got)).backward()
        grad_ok = all(torch.allclose(p.grad, torch.full_like(p.grad, float(t + 1)), rtol=1e-3)
                      for t, p in enumerate(pooled))
        result[sizes] = {"max_err_ratio": ratio, "backward_ok": grad_ok}
        if not (ratio <= 1.0 and grad_ok):
            print(json.dumps(result))
            sys.exit(1)
    dist.destroy_process_group()
    print(json.dumps(result))


def distributed(device: torch.device, iterations: int) -> list[dict]:
    """NCCL at world size 1 (gloo on the CPU), then two gloo ranks training with compression."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--nccl-world1", "--device", str(device)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    lines = proc.stdout.strip().splitlines()
    world1 = {"check": "nccl_world1" if device.type == "cuda" else "gloo_world1", "ranks": 1,
              "returncode": proc.returncode, "wall_s": time.perf_counter() - t0,
              "result": json.loads(lines[-1]) if lines and lines[-1].startswith("{") else proc.stderr[-600:]}
    overrides = ["train.progress=false", "train.tensorboard=false", "compress.print_tables=false",
                 f"train.iterations={iterations}", f"train.print_every={iterations}", "train.eval_every=0",
                 f"train.checkpoint_every={iterations}", "data.num_val_samples=4096", f"train.device={device}",
                 "dist.backend=gloo", "compress.mode=codec", "compress.backward.mode=fp16", "compress.dedup=on"]
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "launch/train.py"), "--config", str(ROOT / "configs/debug.yaml"), "--set", *overrides,
               "--out", run]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        gloo = {"check": "gloo_2ranks", "ranks": 2, "returncode": proc.returncode, "wall_s": time.perf_counter() - t0}
        summary = Path(run) / "summary.json"
        if proc.returncode == 0 and summary.exists():
            s = json.loads(summary.read_text())
            comp = s.get("compression", {})
            gloo.update(auc=s["final_eval"]["auc"], cr=comp.get("cr"), max_err_ratio=comp.get("max_err_ratio"))
        else:
            gloo["tail"] = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return [world1, gloo]


def cuda_tests() -> dict:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    return {"returncode": proc.returncode, "tail": proc.stdout.strip().splitlines()[-3:]}


def table(report: dict) -> str:
    lines = ["config    mode          step ms  vs off  launches  h2d  d2h  syncs"]
    for r in report["steps"]:
        lines.append(f"{r['config']:<9} {r['mode']:<12} {r['step_ms']:8.2f} {r['vs_off']:6.2f}x "
                     f"{r['kernel_launches']:8.0f} {r['h2d_copies']:4.0f} {r['d2h_copies']:4.0f} "
                     f"{r.get('host_syncs', r['sync_calls']):5.0f}")
    s = report["stages"]
    lines.append(f"quantize {s['quantize_GBps']:.1f} GB/s, reconstruct {s['reconstruct_GBps']:.1f} GB/s, "
                 f"device copy {s['device_copy_GBps']:.1f} GB/s")
    for r in report["codecs"]:
        lines.append(f"codec {r['mode']:<9} cr {r['cr']:6.2f}  enc {r['encode_GBps']:7.2f} GB/s  dec "
                     f"{r['decode_GBps']:7.2f} GB/s  speedup@100/200/400 Gbit/s " +
                     " ".join(f"{r[f'speedup_{g}gbit']:.2f}" for g in LINKS_GBIT))
    d = report.get("device_codec")
    if d:
        def fmt(v):
            return f"{v:.2f}" if isinstance(v, float) else str(v)
        lines.append(f"codec on the device path ({d['stage']}): cr {d['cr']:.2f} (zstd-1 {fmt(d['zstd1_cr'])}, host "
                     f"path {fmt(d['host_path_cr'])})  enc {d['encode_GBps']:.2f} GB/s  "
                     f"dec {d['decode_GBps']:.2f} GB/s  "
                     "speedup@100/200/400 Gbit/s " + " ".join(f"{d[f'speedup_{g}gbit']:.2f}" for g in LINKS_GBIT))
        for r in d["lossless_sweep"] if isinstance(d.get("lossless_sweep"), list) else []:
            lines.append(f"  nvcomp ANS chunk {r['chunk'] >> 10:5d} KiB states {r['states_per_lane']}: cr {r['cr']:.2f} "
                         f"({fmt(r['cr_vs_zstd1'])} of zstd-1)  enc {r['encode_GBps']:.1f} GB/s  "
                         f"dec {r['decode_GBps']:.1f} GB/s  round trip {r['round_trip']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iterations", type=int, default=60, help="timed steps per mode and config")
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="toy sizes, the debug config only (a smoke run)")
    parser.add_argument("--modes", nargs="+", default=MODES)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-distributed", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--nccl-world1", action="store_true", help=argparse.SUPPRESS)  # the child of `distributed`
    args = parser.parse_args()
    if args.nccl_world1:
        return nccl_world1(torch.device(args.device))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_check", "error": "no CUDA device (use --device cpu for a smoke run)"}))
        sys.exit(1)
    if "off" not in args.modes[:1]:
        parser.error("--modes: the first mode must be off (every ratio is against it)")
    quick = ["data.num_val_samples=1024" if args.quick else "data.num_val_samples=16384"]  # no evaluation runs
    report = {"benchmark": "gpu_check", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__}
    def save() -> None:  # after every section: a section that crashes the process leaves the others
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
        report["nvcomp_probe"] = nvcomp_probe(device)
        save()
        report["steps"] = steps(["debug"] if args.quick else list(CONFIGS), args.modes, args.iterations, args.block,
                                2 if args.quick else 10, device, quick)
        save()
        report["stages"] = stages(device, args.quick)
        report["codecs"] = codecs(device, args.quick)
        save()
        report["device_codec"] = device_codec(device, args.quick)
        save()
        if not args.skip_distributed:
            report["distributed"] = distributed(device, 20 if args.quick else 100)
            save()
        if not args.skip_tests:
            report["cuda_tests"] = cuda_tests()
    save()
    print(json.dumps(report, indent=2))
    print(table(report), file=sys.stderr)


if __name__ == "__main__":
    main()
