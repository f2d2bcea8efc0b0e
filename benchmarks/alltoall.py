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
   `+dedup` modes send one row per distinct bag (the captured batch's ids), in both directions;
   their `fwd.distinct_fraction` is the measured share of distinct bags. `codec+dedup+cache` adds
   the cross-step row cache (`compress.row_cache=on`): a cache needs steps, so its `--repeat`
   exchanges run over that many consecutive training batches captured after the first (the model
   keeps training between them, so rows drift as in a run; the first exchange starts cold); its
   `fwd.cache_hit_fraction` is the share of distinct rows the cache served.
   With `--backend torchrec` (or `both`) the same tensors also cross TorchRec's pooled-embedding
   output dist (torchrec 1.8.0): its own all-to-all (`off`), its QComms codecs
   (`torchrec_qcomm:fp16|bf16|int8`; fp8 has no CPU kernel) and our exchange installed as the
   output dist (`codec`), one row each with `backend: torchrec`, timed against TorchRec's own `off`.
3. Models the end-to-end speedup at the reference's iteration breakdown (forward a2a 31.3%,
   backward a2a 31.3%, allreduce 22.9%, compute 14.5%): each compressed direction's share is
   scaled by `1/CR + B*(1/Tc + 1/Td)` with the measured ratio and throughputs and the stated link
   bandwidth B, with and without the backward direction compressed; also the ratio-only limit
   (infinitely fast codec) so the cost of this machine's codec speed is visible.

    python benchmarks/alltoall.py [--ranks 2] [--batch 128] [--dim 16] [--bandwidth-gbps 1.25 12.5]
                                  [--backend torch|torchrec|both]
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

from dlrm_comp.bench.report import REFERENCE_BREAKDOWN, end_to_end_speedup, speedup, throughput  # noqa: E402
from dlrm_comp.compress.modes import BYTE_MESSAGES, FIXED_RATE, TORCHREC_QCOMM_MODES  # noqa: E402
from dlrm_comp.config import load_config  # noqa: E402
from dlrm_comp.distributed.sharding import place_tables, tables_of  # noqa: E402
from dlrm_comp.exchange import Exchange, ProcessGroupTransport  # noqa: E402
from dlrm_comp.recorder import CompressionRecorder  # noqa: E402
from dlrm_comp.runtime import keep_large_allocations  # noqa: E402
from dlrm_comp.train.compression_plan import build_plan  # noqa: E402
from dlrm_comp.train.loop import Trainer  # noqa: E402

BREAKDOWN = REFERENCE_BREAKDOWN
# :slots = dist.size_exchange=slots; +dedup = compress.dedup=on (one row per distinct bag, both directions)
MODES = ["off", "off+dedup", *FIXED_RATE, *BYTE_MESSAGES, "codec+dedup", "codec+dedup+cache",
         "codec:slots"]  # simulate sends no bytes
TORCHREC_MODES = ["off", *(m for m in TORCHREC_QCOMM_MODES if m != "torchrec_qcomm:fp8"), "codec"]  # fp8: no CPU kernel


def capture(iterations: int, batch: int, dim: int, path: Path, steps: int = 0) -> dict:
    """Pooled outputs and their gradients for one batch of a briefly trained debug model, and
    (``steps``) the pooled outputs and ids of that many further batches, training on each."""
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
            "bags": b, "cardinalities": trainer.source.cardinalities, "config": cfg.to_dict(), "steps": []}
    for k in range(steps):  # consecutive batches, an SGD step on each (what the row cache sees)
        b = trainer.source.batch("train", iterations + 2 + k, batch)
        trainer.optimizer.zero_grad()
        out = model.lookup(b.indices, b.offsets)
        data["steps"].append({"pooled": [p.detach().clone() for p in out], "bags": b})
        F.binary_cross_entropy_with_logits(model.head(b.dense, out), b.labels).backward()
        trainer.optimizer.step()
    torch.save(data, path)
    return data


def worker(rank: int, world: int, path: str, port: int, repeat: int, out: str, backends=("torch",)) -> None:  # noqa: C901
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    keep_large_allocations()  # as training does (train.keep_allocations)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = torch.load(path, weights_only=False)
    cards, dim = data["cardinalities"], data["pooled"][0].shape[1]
    owners = place_tables(cards, dim, world, "contiguous")
    mine = tables_of(owners, rank)
    cfg = load_config([], ["compress.table_preset=kaggle_ref"])
    policy = cfg.compress.bounds.build(cards, cfg.compress.decay)  # the default bounds after the early stage (m = 1)
    results = {}
    a, b = [(q * len(data["grads"][0]) // world, (q + 1) * len(data["grads"][0]) // world) for q in range(world)][rank]
    for label in (MODES if "torch" in backends else []):
        base, *extras = label.split("+")
        dedup, cache = "dedup" if "dedup" in extras else "", "cache" in extras
        mode, _, size_exchange = base.partition(":")
        recorder = CompressionRecorder(len(cards))
        run_cfg = load_config([], [f"compress.mode={mode}", f"compress.backward.mode={mode}",
                                   "compress.table_preset=kaggle_ref",
                                   *(["compress.dedup=on", "compress.row_cache=on"] if cache else [])])
        plan = build_plan(run_cfg.compress, len(cards))
        plan.fwd.eb_rel[:] = policy.all(10**9)
        plan.bwd.eb_rel[:] = [0.01] * len(cards)
        plan.dedup[:] = [dedup == "dedup"] * len(cards)
        bags = data["bags"] if dedup else None
        ex = Exchange(ProcessGroupTransport(None, "cpu"), owners, dim, plan, recorder, size_exchange or "exact")
        pooled = [data["pooled"][t] for t in mine]
        compress = label != "off"
        times = []
        for i in range(repeat):
            if cache:  # consecutive batches: the cache's hits are those of a run
                pooled, bags = [data["steps"][i]["pooled"][t] for t in mine], data["steps"][i]["bags"]
            dist.barrier()
            t0 = time.perf_counter()
            ex.forward(pooled, compress=compress, bags=bags)
            times.append(time.perf_counter() - t0)
        recorder.flush(repeat, lambda *args, **kwargs: None)  # fold the interval into the totals
        fwd = recorder.direction_summary("fwd", cards, None) or {}
        bwd = {}
        if compress:  # the real gradients of this rank's slice through the backward exchange, once
            grads = [data["grads"][t][a:b] * world for t in range(len(cards))]  # the exchange scales by 1/W
            ex.backward(grads, True, ex.bag_index(len(data["grads"][0]), bags))
            recorder.flush(repeat + 1, lambda *args, **kwargs: None)
            back = recorder.direction_summary("bwd", cards, None) or {}
            bwd = {k: back.get(k) for k in ("bytes_raw", "bytes_sent", "enc_s", "dec_s")}
        results[label] = {"exchange_s": times, "fwd": {k: fwd.get(k) for k in (
            "bytes_raw", "bytes_sent", "ideal_cr", "enc_s", "dec_s", "max_err_ratio", "distinct_fraction",
            "cache_hit_fraction")}, "bwd": bwd,
            "bytes_pad": ex.bytes_pad / repeat}
    if "torchrec" in backends:
        results["torchrec"] = torchrec_rows(data, owners, mine, policy, repeat)
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def torchrec_rows(data: dict, owners: list[int], mine: list[int], policy, repeat: int) -> dict:
    """The owner's pooled tables `[B, D_local]` through TorchRec's output dist: its own all-to-all,
    its QComms codecs (counted), and our exchange as the output dist; per mode, this rank's times
    and bytes."""
    from torchrec.distributed.dist_data import PooledEmbeddingsAllToAll

    from dlrm_comp.model.torchrec_backend import feature_name
    from dlrm_comp.train.torchrec_output_dist import ExchangeOutputDist
    from dlrm_comp.train.torchrec_qcomm import POOLED_A2A, counting_registry
    cards, dim = data["cardinalities"], data["pooled"][0].shape[1]
    world = dist.get_world_size()
    local = torch.cat([data["pooled"][t] for t in mine], dim=1)
    dim_sum = [dim * len(tables_of(owners, r)) for r in range(world)]
    names = [[feature_name(t) for t in tables_of(owners, r)] for r in range(world)]
    out = {}
    for mode in TORCHREC_MODES:
        recorder, counted = None, None
        if mode == "codec":
            recorder = CompressionRecorder(len(cards))
            plan = build_plan(load_config([], ["compress.mode=codec", "compress.table_preset=kaggle_ref"]).compress,
                              len(cards))
            plan.fwd.eb_rel[:] = policy.all(10**9)
            ex = Exchange(ProcessGroupTransport(None, "cpu"), owners, dim, plan, recorder)
            module = ExchangeOutputDist(ex, names, dim, overlap=False)
        else:
            registry, counted = (None, None) if mode == "off" else \
                counting_registry(mode, "off", dim, torch.device("cpu"))
            codecs = registry[POOLED_A2A] if registry else None
            module = PooledEmbeddingsAllToAll(dist.group.WORLD, dim_sum, codecs=codecs)
        if recorder is not None:
            ex.recorder = None  # warm-up steps are not counted
        for _ in range(3):
            module(local).wait()
        if counted is not None:
            counted.forward.bytes_raw = counted.forward.bytes_sent = 0
        if recorder is not None:
            ex.recorder = recorder
        times = []
        for _ in range(repeat):
            dist.barrier()
            t0 = time.perf_counter()
            module(local).wait()
            times.append(time.perf_counter() - t0)
        row = {"exchange_s": times}
        if recorder is not None:
            recorder.flush(repeat, lambda *args, **kwargs: None)
            fwd = recorder.direction_summary("fwd", cards, None) or {}
            row["fwd"] = {k: fwd.get(k) for k in ("bytes_raw", "bytes_sent", "max_err_ratio")}
        elif counted is not None:
            row["fwd"] = {"bytes_raw": counted.forward.bytes_raw, "bytes_sent": counted.forward.bytes_sent,
                          "max_err_ratio": None}
        out[mode] = row
    return out


def combine_torchrec(per_rank: list[dict], repeat: int) -> list[dict]:
    rows, off_time = [], None
    for mode in TORCHREC_MODES:
        parts = [r["torchrec"][mode] for r in per_rank]
        wall = statistics.median(max(p["exchange_s"][i] for p in parts) for i in range(repeat))
        off_time = off_time or wall
        row = {"backend": "torchrec", "mode": mode, "output_dist": "ours (Exchange)" if mode == "codec" else "torchrec",
               "exchange_s_median": wall, "vs_off_time": wall / off_time}
        if "fwd" in parts[0]:
            raw = sum(p["fwd"]["bytes_raw"] for p in parts) / repeat
            sent = sum(p["fwd"]["bytes_sent"] for p in parts) / repeat
            errs = [p["fwd"]["max_err_ratio"] for p in parts if p["fwd"]["max_err_ratio"] is not None]
            row["fwd"] = {"bytes_raw": raw, "bytes_sent": sent, "cr": raw / sent,
                          "max_err_ratio": max(errs) if errs else None}
            if mode == "torchrec_qcomm:bf16":
                row["note"] = "TorchRec runs bf16 as fp16 on gloo (CPU)"
        rows.append(row)
    return rows


def combine(per_rank: list[dict], repeat: int, bandwidths: list[float]) -> list[dict]:
    rows = []
    off_time = None
    for mode in MODES:
        parts = [r[mode] for r in per_rank]
        wall = statistics.median(max(p["exchange_s"][i] for p in parts) for i in range(repeat))
        if mode == "off":
            off_time = wall
            rows.append({"backend": "torch", "mode": mode, "exchange_s_median": wall, "vs_off_time": 1.0})
            continue
        raw = sum(p["fwd"]["bytes_raw"] for p in parts) / repeat
        sent = sum(p["fwd"]["bytes_sent"] for p in parts) / repeat
        ideal_list = [p["fwd"]["ideal_cr"] for p in parts if p["fwd"]["ideal_cr"]]
        enc = sum(p["fwd"]["enc_s"] for p in parts) / repeat
        dec = sum(p["fwd"]["dec_s"] for p in parts) / repeat
        cr = raw / sent
        tc, td = throughput(raw, enc) / 1e9, throughput(raw, dec) / 1e9
        b_raw = sum(p["bwd"]["bytes_raw"] for p in parts)
        b_sent = sum(p["bwd"]["bytes_sent"] for p in parts)
        b_tc = throughput(b_raw, sum(p["bwd"]["enc_s"] for p in parts)) / 1e9
        b_td = throughput(b_raw, sum(p["bwd"]["dec_s"] for p in parts)) / 1e9
        row = {"backend": "torch", "mode": mode, "size_exchange": "slots" if ":slots" in mode else "exact",
               "dedup": "+dedup" in mode, "row_cache": "+cache" in mode,
               "bytes_pad": sum(p.get("bytes_pad", 0) for p in parts),
               "exchange_s_median": wall, "vs_off_time": wall / off_time,
               "fwd": {"bytes_raw": raw, "bytes_sent": sent, "cr": cr,
                       "ideal_cr": raw / sum(raw / len(parts) / i for i in ideal_list) if ideal_list else None,
                       "encode_GBps": tc, "decode_GBps": td,
                       "max_err_ratio": max((p["fwd"]["max_err_ratio"] or 0) for p in parts),
                       "distinct_fraction": _weighted(parts, "distinct_fraction"),
                       "cache_hit_fraction": _weighted(parts, "cache_hit_fraction")},
               "bwd": {"cr": b_raw / b_sent, "encode_GBps": b_tc, "decode_GBps": b_td, "eb_rel": 0.01},
               "modeled": []}
        if row["fwd"]["ideal_cr"]:
            row["fwd"]["cr_over_ideal"] = cr / row["fwd"]["ideal_cr"]
        for bw in bandwidths:
            s_f = speedup(cr, tc, td, bw)  # GB/s throughout
            s_b = speedup(b_raw / b_sent, b_tc, b_td, bw)
            row["modeled"].append({"bandwidth_GBps": bw, "fwd_message_speedup": s_f, "bwd_message_speedup": s_b,
                                   "end_to_end_fwd_only": end_to_end(s_f, 1.0),
                                   "end_to_end_fwd_and_bwd": end_to_end(s_f, s_b)})
        row["ratio_only_limit"] = {"end_to_end_fwd_only": end_to_end(cr, 1.0),
                                   "end_to_end_fwd_and_bwd": end_to_end(cr, b_raw / b_sent)}
        rows.append(row)
    return rows


def _weighted(parts: list[dict], key: str) -> float | None:
    """A per-rank forward figure over all ranks, weighted by the raw bytes each rank sent."""
    have = [p["fwd"] for p in parts if p["fwd"].get(key) is not None]
    raw = sum(f["bytes_raw"] for f in have)
    return sum(f[key] * f["bytes_raw"] for f in have) / raw if raw else None


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
    parser.add_argument("--backend", choices=["torch", "torchrec", "both"], default="torch",
                        help="torch: our exchange; torchrec (same as both): also TorchRec's output dist, "
                             "beside the torch rows")
    args = parser.parse_args()
    backends = ("torch",) if args.backend == "torch" else ("torch", "torchrec")
    if "torchrec" in backends:
        from dlrm_comp.model.torchrec_backend import missing_torchrec
        if missing_torchrec():
            parser.error(f"--backend {args.backend}: torchrec {missing_torchrec()}")
    torch.set_num_threads(1)
    # fbgemm (TorchRec) brings its own OpenMP runtime, which torch.set_num_threads does not reach:
    # its idle threads otherwise spin against the codec on a small machine (measured: codec 9.5 vs 4.1 ms)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "capture.pt", Path(tmp) / "result.pt"
        capture(args.iterations, args.batch, args.dim, path, steps=args.repeat)
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(args.ranks, str(path), port, args.repeat, str(out), backends), nprocs=args.ranks)
        per_rank = torch.load(out, weights_only=False)
    rows = combine(per_rank, args.repeat, args.bandwidth_gbps)
    if "torchrec" in backends:
        rows += combine_torchrec(per_rank, args.repeat)
    print(json.dumps({"benchmark": "alltoall", "ranks": args.ranks, "batch": args.batch, "dim": args.dim,
                      "message": f"{args.batch // args.ranks} rows x dim per (table, destination)",
                      "bounds": "debug config defaults after the early stage (kaggle_ref lists)",
                      "backward_eb_rel": 0.01, "breakdown": BREAKDOWN, "machine": platform.machine(),
                      "torch": torch.__version__, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
