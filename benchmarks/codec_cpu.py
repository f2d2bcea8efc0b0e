#!/usr/bin/env python
"""`codec` against SZ3 on pooled embedding outputs of a trained model, printed as JSON.

Trains the debug config briefly (uncompressed, emb dim 32 so a Kaggle-like 32 x 32 chunk exists),
takes every table's pooled output for a batch, and measures side by side, at each relative bound
and at two message sizes (a 32 x 32 chunk = 4 KiB of fp32, and 256 KiB), the wire ratio (headers
included) and the encode and decode throughput in GB/s of fp32 input, on this machine's cores:
the training codec (``codecs/offline.py``), one message per chunk.

`steps` rows: a whole step of the batched exchange codec (every table x destination in one
call; messages with their preambles and chunk tables), at the debug shape (26 tables x 2
destinations x 64x16), the Terabyte shape (dim 64, batch 2048: 26 x 2 x 1024x64) and a
deduplicated step (batch 2048, dim 16: a row per distinct bag, chunks of different sizes), at the
reference's Kaggle bounds, side by side with SZ3 (one call per chunk), `coders` rows (the debug
step under each stream coder: the measurement behind the default) and, with
`--baseline-tree DIR` (a git worktree of an earlier commit that has ``codecs/offline.py``), that
tree's training codec on the very same chunks (one message per destination), run in a
subprocess in the same invocation. `overhead` rows: small messages (4 tables x 32 rows) to 1, 2,
4, 8 and 16 destinations in one call, encode and decode per call and per message: the codec's
cost apart from its bytes, which grows with the number of ranks (beside the baseline tree's).

    python benchmarks/codec_cpu.py [--iterations 600] [--bounds 1e-2 3e-2 1e-3] [--repeat 3]
        [--threads 1] [--baseline-tree ../old] [--sections results steps coders overhead]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.compress.codecs.offline import roundtrip  # noqa: E402
from dlrm_comp.compress.timing import best_time  # noqa: E402
from dlrm_comp.config import load_config  # noqa: E402
from dlrm_comp.exchange.plan import DirectionPlan  # noqa: E402
from dlrm_comp.train.loop import Trainer  # noqa: E402

SIZES = {"32x32": (32, 32), "256KiB": (2048, 32)}


def trained_pooled_outputs(iterations: int, rows: int, dim: int = 32) -> list[torch.Tensor]:
    """Each table's pooled output [rows, dim] from a model trained `iterations` steps."""
    cfg = load_config([ROOT / "configs/debug.yaml"], [
        "compress.mode=off", f"train.iterations={iterations}", "train.eval_every=0", "train.progress=false",
        "train.tensorboard=false", f"model.emb_dim={dim}", f"model.bottom_mlp=13-64-{dim}",
        "data.num_val_samples=4096"])
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
        trainer = Trainer(cfg, out)
        trainer.run()
    batch = trainer.source.batch("train", iterations + 1, rows)
    with torch.no_grad():
        return [p.contiguous() for p in trainer.model.lookup(batch.indices, batch.offsets)]


def measure(mode: str, chunks: list[torch.Tensor], eb_rel, repeat: int, counts: list[int] | None = None) -> dict:
    """Mode ``mode``'s training codec on ``chunks`` (one message per chunk unless ``counts``)."""
    r = roundtrip(mode, chunks, eb_rel, counts=counts or [1] * len(chunks), reps=repeat)
    return {"cr": r.cr, "encode_GBps": r.bytes_raw / r.enc_s / 1e9, "decode_GBps": r.bytes_raw / r.dec_s / 1e9,
            "bytes_raw": r.bytes_raw, "bytes_sent": r.bytes_sent, "max_err_ratio": r.max_err_ratio}


STEP_SHAPES = {"debug_step": (128, 16), "terabyte_step": (2048, 64)}  # (batch, dim), 2 destinations

BASELINE = r"""
import ctypes, json, sys, torch
ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 30); ctypes.CDLL("libc.so.6").mallopt(-1, 1 << 30)  # as the new side
sys.path.insert(0, sys.argv[1])
data = torch.load(sys.argv[2], weights_only=False)
out = {}
from dlrm_comp.compress.codecs.offline import roundtrip
for name, (chunks, ebs, *counts) in data.items():
    raw = sum(c.numel() * 4 for c in chunks)
    r = roundtrip("codec", chunks, ebs, counts=counts[0] if counts else [len(chunks) // 2] * 2, reps=int(sys.argv[3]),
                  min_s=float(sys.argv[4]) if counts else 0.0)
    out[name] = {"cr": r.cr, "encode_GBps": raw / r.enc_s / 1e9, "decode_GBps": raw / r.dec_s / 1e9,
                 "bytes_raw": raw, "bytes_sent": r.bytes_sent, "codec": "codec",
                 "encode_ms": r.enc_s * 1e3, "decode_ms": r.dec_s * 1e3}
print(json.dumps(out))
"""


def step_rows(iterations: int, repeat: int, baseline: str | None) -> list[dict]:
    """A whole exchange step through the batched codec, vs SZ3 and (optionally) an older tree's
    codec on the same chunks."""
    from dlrm_comp.exchange import Exchange, LoopbackTransport
    from dlrm_comp.train.compression_plan import build_plan
    from dlrm_comp.exchange.plan import StepBounds
    rows, chunk_sets = [], {}
    cfg = load_config([ROOT / "configs/debug.yaml"], ["compress.mode=codec"])
    for name, (batch, dim) in STEP_SHAPES.items():
        pooled = trained_pooled_outputs(iterations, batch, dim)
        t = len(pooled)
        policy = cfg.compress.bounds.build([10**6] * t, cfg.compress.decay)
        ebs = policy.all(10**9)
        ex = Exchange(LoopbackTransport(2), [0] * t, dim, build_plan(cfg.compress, t))
        half = [batch // 2, batch - batch // 2]
        messages, enc = best_time(lambda: ex.encode(pooled, bounds=StepBounds.of(ebs, ebs)), repeat)
        decoded, dec = best_time(lambda: ex.decode(messages, half), repeat)
        raw = sum(p.numel() * 4 for p in pooled)
        sent = sum(len(m) for m in messages)
        worst = 0.0
        for q, (a, b) in enumerate(((0, half[0]), (half[0], batch))):
            for i, p in enumerate(pooled):
                chunk = p[a:b].double()
                eb_abs = ebs[i] * float(chunk.max() - chunk.min())
                got = decoded[q].view(t, b - a, dim)[i].double()  # message q: its chunks' rows, table after table
                worst = max(worst, float((got - chunk).abs().max()) / eb_abs)
        chunks = [p[a:b].contiguous() for a, b in ((0, half[0]), (half[0], batch)) for p in pooled]
        chunk_ebs = ebs * 2
        sz = measure("sz", chunks, chunk_ebs, repeat, counts=[t, t])  # one message per destination
        chunk_sets[name] = (chunks, chunk_ebs)
        rows.append({"size": name, "shape": f"{t} tables x 2 destinations x {half[0]}x{dim}", "chunks": 2 * t,
                     "eb_rel": "kaggle_ref (0.01 / 0.03 / 0.05)",
                     "codec": {"cr": raw / sent, "encode_GBps": raw / enc / 1e9, "decode_GBps": raw / dec / 1e9,
                               "bytes_raw": raw, "bytes_sent": sent, "max_err_ratio": worst,
                               "describe": ex.plan.fwd.codec_name(0)},
                     "sz": {k: sz[k] for k in ("cr", "encode_GBps", "decode_GBps", "bytes_raw", "bytes_sent")}})
    rows.append(dedup_step_row(iterations, repeat, ebs, chunk_sets))
    if baseline:
        old, head = baseline_codec(baseline, chunk_sets, repeat)
        for row in rows:
            row["baseline"] = {**old[row["size"]], "tree": baseline, "commit": head}
            row["codec_vs_baseline"] = {k: row["codec"][k] / row["baseline"][k]
                                        for k in ("cr", "encode_GBps", "decode_GBps")}
    return rows


def baseline_codec(baseline: str, chunk_sets: dict, repeat: int, min_s: float = 0.0) -> tuple[dict, str]:
    """The training codec of the tree ``baseline`` on ``chunk_sets`` (name -> (chunks, bounds)
    or (chunks, bounds, message counts)), in a subprocess; and that tree's commit."""
    import subprocess
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chunks.pt"
        torch.save(chunk_sets, path)
        proc = subprocess.run([sys.executable, "-c", BASELINE, str(Path(baseline).resolve()), str(path), str(repeat),
                               str(min_s)], capture_output=True, text=True, check=True,
                              env={**__import__("os").environ, "PYTHONPATH": str(Path(baseline).resolve())})
    head = subprocess.run(["git", "-C", baseline, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    return json.loads(proc.stdout.strip().splitlines()[-1]), head


OVERHEAD_DESTINATIONS = (1, 2, 4, 8, 16)
SECTIONS = ("results", "steps", "coders", "overhead")  # the JSON's parts, in order


def overhead_rows(iterations: int, repeat: int, baseline: str | None) -> list[dict]:
    """What a message costs apart from its values: small messages (4 tables x 32 trained rows of
    dim 32 each, at the Kaggle bounds) to 1..16 destinations in one call, encode and decode per
    call and per message. Per-call and per-message Python and numpy work is what a step's codec
    spends beyond its bytes (at 16 ranks a direction decodes 16 messages), so this row shows it
    apart; with ``baseline``, that tree's codec on the same chunks."""
    pooled = trained_pooled_outputs(iterations, 2048, 32)
    cfg = load_config([ROOT / "configs/debug.yaml"], ["compress.mode=codec"]).compress
    ebs = cfg.bounds.build([10**6] * len(pooled), cfg.decay).all(10**9)
    tables, rows_per = 4, 32
    sets, rows = {}, []
    for w in OVERHEAD_DESTINATIONS:
        chunks = [pooled[t][d * rows_per:(d + 1) * rows_per].contiguous() for d in range(w) for t in range(tables)]
        chunk_ebs = [ebs[t] for _ in range(w) for t in range(tables)]
        counts = [tables] * w
        sets[f"destinations_{w}"] = (chunks, chunk_ebs, counts)
        r = roundtrip("codec", chunks, chunk_ebs, counts=counts, reps=repeat, min_s=0.2)
        rows.append({"destinations": w, "shape": f"{w} messages x {tables} tables x {rows_per}x32",
                     "encode_ms": r.enc_s * 1e3, "decode_ms": r.dec_s * 1e3, "encode_us_per_message": r.enc_s * 1e6 / w,
                     "decode_us_per_message": r.dec_s * 1e6 / w, "cr": r.cr, "max_err_ratio": r.max_err_ratio})
    if baseline:
        old, head = baseline_codec(baseline, sets, repeat, min_s=0.2)
        for row in rows:
            b = old[f"destinations_{row['destinations']}"]
            row["baseline"] = {"encode_ms": b["encode_ms"], "decode_ms": b["decode_ms"], "cr": b["cr"],
                               "tree": baseline, "commit": head}
            row["speedup_vs_baseline"] = {"encode": b["encode_ms"] / row["encode_ms"],
                                          "decode": b["decode_ms"] / row["decode_ms"]}
    return rows


def dedup_step_row(iterations: int, repeat: int, ebs: list[float], chunk_sets: dict) -> dict:
    """A deduplicated step (``compress.dedup``): each (table x destination) chunk holds one row per
    distinct bag of its half of a 2048-row batch, so chunks hold different row counts (the shape
    of a Kaggle step's messages, at the debug config's tables); the codec as training calls it
    (``codecs/offline.roundtrip``, one message per destination), beside SZ3."""
    name, batch, dim = "debug_dedup_step", 2048, 16
    pooled = trained_pooled_outputs(iterations, batch, dim)
    t, half = len(pooled), batch // 2
    chunks = [torch.unique(p[a:b], dim=0) for a, b in ((0, half), (half, batch)) for p in pooled]
    chunk_ebs = ebs * 2
    chunk_sets[name] = (chunks, chunk_ebs)
    distinct = sum(len(c) for c in chunks)
    codec, sz = (measure(mode, chunks, chunk_ebs, repeat, counts=[t, t]) for mode in ("codec", "sz"))
    return {"size": name, "shape": f"{t} tables x 2 destinations x {half}x{dim}, {distinct} distinct rows",
            "chunks": 2 * t, "eb_rel": "kaggle_ref (0.01 / 0.03 / 0.05)", "distinct_fraction": distinct / (t * batch),
            "codec": {**codec, "describe": DirectionPlan("codec", 1).codec_name(0)},
            "sz": {k: sz[k] for k in ("cr", "encode_GBps", "decode_GBps", "bytes_raw", "bytes_sent")}}


CODERS = [("zstd", {"level": 1}), ("zstd", {"level": 3}), ("zlib", {"level": 1}), ("zlib", {"level": 6}),
          ("blosc2", {}), ("identity", {})]


def coder_rows(iterations: int, repeat: int) -> list[dict]:
    """The debug step's destination streams under each registered stream coder, side by side:
    the measurement behind the default (`compress.lossless.name`)."""
    from dlrm_comp.compress.lossless import get_lossless
    from dlrm_comp.exchange import Exchange, LoopbackTransport
    from dlrm_comp.exchange.plan import StepBounds
    from dlrm_comp.train.compression_plan import build_plan
    batch, dim = STEP_SHAPES["debug_step"]
    pooled = trained_pooled_outputs(iterations, batch, dim)
    cfg = load_config([ROOT / "configs/debug.yaml"], ["compress.mode=codec"])
    t = len(pooled)
    ebs = cfg.compress.bounds.build([10**6] * t, cfg.compress.decay).all(10**9)
    raw = sum(p.numel() * 4 for p in pooled)
    rows = []
    for name, params in CODERS:
        plan = build_plan(cfg.compress, t)
        coder = get_lossless(name, **params)
        for i in range(t):
            plan.fwd.set_coder(i, coder)
        ex = Exchange(LoopbackTransport(2), [0] * t, dim, plan)
        messages, enc = best_time(lambda: ex.encode(pooled, bounds=StepBounds.of(ebs, ebs)), repeat)
        _, dec = best_time(lambda: ex.decode(messages, [batch // 2, batch - batch // 2]), repeat)
        sent = sum(len(m) for m in messages)
        rows.append({"coder": name, "params": params, "cr": raw / sent, "encode_GBps": raw / enc / 1e9,
                     "decode_GBps": raw / dec / 1e9, "bytes_sent": sent})
    return rows


def chunk_rows(args) -> list[dict]:
    """`codec` beside SZ3 at each size and bound, one message per chunk."""
    pooled = trained_pooled_outputs(args.iterations, SIZES["256KiB"][0])
    results = []
    for size, (rows, _) in SIZES.items():
        chunks = [p[:rows] for p in pooled]
        for eb in args.bounds:
            row = {"size": size, "eb_rel": eb, "chunks": len(chunks)}
            for mode in ("codec", "sz"):
                row[mode] = measure(mode, chunks, eb, args.repeat)
            c, s = row["codec"], row["sz"]
            row["codec_vs_sz"] = {"cr": c["cr"] / s["cr"], "encode_speed": c["encode_GBps"] / s["encode_GBps"],
                                  "decode_speed": c["decode_GBps"] / s["decode_GBps"]}
            results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--bounds", type=float, nargs="+", default=[1e-2, 3e-2, 1e-3])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-tree", default=None,
                        help="a git worktree of an earlier commit: its codec on the step and overhead rows' chunks")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="which parts to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from dlrm_comp.runtime import keep_large_allocations
    keep_large_allocations()  # as training does (train.keep_allocations); the baseline subprocess too
    out = {"benchmark": "codec_cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "codec": DirectionPlan("codec", 1).codec_name(0),
           "trained_iterations": args.iterations}
    if "results" in args.sections:
        out["results"] = chunk_rows(args)
    if "steps" in args.sections:
        out["steps"] = step_rows(args.iterations, max(args.repeat, 5), args.baseline_tree)
    if "coders" in args.sections:
        out["coders"] = coder_rows(args.iterations, max(args.repeat, 5))
    if "overhead" in args.sections:
        out["overhead"] = overhead_rows(args.iterations, max(args.repeat, 5), args.baseline_tree)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
