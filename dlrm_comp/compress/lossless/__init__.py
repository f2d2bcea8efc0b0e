"""Lossless stages for quantization codes: registry, built-in codecs, entropy estimate.

DEFAULT_LOSSLESS was chosen by ``select_default.py`` (see the figures in its docstring's sibling
comment below); rerun it when the message size or data changes.
"""
from __future__ import annotations

from dlrm_comp.compress.lossless import blosc2_codec, identity, zlib_codec  # noqa: F401  (register)
from dlrm_comp.compress.lossless.base import (
    LosslessCodec,
    codec_from_header,
    get_lossless,
    lossless_names,
    register,
)
from dlrm_comp.compress.lossless.entropy import entropy_bits_per_symbol, entropy_bytes

DEFAULT_LOSSLESS: dict = {"name": "zlib", "level": 9, "strategy": "default"}


def default_lossless() -> LosslessCodec:
    params = dict(DEFAULT_LOSSLESS)
    return get_lossless(params.pop("name"), **params)


__all__ = [
    "DEFAULT_LOSSLESS", "LosslessCodec", "codec_from_header", "default_lossless", "entropy_bits_per_symbol",
    "entropy_bytes", "get_lossless", "lossless_names", "register",
]
