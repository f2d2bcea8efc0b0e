"""Dump files: ``EMB_{table}_iter_{k}.bin`` = raw little-endian fp32 ``[B, d]`` of one table's pooled
output at training iteration k, plus ``meta.json`` (batch, dim, tables, cardinalities, every) in the
same directory (docs/architecture.md). Written by ``DumpExtension`` during training; read by
``load_dump``, which rejects a file whose size is not ``batch * dim * 4``."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dlrm_comp.train.extension import TrainingExtension

DUMP_RE = re.compile(r"^EMB_(\d+)_iter_(\d+)\.bin$")


class DumpFormatError(ValueError):
    """A dump file or directory does not match the format."""


def dump_name(table: int, iteration: int) -> str:
    return f"EMB_{table}_iter_{iteration}.bin"


def bags_name(table: int, iteration: int) -> str:
    """The dump's bag codes (int64 per row, equal iff the rows' id sequences are: `dedup.bag_codes`)."""
    return f"BAGS_{table}_iter_{iteration}.bin"


def distinct_rows(dump: Path, batch: int) -> np.ndarray | None:
    """Rows of a dump's distinct bags, in bag order (what a deduplicated chunk sends), or None
    where the dump has no bag file (dumps written before bag ids were recorded)."""
    p = Path(dump)
    m = DUMP_RE.match(p.name)
    bags = p.with_name(bags_name(int(m.group(1)), int(m.group(2)))) if m else None
    if bags is None or not bags.exists():
        return None
    codes = np.fromfile(bags, dtype="<i8")
    if codes.size != int(batch):
        raise DumpFormatError(f"{bags.name}: {codes.size} bag codes, the dump has {batch} rows")
    return np.unique(codes, return_index=True)[1]


def write_meta(directory: Path, batch: int, dim: int, tables: Sequence[int], cardinalities: Sequence[int],
               every: int, **extra: Any) -> None:
    meta = {"batch": int(batch), "dim": int(dim), "tables": [int(t) for t in tables],
            "cardinalities": [int(c) for c in cardinalities], "every": int(every), **extra}
    (Path(directory) / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def read_meta(directory: Path, batch: int | None = None, dim: int | None = None) -> dict[str, Any]:
    """meta.json of a dump directory; ``batch``/``dim`` are required where there is none (and override it)."""
    path = Path(directory) / "meta.json"
    meta: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if batch is not None:
        meta["batch"] = int(batch)
    if dim is not None:
        meta["dim"] = int(dim)
    if "batch" not in meta or "dim" not in meta:
        raise DumpFormatError(f"{directory}: no meta.json; pass --batch and --dim")
    for k in ("batch", "dim"):
        if not isinstance(meta[k], int) or meta[k] <= 0:
            raise DumpFormatError(f"{path}: {k} must be a positive integer, got {meta[k]!r}")
    return meta


def list_dumps(directory: Path) -> list[tuple[int, int, Path]]:
    """(table, iteration, path) of every dump file, sorted by table then iteration."""
    d = Path(directory)
    if not d.is_dir():
        raise DumpFormatError(f"{d}: not a directory")
    out = []
    for p in d.iterdir():
        m = DUMP_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), p))
    if not out:
        raise DumpFormatError(f"{d}: no EMB_{{table}}_iter_{{k}}.bin files")
    return sorted(out)


def load_dump(path: Path, batch: int, dim: int) -> np.ndarray:
    """The [batch, dim] float32 array of a dump file (clear error when the size does not match)."""
    p = Path(path)
    size = p.stat().st_size
    expected = int(batch) * int(dim) * 4
    if size != expected:
        raise DumpFormatError(f"{p.name}: {size} bytes, expected batch * dim * 4 = {batch} * {dim} * 4 = {expected} "
                              "(raw little-endian float32 [batch, dim]); check --batch/--dim or meta.json")
    return np.fromfile(p, dtype="<f4").reshape(int(batch), int(dim))


class _Tap(nn.Module):
    """Wraps a table's pooled hook; records its input (the uncompressed pooled output) when armed."""

    def __init__(self, inner: nn.Module, table: int, owner: "DumpExtension") -> None:
        super().__init__()
        self.inner, self.table = inner, table
        self._owner = [owner]  # a list: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        if self.training and owner.armed is not None and self.table not in owner.done:
            owner.write(self.table, x)
        return self.inner(x)


class DumpExtension(TrainingExtension):
    """Writes each table's pooled output every ``every`` iterations (iteration 0 included)."""

    name = "dump"

    def __init__(self, out_dir: Path, every: int, cardinalities: Sequence[int], batch: int,
                 tables: Sequence[int] | None = None) -> None:
        if int(every) < 1:
            raise ValueError(f"dump.every: must be >= 1, got {every!r}")
        self.out_dir = Path(out_dir)
        self.every = int(every)
        self.cardinalities = list(cardinalities)
        self.batch = int(batch)
        self.tables = list(range(len(self.cardinalities))) if tables is None else list(tables)
        self.armed: int | None = None
        self.done: set[int] = set()
        self.files: list[Path] = []
        self.dim: int | None = None
        self.trainer = None
        self.bags: list[np.ndarray] | None = None  # the armed step's bag codes per table

    def attach(self, model: nn.Module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        hooks = list(model.pooled_hooks)
        for t in self.tables:
            model.pooled_hooks[t] = _Tap(hooks[t], t, self)

    def bind(self, trainer) -> None:
        self.trainer = trainer

    def before_step(self, iteration: int) -> None:
        self.armed = iteration if iteration % self.every == 0 else None
        self.done = set()
        self.bags = None
        if self.armed is not None and self.trainer is not None:  # the batch this step reads (a pure function)
            from dlrm_comp.exchange.dedup import bag_codes
            tr = self.trainer
            batch = tr.source.batch("train", tr.schedule.index(iteration), self.batch)
            self.bags = [bag_codes(i, o) for i, o in zip(batch.indices, batch.offsets)]

    def write(self, table: int, x: torch.Tensor) -> None:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
        self.dim = int(arr.shape[-1])
        path = self.out_dir / dump_name(table, int(self.armed))
        arr.tofile(path)
        if self.bags is not None and len(self.bags[table]) == len(arr):
            self.bags[table].astype("<i8").tofile(self.out_dir / bags_name(table, int(self.armed)))
        self.files.append(path)
        self.done.add(table)
        write_meta(self.out_dir, self.batch, self.dim, self.tables,
                   [self.cardinalities[t] for t in self.tables], self.every)

    def summary(self) -> dict[str, Any]:
        return {"dump": {"files": len(self.files), "dir": str(self.out_dir), "every": self.every}}


def run_dump(config: Sequence[str], overrides: Sequence[str], out_dir: Path, every: int,
             iterations: int | None = None) -> dict[str, Any]:
    """Short training (config + overrides) writing dumps to ``out_dir``; returns its summary.json."""
    from dlrm_comp.config import load_config
    from dlrm_comp.train.compression import extensions_from_config
    from dlrm_comp.train.loop import Trainer

    sets = ["train.eval_every=0", "train.checkpoint_every=0", "train.progress=false", "train.tensorboard=false",
            "train.eval_batches=1"]
    if iterations is not None:
        sets.append(f"train.iterations={int(iterations)}")
    cfg = load_config(list(config), sets + list(overrides))
    out_dir = Path(out_dir)
    run_dir = out_dir.parent / (out_dir.name + "_train")
    from dlrm_comp.train.builders import build_source
    cards = build_source(cfg.data).cardinalities
    exts = extensions_from_config(cfg, cards)
    dump = DumpExtension(out_dir, every, cards, cfg.data.batch_size)
    summary = Trainer(cfg, run_dir, extensions=exts + [dump], overwrite=True).run()  # scratch run: redone afresh
    if dump.dim is None:
        raise DumpFormatError("dump: training wrote no dump files (iterations < 1?)")
    return summary
