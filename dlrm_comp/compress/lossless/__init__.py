"""Lossless stages for quantization codes: registry, built-in codecs, entropy estimate.

DEFAULT_LOSSLESS is the one default stage, for training and the offline tools alike: zstd level
1 over a destination's whole code stream, with a block (a fresh entropy table) per chunk
(``zstd_codec.py``). Measured by ``benchmarks/codec_cpu.py`` on a debug step's codes (26 tables x
2 destinations x 64x16 uint8 codes, one core): it keeps the ratio of per-chunk DEFLATE at several
times its speed, where per-chunk calls pay a fixed cost each (DESIGN.md 3c: code a destination's
whole stream per call, not a chunk per call). The per-table tuner (Btune) and the selector may
pick another stage per table; ``compress.lossless.name`` picks one for all.
"""
from __future__ import annotations

from dlrm_comp.compress.lossless.base import LosslessCodec
from dlrm_comp.compress.lossless.registry import (
    CodecCache,
    build_lossless,
    codec_from_header,
    get_lossless,
    lossless_names,
)
from dlrm_comp.compress.lossless.entropy import efficiency_report, entropy_bytes
from dlrm_comp.compress.lossless.model_coder import (
    HAVE_CONSTRICTION,
    AnsModelCodec,
    SymbolModel,
    SymbolModelStore,
)
from dlrm_comp.compress.lossless.nvcomp_codec import nvcomp_available
from dlrm_comp.compress.lossless.spec import LosslessSpec

DEFAULT_LOSSLESS = LosslessSpec.of("zstd")


def default_lossless() -> LosslessCodec:
    return build_lossless(DEFAULT_LOSSLESS)


__all__ = [
    "AnsModelCodec", "CodecCache", "build_lossless", "HAVE_CONSTRICTION", "SymbolModel", "SymbolModelStore",
    "efficiency_report", "nvcomp_available",
    "DEFAULT_LOSSLESS", "LosslessCodec", "LosslessSpec", "codec_from_header", "default_lossless",
    "entropy_bytes", "get_lossless", "lossless_names",
]
