"""Typed run configuration: YAML layers, the reference's environment variables, `--set` overrides.

Precedence (docs/architecture.md, the files other tools read): config files (later over earlier) < environment variables < `--set`.
Every error names the dotted key and the accepted values, and is raised before any work starts.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from dlrm_comp.adaptive.controller import ControllerConfig
from dlrm_comp.checks import ConfigError, parse_widths
from dlrm_comp.checks import choice as _choice
from dlrm_comp.checks import non_negative as _non_negative
from dlrm_comp.checks import positive as _positive
from dlrm_comp.compress.bounds import TableBoundSpec
from dlrm_comp.compress.decay import DecaySchedule
from dlrm_comp.compress.device_wire import MESSAGE_PATHS
from dlrm_comp.compress.errors import NONFINITE_POLICIES
from dlrm_comp.compress.modes import BYTE_MESSAGES, EXCHANGE_MODES, TORCHREC_QCOMM_MODES


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `mode: off` stays the string 'off' (YAML 1.1 says False)."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping: YAML keeps the last silently, which hides an edit."""

    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"line {line}: key {key!r} appears twice in one section (first on line {first}); keep one")
        self.key, self.line, self.first = key, line, first


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides by design
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if isinstance(key, typing.Hashable) and key in seen:
            raise DuplicateKeyError(key, line, seen[key])
        if isinstance(key, typing.Hashable):
            seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.construct_mapping = _construct_unique_mapping


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


# dist.allreduce_compression (train/allreduce.py; auto: chosen by measurement, train/allreduce_policy.py)
ALLREDUCE_COMPRESSION = ("off", "fp16", "bf16", "powersgd", "auto")
COMPRESS_MODES = EXCHANGE_MODES  # plus TORCHREC_QCOMM_MODES (TorchRec's own codecs) with model.backend=torchrec
PEERS = ("all", "inter_node", "auto")  # compress.peers (compress/codecs/peers.py, train/peer_policy.py)
PEERS_FIXED = ("off", "fp16", "bf16")  # compress.peers_fixed: auto's fixed-rate route (peers.AllFixedRoute)
INTER_NODE_MODES = ("off", *BYTE_MESSAGES)  # the modes compress.peers=inter_node and auto route (off: nothing to route)
DATA_SOURCES = ("synthetic", "criteo")
INTERACTIONS = ("dot", "cat")
OPTIMIZERS = ("sgd", "adagrad")
DEVICES = ("auto", "cpu", "cuda")
MODEL_BACKENDS = ("torch", "torchrec")
TORCHREC_PLANS = ("ours", "planner")
DEDUP_MODES = ("off", "on", "auto")


MAX_SEED = 2**32 - 1  # numpy's legacy seed range, the narrowest of the generators a seed reaches


def check_seed(key: str, value: int) -> None:
    """Refused here, not as a numpy traceback after the run directory is made."""
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{key}: {value} is not a seed in 0..{MAX_SEED} (2**32 - 1)")


@dataclass
class DataConfig:
    source: str = "synthetic"
    profile: str = "tiny"  # synthetic: kaggle, terabyte, tiny, custom
    cardinalities: list[int] = field(default_factory=list)  # profile=custom
    max_ind_range: int = 0  # cap every table's rows (0: no cap); hashing modulus for Criteo
    num_dense: int = 13
    zipf_exponent: float = 1.1
    pooling_factor: int = 1
    click_rate: float = 0.25
    seed: int = 0
    batch_size: int = 128
    eval_batch_size: int = 4096
    num_val_samples: int = 16384
    num_test_samples: int = 16384
    path: list[str] = field(default_factory=list)  # Criteo TSV files (source=criteo)
    cache_dir: str = ""  # Criteo preprocessed cache (default: <first file>.cache)
    frequency_threshold: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    on_malformed: str = "error"  # error | skip

    def validate(self) -> None:
        _choice("data.source", self.source, DATA_SOURCES)
        _choice("data.on_malformed", self.on_malformed, ("error", "skip"))
        if self.source == "criteo":
            if not self.path:
                raise ConfigError("data.path: source=criteo needs one or more Criteo TSV files")
            from dlrm_comp.data.criteo_files import check_tsv_file, repeated_file
            for item in self.path:
                problem = check_tsv_file(item)
                if problem:
                    raise ConfigError(f"data.path: {problem}")
            problem = repeated_file(self.path)
            if problem:
                raise ConfigError(f"data.path: {problem}")
        else:
            from dlrm_comp.data.synthetic import PROFILES
            _choice("data.profile", self.profile, (*PROFILES, "custom"))
            if self.profile != "custom" and self.cardinalities:
                raise ConfigError(f"data.cardinalities: only used with data.profile=custom, not {self.profile!r}")
        if self.profile == "custom" and not self.cardinalities:
            raise ConfigError("data.cardinalities: profile=custom needs a list of table sizes")
        if any(c < 1 for c in self.cardinalities):
            raise ConfigError("data.cardinalities: every table needs at least 1 row")
        _positive("data.batch_size", self.batch_size)
        _positive("data.eval_batch_size", self.eval_batch_size)
        _positive("data.pooling_factor", self.pooling_factor)
        _positive("data.num_val_samples", self.num_val_samples)
        _positive("data.num_test_samples", self.num_test_samples)
        _non_negative("data.max_ind_range", self.max_ind_range)
        check_seed("data.seed", self.seed)
        if not 0.0 < self.click_rate < 1.0:
            raise ConfigError(f"data.click_rate: {self.click_rate} is not in (0, 1)")
        if self.zipf_exponent <= 0:
            raise ConfigError(f"data.zipf_exponent: {self.zipf_exponent} must be > 0")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ConfigError("data.val_fraction/test_fraction: each in [0, 1), sum below 1")


@dataclass
class ModelConfig:
    emb_dim: int = 16
    bottom_mlp: str = "13-512-256-64-16"  # upstream style, input width first
    top_mlp: str = "512-256-1"  # upstream style, input width derived from the interaction
    interaction: str = "dot"
    self_interaction: bool = False
    # torch: nn.EmbeddingBag per table; torchrec: one EmbeddingBagCollection sharded by
    # DistributedModelParallel (needs the torchrec install, `make torchrec`)
    backend: str = "torch"

    def validate(self, num_dense: int) -> None:
        _choice("model.interaction", self.interaction, INTERACTIONS)
        _choice("model.backend", self.backend, MODEL_BACKENDS)
        if self.backend == "torchrec":
            from dlrm_comp.model.torchrec_backend import missing_torchrec
            problem = missing_torchrec()
            if problem:
                raise ConfigError(f"model.backend: 'torchrec' {problem}")
        _positive("model.emb_dim", self.emb_dim)
        bottom = parse_widths("model.bottom_mlp", self.bottom_mlp)
        top = parse_widths("model.top_mlp", self.top_mlp, example="512-256-1")
        if bottom[0] != num_dense:
            raise ConfigError(f"model.bottom_mlp: first width {bottom[0]} must equal data.num_dense={num_dense}")
        if self.interaction == "dot" and bottom[-1] != self.emb_dim:
            raise ConfigError(
                f"model.bottom_mlp: last width {bottom[-1]} must equal model.emb_dim={self.emb_dim} "
                "for the dot interaction")
        if top[-1] != 1:
            raise ConfigError(f"model.top_mlp: last width must be 1 (one click logit), got {top[-1]}")


@dataclass
class TrainConfig:
    iterations: int = 1000  # 0: one pass over the training split (Criteo); may exceed one pass
    epochs: int = 0  # > 0: iterations = epochs x full batches of the training split (Criteo; overrides iterations)
    optimizer: str = "sgd"
    lr: float = 0.1
    sparse_embedding_grads: bool = True
    eval_every: int = 500  # 0: only at the end
    eval_batches: int = 0  # 0: the whole validation split
    print_every: int = 100
    checkpoint_every: int = 500  # 0: only at the end
    keep_checkpoints: int = 2
    device: str = "auto"
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0: torch's default)
    keep_allocations: bool = True  # keep freed MB-sized blocks for reuse (dlrm_comp.runtime); a process setting
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _choice("train.device", self.device, DEVICES)
        _non_negative("train.iterations", self.iterations)
        _non_negative("train.epochs", self.epochs)
        if not self.lr > 0:
            raise ConfigError(f"train.lr: {self.lr} must be > 0")
        for name in ("eval_every", "eval_batches", "checkpoint_every", "threads"):
            _non_negative(f"train.{name}", getattr(self, name))
        _positive("train.print_every", self.print_every)
        _positive("train.keep_checkpoints", self.keep_checkpoints)
        check_seed("train.seed", self.seed)


@dataclass
class LosslessConfig:
    name: str = "default"  # the measured default of dlrm_comp.compress.lossless
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Build the stage once here: a missing wheel or a bad parameter is a config error at
        start-up, not an ImportError from inside the trainer."""
        import inspect

        from dlrm_comp.compress.lossless.registry import STAGES, _tables, get_lossless
        if self.name == "default":
            return
        cls = _tables(STAGES)[0].get(self.name)
        if cls is None:
            raise ConfigError(f"compress.lossless.name: {self.name!r} is not one of: default, "
                              f"{', '.join(sorted(_tables(STAGES)[0]))}")
        if cls.needs_store:
            raise ConfigError(f"compress.lossless.name: {self.name!r} codes with per-table symbol models that every "
                              "receiver must hold; training does not learn and ship them, so it runs in the offline "
                              "benchmark only (launch/bench.py encode). Choose default (zstd), zlib, blosc2, identity "
                              "or nvcomp")
        try:
            get_lossless(self.name, **self.params)
        except ImportError as exc:
            raise ConfigError(f"compress.lossless.name: {self.name!r} cannot run here ({exc}); "
                              "choose another stage, e.g. default or zlib") from None
        except (TypeError, ValueError) as exc:
            accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
            raise ConfigError(f"compress.lossless.params: {dict(self.params)} is not a valid setting of the "
                              f"{self.name!r} stage ({_plain(exc)}); its parameters: "
                              f"{', '.join(accepted) or 'none'}") from None


def _plain(exc: Exception) -> str:
    """A library's error in words: Python's own conversion texts replaced by what they mean."""
    text = str(exc)
    if text.startswith("invalid literal for int()"):
        return "a value that should be an integer is not"
    if text.startswith("could not convert string to float"):
        return "a value that should be a number is not"
    if "unexpected keyword argument" in text:
        return "unknown parameter " + text.rsplit("argument", 1)[-1].strip()
    return text


@dataclass
class BackwardConfig:
    """The gradient all-to-all: exact unless `mode` is set; bounds relative to each gradient chunk's range."""
    mode: str = "off"
    error_bound: float = 0.01
    decay: DecaySchedule = field(default_factory=lambda: DecaySchedule(func="none"))


ROW_CACHE_MODES = ("codec", "simulate")  # the error-bounded forward codecs that run the cache stage


@dataclass
class CompressConfig:
    mode: str = "off"
    # the table-wise bounds' keys, flat in this section (compress.base_error_bound, ...)
    bounds: TableBoundSpec = field(default_factory=TableBoundSpec, metadata={"flat": True})
    nonfinite: str = "error"
    # Destinations emulated per table: the rows split into the chunks a W-rank all-to-all sends,
    # each compressed with its own range (1: the whole [B, d] output as one chunk).
    chunks: int = 1
    # How codes are laid out before the lossless stage: `bytes` (a byte per code up to 8 bits,
    # byte planes beyond: what LZ/entropy coders want) or `bitpack` (each chunk at its bit width).
    layout: str = "bytes"
    # Bag deduplication (both directions): one row per distinct bag of each (table x destination)
    # chunk. `on` for every table, `auto` per table where the measured distinct fraction is below
    # `dedup_max_fraction` (re-decided at print intervals), `off`; `dedup_tables` are always on.
    dedup: str = "off"
    dedup_max_fraction: float = 0.95
    dedup_tables: list[int] = field(default_factory=list)
    # The cross-step row cache of the forward direction (codec, simulate): a row whose receiver
    # holds a copy within the bound travels as a flag, a changed cached row as codes of its
    # difference; `row_cache_rows` rows per (table, destination), both sides (README: row cache).
    row_cache: str = "off"
    row_cache_rows: int = 4096
    # which peers' messages are compressed: `all`, `inter_node` (peers on this rank's node get
    # the rows uncompressed), or `auto` (per class of peer, this node's and the others, and per
    # direction: where the speedup model says it pays, re-decided at print intervals); the last two
    # for byte-message modes codec and sz, dist.size_exchange=exact
    peers: str = "all"
    # compress.peers=auto: the fixed-rate mode (`fp16`, `bf16`) a direction may also travel whole in,
    # measured on trial beside the codec and raw rows (`off`: codec or raw only)
    peers_fixed: str = "fp16"
    # codec mode: where its messages are assembled and coded. `host` (the wire format, the codes on
    # the host, each table's lossless stage), `device` (compress/device_wire.py: device ops and one
    # lossless call per direction on the device, nvcomp's ANS on CUDA, the identity stage where
    # nvcomp is absent) or `auto` (device for rows on CUDA where nvcomp imports, host otherwise)
    message_path: str = "auto"
    print_tables: bool = True
    decay: DecaySchedule = field(default_factory=DecaySchedule)
    lossless: LosslessConfig = field(default_factory=LosslessConfig)
    backward: BackwardConfig = field(default_factory=BackwardConfig)

    def validate(self) -> None:
        _choice("compress.mode", self.mode, COMPRESS_MODES + TORCHREC_QCOMM_MODES)
        _choice("compress.nonfinite", self.nonfinite, NONFINITE_POLICIES)
        _choice("compress.backward.mode", self.backward.mode, COMPRESS_MODES + TORCHREC_QCOMM_MODES)
        _choice("compress.layout", self.layout, ("bytes", "bitpack"))
        _choice("compress.peers", self.peers, PEERS)
        _choice("compress.peers_fixed", self.peers_fixed, PEERS_FIXED)
        _choice("compress.message_path", self.message_path, MESSAGE_PATHS)
        if self.peers != "all":
            for key, mode in (("compress.mode", self.mode), ("compress.backward.mode", self.backward.mode)):
                if mode not in INTER_NODE_MODES:
                    raise ConfigError(f"compress.peers: {self.peers} routes each message to its codec or to none, for "
                                      f"the byte-message modes ({', '.join(INTER_NODE_MODES)}); {key}={mode!r} is not "
                                      "one: use compress.peers=all or one of those modes")
        _choice("compress.dedup", self.dedup, DEDUP_MODES)
        if not 0 < self.dedup_max_fraction <= 1:
            raise ConfigError(f"compress.dedup_max_fraction: {self.dedup_max_fraction} must be in (0, 1]")
        if any(not isinstance(t, int) or t < 0 for t in self.dedup_tables):
            raise ConfigError(f"compress.dedup_tables: {self.dedup_tables} must be table indices (integers >= 0)")
        self._validate_row_cache()
        if self.row_cache == "on" and self.peers != "all":
            raise ConfigError(f"compress.row_cache: 'on' with compress.peers={self.peers} is not supported (the cache "
                              "mirrors the codec's own messages to every destination); use compress.peers=all or "
                              "compress.row_cache=off")
        self.bounds.validate()
        if not 0 < self.backward.error_bound <= 0.5:
            raise ConfigError(f"compress.backward.error_bound: {self.backward.error_bound} must be in (0, 0.5]")
        _positive("compress.chunks", self.chunks)
        self.decay.validate("compress.decay")
        self.backward.decay.validate("compress.backward.decay")
        self.lossless.validate()

    def _validate_row_cache(self) -> None:
        _choice("compress.row_cache", self.row_cache, ("off", "on"))
        rows = self.row_cache_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"compress.row_cache_rows: {rows!r} must be an integer >= 1 (rows per table and "
                              "destination)")
        if self.row_cache == "off":
            return
        if self.mode not in ROW_CACHE_MODES:
            raise ConfigError(f"compress.row_cache: 'on' needs compress.mode {' or '.join(ROW_CACHE_MODES)}, "
                              f"not {self.mode!r}; accepted values with this mode: off")
        if self.dedup == "off" and not self.dedup_tables:
            raise ConfigError("compress.row_cache: 'on' keys the cache on the distinct bags of bag deduplication: "
                              "set compress.dedup to on or auto (or compress.dedup_tables); accepted values "
                              "with compress.dedup=off: off")


@dataclass
class AdaptiveConfig(ControllerConfig):
    """Per-table bound control (`ControllerConfig`, dlrm_comp.adaptive.controller) and the
    lossless stage per table (codec mode): the Btune port every `tune_every` control steps."""
    lossless_tuning: bool = False
    tune_every: int = 10
    bandwidth_gbps: float = 1.25  # the link the all-to-all crosses, for the tuner's score
    perf_mode: str = "BALANCED"  # COMP | DECOMP | BALANCED
    tradeoff: float = 0.5  # 0: speed only, 1: ratio only
    hysteresis: float = 0.05  # switch only when the pick's merit beats the incumbent's by this much

    def validate(self) -> None:
        super().validate()
        _positive("adaptive.tune_every", self.tune_every)
        _choice("adaptive.perf_mode", self.perf_mode, ("COMP", "DECOMP", "BALANCED"))
        if not 0 <= self.tradeoff <= 1:
            raise ConfigError(f"adaptive.tradeoff: {self.tradeoff} must be in [0, 1]")
        if not self.bandwidth_gbps > 0:
            raise ConfigError(f"adaptive.bandwidth_gbps: {self.bandwidth_gbps} must be > 0")
        if self.hysteresis < 0:
            raise ConfigError(f"adaptive.hysteresis: {self.hysteresis} must be >= 0")


@dataclass
class DistConfig:
    backend: str = "auto"  # auto (gloo on CPU, nccl on CUDA) | gloo | nccl
    sharding: str = "contiguous"  # contiguous (upstream) | balanced (by rows x dim)
    timeout_s: float = 300.0
    overlap: bool = True  # run the embedding exchange while the bottom MLP computes, as upstream does
    # how variable-size messages learn their sizes: `exact` (W int64 in one small all-to-all first)
    # or `slots` (per-peer slots sized from earlier steps, overflow point-to-point: one collective)
    size_exchange: str = "exact"
    # model.backend=torchrec: the table-wise plan handed to DistributedModelParallel, `ours`
    # (dist.sharding's placement as a ShardingPlan) or `planner` (TorchRec's planner, table-wise)
    torchrec_plan: str = "ours"
    # DDP's dense allreduce through torch's communication hooks: off | fp16 | bf16 | powersgd | auto
    # (auto: off, fp16 or powersgd, whichever its trials at print intervals measure fastest)
    allreduce_compression: str = "off"
    # powersgd (and auto's PowerSGD): the rank of each gradient matrix's approximation, and the
    # first iteration it compresses (plain allreduce before: torch asks for about 10% of the
    # steps; 0 = 10% of the run's iterations, at least 2; auto tries PowerSGD from there on)
    powersgd_rank: int = 1
    powersgd_start_iter: int = 0

    def validate(self) -> None:
        _choice("dist.torchrec_plan", self.torchrec_plan, TORCHREC_PLANS)
        _choice("dist.allreduce_compression", self.allreduce_compression, ALLREDUCE_COMPRESSION)
        if self.powersgd_rank < 1:
            raise ConfigError(f"dist.powersgd_rank: {self.powersgd_rank!r} must be an integer >= 1 (the rank of "
                              "PowerSGD's low-rank approximation)")
        if self.powersgd_start_iter < 0 or self.powersgd_start_iter == 1:
            raise ConfigError(f"dist.powersgd_start_iter: {self.powersgd_start_iter!r} must be 0 (10% of the run's "
                              "iterations, at least 2) or an iteration >= 2: torch's PowerSGDState refuses an "
                              "earlier start with error feedback and warm start, whose state is kept per DDP bucket")
        _choice("dist.backend", self.backend, ("auto", "gloo", "nccl"))
        _choice("dist.sharding", self.sharding, ("contiguous", "balanced"))
        _choice("dist.size_exchange", self.size_exchange, ("exact", "slots"))
        if not self.timeout_s > 0:
            raise ConfigError(f"dist.timeout_s: {self.timeout_s} must be > 0")


@dataclass
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> "RunConfig":
        check_run_name(self.name)
        self.data.validate()
        self.model.validate(self.data.num_dense)
        self.train.validate()
        self.compress.validate()
        self.adaptive.validate()
        self.dist.validate()
        if self.data.source == "synthetic" and (self.train.epochs or not self.train.iterations):
            key = "train.epochs" if self.train.epochs else "train.iterations"
            raise ConfigError(f"{key}: the synthetic training split is an unbounded stream with no epochs; "
                              "set train.iterations to a positive count")
        self._check_torchrec_qcomm()
        self._check_adaptive_modes()
        self._check_message_path()
        if self.compress.peers != "all" and self.dist.size_exchange != "exact":
            raise ConfigError(f"compress.peers: {self.compress.peers} sends uncompressed messages without the "
                              "wire's preamble, which dist.size_exchange=slots reads for a message's length; use "
                              "dist.size_exchange=exact or compress.peers=all")
        if self.compress.chunks > self.data.batch_size:
            raise ConfigError(f"compress.chunks: {self.compress.chunks} chunks cannot be cut from a batch of "
                              f"data.batch_size={self.data.batch_size} rows; use at most {self.data.batch_size}")
        if self.adaptive.policy == "closed_loop" and 0 < self.adaptive.probe_batch < self.compress.chunks:
            raise ConfigError(f"adaptive.probe_batch: the probe (one process) sends what training sends, {self.compress.chunks} "
                              f"chunks per table (compress.chunks); use at least {self.compress.chunks} rows")
        return self

    def _check_message_path(self) -> None:
        """``compress.message_path=device`` carries codec's plain messages only: refused, naming
        the setting, with what it does not carry (the row cache's flags, bit-packed codes, routing
        per peer, slot sizes, per-table host coders, SZ3 bodies)."""
        c = self.compress
        if c.message_path != "device":
            return
        blockers = [key for key, on in (
            ("compress.row_cache=on", c.row_cache == "on"), ("compress.layout=bitpack", c.layout == "bitpack"),
            (f"compress.peers={c.peers}", c.peers != "all"),
            ("dist.size_exchange=slots", self.dist.size_exchange == "slots"),
            ("adaptive.lossless_tuning=true", bool(self.adaptive.lossless_tuning)),
            (f"compress.mode={c.mode}", c.mode == "sz"),
            (f"compress.backward.mode={c.backward.mode}", c.backward.mode == "sz")) if on]
        if blockers:
            raise ConfigError(f"compress.message_path: 'device' does not carry {blockers[0]} (the device message "
                              "format holds codec's byte planes only); accepted values with it: host, auto")
        if "codec" not in (c.mode, c.backward.mode):
            raise ConfigError(f"compress.message_path: 'device' is codec mode's message path, and neither "
                              f"compress.mode={c.mode!r} nor compress.backward.mode={c.backward.mode!r} is codec; "
                              "accepted values with them: host, auto")

    def _check_adaptive_modes(self) -> None:
        """The closed loop moves error bounds and the tuner picks lossless stages: refused for a
        mode without them, where they would report changes that change nothing."""
        from dlrm_comp.compress.modes import ERROR_BOUNDED
        mode = self.compress.mode
        if self.adaptive.policy == "closed_loop" and mode not in ERROR_BOUNDED:
            raise ConfigError(f"adaptive.policy: closed_loop steers error bounds, and compress.mode={mode!r} has "
                              f"none; use a bounded mode ({', '.join(ERROR_BOUNDED)}) or adaptive.policy=static")
        if self.adaptive.lossless_tuning and mode != "codec":
            raise ConfigError(f"adaptive.lossless_tuning: picks the lossless stage of compress.mode=codec; "
                              f"compress.mode={mode!r} has none to pick; set adaptive.lossless_tuning=false")

    def _check_torchrec_qcomm(self) -> None:
        """TorchRec's codecs run inside TorchRec's output dist: the torchrec backend only, and
        not mixed with ours (one output dist carries both directions)."""
        modes = {"compress.mode": self.compress.mode, "compress.backward.mode": self.compress.backward.mode}
        theirs = [k for k, m in modes.items() if m in TORCHREC_QCOMM_MODES]
        if not theirs:
            return
        if self.model.backend != "torchrec":
            raise ConfigError(f"{theirs[0]}: {modes[theirs[0]]!r} is TorchRec's own codec; it needs "
                              "model.backend=torchrec")
        ours = [k for k, m in modes.items() if m not in TORCHREC_QCOMM_MODES and m != "off"]
        if ours:
            raise ConfigError(f"{ours[0]}: {modes[ours[0]]!r} cannot be combined with {theirs[0]}="
                              f"{modes[theirs[0]]!r}; use off or a torchrec_qcomm mode in both directions")

    def to_dict(self) -> dict[str, Any]:
        """The sections as config.yaml spells them (flat sub-configs inlined in their section)."""
        return _as_dict(self)


def check_run_name(name: str) -> None:
    """`name` is the folder under runs/: one plain path component, so no run writes elsewhere."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("~"):
        raise ConfigError(f"name: {name!r} must be a plain folder name under runs/ (letters, digits, '-', '_', "
                          "'.'; no '/' or '..'); to write elsewhere, pass --out DIR")


# The reference's environment variables and the keys they set (docs/architecture.md, reference facts).
ENV_OVERRIDES: dict[str, str] = {
    "BASE_ERROR_BOUND": "compress.base_error_bound",
    "TIGHTEN_EB_TABLES": "compress.tighten_tables",
    "TIGHTEN_EB_VALUE": "compress.tighten_value",
    "LOOSEN_EB_TABLES": "compress.loosen_tables",
    "LOOSEN_EB_VALUE": "compress.loosen_value",
    "DECAY_FUNC": "compress.decay.func",
    "EB_CONSTANT": "compress.decay.constant",
    "EARLY_STAGE": "compress.decay.early_stage",
    # Btune's own variables, read here (never inside the tuner) so the resolved config shows them
    "BTUNE_TRADEOFF": "adaptive.tradeoff",
    "BTUNE_PERF_MODE": "adaptive.perf_mode",
}


def load_config(paths: list[str | Path] = (), overrides: list[str] = (),
                env: Mapping[str, str] | None = None) -> RunConfig:
    """Layer YAML files, then environment variables, then `key=value` overrides; validate."""
    raw: dict[str, Any] = {}
    for path in paths:
        _deep_merge(raw, _read_layer(Path(path)))
    env = os.environ if env is None else env
    from_env = {}
    for name, key in ENV_OVERRIDES.items():
        if env.get(name, "").strip():
            _set_dotted(raw, key, _parse_env_value(key, env[name], name), source=f"environment {name}")
            from_env[key] = name
    set_keys = set()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set: {item!r} is not key=value")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), _parse_scalar(value), source="--set")
        set_keys.add(key.strip())
    try:
        return _build(RunConfig, raw, prefix="").validate()
    except ConfigError as exc:
        raise _name_env_variable(exc, {k: v for k, v in from_env.items() if k not in set_keys}) from None


def _read_layer(path: Path) -> dict:
    """One --config file as a mapping of sections; each section given in it must be a mapping, so
    a mistake is blamed on the file (not on a later --set into that section)."""
    if path.is_dir():
        raise ConfigError(f"--config {path}: is a directory; name a YAML file in it (e.g. {path}/debug.yaml)")
    if not path.is_file():
        raise ConfigError(f"--config: file {str(path)!r} does not exist")
    try:
        layer = yaml_load(path.read_text()) or {}
    except DuplicateKeyError as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {exc}") from None
    if not isinstance(layer, dict):
        raise ConfigError(f"--config {path}: top level must be a mapping of sections")
    _check_sections(layer, RunConfig, "", f"--config {path}")
    return layer


def _check_sections(layer: Mapping, cls: type, prefix: str, source: str) -> None:
    """Every key of `layer` that names a section of `cls` holds a mapping (recursively)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in layer or f.metadata.get("flat") or not dataclasses.is_dataclass(hints[f.name]):
            continue
        value = layer[f.name]
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {prefix}{f.name}: is a section, a mapping of keys "
                              f"({prefix}{f.name}.KEY: value), not {value!r}")
        _check_sections(value, hints[f.name], f"{prefix}{f.name}.", source)


def _name_env_variable(exc: ConfigError, from_env: Mapping[str, str]) -> ConfigError:
    """An error about a key whose value came from an environment variable names the variable."""
    text = str(exc)
    for key, name in from_env.items():
        if text.startswith(f"{key}:") or text.startswith(f"{key}/") or f" {key}=" in text:
            return ConfigError(f"{text} (the value comes from the environment variable {name}; "
                               f"fix or unset {name})")
    return exc


def dump_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _parse_scalar(text: str) -> Any:
    try:
        return yaml_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _parse_env_value(key: str, text: str, name: str) -> Any:
    if key.endswith("_tables"):  # reference lists: "2 3 9" or "2,3,9"
        parts = text.replace(",", " ").split()
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"{key}: {text!r} (the environment variable {name}) is not a list of table "
                              "indices separated by spaces or commas") from None
    return _parse_scalar(text)


def _deep_merge(base: dict, layer: Mapping) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _set_dotted(raw: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node: dict = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    flat = {f.name: [g.name for g in dataclasses.fields(hints[f.name])] for f in fields if f.metadata.get("flat")}
    accepted = [key for f in fields for key in flat.get(f.name, [f.name])]
    unknown = sorted(set(raw) - set(accepted))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; accepted keys under "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(accepted)}")
    kwargs = {name: _build(hints[name], {k: v for k, v in raw.items() if k in keys}, prefix)
              for name, keys in flat.items()}
    defaults = {f.name: f for f in fields}
    for name, value in raw.items():
        if not any(name in keys for keys in flat.values()):
            if dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
                value = {**_as_dict(_default(defaults[name])), **value}  # a partial section keeps the field's own defaults
            kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (e.g. `compress.backward.decay` defaults to func none, not the class's step)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _as_dict(obj: Any) -> Any:
    """``dataclasses.asdict`` with each flat sub-config's keys inlined where its field stands."""
    if not dataclasses.is_dataclass(obj):
        return copy.deepcopy(obj)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = _as_dict(getattr(obj, f.name))
        if f.metadata.get("flat"):
            out.update(value)
        else:
            out[f.name] = value
    return out


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        elif value is None:
            value = []
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(item_tp, v, key) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # nan passes every `x <= 0` check below: refuse it here, for every key
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value
