"""Report: per-table harmonic means over dumps, modeled speedup, hybrid per-table choice, plots.

Speedup model (the reference's; docs/architecture.md, reference facts): ``speedup = 1 / (1/CR + B * (1/Tc + 1/Td))`` with B the link
bandwidth and Tc/Td the encode/decode throughputs, all in bytes/s of fp32 input (the encoders'
times include quantization and reconstruction). The hybrid picks, per table, the encoder with the
highest modeled speedup; its overall speedup is total bytes over total modeled time.
"""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence


import numpy as np  # noqa: E402

from dlrm_comp.bench.pipeline import read_rows  # noqa: E402
from dlrm_comp.plotting import subplots

SIZES = ("real", "dedup", "padded")  # message variants, in report order


def speedup(cr: float, tc_bps: float, td_bps: float, bw_bps: float) -> float:
    """One message's modeled speedup; throughputs and bandwidth in any one unit (inf: a free codec)."""
    return 1.0 / (1.0 / cr + bw_bps * (1.0 / tc_bps + 1.0 / td_bps))


def throughput(nbytes: float, seconds: float) -> float:
    """Bytes per second for `speedup`; a codec that took no measurable time counts as free (inf)."""
    return nbytes / seconds if seconds else math.inf


# The SC'24 reference's iteration breakdown without compression (shares of the step)
REFERENCE_BREAKDOWN = {"fwd_a2a": 0.313, "bwd_a2a": 0.313, "allreduce": 0.229, "compute": 0.145}


def end_to_end_speedup(fwd_share: float, bwd_share: float, fwd_speedup: float, bwd_speedup: float) -> float:
    """Step speedup when the forward and backward all-to-all, ``fwd_share`` and ``bwd_share`` of
    the uncompressed step, get ``fwd_speedup`` and ``bwd_speedup`` faster and the rest stays."""
    return 1.0 / (1.0 - fwd_share - bwd_share + fwd_share / fwd_speedup + bwd_share / bwd_speedup)


def ideal_speedup(fwd_share: float, bwd_share: float, fwd_cr: float, bwd_cr: float) -> float:
    """``1/(1 - s_f*(1 - 1/CR_f) - s_b*(1 - 1/CR_b))``: the step speedup of a free codec, each
    direction's all-to-all shrunk by its wire ratio."""
    return end_to_end_speedup(fwd_share, bwd_share, fwd_cr, bwd_cr)


def hmean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return len(xs) / sum(1.0 / x for x in xs) if xs else float("nan")


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (size, eb_rel, table, encoder): harmonic-mean ratio over dumps, throughputs as
    total bytes / total seconds, mean efficiency."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["size"], r["eb_rel"], r["table"], r["encoder"])].append(r)
    out = []
    for (size, eb, table, enc), rs in sorted(groups.items()):
        raw = sum(r["message_bytes"] for r in rs)
        eff = [r["efficiency"] for r in rs if math.isfinite(r["efficiency"])]
        out.append({"size": size, "eb_rel": eb, "table": table, "encoder": enc, "dumps": len(rs),
                    "message_bytes": rs[0]["message_bytes"], "cr_hmean": hmean([r["cr"] for r in rs]),
                    "ideal_cr_hmean": hmean([r["ideal_cr"] for r in rs]),
                    "tc_gbs": raw / sum(r["enc_s"] for r in rs) / 1e9, "td_gbs": raw / sum(r["dec_s"] for r in rs) / 1e9,
                    "efficiency": float(np.mean(eff)) if eff else float("nan"),
                    "enc_s": sum(r["enc_s"] for r in rs) / len(rs), "dec_s": sum(r["dec_s"] for r in rs) / len(rs)})
    return out


def with_speedups(agg: list[dict[str, Any]], bandwidths_gbs: Sequence[float]) -> None:
    for a in agg:
        for bw in bandwidths_gbs:
            a[f"speedup@{bw:g}GBps"] = speedup(a["cr_hmean"], a["tc_gbs"] * 1e9, a["td_gbs"] * 1e9, bw * 1e9)


def hybrid(agg: list[dict[str, Any]], bandwidths_gbs: Sequence[float]) -> list[dict[str, Any]]:
    """Per (size, eb, bandwidth): each table's best encoder by modeled speedup, and the overall figures."""
    out = []
    keys = sorted({(a["size"], a["eb_rel"]) for a in agg})
    for size, eb in keys:
        sub = [a for a in agg if a["size"] == size and a["eb_rel"] == eb]
        tables = sorted({a["table"] for a in sub})
        encoders = sorted({a["encoder"] for a in sub})
        for bw in bandwidths_gbs:
            col = f"speedup@{bw:g}GBps"
            choice = {t: max((a for a in sub if a["table"] == t), key=lambda a: a[col]) for t in tables}
            total = sum(choice[t]["message_bytes"] for t in tables)
            hyb = total / sum(choice[t]["message_bytes"] / choice[t][col] for t in tables)
            single = {}
            for enc in encoders:
                rs = [a for a in sub if a["encoder"] == enc]
                if len(rs) == len(tables):
                    single[enc] = total / sum(a["message_bytes"] / a[col] for a in rs)
            best_single = max(single, key=single.get) if single else None
            out.append({"size": size, "eb_rel": eb, "bandwidth_gbs": bw, "hybrid_speedup": hyb,
                        "best_single": best_single, "best_single_speedup": single.get(best_single, float("nan")),
                        "choice": {str(t): choice[t]["encoder"] for t in tables}})
    return out


# ----------------------------------------------------------------------------------------------- plots
def _primary_eb(agg: list[dict[str, Any]]) -> float:
    ebs = sorted({a["eb_rel"] for a in agg})
    return ebs[len(ebs) // 2]


def plot_ratio_bars(agg, out: Path, encoders: Sequence[str]) -> Path:
    eb = _primary_eb(agg)
    sizes = [s for s in SIZES if any(a["size"] == s for a in agg)]
    fig, axes = subplots(len(sizes), 1, figsize=(14, 3.6 * len(sizes)), squeeze=False)
    for ax, size in zip(axes[:, 0], sizes):
        sub = [a for a in agg if a["size"] == size and a["eb_rel"] == eb]
        tables = sorted({a["table"] for a in sub})
        w = 0.8 / len(encoders)
        for i, enc in enumerate(encoders):
            vals = {a["table"]: a["cr_hmean"] for a in sub if a["encoder"] == enc}
            ax.bar(np.arange(len(tables)) + i * w, [vals.get(t, 0) for t in tables], w, label=enc)
        mb = sub[0]["message_bytes"] if sub else 0
        ax.set_title(f"compression ratio vs fp32 per table, eb_rel {eb:g}, {size} messages ({mb / 1024:.0f} KiB fp32)")
        ax.set_xticks(np.arange(len(tables)) + 0.4 - w / 2, [str(t) for t in tables])
        ax.set_xlabel("table")
        ax.set_ylabel("ratio (harmonic mean over dumps)")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(ncol=min(6, len(encoders)), fontsize=8)
    fig.tight_layout()
    path = Path(out) / "ratio_per_table.png"
    fig.savefig(path, dpi=90)
    return path


def plot_time_stacked(agg, out: Path, encoders: Sequence[str], bw_gbs: float, size: str = "real") -> Path:
    """Per table, for each encoder, compress + transfer + decompress time relative to sending fp32."""
    eb = _primary_eb(agg)
    sub = [a for a in agg if a["size"] == size and a["eb_rel"] == eb]
    tables = sorted({a["table"] for a in sub})
    fig, ax = subplots(figsize=(14, 4))
    w = 0.8 / len(encoders)
    colors = {"compress": "tab:orange", "transfer": "tab:blue", "decompress": "tab:green"}
    for i, enc in enumerate(encoders):
        vals = {a["table"]: a for a in sub if a["encoder"] == enc}
        x = np.arange(len(tables)) + i * w
        comp = np.array([bw_gbs / vals[t]["tc_gbs"] if t in vals else 0 for t in tables])
        xfer = np.array([1 / vals[t]["cr_hmean"] if t in vals else 0 for t in tables])
        dec = np.array([bw_gbs / vals[t]["td_gbs"] if t in vals else 0 for t in tables])
        ax.bar(x, comp, w, color=colors["compress"], edgecolor="k", linewidth=0.3, label="compress" if i == 0 else None)
        ax.bar(x, xfer, w, bottom=comp, color=colors["transfer"], edgecolor="k", linewidth=0.3,
               label="transfer" if i == 0 else None)
        ax.bar(x, dec, w, bottom=comp + xfer, color=colors["decompress"], edgecolor="k", linewidth=0.3,
               label="decompress" if i == 0 else None)
    ax.axhline(1.0, color="k", ls="--", lw=0.8, label="uncompressed fp32")
    ax.set_xticks(np.arange(len(tables)) + 0.4 - w / 2, [str(t) for t in tables])
    ax.set_xlabel(f"table (bars per table, left to right: {', '.join(encoders)})")
    ax.set_ylabel("time / uncompressed transfer time")
    ax.set_title(f"modeled time per message at {bw_gbs:g} GB/s, eb_rel {eb:g}, {size} messages")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) / f"time_stacked_{size}.png"
    fig.savefig(path, dpi=90)
    return path


def plot_ratio_vs_bound(agg, out: Path, encoders: Sequence[str]) -> Path:
    sizes = [s for s in SIZES if any(a["size"] == s for a in agg)]
    fig, axes = subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        ebs = sorted({a["eb_rel"] for a in agg if a["size"] == size})
        for enc in encoders:
            ys = [hmean([a["cr_hmean"] for a in agg if a["size"] == size and a["eb_rel"] == eb and a["encoder"] == enc])
                  for eb in ebs]
            ax.plot(ebs, ys, marker="o", label=enc)
        ideal = [hmean([a["ideal_cr_hmean"] for a in agg if a["size"] == size and a["eb_rel"] == eb
                        and a["encoder"] == "identity"]) for eb in ebs]
        ax.plot(ebs, ideal, "k--", label="entropy ideal")
        ax.set_xscale("log")
        ax.set_xlabel("relative error bound")
        ax.set_ylabel("ratio vs fp32 (harmonic mean over tables)")
        ax.set_title(f"{size} messages")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) / "ratio_vs_bound.png"
    fig.savefig(path, dpi=90)
    return path


# ----------------------------------------------------------------------------------------------- report
def _md_table(rows: list[dict[str, Any]], cols: Sequence[str]) -> str:
    def f(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def make_report(results: Path, out: Path, bandwidths_gbs: Sequence[float] = (12.5, 25.0, 100.0)) -> dict[str, Any]:
    rows = read_rows(results)
    if not rows:
        raise ValueError(f"{results}: no result rows")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bandwidths_gbs = [float(b) for b in bandwidths_gbs]
    agg = aggregate(rows)
    with_speedups(agg, bandwidths_gbs)
    hyb = hybrid(agg, bandwidths_gbs)
    with open(out / "per_table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(agg[0]))
        w.writeheader()
        w.writerows(agg)
    # overall per encoder: harmonic mean over tables of the per-table harmonic means
    overall = []
    for (size, eb, enc) in sorted({(a["size"], a["eb_rel"], a["encoder"]) for a in agg}):
        sub = [a for a in agg if (a["size"], a["eb_rel"], a["encoder"]) == (size, eb, enc)]
        rec = {"size": size, "eb_rel": eb, "encoder": enc, "message_bytes": sub[0]["message_bytes"],
               "cr_hmean_tables": hmean([a["cr_hmean"] for a in sub]),
               "ideal_cr_hmean_tables": hmean([a["ideal_cr_hmean"] for a in sub]),
               "efficiency_mean": float(np.nanmean([a["efficiency"] for a in sub])) if any(
                   math.isfinite(a["efficiency"]) for a in sub) else float("nan"),
               "tc_gbs_median": float(np.median([a["tc_gbs"] for a in sub])),
               "td_gbs_median": float(np.median([a["td_gbs"] for a in sub]))}
        overall.append(rec)
    encoders = sorted({a["encoder"] for a in agg})
    bar_encoders = [e for e in ("identity", "zlib-auto", "blosc2-zstd5", "btune", "ans-model", "sz3", "fp8", "int8")
                    if e in encoders]
    stacked = [e for e in ("zlib-auto", "btune", "ans-model", "sz3") if e in encoders]
    plots = [plot_ratio_bars(agg, out, bar_encoders), plot_ratio_vs_bound(agg, out, bar_encoders)]
    for size in SIZES:
        if any(a["size"] == size for a in agg):
            plots.append(plot_time_stacked(agg, out, stacked, bandwidths_gbs[0], size))
    summary = {"bandwidths_gbs": bandwidths_gbs, "overall": overall, "hybrid": hyb, "per_table": agg,
               "plots": [p.name for p in plots], "rows": len(rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    md = ["# Offline compression benchmark", "",
          f"Source: `{Path(results).resolve()}`, {len(rows)} measurements of the training codec. Ratios are fp32 "
          "bytes over wire bytes (one message per table, its framing included). **real** = one table's pooled "
          "output of one mini-batch as dumped "
          "(the message size of the run); **dedup** = the same messages with one row per distinct bag (bag "
          "deduplication: ratios against the whole message's fp32 bytes, side by side with **real**); "
          "**padded** = the same data repeated to emulate large messages "
          "(the reference's method; those ratios do not transfer to the wire). Throughputs are GB/s of fp32 "
          "input and include quantization/reconstruction (a dump's tables coded in one call, as a training "
          "step is; each table's share by its bytes). Speedup = 1/(1/CR + B(1/Tc + 1/Td)).", ""]
    for size in SIZES:
        sub = [o for o in overall if o["size"] == size]
        if sub:
            md += [f"## Harmonic mean over tables, {size} messages ({sub[0]['message_bytes']} B fp32)", "",
                   _md_table(sub, ["eb_rel", "encoder", "cr_hmean_tables", "ideal_cr_hmean_tables", "efficiency_mean",
                                   "tc_gbs_median", "td_gbs_median"]), ""]
    md += ["## Hybrid per-table choice by modeled speedup", "",
           _md_table(hyb, ["size", "eb_rel", "bandwidth_gbs", "hybrid_speedup", "best_single", "best_single_speedup"]),
           ""]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    (out / "report.md").write_text("\n".join(md))
    return summary
