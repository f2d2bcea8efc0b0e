"""Each step's per-table bounds, both directions, and the closed loop that moves them.

Forward: the table lists x decay (`ErrorBoundPolicy`), times the controller's multipliers when
`adaptive.policy=closed_loop`. Backward: `compress.backward.error_bound` x its own decay. At each
control step the controller sees this window's forward bytes per table, summed over ranks so
every rank decides alike, and in one process the probe's loss drift."""
from __future__ import annotations

from typing import Any, Callable

import torch

from dlrm_comp.adaptive.controller import TableObservation
from dlrm_comp.compress.bounds import MAX_EB_REL
from dlrm_comp.config import AdaptiveConfig, CompressConfig
from dlrm_comp.exchange.plan import StepBounds
from dlrm_comp.recorder import CompressionRecorder
from dlrm_comp.train.probe import probe_drift


class BoundControl:
    def __init__(self, cfg: CompressConfig, adaptive: AdaptiveConfig, cardinalities: list[int], world_size: int):
        self.backward = cfg.backward
        self.adaptive = adaptive
        self.num_tables = len(cardinalities)
        self.world_size = world_size
        self.policy = cfg.bounds.build(cardinalities, cfg.decay)
        self.controller = adaptive.build(self.num_tables) if cfg.mode != "off" else None
        self.current: list[float] = []  # the forward bounds of the step being run

    @property
    def guard(self) -> bool:
        """The probe guards the loop in one process (several would each probe their own slice)."""
        return self.world_size == 1 and bool(self.adaptive.probe_batch)

    def forward_bounds(self, iteration: int) -> list[float]:
        base = self.policy.all(iteration)
        self.current = self.controller.effective(base) if self.controller is not None else base
        return self.current

    def backward_bound(self, iteration: int) -> float:
        return min(self.backward.decay.multiplier(iteration) * self.backward.error_bound, MAX_EB_REL)

    def step_bounds(self, iteration: int) -> StepBounds:
        """Both directions' per-table bounds of one step, computed once: the value the trainer
        passes into the exchange call."""
        return StepBounds.of(self.forward_bounds(iteration), [self.backward_bound(iteration)] * self.num_tables)

    def final(self, iteration: int) -> list[float]:
        return self.current or self.policy.all(iteration)

    def control_step(self, iteration: int, recorder: CompressionRecorder, trainer, exchange,
                     log: Callable[..., None] | None, codec_name: str, bounds: StepBounds | None = None) -> None:
        observations = self._window_observations(recorder, trainer, iteration)
        drift, sensitivity = (None, None)
        if self.guard and trainer is not None and exchange is not None:
            drift, sensitivity = probe_drift(trainer, exchange, self.adaptive.probe_batch, bounds)
        decisions = self.controller.update(observations, self.policy.all(iteration), drift, sensitivity)
        if log is not None:
            if drift is not None:
                log("probe", iteration, drift=drift)
            for d in decisions:
                log("adaptive", iteration, table=d.table, eb_rel=d.eb_rel, codec=codec_name,
                    multiplier=d.multiplier, reason=d.reason)

    def _window_observations(self, recorder: CompressionRecorder, trainer, iteration: int) -> list[TableObservation]:
        window = recorder.take_window()
        device = trainer.device if trainer is not None else "cpu"
        counts = torch.zeros(self.num_tables, 2, dtype=torch.float64, device=device)
        for table, (raw, sent) in window.items():
            counts[table, 0], counts[table, 1] = float(raw), float(sent)
        if self.world_size > 1:
            import torch.distributed as dist
            dist.all_reduce(counts)
        ebs = self.current or self.policy.all(iteration)
        return [TableObservation(float(r), float(s), eb) for (r, s), eb in zip(counts.tolist(), ebs)]

    def controller_summary(self) -> dict[str, Any]:
        """The closed loop's part of summary.json's `adaptive` section (empty when static)."""
        if self.controller is None:
            return {}
        return {"target_cr": self.adaptive.target_cr, "multipliers": self.controller.multipliers,
                "eb_min": self.adaptive.eb_min, "eb_max": self.adaptive.eb_max,
                "guard": "probe" if self.guard else "off"}
