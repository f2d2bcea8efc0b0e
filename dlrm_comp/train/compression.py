"""The training loop's compression extension: builds the per-table plan (bound policy x decay,
lossless stage) from `compress.*`, feeds the controller and the lossless tuner, and logs the
`table` records and the `compression` summary from the exchange's statistics."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from dlrm_comp.adaptive.controller import ClosedLoopController, ControllerConfig, TableObservation
from dlrm_comp.adaptive.lossless_select import LosslessSelector
from dlrm_comp.compress.batch_quant import quantize_batch
from dlrm_comp.compress.bounds import ErrorBoundPolicy, TableBoundSpec
from dlrm_comp.compress.lossless import LosslessCodec, LosslessSpec, get_lossless
from dlrm_comp.compress.quantize import ChunkKind
from dlrm_comp.exchange.exchange import Exchange
from dlrm_comp.exchange.plan import DEFAULT_CODER, CompressionPlan, DirectionPlan
from dlrm_comp.exchange.transport import LoopbackTransport
from dlrm_comp.compress.decay import DecaySchedule
from dlrm_comp.config import AdaptiveConfig, CompressConfig, ConfigError
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


def build_selector(cfg: AdaptiveConfig) -> LosslessSelector | None:
    if not cfg.lossless_tuning:
        return None
    return LosslessSelector(bandwidth_gbps=cfg.bandwidth_gbps, perf_mode=cfg.perf_mode, tradeoff=cfg.tradeoff,
                            hysteresis=cfg.hysteresis)


def build_coder(name: str, params: dict | None = None) -> LosslessCodec:
    """A lossless stage for a destination's code stream; ``default`` is the measured default."""
    try:
        return get_lossless(DEFAULT_CODER if name == "default" else name, **dict(params or {}))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"compress.lossless: {exc}") from None


def build_plan(cfg: CompressConfig, num_tables: int) -> CompressionPlan:
    """The per-table plan both directions start from (bounds are set every step)."""
    coder = build_coder(cfg.lossless.name, cfg.lossless.params)
    bitpack = cfg.layout == "bitpack"
    fwd = DirectionPlan(cfg.mode, num_tables, coders=[coder] * num_tables, bitpack=[bitpack] * num_tables,
                        nonfinite="passthrough" if cfg.nonfinite == "passthrough" else "raise")
    bwd = DirectionPlan(cfg.backward.mode, num_tables, coders=[coder] * num_tables,
                        bitpack=[bitpack] * num_tables, nonfinite=fwd.nonfinite)
    bad = [t for t in cfg.dedup_tables if t >= num_tables]
    if bad:
        raise ConfigError(f"compress.dedup_tables: {bad} are not tables of this model (0..{num_tables - 1})")
    forced = set(cfg.dedup_tables)
    dedup = [cfg.dedup in ("on", "auto") or t in forced for t in range(num_tables)]  # auto starts on, then measures
    return CompressionPlan(fwd, bwd, dedup, measure_bags=cfg.dedup == "auto")


def decide_dedup(cfg: CompressConfig, fraction) -> list[bool] | None:
    """``auto``: deduplicate the tables whose measured distinct fraction (distinct bags over
    rows, summed over the interval's chunks) is below ``dedup_max_fraction``, plus the forced
    ones. Every rank measures the same global batches, so every rank decides alike."""
    if cfg.dedup != "auto":
        return None
    forced = set(cfg.dedup_tables)
    return [bool(f < cfg.dedup_max_fraction) or t in forced for t, f in enumerate(fraction)]


class CompressionExtension(TrainingExtension):
    """Owns the compression plan (bounds x decay, lossless stage per table), the recorder, the
    controller and the lossless tuner; the exchange holds the plan by reference."""

    name = "compression"

    def __init__(self, cfg: CompressConfig, cardinalities: list[int], world_size: int = 1, rank: int = 0,
                 adaptive: AdaptiveConfig | None = None):
        self.cfg = cfg
        self.adaptive_cfg = adaptive or AdaptiveConfig()
        self.controller = build_controller(self.adaptive_cfg, len(cardinalities)) if cfg.mode != "off" else None
        self.current: list[float] = []
        self.trainer = None
        self.selector = build_selector(self.adaptive_cfg) if cfg.mode == "codec" else None
        self.table_codecs: dict[int, LosslessSpec] = {}  # table -> its lossless stage once tuned
        self.control_steps = 0
        self.codec_changes = 0
        self.bytes_meta = 0  # size-exchange bytes of all ranks (rank 0 sums them at each interval)
        self.bytes_pad = 0  # slot padding of all ranks (dist.size_exchange=slots)
        self._meta_seen = self._pad_seen = 0
        self.cardinalities = list(cardinalities)
        self.world_size, self.rank = world_size, rank
        self.policy = build_policy(cfg, self.cardinalities)
        self.plan = build_plan(cfg, len(self.cardinalities))
        self.backward_decay = build_decay(cfg.backward.decay, "compress.")
        self.recorder = CompressionRecorder(len(self.cardinalities))
        self.iteration = 0
        self.exchange: Exchange | None = None

    def bound(self, table: int) -> float:
        if not self.current:
            self._refresh_bounds()
        return self.current[table]

    def _refresh_bounds(self) -> None:
        base = self.policy.all(self.iteration)
        self.current = self.controller.effective(base) if self.controller is not None else base
        self.plan.fwd.eb_rel[:] = self.current
        self.plan.bwd.eb_rel[:] = [self.backward_bound(t) for t in range(len(self.cardinalities))]

    def build_exchange(self, transport, owners: list[int], dim: int, size_exchange: str = "exact") -> Exchange:
        """The exchange of this run (loopback in one process, the process group in several)."""
        self.exchange = Exchange(transport, owners, dim, self.plan, self.recorder, size_exchange)
        return self.exchange

    def bind(self, trainer) -> None:
        self.trainer = trainer
        for table in self.table_codecs:  # codecs restored from a checkpoint
            self._apply_table_codec(table)

    def backward_bound(self, table: int) -> float:
        return min(self.backward_decay.multiplier(self.iteration) * self.cfg.backward.error_bound, 0.5)

    @property
    def codec_name(self) -> str:
        return "" if self.cfg.mode == "off" else self.plan.fwd.codec_name(0)

    @property
    def backward_codec_name(self) -> str:
        return "" if self.cfg.backward.mode == "off" else self.plan.bwd.codec_name(0)

    def before_step(self, iteration: int) -> None:
        self.iteration = iteration
        if iteration > 0 and iteration % self.adaptive_cfg.interval == 0:
            if self.controller is not None:
                self._control_step(iteration)
            if self.selector is not None:
                self.control_steps += 1
                if self.control_steps % self.adaptive_cfg.tune_every == 0:
                    self._tune_lossless(iteration)
        self._refresh_bounds()

    # ------------------------------------------------------------------ lossless stage per table
    def table_codec_name(self, table: int) -> str:
        return self.plan.fwd.codec_name(table)

    def _tune_lossless(self, iteration: int) -> None:
        """Each owner tunes its tables' lossless stage on their latest codes; decisions are shared."""
        decisions = []
        samples = dict(self.exchange.last_sample) if self.exchange is not None else {}
        for table, chunk in sorted(samples.items()):
            x = chunk.reshape(1, -1)
            q = quantize_batch(x, torch.tensor([self.bound(table)], dtype=torch.float64))
            if int(q.kind[0]) != ChunkKind.QUANT:
                continue
            wide = int(q.bits[0]) > 8
            codes = q.codes[0].to(torch.int16 if wide else torch.uint8).cpu().numpy().tobytes()
            incumbent = self.plan.fwd.coders[table]
            choice = self.selector.choose(table, codes, 2 if wide else 1, incumbent)
            if choice.switched:
                decisions.append((table, choice.codec.spec, choice.reason))
        if self.world_size > 1:
            import torch.distributed as dist
            everyone = [None] * self.world_size
            dist.all_gather_object(everyone, decisions)
            decisions = [d for part in everyone for d in part]
        log = getattr(self.trainer, "log", None)
        for table, spec, reason in decisions:
            self.table_codecs[table] = spec
            self._apply_table_codec(table)
            if log is not None:
                log("adaptive", iteration, table=table, eb_rel=self.bound(table),
                    codec=self.table_codec_name(table), codec_id=self.plan.fwd.coders[table].codec_id,
                    reason=reason)
        self.codec_changes += len(decisions)

    def _apply_table_codec(self, table: int) -> None:
        spec = self.table_codecs[table]
        self.plan.fwd.set_coder(table, build_coder(spec.name, dict(spec.params)))

    # ------------------------------------------------------------------ closed loop
    def _window_observations(self) -> list[TableObservation]:
        """This window's forward bytes per table, summed over ranks so every rank decides alike."""
        window = self.recorder.take_window()
        device = self.trainer.device if self.trainer is not None else "cpu"
        counts = torch.zeros(len(self.cardinalities), 2, dtype=torch.float64, device=device)
        for table, (raw, sent) in window.items():
            counts[table, 0], counts[table, 1] = float(raw), float(sent)
        if self.world_size > 1:
            import torch.distributed as dist
            dist.all_reduce(counts)
        ebs = self.current or self.policy.all(self.iteration)
        return [TableObservation(float(r), float(s), eb) for (r, s), eb in zip(counts.tolist(), ebs)]

    def _control_step(self, iteration: int) -> None:
        observations = self._window_observations()
        drift, sensitivity = (None, None)
        if self.world_size == 1 and self.adaptive_cfg.probe_batch and self.trainer is not None:
            drift, sensitivity = probe_drift(self.trainer, self.plan, self.adaptive_cfg.probe_batch)
        self.last_drift = drift
        base = self.policy.all(iteration)
        decisions = self.controller.update(observations, base, drift, sensitivity)
        log = getattr(self.trainer, "log", None)
        if log is not None:
            if drift is not None:
                log("probe", iteration, drift=drift)
            for d in decisions:
                log("adaptive", iteration, table=d.table, eb_rel=d.eb_rel, codec=self.codec_name,
                    multiplier=d.multiplier, reason=d.reason)

    def _decide_dedup(self, iteration: int, log: Callable[..., None]) -> None:
        ex = self.exchange
        if ex is None or not ex.bag_counts[:, 1].any():
            return
        counts, ex.bag_counts = ex.bag_counts, ex.bag_counts * 0
        fraction = counts[:, 0] / counts[:, 1].clip(min=1)
        decision = decide_dedup(self.cfg, fraction)
        if decision is not None:
            self.plan.dedup[:] = decision
        if self.rank == 0:
            log("dedup", iteration, mode=self.cfg.dedup, max_fraction=self.cfg.dedup_max_fraction,
                distinct_fraction=fraction.round(4).tolist(), tables=[t for t, on in enumerate(self.plan.dedup) if on])

    def on_interval(self, iteration: int, log: Callable[..., None], echo: Callable[[str], None]) -> None:
        self._decide_dedup(iteration, log)
        if self.exchange is not None:
            self.exchange.check_finite()
        meta = (self.exchange.bytes_meta if self.exchange is not None else 0) - self._meta_seen
        self._meta_seen += meta
        pad = (self.exchange.bytes_pad if self.exchange is not None else 0) - self._pad_seen
        self._pad_seen += pad
        if self.world_size > 1:  # every rank saw only its tables: gather the interval on rank 0
            import torch.distributed as dist
            gathered = [None] * self.world_size if self.rank == 0 else None
            dist.gather_object((self.recorder.take_interval(), meta, pad), gathered, dst=0)
            if self.rank != 0:
                return
            for part, m, p in gathered:
                self.recorder.merge_interval(part)
                self.bytes_meta += m
                self.bytes_pad += p
        else:
            self.bytes_meta += meta
            self.bytes_pad += pad
        rows = self.recorder.flush(iteration, log)
        if rows and self.cfg.print_tables:
            echo(format_interval_table(rows, iteration))

    def adaptive_summary(self) -> dict[str, Any]:
        final = self.current or self.policy.all(self.iteration)
        section = {"policy": self.adaptive_cfg.policy,
                   "changes": (self.controller.changes if self.controller else 0) + self.codec_changes,
                   "bound_changes": self.controller.changes if self.controller else 0,
                   "codec_changes": self.codec_changes,
                   "lossless_tuning": self.selector is not None,
                   "eb_rel": final, "codec": [self.table_codec_name(i) for i in range(len(final))]}
        if self.controller is not None:
            section.update({"target_cr": self.adaptive_cfg.target_cr, "multipliers": self.controller.multipliers,
                            "eb_min": self.adaptive_cfg.eb_min, "eb_max": self.adaptive_cfg.eb_max,
                            "guard": "probe" if self.world_size == 1 and self.adaptive_cfg.probe_batch else "off"})
        return section

    def summary(self) -> dict[str, Any]:
        bounds = list(self.policy.bounds)
        fwd = self.recorder.direction_summary("fwd", self.cardinalities, bounds)
        section: dict[str, Any] = {"mode": self.cfg.mode, "codec": self.codec_name, "world_size": self.world_size,
                                   "destinations": self.world_size if self.world_size > 1 else self.cfg.chunks,
                                   "decay": {"func": self.cfg.decay.func, "constant": self.cfg.decay.constant,
                                             "early_stage": self.cfg.decay.early_stage},
                                   "bytes_meta": self.bytes_meta, "bytes_pad": self.bytes_pad,
                                   "dedup": {"mode": self.cfg.dedup, "max_fraction": self.cfg.dedup_max_fraction,
                                             "tables": [t for t, on in enumerate(self.plan.dedup) if on]}}
        if fwd is not None:
            section.update(fwd)
            if self.plan.fwd.fixed_rate:
                section["max_err_ratio"] = None
        bwd = self.recorder.direction_summary("bwd", self.cardinalities, None)
        if bwd is not None:
            bwd.update({"mode": self.cfg.backward.mode, "codec": self.backward_codec_name,
                        "error_bound": self.cfg.backward.error_bound})
            if self.plan.bwd.fixed_rate:
                bwd["max_err_ratio"] = None
            section["backward"] = bwd
        return {"compression": section, "adaptive": self.adaptive_summary()}

    def state_dict(self) -> dict[str, Any]:
        state = {"recorder": self.recorder.state_dict(), "bytes_meta": self.bytes_meta, "bytes_pad": self.bytes_pad,
                 "iteration": self.iteration,
                 "table_codecs": {t: s.to_dict() for t, s in self.table_codecs.items()}, "control_steps": self.control_steps,
                 "codec_changes": self.codec_changes, "dedup": list(self.plan.dedup),
                 "bag_counts": self.exchange.bag_counts.tolist() if self.exchange is not None else None}
        if self.controller is not None:
            state["controller"] = self.controller.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "recorder" in state:
            self.recorder.load_state_dict(state["recorder"])
        self.bytes_meta = state.get("bytes_meta", 0)
        self.bytes_pad = state.get("bytes_pad", 0)
        if self.controller is not None and "controller" in state:
            self.controller.load_state_dict(state["controller"])
        self.current = []
        if "iteration" in state:  # the bounds of the last step run, as an uninterrupted run holds them
            self.iteration = state["iteration"]
            self._refresh_bounds()
        self.control_steps = state.get("control_steps", 0)
        self.codec_changes = state.get("codec_changes", 0)
        self.table_codecs = {int(k): LosslessSpec.from_dict(v) for k, v in state.get("table_codecs", {}).items()}
        if self.cfg.dedup == "auto" and "dedup" in state:  # auto's per-table decision and its open window
            self.plan.dedup[:] = [bool(v) for v in state["dedup"]]
            if self.exchange is not None and state.get("bag_counts") is not None:
                self.exchange.bag_counts[:] = np.asarray(state["bag_counts"], dtype=np.int64)


def build_controller(cfg: AdaptiveConfig, num_tables: int) -> ClosedLoopController | None:
    if cfg.policy == "static":
        return None
    return ClosedLoopController(num_tables, ControllerConfig(
        target_cr=cfg.target_cr, budget_bytes=cfg.budget_bytes, eb_min=cfg.eb_min, eb_max=cfg.eb_max,
        gain=cfg.gain, max_step=cfg.max_step, smoothing=cfg.smoothing, drift_threshold=cfg.drift_threshold,
        guard_step=cfg.guard_step))


@torch.no_grad()
def probe_drift(trainer, plan: CompressionPlan, rows: int) -> tuple[float, list[float]]:
    """Loss with compressed embeddings minus the loss without, on a fixed training batch (the
    probe compresses through the same batched exchange as training, loopback, no statistics),
    and each table's share: the drift when only that table is compressed."""
    model = trainer.model
    batch = trainer.source.batch("train", 0, rows).to(trainer.device)
    pooled = model.lookup(batch.indices, batch.offsets)
    clean = F.binary_cross_entropy_with_logits(model.head(batch.dense, pooled), batch.labels).item()
    probe = Exchange(LoopbackTransport(1, trainer.device), [0] * len(pooled), pooled[0].shape[1],
                     CompressionPlan(plan.fwd, plan.bwd))
    lossy = probe.forward(pooled, compress=True)
    full = F.binary_cross_entropy_with_logits(model.head(batch.dense, lossy), batch.labels).item()
    sensitivity = []
    for i in range(len(pooled)):
        mixed = pooled[:i] + [lossy[i]] + pooled[i + 1:]
        loss = F.binary_cross_entropy_with_logits(model.head(batch.dense, mixed), batch.labels).item()
        sensitivity.append(loss - clean)
    return full - clean, sensitivity


def extensions_from_config(cfg, cardinalities: list[int], world_size: int = 1,
                           rank: int = 0) -> list[TrainingExtension]:
    """The extensions a run's config switches on."""
    c = cfg.compress
    if c.mode == "off" and c.backward.mode == "off" and c.dedup == "off" and not c.dedup_tables:
        return []
    return [CompressionExtension(cfg.compress, cardinalities, world_size, rank, cfg.adaptive)]
