"""The training loop's compression extension: builds the per-table bound policy and backend from
`compress.*`, attaches one hook per table, logs `table` records and the `compression` summary."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from dlrm_comp.compress.backends import get_backend
from dlrm_comp.compress.bounds import ErrorBoundPolicy, TableBoundSpec
from dlrm_comp.compress.decay import DecaySchedule
from dlrm_comp.config import CompressConfig, ConfigError
from dlrm_comp.hooks import CompressionHook
from dlrm_comp.recorder import CompressionRecorder, format_interval_table
from dlrm_comp.train.extension import TrainingExtension


def build_policy(cfg: CompressConfig, cardinalities: list[int]) -> ErrorBoundPolicy:
    """Per-table bounds times the decay schedule; library errors become config errors naming the key."""
    try:
        decay = DecaySchedule(cfg.decay.func, float(cfg.decay.constant), int(cfg.decay.early_stage))
    except ValueError as exc:
        raise ConfigError(f"compress.{exc}") from None
    try:
        spec = TableBoundSpec(cfg.base_error_bound, tuple(cfg.tighten_tables), cfg.tighten_value,
                              tuple(cfg.loosen_tables), cfg.loosen_value, cfg.table_preset)
        return ErrorBoundPolicy.from_spec(spec, cardinalities, decay)
    except ValueError as exc:
        raise ConfigError(f"compress.{exc}") from None


def build_backend(cfg: CompressConfig):
    options: dict[str, Any] = {"nonfinite": cfg.nonfinite}
    if cfg.mode == "codec" and cfg.lossless.name != "default":
        options["lossless"] = cfg.lossless.name
        options["lossless_params"] = dict(cfg.lossless.params)
    try:
        return get_backend(cfg.mode, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"compress.lossless: {exc}") from None


class CompressionExtension(TrainingExtension):
    name = "compression"

    def __init__(self, cfg: CompressConfig, cardinalities: list[int]):
        self.cfg = cfg
        self.cardinalities = list(cardinalities)
        self.policy = build_policy(cfg, self.cardinalities)
        self.backend = build_backend(cfg)
        self.recorder = CompressionRecorder(len(self.cardinalities))
        self.iteration = 0
        self.hooks: list[CompressionHook] = []

    def bound(self, table: int) -> float:
        return self.policy.eb(self.iteration, table)

    def attach(self, model: nn.Module) -> None:
        self.hooks = [CompressionHook(i, self.backend, self.bound, self.recorder, self.cfg.chunks,
                                      codec_name=self.codec_name)
                      for i in range(len(self.cardinalities))]
        model.set_pooled_hooks(self.hooks)

    @property
    def codec_name(self) -> str:
        return getattr(self.backend, "describe", lambda: self.backend.name)()

    def before_step(self, iteration: int) -> None:
        self.iteration = iteration

    def on_interval(self, iteration: int, log: Callable[..., None], echo: Callable[[str], None]) -> None:
        rows = self.recorder.flush(iteration, log)
        if rows and self.cfg.print_tables:
            echo(format_interval_table(rows, iteration))

    def summary(self) -> dict[str, Any]:
        fwd = self.recorder.direction_summary("fwd", self.cardinalities, list(self.policy.bounds))
        section: dict[str, Any] = {"mode": self.cfg.mode, "destinations": self.cfg.chunks,
                                   "decay": {"func": self.cfg.decay.func, "constant": self.cfg.decay.constant,
                                             "early_stage": self.cfg.decay.early_stage},
                                   "bytes_meta": 0}
        if fwd is not None:
            section.update(fwd)
        if self.backend.fixed_rate:
            section["max_err_ratio"] = None
        return {"compression": section}

    def state_dict(self) -> dict[str, Any]:
        return {"recorder": self.recorder.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "recorder" in state:
            self.recorder.load_state_dict(state["recorder"])


def extensions_from_config(cfg, cardinalities: list[int]) -> list[TrainingExtension]:
    """The extensions a run's config switches on."""
    if cfg.compress.mode == "off":
        return []
    return [CompressionExtension(cfg.compress, cardinalities)]
