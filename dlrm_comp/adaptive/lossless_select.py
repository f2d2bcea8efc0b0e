"""Per-table choice of the lossless stage: the Btune port proposes, hysteresis disposes.

Every few control steps each table's latest codes (quantized at its current bound) go to the
tuner with the configured link bandwidth, performance mode and tradeoff. The incumbent codec is
measured on the same sample with the same score, and the tuner's pick replaces it only when its
merit is better by more than `hysteresis`, so a table does not flip between near-equal settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dlrm_comp.adaptive.btune import Btune, make_sample, tune
from dlrm_comp.compress.lossless import LosslessCodec
from dlrm_comp.compress.timing import measure_codec


@dataclass
class LosslessChoice:
    table: int
    codec: LosslessCodec
    merit: float
    incumbent_merit: float
    switched: bool
    reason: str


@dataclass
class LosslessSelector:
    bandwidth_gbps: float = 1.25
    perf_mode: str = "BALANCED"
    tradeoff: float = 0.5
    hysteresis: float = 0.05
    sample_bytes: int = 16384
    switches: int = 0
    history: list[dict] = field(default_factory=list)

    def choose(self, table: int, codes: bytes, typesize: int, incumbent: LosslessCodec) -> LosslessChoice:
        result = tune(codes, typesize, bandwidth_gbs=self.bandwidth_gbps, perf_mode=self.perf_mode,
                      tradeoff=self.tradeoff, extras=("zlib",), sample_bytes=self.sample_bytes,
                      use_env=False)  # the config's adaptive.* values (BTUNE_* are read at the CLI layer)
        scorer = Btune(result.config)
        sample = make_sample(codes, self.sample_bytes, typesize)
        incumbent_merit = scorer.merit(measure_codec(incumbent, sample, typesize))
        better = result.merit > incumbent_merit * (1.0 + self.hysteresis)
        same = result.codec.spec == incumbent.spec
        switched = better and not same
        reason = (f"btune: merit {result.merit:.4g} vs incumbent {incumbent_merit:.4g} "
                  f"({'switch' if switched else 'keep'}, hysteresis {self.hysteresis:.0%}, "
                  f"{result.unique_trials}/{result.grid_size} settings tried)")
        if switched:
            self.switches += 1
        choice = LosslessChoice(table, result.codec if switched else incumbent, result.merit, incumbent_merit,
                                switched, reason)
        self.history.append({"table": table, "switched": switched, "merit": result.merit,
                             "incumbent_merit": incumbent_merit})
        return choice
