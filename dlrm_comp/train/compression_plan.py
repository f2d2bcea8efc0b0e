"""The compression plan a run starts from, built from `compress.*`: per table and direction the
mode, the lossless stage and the code layout, and the bag-deduplication switches (with `auto`'s
re-decision from the measured distinct fractions)."""
from __future__ import annotations

from dlrm_comp.compress.lossless import DEFAULT_LOSSLESS, LosslessCodec, build_lossless, get_lossless
from dlrm_comp.config import CompressConfig, ConfigError
from dlrm_comp.exchange.plan import CompressionPlan, DirectionPlan


def build_coder(name: str, params: dict | None = None) -> LosslessCodec:
    """A lossless stage for a destination's code stream; ``default`` is the measured default.
    The registry does not know the key its name and parameters came from: the error names it."""
    try:
        if name == "default":
            return build_lossless(DEFAULT_LOSSLESS) if not params else get_lossless(DEFAULT_LOSSLESS.name, **dict(params))
        return get_lossless(name, **dict(params or {}))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"compress.lossless: {exc}") from None


def build_plan(cfg: CompressConfig, num_tables: int) -> CompressionPlan:
    """The per-table plan both directions start from (bounds are set every step)."""
    coder = build_coder(cfg.lossless.name, cfg.lossless.params)
    bitpack = cfg.layout == "bitpack"
    fwd = DirectionPlan(cfg.mode, num_tables, coders=[coder] * num_tables, bitpack=[bitpack] * num_tables,
                        nonfinite=cfg.nonfinite, row_cache_rows=cfg.row_cache_rows if cfg.row_cache == "on" else 0,
                        message_path=cfg.message_path)
    bwd = DirectionPlan(cfg.backward.mode, num_tables, coders=[coder] * num_tables,
                        bitpack=[bitpack] * num_tables, nonfinite=fwd.nonfinite, message_path=cfg.message_path)
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
