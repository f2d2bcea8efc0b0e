"""Run logs: one JSON object per line in metrics.jsonl plus TensorBoard scalars."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from dlrm_comp.jsonl import read_jsonl, read_jsonl_lines, write_jsonl

__all__ = ["MetricsLogger", "read_jsonl", "write_json"]


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every line parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


class MetricsLogger:
    """Appends `metrics.jsonl` records (docs/architecture.md) and mirrors numeric fields to TensorBoard."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self._file = open(self.path, "a") if enabled else None
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, kind: str, iteration: int, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "iteration": int(iteration), **fields}
        self._file.write(json.dumps(_clean(record)) + "\n")
        self._file.flush()
        if self._tb is not None:
            prefix = kind if "table" not in fields else f"{kind}/{fields.get('direction', 'fwd')}/t{fields['table']:02d}"
            for key, value in fields.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "table" \
                        and math.isfinite(float(value)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, iteration)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None

    @staticmethod
    def truncate_after(out_dir: Path, iteration: int, drop_eval_at: int | None = None) -> list[tuple[int, str]]:
        """On resume, drop records written after the checkpoint (and a torn last line) so the log
        reads as one run; `drop_eval_at`: an eval record the resumed run writes again (the final one).
        Returns the torn lines dropped, (line number, text), for the caller to report."""
        path = out_dir / "metrics.jsonl"
        records, torn = read_jsonl_lines(path)
        kept = [r for r in records if r.get("iteration", 0) <= iteration
                and not (r.get("kind") == "eval" and r.get("iteration") == drop_eval_at)]
        write_jsonl(path, kept)
        return torn


_TORN_EVAL = re.compile(r'^\{"kind": "eval", "iteration": (\d+)[,}]')


def torn_eval_iteration(text: str) -> int | None:
    """The iteration of the eval record a torn line held, when its start says so (the logger
    writes kind and iteration first); None for any other line."""
    match = _TORN_EVAL.match(text)
    return int(match.group(1)) if match else None
