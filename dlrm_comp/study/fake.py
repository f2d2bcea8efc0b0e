"""Write small, plausible run directories (metrics.jsonl + summary.json) without training:
fixtures for tests and for trying the report and plotting code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_fake_run(run_dir: str | Path, name: str, final_auc: float, cr: float | None, iterations: int = 1000,
                  n_tables: int = 4, step_s: float = 0.01, eval_every: int = 250, print_every: int = 250,
                  seed: int = 0, write_summary: bool = True) -> Path:
    """A run that reaches `final_auc`; `cr=None` makes it uncompressed (mode off)."""
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in range(print_every, iterations + 1, print_every):
        lines.append({"kind": "train", "iteration": it, "loss": 0.5 - 0.05 * it / iterations,
                      "samples_per_s": 128 / step_s, "step_s": step_s})
        if cr is not None:
            for t in range(n_tables):
                raw = 4096.0 * print_every
                table_cr = cr * (1.0 + 0.3 * (t - n_tables / 2) / n_tables) * (1.2 - 0.2 * it / iterations)
                lines.append({"kind": "table", "iteration": it, "table": t, "direction": "fwd", "eb_rel": 0.03,
                              "codec": "fake", "bytes_raw": raw, "bytes_sent": raw / table_cr, "cr": table_cr,
                              "max_err_ratio": 0.99, "enc_s": 0.01, "dec_s": 0.001})
        if it % eval_every == 0:
            auc = final_auc - 0.03 * (1 - it / iterations) ** 2 + (0 if it == iterations else rng.normal(0, 1e-4))
            lines.append({"kind": "eval", "iteration": it, "auc": auc, "logloss": 0.9 - auc / 2, "accuracy": 0.78})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if write_summary:
        summary = {"name": name, "final_eval": {"auc": final_auc, "logloss": 0.9 - final_auc / 2, "accuracy": 0.78},
                   "iterations": iterations, "wall_s": iterations * step_s * 1.2, "step_s_mean": step_s,
                   "samples_per_s": 128 / step_s, "world_size": 1,
                   "data": {"cardinalities": [1000 // (t + 1) for t in range(n_tables)]}}
        if cr is not None:
            per_table = []
            raw_t = 4096.0 * iterations
            sent_total = 0.0
            for t in range(n_tables):
                table_cr = cr * (1.0 + 0.3 * (t - n_tables / 2) / n_tables)
                sent_total += raw_t / table_cr
                per_table.append({"table": t, "cardinality": 1000 // (t + 1), "eb_rel_base": 0.03,
                                  "eb_rel_last": 0.03, "codec": "fake", "cr": table_cr, "max_err_ratio": 0.99,
                                  "bytes_raw": raw_t, "bytes_sent": raw_t / table_cr})
            summary["compression"] = {"mode": "codec", "estimated": False, "bytes_raw": raw_t * n_tables,
                                      "bytes_sent": sent_total, "cr": raw_t * n_tables / sent_total,
                                      "harmonic_mean_cr": n_tables / sum(1 / p["cr"] for p in per_table),
                                      "max_err_ratio": 0.99, "per_table": per_table, "enc_s": 1.0, "dec_s": 0.1}
            summary["step_s_mean"] = step_s * 1.3
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return run_dir
