"""Checkpoints: atomic writes, keep the last K, resume from the newest."""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch



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
        """Write to a temporary file then rename, so a kill mid-write never leaves a torn checkpoint."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(iteration)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        for old in self.existing()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def load(path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=False)
