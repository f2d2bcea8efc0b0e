"""The link benchmark's comparisons (measured, modeled and ideal speedup against ``off`` on the
same link), its stacked-bar plot of the step-time breakdown, and ``report.md``."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from dlrm_comp.bench.report import end_to_end_speedup, ideal_speedup, speedup
from dlrm_comp.plotting import subplots

BARS = (("fwd_a2a_s", "forward all-to-all", "#1f77b4"), ("bwd_a2a_s", "backward all-to-all", "#aec7e8"),
        ("allreduce_s", "allreduce", "#ff7f0e"), ("codec_s", "codec", "#d62728"), ("compute_s", "compute", "#7f7f7f"))


def shares(row: dict) -> dict[str, float]:
    """Each phase's fraction of the step."""
    return {k.removesuffix("_s"): v / row["step_s"] for k, v in row["breakdown"].items()}


def _message_speedup(row: dict, direction: str, link_bytes_per_s: float) -> float:
    """The reference's model for one direction, with the run's own ratio and codec throughput."""
    cr, rate = row[f"{direction}_cr"], row["codec_GBps"][direction]
    if cr == 1.0 or rate is None:
        return 1.0
    tc = rate["encode"] * 1e9 if rate["encode"] else math.inf
    td = rate["decode"] * 1e9 if rate["decode"] else math.inf
    return speedup(cr, tc, td, link_bytes_per_s)


def compare(rows: list[dict]) -> None:
    """Adds the speedups against the ``off`` row of the same (config, rate), in place, and the
    communication-free limit: ``off``'s step over its compute phase (no all-to-all, allreduce or
    codec left), with the fraction of it each row's speedup reaches."""
    off = next(r for r in rows if r["mode"] == "off")
    s_f = off["breakdown"]["fwd_a2a_s"] / off["step_s"]
    s_b = off["breakdown"]["bwd_a2a_s"] / off["step_s"]
    for r in rows:
        bw = r["link_rate_measured_mbit"] * 1e6 / 8
        r["speedup_vs_off"] = off["step_s"] / r["step_s"]
        r["ideal_speedup"] = ideal_speedup(s_f, s_b, r["fwd_cr"], r["bwd_cr"])
        r["modeled_speedup"] = end_to_end_speedup(s_f, s_b, _message_speedup(r, "fwd", bw), _message_speedup(r, "bwd", bw))
        r["fraction_of_ideal"] = r["speedup_vs_off"] / r["ideal_speedup"]
        r["auc_delta_vs_off"] = r["auc"] - off["auc"]
        r["comm_free_limit"] = off["step_s"] / off["breakdown"]["compute_s"]
        r["fraction_of_limit"] = r["speedup_vs_off"] / r["comm_free_limit"]
        settled = r.get("step_s_settled")
        r["speedup_settled"] = off["step_s"] / settled if settled else None


def plot(results: list[dict], path: Path) -> Path:
    """Stacked bars of the breakdown (ms per step) per mode, one panel per (config, rate)."""
    groups = _groups(results)
    width = max(4.0, 1.2 + 0.8 * max(len(g) for g in groups.values()))
    fig, axes = subplots(1, len(groups), figsize=(width * len(groups), 4.8), squeeze=False)
    repeats = max(k[2] for k in groups) + 1
    for ax, ((config, rate, repeat), rows) in zip(axes[0], groups.items()):
        x = range(len(rows))
        bottom = [0.0] * len(rows)
        for key, label, color in BARS:
            values = [r["breakdown"][key] * 1e3 for r in rows]
            ax.bar(x, values, bottom=bottom, color=color, label=label, width=0.7)
            bottom = [b + v for b, v in zip(bottom, values)]
        for i, r in enumerate(rows):
            ax.text(i, bottom[i], f"{r['speedup_vs_off']:.2f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x), [r["mode"] for r in rows], rotation=30, ha="right")
        ax.set_title(_title(config, rate, repeat, repeats))
        ax.set_ylabel("ms per step")
        ax.margins(y=0.12)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle("Step-time breakdown (bar label: measured speedup vs off)", fontsize=9)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=120)
    return path


def _groups(results: list[dict]) -> dict[tuple[str, str, int], list[dict]]:
    """The rows of one pass over the modes: (config, rate, repeat)."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["config"], r["rate"], r.get("repeat", 0)), []).append(r)
    return groups


def _title(config: str, rate: str, repeat: int, repeats: int) -> str:
    return f"{config} @ {rate}" + (f", pass {repeat + 1} of {repeats}" if repeats > 1 else "")


SPREAD_KEYS = ("step_s", "speedup_vs_off", "fraction_of_limit", "auc_delta_vs_off", "speedup_settled", "cpu_s")


def across_repeats(results: list[dict]) -> list[dict]:
    """Per (config, rate, mode): the median over the passes (``--repeat``) of each value in
    ``SPREAD_KEYS`` and every pass's value (``<key>_runs``). Each pass's speedups and shares are
    against that pass's own ``off`` (``compare`` per pass), so the medians are of paired ratios:
    a machine that drifts between passes moves ``off`` and the mode together."""
    by_mode: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        by_mode.setdefault((r["config"], r["rate"], r["mode"]), []).append(r)
    out = []
    for (config, rate, mode), rows in by_mode.items():
        row = {"config": config, "rate": rate, "mode": mode, "repeats": len(rows)}
        for key in SPREAD_KEYS:
            runs = [r.get(key) for r in rows]
            row[f"{key}_runs"] = runs
            known = [v for v in runs if v is not None]
            row[key] = statistics.median(known) if known else None
        out.append(row)
    return out


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def markdown(payload: dict, plot_path: Path | None) -> str:
    """``report.md``: the table per (config, rate, pass), the breakdown, the search, the wire
    check; with several passes first ``payload["across_repeats"]`` (``across_repeats``)."""
    n = payload.get("ranks_per_node", 1)
    lines = ["# Link benchmark", "",
             f"Two network namespaces joined by a veth pair, `tbf` on both ends; {n} rank(s) per namespace "
             "(torchrun --nnodes=2, gloo; a namespace's ranks talk over its loopback). Speedups are against `off` "
             "on the same link; `ideal` is "
             "`1/(1 - s_f(1 - 1/CR_f) - s_b(1 - 1/CR_b))` from the measured `off` breakdown, `modeled` adds "
             "the run's measured codec throughput (`1/(1/CR + B(1/Tc + 1/Td))` per direction); `limit` is the "
             "communication-free limit, `off`'s step over its compute phase, and `of limit` the fraction of it "
             "reached.", ""]
    if payload.get("reference_rate"):
        lines += [f"Reference rate: **{payload['reference_rate']}** (the uncompressed all-to-all is closest to 60% "
                  "of the step there, as in the reference's breakdown).", ""]
    groups = _groups(payload["results"])
    repeats = max((k[2] for k in groups), default=0) + 1
    if repeats > 1:
        lines += _spread(payload["across_repeats"], repeats)
    for (config, rate, repeat), rows in groups.items():
        lines += [f"## {_title(config, rate, repeat, repeats)} (link measured "
                  f"{_f(rows[0]['link_rate_measured_mbit'], 4)} Mbit/s)", "",
                  "| mode | step ms | speedup vs off | modeled | ideal | of ideal | limit | of limit | fwd CR | bwd CR "
                  "| AUC | dAUC |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['mode']} | {r['step_s'] * 1e3:.1f} | {r['speedup_vs_off']:.3f} | "
                         f"{r['modeled_speedup']:.3f} | {r['ideal_speedup']:.3f} | {r['fraction_of_ideal']:.0%} | "
                         f"{r['comm_free_limit']:.3f} | {r['fraction_of_limit']:.0%} | "
                         f"{r['fwd_cr']:.2f} | {r['bwd_cr']:.2f} | {r['auc']:.4f} | {r['auc_delta_vs_off']:+.4f} |")
        lines += ["", "| mode | fwd a2a ms | bwd a2a ms | allreduce ms | codec ms | compute ms | a2a share | "
                  "CPU ms | tc / accounted bytes |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            b, s = r["breakdown"], shares(r)
            cpu = f"{r['cpu_s'] * 1e3:.1f}" if r.get("cpu_s") is not None else "-"
            lines.append(f"| {r['mode']} | {b['fwd_a2a_s'] * 1e3:.1f} | {b['bwd_a2a_s'] * 1e3:.1f} | "
                         f"{b['allreduce_s'] * 1e3:.1f} | {b['codec_s'] * 1e3:.1f} | {b['compute_s'] * 1e3:.1f} | "
                         f"{s['fwd_a2a'] + s['bwd_a2a']:.0%} | {cpu} | {r['wire']['tc_over_expected']:.3f} |")
        lines += ["`CPU ms`: each rank's process CPU per step, every thread (the ranks' mean); where ranks share "
                  "cores the phases are mostly waits for the slowest rank, and this is the work a step needs."]
        lines += ["", _limits(rows), ""]
        lines += _settled(rows)
    search = payload.get("reference_search")
    if search:
        lines += ["## Reference-rate search (`off`)", "", "| rate | step ms | a2a share | allreduce share |",
                  "|---|---|---|---|"]
        lines += [f"| {t['rate']} | {t['step_s'] * 1e3:.1f} | {t['a2a_share']:.0%} | {t['allreduce_share']:.0%} |"
                  for t in search]
        lines.append("")
    lines += ["The reference's iteration breakdown without compression: forward all-to-all 31.3%, backward "
              "all-to-all 31.3%, allreduce 22.9%, compute 14.5%.", ""]
    if plot_path is not None:
        lines += [f"![breakdown]({plot_path.name})", ""]
    return "\n".join(lines)


def _spread(summary: list[dict], repeats: int) -> list[str]:
    """The medians over the passes first (``--repeat``; ``summary``: ``across_repeats``' rows),
    each pass's values beside them."""
    out = [f"## Across {repeats} passes (median, then each pass)", "",
           "Every pass ran each mode once, in the same order; speedups and shares of the limit are against the "
           "same pass's `off`.", "",
           "| config @ rate | mode | step ms | speedup vs off | of limit | dAUC | passes: step ms | passes: of limit "
           "| passes: CPU ms |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        steps = ", ".join(f"{v * 1e3:.1f}" for v in r["step_s_runs"])
        shares = ", ".join(f"{v:.0%}" for v in r["fraction_of_limit_runs"])
        cpu = ", ".join("-" if v is None else f"{v * 1e3:.1f}" for v in r.get("cpu_s_runs", []))
        out.append(f"| {r['config']} @ {r['rate']} | {r['mode']} | {r['step_s'] * 1e3:.1f} | "
                   f"{r['speedup_vs_off']:.3f} | {r['fraction_of_limit']:.0%} | {r['auc_delta_vs_off']:+.4f} | "
                   f"{steps} | {shares} | {cpu or '-'} |")
    return out + [""]


def _settled(rows: list[dict]) -> list[str]:
    """The ``auto`` rows once more, over the intervals that ran what ``auto`` had chosen (the
    trials it ran to measure the other routes and settings left out); the table above counts them."""
    picked = [r for r in rows if r.get("step_s_settled") and r["settled_steps"] < r["measured_steps"]]
    if not picked:
        return []
    out = ["Outside trials (`auto` rows: the intervals that ran its choice; the table above includes its trials):", "",
           "| mode | steps | step ms | speedup vs off | of limit | all intervals ms |", "|---|---|---|---|---|---|"]
    for r in picked:
        out.append(f"| {r['mode']} | {r['settled_steps']} of {r['measured_steps']} | {r['step_s_settled'] * 1e3:.1f} | "
                   f"{r['speedup_settled']:.3f} | {r['speedup_settled'] / r['comm_free_limit']:.0%} | "
                   f"{r['step_s'] * 1e3:.1f} |")
    return out + [""]


def allreduce_wire_share(row: dict) -> float:
    """DDP's allreduce share of the bytes a run puts on the wire."""
    return row["wire"]["allreduce_bytes_per_step"] / row["wire"]["expected_bytes_per_step"]


def _limits(rows: list[dict]) -> str:
    """What keeps the best mode from its ideal: the time it still spends where `off` did not."""
    best = max((r for r in rows if r["mode"] != "off"), key=lambda r: r["speedup_vs_off"], default=None)
    if best is None:
        return ""
    off = next(r for r in rows if r["mode"] == "off")
    ideal_step = off["step_s"] / best["ideal_speedup"]
    gap = best["step_s"] - ideal_step
    b, o = best["breakdown"], off["breakdown"]
    parts = [f"codec {b['codec_s'] * 1e3:.1f} ms",
             f"all-to-all left {(b['fwd_a2a_s'] + b['bwd_a2a_s']) * 1e3:.1f} ms "
             f"(ideal {(o['fwd_a2a_s'] / best['fwd_cr'] + o['bwd_a2a_s'] / best['bwd_cr']) * 1e3:.1f} ms)",
             f"allreduce {b['allreduce_s'] * 1e3:.1f} ms (off {o['allreduce_s'] * 1e3:.1f})",
             f"compute {b['compute_s'] * 1e3:.1f} ms (off {o['compute_s'] * 1e3:.1f})",
             f"DDP's allreduce is {allreduce_wire_share(best):.0%} "
             f"of its bytes on the wire (off: {allreduce_wire_share(off):.0%})"]
    return (f"Best mode `{best['mode']}`: {best['speedup_vs_off']:.2f}x measured, {best['ideal_speedup']:.2f}x ideal "
            f"({best['fraction_of_ideal']:.0%}); its step is {gap * 1e3:.1f} ms above the ideal step: "
            + "; ".join(parts) + ".")
