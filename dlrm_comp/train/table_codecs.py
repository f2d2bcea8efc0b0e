"""The lossless stage per table (codec mode, `adaptive.lossless_tuning`): every `tune_every`
control steps each owner lets the selector (the Btune port) pick a stage for its tables' latest
codes; the decisions are shared with every rank and set in the plan. The tuned specs are kept so
a checkpoint restores them."""
from __future__ import annotations

from typing import Any, Callable

import torch

from dlrm_comp.adaptive.lossless_select import LosslessSelector
from dlrm_comp.compress.batch_quant import quantize_batch
from dlrm_comp.compress.lossless import LosslessSpec
from dlrm_comp.compress.kinds import ChunkKind
from dlrm_comp.config import AdaptiveConfig
from dlrm_comp.exchange.plan import DirectionPlan
from dlrm_comp.train.compression_plan import build_coder


class TableCodecs:
    def __init__(self, adaptive: AdaptiveConfig, plan: DirectionPlan, world_size: int, tuning: bool):
        self.plan = plan
        self.world_size = world_size
        self.tune_every = adaptive.tune_every
        self.selector = LosslessSelector(bandwidth_gbps=adaptive.bandwidth_gbps, perf_mode=adaptive.perf_mode,
                                         tradeoff=adaptive.tradeoff, hysteresis=adaptive.hysteresis) \
            if tuning and adaptive.lossless_tuning else None
        self.specs: dict[int, LosslessSpec] = {}  # table -> its lossless stage once tuned
        self.control_steps = 0
        self.changes = 0

    def name(self, table: int) -> str:
        return self.plan.codec_name(table)

    def control_step(self, iteration: int, samples: dict[int, torch.Tensor], bound: Callable[[int], float],
                     log: Callable[..., None] | None) -> None:
        """Count a control step; tune on every `tune_every`-th."""
        if self.selector is None:
            return
        self.control_steps += 1
        if self.control_steps % self.tune_every == 0:
            self._tune(iteration, samples, bound, log)

    def _tune(self, iteration: int, samples: dict[int, torch.Tensor], bound: Callable[[int], float],
              log: Callable[..., None] | None) -> None:
        decisions = []
        for table, chunk in sorted(samples.items()):
            x = chunk.reshape(1, -1)
            q = quantize_batch(x, torch.tensor([bound(table)], dtype=torch.float64))
            if int(q.kind[0]) != ChunkKind.QUANT:
                continue
            wide = int(q.bits[0]) > 8
            codes = q.codes[0].to(torch.int16 if wide else torch.uint8).cpu().numpy().tobytes()
            choice = self.selector.choose(table, codes, 2 if wide else 1, self.plan.coders[table])
            if choice.switched:
                decisions.append((table, choice.codec.spec, choice.reason))
        if self.world_size > 1:
            import torch.distributed as dist
            everyone = [None] * self.world_size
            dist.all_gather_object(everyone, decisions)
            decisions = [d for part in everyone for d in part]
        for table, spec, reason in decisions:
            self.specs[table] = spec
            self.apply(table)
            if log is not None:
                log("adaptive", iteration, table=table, eb_rel=bound(table), codec=self.name(table),
                    codec_id=self.plan.coders[table].codec_id, reason=reason)
        self.changes += len(decisions)

    def apply(self, table: int) -> None:
        spec = self.specs[table]
        self.plan.set_coder(table, build_coder(spec.name, dict(spec.params)))

    def state_dict(self) -> dict[str, Any]:
        return {"table_codecs": {t: s.to_dict() for t, s in self.specs.items()}, "control_steps": self.control_steps, "codec_changes": self.changes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.control_steps = state.get("control_steps", 0)
        self.changes = state.get("codec_changes", 0)
        self.specs = {int(k): LosslessSpec.from_dict(v) for k, v in state.get("table_codecs", {}).items()}
