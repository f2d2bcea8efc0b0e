"""The hook points the training loop offers to optional parts (compression, adaptive control).

An extension sees the model once (`attach`), each step before it runs (`before_step`), each print
interval (`on_interval`), and contributes to the summary and to checkpoints. The loop stays short
and knows nothing about compression.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn


class TrainingExtension:
    name: str = "extension"

    def attach(self, model: nn.Module) -> None:
        """Called once, after the model is built and moved to its device."""

    def bind(self, trainer: Any) -> None:
        """Called once before training with the Trainer (its source, model, device, logger)."""

    def before_step(self, iteration: int) -> None:
        """Called before training step `iteration` (0-based count of completed steps)."""

    def on_interval(self, iteration: int, log: Callable[..., None], echo: Callable[[str], None]) -> None:
        """Called every print interval: write records with `log(kind, iteration, **fields)`."""

    def summary(self) -> dict[str, Any]:
        """Sections merged into summary.json."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
