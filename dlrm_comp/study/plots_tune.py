"""Tuning figures: QoS vs gain with the Pareto front, search history, predictor quality."""
from __future__ import annotations

from pathlib import Path


import numpy as np  # noqa: E402
from dlrm_comp.plotting import subplots

MODE_COLORS = {"codec": "tab:blue", "sz": "tab:purple", "simulate": "tab:cyan", "int8": "tab:orange",
               "fp8": "tab:red", "fp16": "tab:green", "bf16": "tab:olive"}


def plot_qos_vs_gain(rows, front, picks, validation, spec, path: Path) -> Path | None:
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        return None
    fig, ax = subplots(figsize=(9, 5.5))
    for mode in sorted({r["params"].get("mode") for r in done}):
        pts = [r for r in done if r["params"].get("mode") == mode]
        ax.scatter([r["qos"] for r in pts], [r["gain"] for r in pts], s=28, alpha=0.7,
                   color=MODE_COLORS.get(mode, "gray"), label=f"trials: {mode} (short run)")
    if front:
        ax.step([r["qos"] for r in front], [r["gain"] for r in front], where="post", color="k", lw=1.2,
                label="Pareto front (short runs)")
    for i, thr in enumerate(spec.thresholds):
        ax.axvline(thr, color="0.5", ls=":", lw=1)
        ax.text(thr, 1.0, f" {thr:g}", transform=ax.get_xaxis_transform(), fontsize=7, va="top", color="0.3")
        r = picks.get(thr)
        if r is not None:
            ax.scatter([r["qos"]], [r["gain"]], marker="*", s=220, facecolor="gold", edgecolor="k", zorder=5,
                       label="pick per threshold (short run)" if i == 0 else None)
            v = validation.get(thr) or {}
            if v.get("status") == "ok":
                ax.scatter([v["qos"]], [v["gain"]], marker="D", s=60, facecolor="none", edgecolor="crimson",
                           lw=1.5, zorder=6, label="validated full run" if not any(
                               (validation.get(t) or {}).get("status") == "ok" for t in spec.thresholds[:i]) else None)
                ax.annotate("", (v["qos"], v["gain"]), (r["qos"], r["gain"]),
                            arrowprops=dict(arrowstyle="->", color="crimson", lw=0.8))
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel(f"{spec.qos} vs uncompressed (lower is better)")
    ax.set_ylabel(f"gain: {spec.gain}" + (" (x, fp32 / wire)" if spec.gain == "cr" else
                                          f" (modeled, {spec.bandwidth_gbps:g} GB/s link)"))
    ax.set_yscale("log")
    ax.set_title(f"QoS vs gain ({len(done)} trials)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_history(rows, spec, path: Path) -> Path | None:
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r["number"])
    fig, (a1, a2) = subplots(2, 1, figsize=(9, 6), sharex=True)
    done = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    a1.scatter([r["number"] for r in done], [r["qos"] for r in done], s=18, label="measured (short run)")
    if pruned:
        a1.scatter([r["number"] for r in pruned], [r["predicted_qos"] if r["predicted_qos"] is not None else np.nan
                                                   for r in pruned],
                   marker="x", color="tab:red", s=30, label="pruned (predicted)")
    for thr in spec.thresholds:
        a1.axhline(thr, color="0.5", ls=":", lw=1)
    a1.set_ylabel(spec.qos)
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    a2.scatter([r["number"] for r in done], [r["gain"] for r in done], s=18, color="tab:gray", label="trial gain")
    for thr in spec.thresholds:
        best, xs, ys = None, [], []
        for r in rows:
            if r["state"] == "complete" and r["qos"] <= thr and (best is None or r["gain"] > best):
                best = r["gain"]
            xs.append(r["number"])
            ys.append(best if best is not None else np.nan)
        a2.step(xs, ys, where="post", lw=1.5, label=f"best with {spec.qos} <= {thr:g}")
    a2.set_ylabel(spec.gain)
    a2.set_xlabel("trial")
    a2.set_yscale("log")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3, which="both")
    fig.suptitle("search history")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_predictor(pred, spec, path: Path) -> Path | None:
    if len(pred.history) < 3:
        return None
    p, y = np.array(pred.history).T
    fig, ax = subplots(figsize=(5.5, 5))
    ax.scatter(y, p, s=18)
    lo, hi = float(min(p.min(), y.min())), float(max(p.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"measured {spec.qos} (short run)")
    ax.set_ylabel(f"predicted {spec.qos} (leave-one-out)")
    ax.set_title(f"bound-based predictor: RMS error {pred.sigma:.4g}, n={pred.n}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
