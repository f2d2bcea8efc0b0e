"""Ablation tables (CSV + markdown) and `report.md`."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from dlrm_comp.study.runs import RunData, finite

# column key, markdown header, format
COLUMNS: list[tuple[str, str, str]] = [
    ("variant", "variant", "{}"),
    ("mode", "mode", "{}"),
    ("status", "status", "{}"),
    ("auc", "AUC", "{:.4f}"),
    ("auc_delta", "dAUC vs off", "{:+.4f}"),
    ("logloss", "logloss", "{:.4f}"),
    ("logloss_delta", "dlogloss vs off", "{:+.4f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("cr", "ratio (wire)", "{:.2f}x"),
    ("harmonic_mean_cr", "harmonic-mean ratio", "{:.2f}x"),
    ("bytes_raw", "bytes raw", "{:,.0f}"),
    ("bytes_sent", "bytes sent", "{:,.0f}"),
    ("max_err_ratio", "max err/bound", "{:.3f}"),
    ("step_s_mean", "step ms", "{:.2f}"),
    ("step_ratio", "step / off", "{:.2f}x"),
    ("wall_s", "wall s", "{:.1f}"),
]


def build_table(runs: Sequence[RunData], baseline: str | None = "off") -> list[dict]:
    """One row per run; deltas and the step-time ratio against the run named `baseline`."""
    base = next((r for r in runs if r.name == baseline and r.complete), None)
    base_eval = (base.summary or {}).get("final_eval", {}) if base else {}
    base_step = finite((base.summary or {}).get("step_s_mean")) if base else None
    rows = []
    for run in runs:
        row: dict = {key: None for key, _, _ in COLUMNS}
        row["variant"] = run.name
        if not run.complete:
            row["status"] = "missing"
            rows.append(row)
            continue
        s = run.summary
        final = s.get("final_eval") or {}
        comp = s.get("compression") or {}
        row.update(status="ok", mode=run.mode, auc=finite(final.get("auc")), logloss=finite(final.get("logloss")),
                   accuracy=finite(final.get("accuracy")), step_s_mean=finite(s.get("step_s_mean")),
                   wall_s=finite(s.get("wall_s")))
        if row["step_s_mean"] is not None:
            row["step_s_mean"] *= 1000.0  # ms
        if comp and comp.get("bytes_sent"):
            row.update(cr=finite(comp.get("cr")), harmonic_mean_cr=finite(comp.get("harmonic_mean_cr")),
                       bytes_raw=finite(comp.get("bytes_raw")), bytes_sent=finite(comp.get("bytes_sent")),
                       max_err_ratio=finite(comp.get("max_err_ratio")))
            if comp.get("estimated"):
                row["mode"] = f"{row['mode']} (est.)"
        else:
            row.update(cr=1.0, harmonic_mean_cr=1.0)
        if base_eval:
            if row["auc"] is not None and finite(base_eval.get("auc")) is not None:
                row["auc_delta"] = row["auc"] - base_eval["auc"]
            if row["logloss"] is not None and finite(base_eval.get("logloss")) is not None:
                row["logloss_delta"] = row["logloss"] - base_eval["logloss"]
        if base_step and row["step_s_mean"] is not None:
            row["step_ratio"] = row["step_s_mean"] / (base_step * 1000.0)
        rows.append(row)
    return rows


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[key for key, _, _ in COLUMNS])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k, _, _ in COLUMNS})


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def to_markdown(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    out = io.StringIO()
    out.write("| " + " | ".join(h for _, h, _ in columns) + " |\n")
    out.write("|" + "|".join("---" if k in ("variant", "mode", "status") else "---:" for k, _, _ in columns) + "|\n")
    for row in rows:
        out.write("| " + " | ".join(_fmt(row.get(k), f) for k, _, f in columns) + " |\n")
    return out.getvalue()


def write_report(path: Path, title: str, rows: Sequence[dict], plots: dict[str, str], notes: Sequence[str] = (),
                 header: Sequence[str] = ()) -> None:
    """`report.md`: header lines, the table, the plots (paths relative to the report), notes."""
    lines = [f"# {title}", ""]
    lines += list(header)
    if header:
        lines.append("")
    lines += ["## Results", "", to_markdown(rows), ""]
    captions = {
        "auc": "Validation AUC vs iteration (inset: the last part of training, zoomed)",
        "cr": "Running-average wire compression ratio vs iteration (forward exchange, all tables)",
        "per_table": "Per-table wire compression ratio over the whole run",
        "step": "Mean training step time relative to the uncompressed run",
    }
    for key, rel in plots.items():
        lines += [f"### {captions.get(key, key)}", "", f"![{key}]({rel})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    Path(path).write_text("\n".join(lines))
