"""The per-table compression plan: one object that the exchange, the controller, the lossless
tuner and the recorder all hold by reference (a table's bound and codec live here, only here)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlrm_comp.compress.device_wire import MESSAGE_PATHS
from dlrm_comp.compress.errors import NONFINITE_POLICIES
from dlrm_comp.compress.lossless import DEFAULT_LOSSLESS, LosslessCodec, build_lossless
from dlrm_comp.compress.modes import BY_NAME, Mode, mode


@dataclass
class DirectionPlan:
    """One direction (forward embeddings or backward gradients) of the exchange."""

    mode: str = "off"
    num_tables: int = 0
    eb_rel: list[float] = field(default_factory=list)  # configured bound per table (when a call gives no StepBounds)
    coders: list[LosslessCodec] = field(default_factory=list)  # lossless stage per table (codec mode)
    bitpack: list[bool] = field(default_factory=list)  # codes bit-packed before the coder, per table
    nonfinite: str = "error"  # NONFINITE_POLICIES: "error" stops the run, "passthrough" sends such chunks raw
    version: int = 0  # bumped by set_coder: the exchange memoises message layouts on it
    row_cache_rows: int = 0  # the row cache's rows per table and destination (forward; 0: no cache)
    # codec mode: where messages are assembled and coded (compress.message_path: host | device | auto;
    # auto: the device path for rows on CUDA where nvcomp imports, compress/device_wire.py)
    message_path: str = "auto"
    device_stage: str | None = None  # the device path's lossless stage while it runs (labels), None: host

    def __post_init__(self) -> None:
        mode(self.mode)  # ValueError naming the valid modes
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"compress.nonfinite: must be one of {', '.join(NONFINITE_POLICIES)}, got {self.nonfinite!r}")
        if self.message_path not in MESSAGE_PATHS:
            raise ValueError(f"compress.message_path: must be one of {', '.join(MESSAGE_PATHS)}, got {self.message_path!r}")
        n = self.num_tables
        self.eb_rel = list(self.eb_rel) or [0.01] * n
        self.coders = list(self.coders) or [build_lossless(DEFAULT_LOSSLESS) for _ in range(n)]
        self.bitpack = list(self.bitpack) or [False] * n

    def set_coder(self, table: int, coder: LosslessCodec) -> None:
        """Change one table's lossless stage (the way the lossless tuner does it)."""
        self.coders[table] = coder
        self.version += 1

    @property
    def info(self) -> Mode:
        """What the mode is (compress/modes.py)."""
        return BY_NAME[self.mode]

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def error_bounded(self) -> bool:
        return self.info.error_bounded

    @property
    def fixed_rate(self) -> bool:
        return self.info.fixed_rate

    @property
    def estimated(self) -> bool:
        return self.info.estimated

    @property
    def byte_messages(self) -> bool:
        return self.info.byte_messages

    def codec_name(self, table: int) -> str:
        if self.mode != "codec":
            return self.mode
        if self.device_stage is not None:
            return f"codec:device+{self.device_stage}"
        return f"codec:{'bitpack+' if self.bitpack[table] else ''}{self.coders[table].spec.label()}"

    def codec_names(self) -> list[str]:
        return [self.codec_name(t) for t in range(self.num_tables)]


@dataclass
class CompressionPlan:
    fwd: DirectionPlan
    bwd: DirectionPlan
    dedup: list[bool] = field(default_factory=list)  # per table: one row per distinct bag, both directions
    measure_bags: bool = False  # count distinct bags of every table even where dedup is off (auto)

    def __post_init__(self) -> None:
        self.dedup = list(self.dedup) or [False] * self.fwd.num_tables

    @classmethod
    def off(cls, num_tables: int) -> "CompressionPlan":
        return cls(DirectionPlan("off", num_tables), DirectionPlan("off", num_tables))


@dataclass(frozen=True)
class StepBounds:
    """One step's relative error bounds per table, both directions: computed once by the bound
    controller (``BoundControl.step_bounds``) and passed into the exchange call as a value, so no
    shared list carries them and every statistic records the bounds its step really used."""

    fwd: torch.Tensor  # [T] float64, host
    bwd: torch.Tensor  # [T] float64, host

    @classmethod
    def of(cls, fwd, bwd) -> "StepBounds":
        return cls(torch.as_tensor(fwd, dtype=torch.float64), torch.as_tensor(bwd, dtype=torch.float64))

    def direction(self, name: str) -> torch.Tensor:
        return self.fwd if name == "fwd" else self.bwd
