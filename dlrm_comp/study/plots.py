"""Matplotlib figures for ablations and tuning (Agg backend: works headless and in tests)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.artist
import matplotlib.ticker

import numpy as np  # noqa: E402

from dlrm_comp.study.runs import RunData  # noqa: E402
from dlrm_comp.plotting import subplots


def _styles(n: int):
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    markers = "os^Dv<>pPX*h"
    return [(cmap(i % cmap.N), markers[i % len(markers)]) for i in range(n)]


def _color_map(runs: Sequence[RunData]) -> dict[str, tuple]:
    """One colour and marker per run name, the same in every figure of a report."""
    return {r.name: st for r, st in zip(runs, _styles(len(runs)))}


def _line_style(run: RunData) -> str:
    return "--" if run.mode == "off" else "-"


def plot_metric_curves(runs: Sequence[RunData], path: Path, metric: str = "auc", inset_fraction: float = 0.35,
                       title: str | None = None) -> Path | None:
    """Evaluation metric vs iteration for every run, with a zoomed inset of the end of training."""
    curves = [(r, r.metric(metric)) for r in runs]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return None
    fig, ax = subplots(figsize=(9, 5.5))
    cmap = _color_map(runs)
    styles = [cmap[r.name] for r, _ in curves]
    for (run, curve), (color, marker) in zip(curves, styles):
        xs, ys = zip(*curve)
        ax.plot(xs, ys, _line_style(run), color=color, marker=marker, ms=4, lw=1.5, label=run.name)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title or f"validation {metric} vs iteration")
    ax.grid(alpha=0.3)
    xmax = max(c[-1][0] for _, c in curves)
    xmin = min(c[0][0] for _, c in curves)
    ends = [y for _, c in curves for x, y in c if x >= xmin + (1 - inset_fraction) * (xmax - xmin)]
    if len({x for _, c in curves for x, _ in c}) >= 2 and ends:
        ins = ax.inset_axes([0.45, 0.08, 0.5, 0.45])
        x0 = xmin + (1 - inset_fraction) * (xmax - xmin)
        for (run, curve), (color, marker) in zip(curves, styles):
            xs, ys = zip(*curve)
            ins.plot(xs, ys, _line_style(run), color=color, marker=marker, ms=4, lw=1.2)
        lo, hi = min(ends), max(ends)
        pad = max((hi - lo) * 0.15, 1e-4)
        ins.set_xlim(x0 - 0.02 * (xmax - xmin), xmax + 0.02 * (xmax - xmin))
        ins.set_ylim(lo - pad, hi + pad)
        ins.tick_params(labelsize=7)
        ins.grid(alpha=0.3)
        ins.set_title("end of training (zoom)", fontsize=8)
        ax.indicate_inset_zoom(ins, edgecolor="0.4")
        # keep the main axes' lower part for the early curve: start the y axis near the first evals
        allys = [y for _, c in curves for _, y in c]
        ax.set_ylim(min(allys) - 0.02 * (max(allys) - min(allys) + 1e-9), max(allys) + 0.35 * (max(allys) - min(allys) + 1e-9))
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_cr_curves(runs: Sequence[RunData], path: Path, title: str | None = None) -> Path | None:
    """Running-average wire ratio (cumulative bytes raw / bytes sent over all tables) vs iteration."""
    cmap = _color_map(runs)
    curves = [(r, r.cr_curve) for r in runs if r.cr_curve]
    if not curves:
        return None
    fig, ax = subplots(figsize=(9, 5))
    for (run, curve), (color, marker) in zip(curves, [cmap[r.name] for r, _ in curves]):
        xs, ys = zip(*curve)
        ax.plot(xs, ys, "-", color=color, marker=marker, ms=4, lw=1.5, label=run.name)
        ax.annotate(f"{ys[-1]:.1f}x", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 0),
                    fontsize=7, color=color, va="center")
    ax.set_xlabel("iteration")
    ax.set_ylabel("running-average compression ratio (x, fp32 / wire)")
    ax.set_title(title or "running-average compression ratio vs iteration")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_per_table_cr(runs: Sequence[RunData], path: Path, title: str | None = None) -> Path | None:
    """Grouped bars: each compressed run's wire ratio per table (log scale)."""
    cmap = _color_map(runs)
    runs = [r for r in runs if r.per_table]
    if not runs:
        return None
    tables = sorted({int(t["table"]) for r in runs for t in r.per_table})
    n = len(runs)
    width = 0.85 / n
    fig, ax = subplots(figsize=(min(16, max(8, 0.12 * len(tables) * n + 2)), 5))
    x = np.arange(len(tables))
    for k, run in enumerate(runs):
        color = cmap[run.name][0]
        by_table = {int(t["table"]): t.get("cr") for t in run.per_table}
        ys = [by_table.get(t) or np.nan for t in tables]
        ax.bar(x - 0.425 + (k + 0.5) * width, ys, width, color=color, label=run.name)
    ax.set_xticks(x)
    ax.set_xticklabels([str(t) for t in tables], fontsize=8)
    ax.set_xlabel("table")
    ax.set_ylabel("compression ratio (x, log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([t for t in (1, 2, 4, 8, 16, 32, 64, 128) if t <= 1.5 * max(
        (t2.get("cr") or 1) for r in runs for t2 in r.per_table)])
    ax.set_title(title or "per-table compression ratio")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=min(n, 4))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_per_table_bounds(run: RunData, path: Path) -> Path | None:
    """One run's per-table base and last bounds next to its per-table ratio."""
    if not run.per_table:
        return None
    tables = [int(t["table"]) for t in run.per_table]
    fig, ax = subplots(figsize=(max(7, 0.35 * len(tables) + 2), 4.5))
    x = np.arange(len(tables))
    ax.bar(x - 0.2, [t.get("eb_rel_base") or np.nan for t in run.per_table], 0.4, label="eb_rel base")
    ax.bar(x + 0.2, [t.get("eb_rel_last") or np.nan for t in run.per_table], 0.4, label="eb_rel last")
    ax.set_xticks(x)
    ax.set_xticklabels([str(t) for t in tables], fontsize=8)
    ax.set_xlabel("table")
    ax.set_ylabel("relative error bound")
    ax2 = ax.twinx()
    ax2.plot(x, [t.get("cr") or np.nan for t in run.per_table], "k.-", label="ratio")
    ax2.set_ylabel("compression ratio (x)")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{run.name}: per-table bounds and ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_step_ratio(rows: Sequence[dict], path: Path) -> Path | None:
    rows = [r for r in rows if r.get("step_ratio") is not None]
    if not rows:
        return None
    fig, ax = subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4))
    ax.bar([r["variant"] for r in rows], [r["step_ratio"] for r in rows], color="tab:gray")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("step time / uncompressed step")
    ax.set_title("step time relative to the uncompressed run (CPU, one process)")
    matplotlib.artist.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
