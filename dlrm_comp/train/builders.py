"""Build the run's parts (data source, model, optimizer, device) from the typed config."""
from __future__ import annotations

from pathlib import Path

import torch

from dlrm_comp.config import ConfigError, DataConfig, RunConfig
from dlrm_comp.model import DLRM


def build_source(cfg: DataConfig):
    """The run's `BatchSource`: the synthetic generator or a preprocessed Criteo cache."""
    if cfg.source == "synthetic":
        from dlrm_comp.data.synthetic import SyntheticCriteo, profile_exponents, resolve_cardinalities
        cards = resolve_cardinalities(cfg.profile, cfg.cardinalities or None, cfg.max_ind_range)
        exponent = profile_exponents(cfg.profile, cards, cfg.zipf_exponent)
        return SyntheticCriteo(cards, num_dense=cfg.num_dense, seed=cfg.seed, zipf_exponent=exponent,
                               pooling_factor=cfg.pooling_factor, click_rate=cfg.click_rate,
                               num_val_samples=cfg.num_val_samples, num_test_samples=cfg.num_test_samples)
    from dlrm_comp.data.criteo import CriteoDataset, CriteoFormatError, preprocess_criteo
    cache = make_cache_dir(Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.path[0]).with_suffix(".cache"))
    try:
        preprocess_criteo(cfg.path, cache, max_ind_range=cfg.max_ind_range,
                          frequency_threshold=cfg.frequency_threshold, on_malformed=cfg.on_malformed)
    except (CriteoFormatError, FileNotFoundError) as exc:  # the message names the file, line and column
        raise ConfigError(f"data.path: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"data.cache_dir: cannot write the Criteo cache in {cache} ({exc.strerror}); "
                          "set data.cache_dir to a writable directory") from None
    try:
        return CriteoDataset(cache, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    except ValueError as exc:  # an array changed between the build and this open
        raise ConfigError(f"data.cache_dir: {exc}") from None


_PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def make_cache_dir(cache: Path) -> Path:
    """The Criteo cache folder, made here so a place it cannot live is blamed on data.cache_dir
    (not on data.path, whose files are fine)."""
    resolved = cache.resolve()
    if any(resolved == root or root in resolved.parents for root in _PSEUDO_ROOTS):
        raise ConfigError(f"data.cache_dir: {cache} is on a pseudo file system; set data.cache_dir to a folder on disk")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data.cache_dir: cannot create {cache} ({exc.strerror}); "
                          "set data.cache_dir to a writable directory") from None
    return cache


def build_model(cfg: RunConfig, cardinalities: list[int], owned_tables: list[int] | None = None) -> DLRM:
    m = cfg.model
    return DLRM(cardinalities, m.emb_dim, m.bottom_mlp, m.top_mlp, interaction=m.interaction,
                self_interaction=m.self_interaction, sparse=cfg.train.sparse_embedding_grads,
                owned_tables=owned_tables, seed=cfg.train.seed)


def build_optimizer(cfg: RunConfig, model: DLRM) -> torch.optim.Optimizer:
    """SGD or Adagrad over all parameters; both accept the sparse embedding gradients."""
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    return torch.optim.Adagrad(model.parameters(), lr=cfg.train.lr)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from dlrm_comp.config import ConfigError
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available (use cpu or auto)")
    return torch.device(name)
