"""The per-table compression plan: one object that the exchange, the controller, the lossless
tuner and the recorder all hold by reference (a table's bound and codec live here, only here)."""
from __future__ import annotations

from dataclasses import dataclass, field

from dlrm_comp.compress.fixed_batch import FIXED_MODES
from dlrm_comp.compress.lossless import LosslessCodec, get_lossless

MODES = ("off", "simulate", "sz", "codec") + FIXED_MODES
ERROR_BOUNDED = ("simulate", "sz", "codec")
DEFAULT_CODER = "zstd"  # measured default for a destination's stream on the CPU (benchmarks/codec_cpu.py)


@dataclass
class DirectionPlan:
    """One direction (forward embeddings or backward gradients) of the exchange."""

    mode: str = "off"
    num_tables: int = 0
    eb_rel: list[float] = field(default_factory=list)  # current bound per table (set every step)
    coders: list[LosslessCodec] = field(default_factory=list)  # lossless stage per table (codec mode)
    bitpack: list[bool] = field(default_factory=list)  # codes bit-packed before the coder, per table
    nonfinite: str = "raise"
    version: int = 0  # bumped by set_coder: the exchange memoises message layouts on it

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"compress.mode: unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        n = self.num_tables
        self.eb_rel = list(self.eb_rel) or [0.01] * n
        self.coders = list(self.coders) or [get_lossless(DEFAULT_CODER) for _ in range(n)]
        self.bitpack = list(self.bitpack) or [False] * n

    def set_coder(self, table: int, coder: LosslessCodec) -> None:
        """Change one table's lossless stage (the way the lossless tuner does it)."""
        self.coders[table] = coder
        self.version += 1

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def error_bounded(self) -> bool:
        return self.mode in ERROR_BOUNDED

    @property
    def fixed_rate(self) -> bool:
        return self.mode in FIXED_MODES

    @property
    def estimated(self) -> bool:
        return self.mode == "simulate"

    def codec_name(self, table: int) -> str:
        if self.mode != "codec":
            return self.mode
        c = self.coders[table]
        args = ",".join(f"{k}={v}" for k, v in c.params.items() if k != "nthreads")
        return f"codec:{'bitpack+' if self.bitpack[table] else ''}{c.name}({args})"

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
