"""The training loop's compression extension: owns the per-table plan that the exchange holds by
reference, and at the loop's hook points sets each step's bounds (`bound_control`), drives the
closed loop and the lossless tuner (`table_codecs`), re-decides `auto` dedup
(`compression_plan`) and `auto` peers (`peer_policy`) and reports the statistics (`compression_stats`)."""
from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np

from dlrm_comp.config import TORCHREC_QCOMM_MODES, AdaptiveConfig, CompressConfig
from dlrm_comp.exchange.exchange import Exchange
from dlrm_comp.exchange.plan import StepBounds
from dlrm_comp.train.bound_control import BoundControl
from dlrm_comp.train.compression_plan import build_plan, decide_dedup
from dlrm_comp.train.compression_stats import CompressionStats
from dlrm_comp.train.extension import TrainingExtension
from dlrm_comp.train.table_codecs import TableCodecs


class CompressionExtension(TrainingExtension):
    name = "compression"

    def __init__(self, cfg: CompressConfig, cardinalities: list[int], world_size: int = 1, rank: int = 0,
                 adaptive: AdaptiveConfig | None = None):
        self.cfg = cfg
        self.adaptive = adaptive or AdaptiveConfig()
        self.cardinalities = list(cardinalities)
        self.world_size, self.rank = world_size, rank
        self.bounds = BoundControl(cfg, self.adaptive, self.cardinalities, world_size)
        self.plan = build_plan(cfg, len(self.cardinalities))
        if self.adaptive.lossless_tuning and cfg.message_path == "auto":  # the tuner picks host coders per table
            self.plan.fwd.message_path = self.plan.bwd.message_path = "host"
        first = self.bounds.step_bounds(0)  # the configured default for a call without StepBounds (tools, probes)
        self.plan.fwd.eb_rel, self.plan.bwd.eb_rel = first.fwd.tolist(), first.bwd.tolist()
        self.codecs = TableCodecs(self.adaptive, self.plan.fwd, world_size, tuning=cfg.mode == "codec")
        self.stats = CompressionStats(len(self.cardinalities), world_size, rank, (cfg.mode, cfg.backward.mode))
        self.recorder = self.stats.recorder  # the exchange records into it; the loop reads its timings
        self.trainer = None
        self.iteration = 0
        self.exchange: Exchange | None = None
        self.step_bounds: StepBounds | None = None  # this step's bounds, both directions (the trainer passes them on)
        self.peer_policy = None  # compress.peers=auto's decisions (built with the exchange)

    def bound(self, table: int) -> float:
        if self.step_bounds is None:
            self._refresh_bounds()
        return float(self.step_bounds.fwd[table])

    def _refresh_bounds(self) -> None:
        self.step_bounds = self.bounds.step_bounds(self.iteration)

    def build_exchange(self, transport, owners: list[int], dim: int, size_exchange: str = "exact") -> Exchange:
        """The exchange of this run (loopback in one process, the process group in several)."""
        self.exchange = Exchange(transport, owners, dim, self.plan, self.recorder, size_exchange,
                                 local_peers=self._local_peers(transport), peers_fixed=self._peers_fixed())
        if self.peer_policy is not None:  # compressed everywhere until its first decision
            self.peer_policy.apply(self.exchange)
        return self.exchange

    def _peers_fixed(self) -> str | None:
        """``compress.peers_fixed`` where ``auto`` may route by it, else None."""
        return self.cfg.peers_fixed if self.cfg.peers == "auto" and self.cfg.peers_fixed != "off" else None

    def _local_peers(self, transport) -> list[bool] | None:
        """``compress.peers=inter_node`` and ``auto``: per destination, whether it is on this rank's
        node (one process: all of its virtual destinations are); ``inter_node`` warns where every
        peer is, ``auto`` builds its policy."""
        if self.cfg.peers == "all":
            return None
        nodes = None
        if hasattr(transport, "group"):
            from dlrm_comp.distributed.nodes import node_ids, same_node_peers
            nodes = node_ids()
            local = same_node_peers(nodes)
        else:
            local = [True] * transport.destinations
        if self.cfg.peers == "auto":
            from dlrm_comp.train.peer_policy import PeerPolicy
            routed = [d for d, p in (("fwd", self.plan.fwd), ("bwd", self.plan.bwd)) if p.enabled and p.byte_messages]
            if routed:  # nothing to route where neither direction sends byte messages (dedup alone)
                self.peer_policy = PeerPolicy(routed, nodes, self.rank, transport.destinations, self._peers_fixed())
            return local
        if all(local) and self.rank == 0:
            print(f"warning: compress.peers=inter_node: all {len(local)} destinations are on this node, so every "
                  "message travels uncompressed (use compress.peers=all on one node)", file=sys.stderr, flush=True)
        return local

    def bind(self, trainer) -> None:
        self.trainer = trainer
        for table in self.codecs.specs:  # codecs restored from a checkpoint
            self.codecs.apply(table)

    def before_step(self, iteration: int) -> None:
        self.iteration = iteration
        if self.peer_policy is not None:
            self.peer_policy.before_step(self.exchange)
        if iteration > 0 and iteration % self.adaptive.interval == 0:
            log = getattr(self.trainer, "log", None)
            if self.bounds.controller is not None:
                self.bounds.control_step(iteration, self.recorder, self.trainer, self.exchange, log, self.codecs.name(0),
                                         self.step_bounds)
            samples = dict(self.exchange.last_sample) if self.exchange is not None else {}
            self.codecs.control_step(iteration, samples, self.bound, log)
        self._refresh_bounds()

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
        if self.peer_policy is not None:
            breakdown = getattr(self.trainer, "breakdown", None)  # the interval's measured exchange times
            self.peer_policy.interval(iteration, self.exchange, log, echo,
                                      breakdown.exchange_s if breakdown is not None else None)
        if self.exchange is not None:
            self.exchange.check_finite()
        self.stats.interval(self.exchange, iteration, log, echo if self.cfg.print_tables else None)

    def summary(self) -> dict[str, Any]:
        final = self.bounds.final(self.iteration)
        bound_changes = self.bounds.controller.changes if self.bounds.controller is not None else 0
        adaptive = {"policy": self.adaptive.policy, "changes": bound_changes + self.codecs.changes,
                    "bound_changes": bound_changes, "codec_changes": self.codecs.changes,
                    "lossless_tuning": self.codecs.selector is not None,
                    "eb_rel": final, "codec": [self.codecs.name(i) for i in range(len(final))],
                    **self.bounds.controller_summary()}
        section = self.stats.section(self.cfg, self.plan, self.cardinalities, list(self.bounds.policy.bounds))
        stage = self.exchange.row_cache if self.exchange is not None else None
        if self.cfg.row_cache == "on":  # this rank's caches: the rows (device) and the index (host)
            section["row_cache"] = {"rows": self.cfg.row_cache_rows,
                                    "memory_bytes": stage.memory_bytes() if stage is not None else 0}
        return {"compression": section, "adaptive": adaptive}

    def state_dict(self) -> dict[str, Any]:
        state = {**self.stats.state_dict(self.exchange), "iteration": self.iteration, **self.codecs.state_dict(),
                 "dedup": list(self.plan.dedup),
                 "bag_counts": self.exchange.bag_counts.tolist() if self.exchange is not None else None}
        if self.bounds.controller is not None:
            state["controller"] = self.bounds.controller.state_dict()
        if self.peer_policy is not None:
            state["peers"] = self.peer_policy.state_dict()
        stage = self.exchange.row_cache if self.exchange is not None else None
        if stage is not None:  # the caches are the run's state: a resumed run decodes as an uninterrupted one
            state["row_cache"] = stage.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state, state.get("iteration", -1) + 1)  # steps done before the resume
        if self.bounds.controller is not None and "controller" in state:
            self.bounds.controller.load_state_dict(state["controller"])
        self.bounds.current, self.step_bounds = [], None
        if "iteration" in state:  # the bounds of the last step run, as an uninterrupted run holds them
            self.iteration = state["iteration"]
            self._refresh_bounds()
        self.codecs.load_state_dict(state)
        stage = self.exchange.row_cache if self.exchange is not None else None
        if stage is not None:
            if "row_cache" not in state:  # never reset silently
                raise ValueError("compress.row_cache: the checkpoint holds no row caches (saved with "
                                 "compress.row_cache=off); resume with the setting it was saved with")
            stage.load_state_dict(state["row_cache"])
        if self.peer_policy is not None and "peers" in state:  # auto's routes, as the run left them
            self.peer_policy.load_state_dict(state["peers"], self.exchange)
        if self.cfg.dedup == "auto" and "dedup" in state:  # auto's per-table decision and its open window
            self.plan.dedup[:] = [bool(v) for v in state["dedup"]]
            if self.exchange is not None and state.get("bag_counts") is not None:
                self.exchange.bag_counts[:] = np.asarray(state["bag_counts"], dtype=np.int64)


def extensions_from_config(cfg, cardinalities: list[int], world_size: int = 1,
                           rank: int = 0) -> list[TrainingExtension]:
    """The extensions a run's config switches on: ours for our modes, a byte counter around
    TorchRec's own codecs for ``torchrec_qcomm:*`` (``model.backend=torchrec``), and the dense
    allreduce's hook (``dist.allreduce_compression``, with several processes)."""
    return _exchange_extensions(cfg, cardinalities, world_size, rank) + _allreduce_extensions(cfg, world_size, rank)


def _allreduce_extensions(cfg, world_size: int, rank: int) -> list[TrainingExtension]:
    d = cfg.dist
    if d.allreduce_compression == "off":
        return []
    if world_size == 1:  # no DDP, no allreduce: merely useless, so a warning
        if rank == 0:
            what = ("is useless in one process: there is no allreduce to choose a setting for"
                    if d.allreduce_compression == "auto" else "does nothing in one process (there is no allreduce)")
            print(f"warning: dist.allreduce_compression={d.allreduce_compression} {what}", file=sys.stderr, flush=True)
        return []
    from dlrm_comp.train.allreduce import AllreduceCompression
    return [AllreduceCompression(d.allreduce_compression, d.powersgd_rank, d.powersgd_start_iter, cfg.train.seed)]


def _exchange_extensions(cfg, cardinalities: list[int], world_size: int, rank: int) -> list[TrainingExtension]:
    c = cfg.compress
    if {c.mode, c.backward.mode} & set(TORCHREC_QCOMM_MODES):
        from dlrm_comp.train.torchrec_qcomm import QCommExtension
        return [QCommExtension(c.mode, c.backward.mode, world_size, rank)]
    if c.mode == "off" and c.backward.mode == "off" and c.dedup == "off" and not c.dedup_tables:
        return []
    return [CompressionExtension(cfg.compress, cardinalities, world_size, rank, cfg.adaptive)]
