"""Checkpoints: atomic writes with a sha256 sidecar, keep the last K, resume from the newest intact one.

`ckpt_000000400.pt` (or `.rank1.pt` per rank of a distributed run) is a plain `torch.save` file;
`ckpt_000000400.pt.sha256` beside it is in `sha256sum` format, so `sha256sum -c` checks it by hand.
The sidecar is written before the checkpoint is renamed into place, so every checkpoint a kill can
leave behind has one; a checkpoint whose bytes no longer match (a flipped bit, a truncated copy)
is never loaded.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm_comp.config import ConfigError

# every layout: ckpt_<iteration>.pt (one process) or ckpt_<iteration>.rank<r>.pt
ANY_CHECKPOINT = re.compile(r"^ckpt_(\d{9})(?:\.rank(\d+))?\.pt$")
SIDECAR = ".sha256"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used (bad checksum, torn file); names the file."""


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def checkpoint_layouts(directory: Path) -> dict[int, list[Path]]:
    """Checkpoint files by the world size that wrote them (1 for untagged files, else max rank + 1)."""
    if not directory.is_dir():
        return {}
    by_rank: dict[int | None, list[Path]] = {}
    for p in sorted(directory.iterdir()):
        m = ANY_CHECKPOINT.match(p.name)
        if m:
            by_rank.setdefault(None if m.group(2) is None else int(m.group(2)), []).append(p)
    out: dict[int, list[Path]] = {}
    if None in by_rank:
        out[1] = by_rank.pop(None)
    if by_rank:
        out[max(by_rank) + 1] = [p for r in sorted(by_rank) for p in by_rank[r]]
    return out


class CheckpointManager:
    """`tag` tells the ranks of a distributed run apart (`.rank1`): each saves the tables it owns."""

    def __init__(self, directory: Path, keep: int = 2, tag: str = ""):
        self.directory = directory
        self.keep = keep
        self.tag = tag
        self._name = re.compile(rf"^ckpt_(\d{{9}}){re.escape(tag)}\.pt$")

    def path_for(self, iteration: int) -> Path:
        return self.directory / f"ckpt_{iteration:09d}{self.tag}.pt"

    def existing(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if self._name.match(p.name))

    def iterations(self) -> list[int]:
        return [int(self._name.match(p.name).group(1)) for p in self.existing()]

    def latest(self) -> Path | None:
        found = self.existing()
        return found[-1] if found else None

    def save(self, iteration: int, state: dict[str, Any]) -> Path:
        """Serialise, write the checksum sidecar, then rename the checkpoint into place: a kill at
        any point leaves the previous checkpoints intact and never a torn file under a final name."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(iteration)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:  # to disk, not to memory: a full Kaggle model is gigabytes
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        side_tmp = sidecar_of(path).with_name(sidecar_of(path).name + ".tmp")
        _write_durably(side_tmp, f"{file_sha256(tmp)}  {path.name}\n".encode())
        os.replace(side_tmp, sidecar_of(path))
        os.replace(tmp, path)
        for old in self.existing()[:-self.keep]:
            self.remove(old)
        return path

    @staticmethod
    def remove(path: Path) -> None:
        path.unlink(missing_ok=True)
        sidecar_of(path).unlink(missing_ok=True)

    @staticmethod
    def verify(path: Path) -> str | None:
        """None when `path` matches its sidecar, else why not."""
        side = sidecar_of(path)
        if not path.is_file():
            return "missing"
        if not side.is_file():
            return f"no checksum file {side.name}"
        expected = side.read_text().split()[:1]
        if not expected:
            return f"empty checksum file {side.name}"
        actual = file_sha256(path)
        if actual != expected[0]:
            size = path.stat().st_size
            return f"sha256 mismatch ({size} bytes on disk; the file is truncated or corrupted)"
        return None

    @staticmethod
    def load(path: Path, verify: bool = True) -> dict[str, Any]:
        """The state in `path`; CheckpointError (naming the file) when it fails its checksum or is unreadable."""
        if verify:
            problem = CheckpointManager.verify(path)
            if problem:
                raise CheckpointError(f"checkpoint {path}: {problem}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # EOFError, UnpicklingError, RuntimeError from a torn zip ...
            raise CheckpointError(f"checkpoint {path}: unreadable ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or "iteration" not in state:
            raise CheckpointError(f"checkpoint {path}: not a dlrm_comp checkpoint")
        return state

    @staticmethod
    def quarantine(path: Path) -> Path:
        """Move a bad checkpoint aside (`.corrupt`) so it is neither kept as newest nor tried again."""
        target = path.with_name(path.name + ".corrupt")
        if path.exists():
            os.replace(path, target)
        sidecar_of(path).unlink(missing_ok=True)
        return target
