#!/usr/bin/env python
"""Forward (and backward) embedding all-to-all per compression mode, 2 gloo ranks on CPU, as JSON.

1. Trains the debug config briefly in one process (uncompressed) and keeps, for one batch, every
   table's pooled output and the gradient of the loss with respect to it: real embeddings and
   real gradients, not noise. `--batch` and `--dim` set the shape (dim 64, batch 2048: Terabyte).
2. Spawns `--ranks` gloo processes that own the tables as training would and run the real
   exchange (`dlrm_comp.exchange`, one batched call per step) `--repeat` times per mode, side by
   side with `off`: bytes on the wire (headers included), wall time per exchange, encode/decode
   time, wire ratio `cr` against `ideal_cr` (the codes' order-0 entropy), and the backward ratio
   of the real gradients through the backward exchange at `compress.backward.error_bound` 0.01.
3. Models the end-to-end speedup at the reference's iteration breakdown (forward a2a 31.3%,
   backward a2a 31.3%, allreduce 22.9%, compute 14.5%): each compressed direction's share is
   scaled by `1/CR + B*(1/Tc + 1/Td)` with the measured ratio and throughputs and the stated link
   bandwidth B, with and without the backward direction compressed; also the ratio-only limit
   (infinitely fast codec) so the cost of this machine's codec speed is visible.

    python benchmarks/alltoall.py [--ranks 2] [--batch 128] [--dim 16] [--bandwidth-gbps 1.25 12.5]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.bench.report import end_to_end_speedup, speedup  # noqa: E402
from dlrm_comp.config import load_config  # noqa: E402
from dlrm_comp.distributed.sharding import place_tables, tables_of  # noqa: E402
from dlrm_comp.exchange import Exchange, ProcessGroupTransport  # noqa: E402
from dlrm_comp.recorder import CompressionRecorder  # noqa: E402
from dlrm_comp.runtime import keep_large_allocations  # noqa: E402
from dlrm_comp.train.compression import build_plan, build_policy  # noqa: E402
from dlrm_comp.train.loop import Trainer  # noqa: E402

BREAKDOWN = {"fwd_a2a": 0.313, "bwd_a2a": 0.313, "allreduce": 0.229, "compute": 0.145}
MODES = ["off", "fp16", "bf16", "fp8", "int8", "sz", "codec", "codec:slots"]  # :slots = dist.size_exchange=slots


def capture(iterations: int, batch: int, dim: int, path: Path) -> dict:
    """Pooled outputs and their gradients for one batch of a briefly trained debug model."""
    cfg = load_config([ROOT / "configs/debug.yaml"], [
        "compress.mode=off", f"train.iterations={iterations}", "train.eval_every=0", "train.progress=false",
        "train.tensorboard=false", "data.num_val_samples=4096", f"data.batch_size={batch}",
        f"model.emb_dim={dim}", f"model.bottom_mlp=13-64-{dim}"])
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
        trainer = Trainer(cfg, out)
        trainer.run()
    model = trainer.model
    b = trainer.source.batch("train", iterations + 1, batch)
    pooled = [p.detach().requires_grad_() for p in model.lookup(b.indices, b.offsets)]
    loss = F.binary_cross_entropy_with_logits(model.head(b.dense, pooled), b.labels)
    loss.backward()
    data = {"pooled": [p.detach() for p in pooled], "grads": [p.grad.detach() for p in pooled],
            "cardinalities": trainer.source.cardinalities, "config": cfg.to_dict()}
    torch.save(data, path)
    return data


def worker(rank: int, world: int, path: str, port: int, repeat: int, out: str) -> None:  # noqa: C901
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    keep_large_allocations()  # as training does (train.keep_allocations)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = torch.load(path, weights_only=False)
    cards, dim = data["cardinalities"], data["pooled"][0].shape[1]
    owners = place_tables(cards, dim, world, "contiguous")
    mine = tables_of(owners, rank)
    cfg = load_config([], ["compress.table_preset=kaggle_ref"])
    policy = build_policy(cfg.compress, cards)  # the default bounds after the early stage (m = 1)
    results = {}
    a, b = [(q * len(data["grads"][0]) // world, (q + 1) * len(data["grads"][0]) // world) for q in range(world)][rank]
    for label in MODES:
        mode, _, size_exchange = label.partition(":")
        recorder = CompressionRecorder(len(cards))
        run_cfg = load_config([], [f"compress.mode={mode}", f"compress.backward.mode={mode}",
                                   "compress.table_preset=kaggle_ref"])
        plan = build_plan(run_cfg.compress, len(cards))
        plan.fwd.eb_rel[:] = policy.all(10**9)
        plan.bwd.eb_rel[:] = [0.01] * len(cards)
        ex = Exchange(ProcessGroupTransport(None, "cpu"), owners, dim, plan, recorder, size_exchange or "exact")
        pooled = [data["pooled"][t] for t in mine]
        compress = mode != "off"
        times = []
        for _ in range(repeat):
            dist.barrier()
            t0 = time.perf_counter()
            ex.forward(pooled, compress=compress)
            times.append(time.perf_counter() - t0)
        recorder.flush(repeat, lambda *args, **kwargs: None)  # fold the interval into the totals
        fwd = recorder.direction_summary("fwd", cards, None) or {}
        bwd = {}
        if compress:  # the real gradients of this rank's slice through the backward exchange, once
            grads = [data["grads"][t][a:b] * world for t in range(len(cards))]  # the exchange scales by 1/W
            ex.backward(grads, True, ex.slice_rows(len(data["grads"][0])))
            recorder.flush(repeat + 1, lambda *args, **kwargs: None)
            back = recorder.direction_summary("bwd", cards, None) or {}
            bwd = {k: back.get(k) for k in ("bytes_raw", "bytes_sent", "enc_s", "dec_s")}
        results[label] = {"exchange_s": times, "fwd": {k: fwd.get(k) for k in (
            "bytes_raw", "bytes_sent", "ideal_cr", "enc_s", "dec_s", "max_err_ratio")}, "bwd": bwd,
            "bytes_pad": ex.bytes_pad / repeat}
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def combine(per_rank: list[dict], repeat: int, bandwidths: list[float]) -> list[dict]:
    rows = []
    off_time = None
    for mode in MODES:
        parts = [r[mode] for r in per_rank]
        wall = statistics.median(max(p["exchange_s"][i] for p in parts) for i in range(repeat))
        if mode == "off":
            off_time = wall
            rows.append({"mode": mode, "exchange_s_median": wall, "vs_off_time": 1.0})
            continue
        raw = sum(p["fwd"]["bytes_raw"] for p in parts) / repeat
        sent = sum(p["fwd"]["bytes_sent"] for p in parts) / repeat
        ideal_list = [p["fwd"]["ideal_cr"] for p in parts if p["fwd"]["ideal_cr"]]
        enc = sum(p["fwd"]["enc_s"] for p in parts) / repeat
        dec = sum(p["fwd"]["dec_s"] for p in parts) / repeat
        cr = raw / sent
        tc, td = raw / enc / 1e9, raw / dec / 1e9 if dec else float("inf")
        b_raw = sum(p["bwd"]["bytes_raw"] for p in parts)
        b_sent = sum(p["bwd"]["bytes_sent"] for p in parts)
        b_tc = b_raw / sum(p["bwd"]["enc_s"] for p in parts) / 1e9
        b_dec = sum(p["bwd"]["dec_s"] for p in parts)
        b_td = b_raw / b_dec / 1e9 if b_dec else float("inf")
        row = {"mode": mode, "size_exchange": "slots" if mode.endswith(":slots") else "exact",
               "bytes_pad": sum(p.get("bytes_pad", 0) for p in parts),
               "exchange_s_median": wall, "vs_off_time": wall / off_time,
               "fwd": {"bytes_raw": raw, "bytes_sent": sent, "cr": cr,
                       "ideal_cr": raw / sum(raw / len(parts) / i for i in ideal_list) if ideal_list else None,
                       "encode_GBps": tc, "decode_GBps": td,
                       "max_err_ratio": max((p["fwd"]["max_err_ratio"] or 0) for p in parts)},
               "bwd": {"cr": b_raw / b_sent, "encode_GBps": b_tc, "decode_GBps": b_td, "eb_rel": 0.01},
               "modeled": []}
        if row["fwd"]["ideal_cr"]:
            row["fwd"]["cr_over_ideal"] = cr / row["fwd"]["ideal_cr"]
        for bw in bandwidths:
            s_f = message_speedup(cr, tc, td, bw)
            s_b = message_speedup(b_raw / b_sent, b_tc, b_td, bw)
            row["modeled"].append({"bandwidth_GBps": bw, "fwd_message_speedup": s_f, "bwd_message_speedup": s_b,
                                   "end_to_end_fwd_only": end_to_end(s_f, 1.0),
                                   "end_to_end_fwd_and_bwd": end_to_end(s_f, s_b)})
        row["ratio_only_limit"] = {"end_to_end_fwd_only": end_to_end(cr, 1.0),
                                   "end_to_end_fwd_and_bwd": end_to_end(cr, b_raw / b_sent)}
        rows.append(row)
    return rows


def message_speedup(cr: float, tc: float, td: float, bandwidth: float) -> float:
    """The reference's model: 1 / (1/CR + B*(1/Tc + 1/Td)), all in GB/s of uncompressed bytes."""
    return speedup(cr, tc, td, bandwidth)


def end_to_end(s_fwd: float, s_bwd: float) -> float:
    return end_to_end_speedup(BREAKDOWN["fwd_a2a"], BREAKDOWN["bwd_a2a"], s_fwd, s_bwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=16, help="embedding dim (64 with --batch 2048: Terabyte shape)")
    parser.add_argument("--iterations", type=int, default=800, help="training steps before capturing")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--bandwidth-gbps", type=float, nargs="+", default=[1.25, 12.5],
                        help="link bandwidths for the model, GB/s (1.25 = 10 GbE, 12.5 = 100 Gb/s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "capture.pt", Path(tmp) / "result.pt"
        capture(args.iterations, args.batch, args.dim, path)
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(args.ranks, str(path), port, args.repeat, str(out)), nprocs=args.ranks)
        per_rank = torch.load(out, weights_only=False)
    rows = combine(per_rank, args.repeat, args.bandwidth_gbps)
    print(json.dumps({"benchmark": "alltoall", "ranks": args.ranks, "batch": args.batch, "dim": args.dim,
                      "message": f"{args.batch // args.ranks} rows x dim per (table, destination)",
                      "bounds": "debug config defaults after the early stage (kaggle_ref lists)",
                      "backward_eb_rel": 0.01, "breakdown": BREAKDOWN, "machine": platform.machine(),
                      "torch": torch.__version__, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
