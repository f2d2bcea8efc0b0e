"""Read run directories (the formats of docs/architecture.md) into small, plot-ready structures."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlrm_comp.jsonl import read_jsonl


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


@dataclass
class RunData:
    """One run directory: its summary and the curves researchers plot."""
    name: str
    path: Path
    summary: dict | None = None
    eval_curve: list[tuple[int, dict]] = field(default_factory=list)  # (iteration, {auc, logloss, accuracy})
    train_curve: list[tuple[int, dict]] = field(default_factory=list)
    cr_curve: list[tuple[int, float]] = field(default_factory=list)  # running-average wire ratio (fwd)
    interval_cr: list[tuple[int, float]] = field(default_factory=list)  # ratio of each print interval (fwd)
    per_table: list[dict] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def mode(self) -> str:
        comp = (self.summary or {}).get("compression") or {}
        if comp.get("mode"):
            return comp["mode"]
        return "off" if self.summary is not None else "?"

    def metric(self, key: str) -> list[tuple[int, float]]:
        return [(it, rec[key]) for it, rec in self.eval_curve if rec.get(key) is not None]


def load_run(run_dir: str | Path, name: str | None = None) -> RunData:
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    name = name or (summary or {}).get("name") or run_dir.name
    data = RunData(name=name, path=run_dir, summary=summary)
    evals: dict[int, dict] = {}
    per_iter_bytes: dict[int, list[float]] = {}
    for rec in records:
        kind, it = rec.get("kind"), int(rec.get("iteration", 0))
        if kind == "eval":
            evals[it] = {k: rec.get(k) for k in ("auc", "logloss", "accuracy")}
        elif kind == "train":
            data.train_curve.append((it, {k: rec.get(k) for k in ("loss", "step_s", "samples_per_s")}))
        elif kind == "table" and rec.get("direction", "fwd") == "fwd":
            raw, sent = rec.get("bytes_raw"), rec.get("bytes_sent")
            if raw and sent:
                acc = per_iter_bytes.setdefault(it, [0.0, 0.0])
                acc[0] += float(raw)
                acc[1] += float(sent)
    data.eval_curve = sorted(evals.items())
    raw_total = sent_total = 0.0
    for it in sorted(per_iter_bytes):
        raw, sent = per_iter_bytes[it]
        raw_total += raw
        sent_total += sent
        data.interval_cr.append((it, raw / sent))
        data.cr_curve.append((it, raw_total / sent_total))
    comp = (summary or {}).get("compression") or {}
    data.per_table = list(comp.get("per_table") or [])
    return data


def finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
