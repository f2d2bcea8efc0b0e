"""The one JSON-lines reader: a kill during a write leaves a torn last line, never an unreadable log."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


def read_jsonl(path: str | Path) -> list[dict]:
    """Every parseable record of a JSONL file; torn or garbled lines (a killed writer) are skipped."""
    return read_jsonl_lines(path)[0]


def read_jsonl_lines(path: str | Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """The parseable records, and (line number, text) of every line that is not one, for a
    caller that must say what it dropped."""
    path = Path(path)
    if not path.exists():
        return [], []
    out, bad = [], []
    for number, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append((number, line))
            continue
        if isinstance(record, dict):
            out.append(record)
        else:
            bad.append((number, line))
    return out, bad


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Replace `path` atomically (temporary file, fsync, rename): a kill leaves the old or the new file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
