#!/usr/bin/env python
"""`codec` against SZ3 on pooled embedding outputs of a trained model, printed as JSON.

Trains the debug config briefly (uncompressed, emb dim 32 so a Kaggle-like 32 x 32 chunk exists),
takes every table's pooled output for a batch, and measures side by side, at each relative bound
and at two message sizes (a 32 x 32 chunk = 4 KiB of fp32, and 256 KiB), the wire ratio (headers
included) and the encode and decode throughput in GB/s of fp32 input, on this machine's cores.

    python benchmarks/codec_cpu.py [--iterations 600] [--bounds 1e-2 3e-2 1e-3] [--repeat 3]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.compress.backends import get_backend  # noqa: E402
from dlrm_comp.config import load_config  # noqa: E402
from dlrm_comp.train.loop import Trainer  # noqa: E402

SIZES = {"32x32": (32, 32), "256KiB": (2048, 32)}


def trained_pooled_outputs(iterations: int, rows: int) -> list[torch.Tensor]:
    """Each table's pooled output [rows, 32] from a model trained `iterations` steps."""
    cfg = load_config([ROOT / "configs/debug.yaml"], [
        "compress.mode=off", f"train.iterations={iterations}", "train.eval_every=0", "train.progress=false",
        "train.tensorboard=false", "model.emb_dim=32", "model.bottom_mlp=13-64-32", "data.num_val_samples=4096"])
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
        trainer = Trainer(cfg, out)
        trainer.run()
    batch = trainer.source.batch("train", iterations + 1, rows)
    with torch.no_grad():
        return [p.contiguous() for p in trainer.model.lookup(batch.indices, batch.offsets)]


def measure(backend, chunks: list[torch.Tensor], eb_rel: float, repeat: int) -> dict:
    raw = sum(c.numel() * 4 for c in chunks)
    best_enc, best_dec, sent, worst = float("inf"), float("inf"), 0, 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        encoded = [backend.encode(c, eb_rel) for c in chunks]
        t1 = time.perf_counter()
        decoded = [backend.decode(e) for e in encoded]
        t2 = time.perf_counter()
        best_enc, best_dec = min(best_enc, t1 - t0), min(best_dec, t2 - t1)
        sent = sum(e.nbytes for e in encoded)
        for c, d, e in zip(chunks, decoded, encoded):
            if e.eb_abs:
                worst = max(worst, float((c - d).abs().max()) / e.eb_abs)
    return {"cr": raw / sent, "encode_GBps": raw / best_enc / 1e9, "decode_GBps": raw / best_dec / 1e9,
            "bytes_raw": raw, "bytes_sent": sent, "max_err_ratio": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--bounds", type=float, nargs="+", default=[1e-2, 3e-2, 1e-3])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pooled = trained_pooled_outputs(args.iterations, SIZES["256KiB"][0])
    backends = {"codec": get_backend("codec", ideal=False), "sz": get_backend("sz")}
    results = []
    for size, (rows, _) in SIZES.items():
        chunks = [p[:rows] for p in pooled]
        for eb in args.bounds:
            row = {"size": size, "eb_rel": eb, "chunks": len(chunks)}
            for name, backend in backends.items():
                row[name] = measure(backend, chunks, eb, args.repeat)
            c, s = row["codec"], row["sz"]
            row["codec_vs_sz"] = {"cr": c["cr"] / s["cr"], "encode_speed": c["encode_GBps"] / s["encode_GBps"],
                                  "decode_speed": c["decode_GBps"] / s["decode_GBps"]}
            results.append(row)
    print(json.dumps({"benchmark": "codec_cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "machine": platform.machine(), "codec": backends["codec"].describe(),
                      "trained_iterations": args.iterations, "results": results}, indent=2))


if __name__ == "__main__":
    main()
