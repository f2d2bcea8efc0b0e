#!/usr/bin/env python
"""Btune's pick vs an exhaustive grid over the same space, on dumped embedding codes; prints JSON.

For each message (one table's pooled output of one dump, quantized at ``--eb`` by the training
quantizer; optionally
padded), every point of the search space is measured once (real timings, best of ``--reps``), then
the tuner runs with those measurements as its trial function, so both are judged on the same
numbers: ``gap`` = 1 - merit(tuner's pick) / merit(grid's best) (merit = cratio**tradeoff /
score**(1-tradeoff), score = ctime + csize/bw + dtime for BALANCED), ``fraction`` = distinct
points the tuner tried / grid size. Also reports the lossless efficiency of the pick: entropy
ideal size / achieved size of the codes (order-0; > 1 where the codes repeat whole rows).

    python benchmarks/btune_vs_grid.py [--dumps DIR] [--tables 0 3 9] [--eb 3e-2] [--pad 1] [--extras zlib]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlrm_comp.adaptive.btune import Btune, BtuneConfig, SearchSpace, extra_candidates, measure_trial  # noqa: E402
from dlrm_comp.bench.dumps import list_dumps, load_dump, read_meta, run_dump  # noqa: E402
from dlrm_comp.compress.lossless import efficiency_report  # noqa: E402
from dlrm_comp.compress.codecs.offline import chunk_codes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dumps", help="dump directory (default: a short debug training now)")
    ap.add_argument("--tables", type=int, nargs="+", default=[0, 3, 9, 20])
    ap.add_argument("--eb", type=float, default=3e-2)
    ap.add_argument("--pad", type=int, default=1, help="concatenate copies (message size x pad; 1 = the real message)")
    ap.add_argument("--extras", nargs="*", default=[], help="non-blosc2 candidates (zlib)")
    ap.add_argument("--bandwidth", type=float, default=12.5, help="GB/s")
    ap.add_argument("--tradeoff", type=float, default=0.5)
    ap.add_argument("--perf-mode", default="BALANCED")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = None
    dumps = Path(args.dumps) if args.dumps else None
    if dumps is None:
        tmp = tempfile.TemporaryDirectory()
        dumps = Path(tmp.name) / "dumps"
        run_dump([ROOT / "configs/debug.yaml"], [], dumps, every=100, iterations=101)
    meta = read_meta(dumps)
    files = {(t, k): p for t, k, p in list_dumps(dumps)}
    last = max(k for _, k in files)
    space = SearchSpace(extras=extra_candidates(args.extras))
    grid = space.grid()
    cfg = BtuneConfig(tradeoff=args.tradeoff, perf_mode=args.perf_mode, bandwidth_gbs=args.bandwidth)
    cases = []
    for table in args.tables:
        x = load_dump(files[(table, last)], meta["batch"], meta["dim"])
        _, codes = chunk_codes(torch.from_numpy(np.concatenate([x] * args.pad)), args.eb)  # the training quantizer
        width = codes.dtype.itemsize
        buf = codes.tobytes()
        t0 = time.perf_counter()
        table_meas = {c: measure_trial(c, buf, width, reps=args.reps) for c in grid}
        grid_s = time.perf_counter() - t0
        engine = Btune(cfg, space, trial=lambda c, s, ts: table_meas[c], sample_bytes=len(buf))
        res = engine.run(buf, width)
        best_grid = max(grid, key=lambda c: engine.merit(table_meas[c]))
        gm = engine.merit(table_meas[best_grid])
        eff = efficiency_report(codes, table_meas[res.candidate].csize)
        best_ratio = max(grid, key=lambda c: table_meas[c].cratio)
        cases.append({
            "table": table, "message_bytes_fp32": 4 * codes.size, "width": width,
            "grid_size": len(grid), "grid_s": round(grid_s, 2),
            "tuner_unique_trials": res.unique_trials, "tuner_trials": res.trials,
            "fraction_of_grid": round(res.unique_trials / len(grid), 4),
            "gap": round(1 - res.merit / gm, 4),
            "tuner_pick": res.candidate.label(), "grid_best": best_grid.label(),
            "tuner_cratio_codes": round(res.cratio, 3), "grid_best_cratio_codes": round(table_meas[best_grid].cratio, 3),
            "tuner_score_us": round(res.score * 1e6, 2), "grid_best_score_us": round(engine.score(table_meas[best_grid]) * 1e6, 2),
            "efficiency_of_pick": round(eff["efficiency"], 3), "entropy_bits": round(eff["bits_per_symbol"], 3),
            "max_ratio_in_grid": best_ratio.label(),
            "efficiency_of_max_ratio": round(efficiency_report(codes, table_meas[best_ratio].csize)["efficiency"], 3),
        })
    out = {"extras": args.extras, "bandwidth_gbs": args.bandwidth, "tradeoff": args.tradeoff, "perf_mode": args.perf_mode, "eb": args.eb,
           "pad": args.pad, "cases": cases,
           "max_gap": max(c["gap"] for c in cases), "max_fraction": max(c["fraction_of_grid"] for c in cases),
           "all_within_5pct_and_quarter": all(c["gap"] <= 0.05 and c["fraction_of_grid"] <= 0.25 for c in cases)}
    print(json.dumps(out, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
