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


def build_decay(decay_cfg, prefix: str) -> DecaySchedule:
    try:
        return DecaySchedule(decay_cfg.func, float(decay_cfg.constant), int(decay_cfg.early_stage))
    except ValueError as exc:
        raise ConfigError(f"{prefix}{exc}") from None


def build_policy(cfg: CompressConfig, cardinalities: list[int]) -> ErrorBoundPolicy:
    """Per-table bounds times the decay schedule; library errors become config errors naming the key."""
    decay = build_decay(cfg.decay, "compress.")
    try:
        spec = TableBoundSpec(cfg.base_error_bound, tuple(cfg.tighten_tables), cfg.tighten_value,
                              tuple(cfg.loosen_tables), cfg.loosen_value, cfg.table_preset)
        return ErrorBoundPolicy.from_spec(spec, cardinalities, decay)
    except ValueError as exc:
        raise ConfigError(f"compress.{exc}") from None


def build_backend(cfg: CompressConfig, mode: str | None = None):
    mode = mode or cfg.mode
    options: dict[str, Any] = {"nonfinite": cfg.nonfinite}
    if mode == "codec" and cfg.lossless.name != "default":
        options["lossless"] = cfg.lossless.name
        options["lossless_params"] = dict(cfg.lossless.params)
    try:
        return get_backend(mode, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"compress.lossless: {exc}") from None


class CompressionExtension(TrainingExtension):
    name = "compression"

    def __init__(self, cfg: CompressConfig, cardinalities: list[int], world_size: int = 1, rank: int = 0):
        self.cfg = cfg
        self.cardinalities = list(cardinalities)
        self.world_size, self.rank = world_size, rank
        self.policy = build_policy(cfg, self.cardinalities)
        self.backend = None if cfg.mode == "off" else build_backend(cfg)
        self.backward_backend = None if cfg.backward.mode == "off" else build_backend(cfg, cfg.backward.mode)
        self.backward_decay = build_decay(cfg.backward.decay, "compress.backward.")
        self.recorder = CompressionRecorder(len(self.cardinalities))
        self.iteration = 0
        self.hooks: list[CompressionHook] = []

    def bound(self, table: int) -> float:
        return self.policy.eb(self.iteration, table)

    def backward_bound(self, table: int) -> float:
        return min(self.backward_decay.multiplier(self.iteration) * self.cfg.backward.error_bound, 0.5)

    def attach(self, model: nn.Module) -> None:
        """One process: hooks on the pooled outputs emulate the exchange. Several: the exchange
        itself compresses (see dlrm_comp.distributed.exchange), so no hooks are attached."""
        if self.world_size > 1 or self.backend is None:
            return
        self.hooks = [CompressionHook(i, self.backend, self.bound, self.recorder, self.cfg.chunks,
                                      codec_name=self.codec_name, backward_backend=self.backward_backend,
                                      backward_bound=self.backward_bound,
                                      backward_codec_name=self.backward_codec_name)
                      for i in range(len(self.cardinalities))]
        model.set_pooled_hooks(self.hooks)

    @staticmethod
    def _describe(backend) -> str:
        return "" if backend is None else getattr(backend, "describe", lambda: backend.name)()

    @property
    def codec_name(self) -> str:
        return self._describe(self.backend)

    @property
    def backward_codec_name(self) -> str:
        return self._describe(self.backward_backend)

    def before_step(self, iteration: int) -> None:
        self.iteration = iteration

    def on_interval(self, iteration: int, log: Callable[..., None], echo: Callable[[str], None]) -> None:
        if self.world_size > 1:  # every rank saw only its tables: gather the interval on rank 0
            import torch.distributed as dist
            gathered = [None] * self.world_size if self.rank == 0 else None
            dist.gather_object((self.recorder.interval, self.bytes_meta_interval), gathered, dst=0)
            self.recorder.interval, self.bytes_meta_interval = {}, 0
            if self.rank != 0:
                return
            for part, meta in gathered:
                self.recorder.merge_interval(part)
                self.bytes_meta += meta
        rows = self.recorder.flush(iteration, log)
        if rows and self.cfg.print_tables:
            echo(format_interval_table(rows, iteration))

    def summary(self) -> dict[str, Any]:
        bounds = list(self.policy.bounds)
        fwd = self.recorder.direction_summary("fwd", self.cardinalities, bounds)
        section: dict[str, Any] = {"mode": self.cfg.mode, "codec": self.codec_name, "world_size": self.world_size,
                                   "destinations": self.world_size if self.world_size > 1 else self.cfg.chunks,
                                   "decay": {"func": self.cfg.decay.func, "constant": self.cfg.decay.constant,
                                             "early_stage": self.cfg.decay.early_stage},
                                   "bytes_meta": self.bytes_meta}
        if fwd is not None:
            section.update(fwd)
            if self.backend is not None and self.backend.fixed_rate:
                section["max_err_ratio"] = None
        bwd = self.recorder.direction_summary("bwd", self.cardinalities, None)
        if bwd is not None:
            bwd.update({"mode": self.cfg.backward.mode, "codec": self.backward_codec_name,
                        "error_bound": self.cfg.backward.error_bound})
            if self.backward_backend is not None and self.backward_backend.fixed_rate:
                bwd["max_err_ratio"] = None
            section["backward"] = bwd
        return {"compression": section}

    bytes_meta = 0  # size-exchange bytes of all ranks (rank 0 sums them at each interval)
    bytes_meta_interval = 0  # this rank's, since the last interval (the exchange adds to it)

    def state_dict(self) -> dict[str, Any]:
        return {"recorder": self.recorder.state_dict(), "bytes_meta": self.bytes_meta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "recorder" in state:
            self.recorder.load_state_dict(state["recorder"])
        self.bytes_meta = state.get("bytes_meta", 0)


def extensions_from_config(cfg, cardinalities: list[int], world_size: int = 1,
                           rank: int = 0) -> list[TrainingExtension]:
    """The extensions a run's config switches on."""
    if cfg.compress.mode == "off" and cfg.compress.backward.mode == "off":
        return []
    return [CompressionExtension(cfg.compress, cardinalities, world_size, rank)]
