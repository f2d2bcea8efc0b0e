"""The lossless stages, in one table, and the lookups over it.

A stage is one module with a ``LosslessCodec`` subclass (a unique ``name`` and wire ``codec_id``)
and one line in ``STAGES`` ("module:Class"). Nothing registers itself on import: the table is
resolved here (at import, and again whenever ``STAGES`` is replaced, as tests do to add a toy
stage), and duplicate names or ids fail at once.

Receivers rebuild codecs from headers through a ``CodecCache`` they own (one per exchange or
backend, never process-wide), which also holds the ``SymbolModelStore`` that model-based stages
decode with.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless.base import LosslessCodec
from dlrm_comp.compress.lossless.spec import LosslessSpec

STAGES: tuple[str, ...] = (
    "dlrm_comp.compress.lossless.identity:IdentityCodec",
    "dlrm_comp.compress.lossless.zlib_codec:ZlibCodec",
    "dlrm_comp.compress.lossless.blosc2_codec:Blosc2Codec",
    "dlrm_comp.compress.lossless.model_coder:AnsModelCodec",
    "dlrm_comp.compress.lossless.nvcomp_codec:NvcompCodec",
    "dlrm_comp.compress.lossless.zstd_codec:ZstdCodec",
)


@functools.cache
def _tables(stages: tuple[str, ...]) -> tuple[dict[str, type[LosslessCodec]], dict[int, type[LosslessCodec]]]:
    by_name: dict[str, type[LosslessCodec]] = {}
    by_id: dict[int, type[LosslessCodec]] = {}
    for entry in stages:
        module, _, cls_name = entry.partition(":")
        cls = getattr(importlib.import_module(module), cls_name)
        if not (isinstance(cls, type) and issubclass(cls, LosslessCodec)):
            raise TypeError(f"lossless stage {entry!r} is not a LosslessCodec subclass")
        if cls.name in by_name or cls.codec_id in by_id or not 0 <= cls.codec_id <= 255:
            raise ValueError(f"lossless stage {entry!r}: name {cls.name!r} / id {cls.codec_id} taken or out of 0..255")
        by_name[cls.name], by_id[cls.codec_id] = cls, cls
    return by_name, by_id


def lossless_names() -> list[str]:
    return sorted(_tables(STAGES)[0])


def get_lossless(name: str, store: Any = None, **params: Any) -> LosslessCodec:
    """Build a stage by name; unknown names raise ValueError listing the valid ones. ``store``
    (a SymbolModelStore) reaches only the stages that need one."""
    cls = _tables(STAGES)[0].get(name)
    if cls is None:
        raise ValueError(f"lossless: unknown codec {name!r}; valid: {', '.join(lossless_names())}")
    return cls(store=store, **params) if cls.needs_store else cls(**params)


def build_lossless(spec: LosslessSpec, store: Any = None) -> LosslessCodec:
    """The codec of a spec (``store``: the SymbolModelStore of a stage that needs one)."""
    return get_lossless(spec.name, store=store, **dict(spec.params))


def codec_from_header(codec_id: int, blob: bytes, store: Any = None) -> LosslessCodec:
    """Rebuild the codec a payload names (receiver side; ``store``: the receiver's models)."""
    cls = _tables(STAGES)[1].get(codec_id)
    if cls is None:
        raise CorruptPayloadError(f"unknown lossless codec id {codec_id}")
    return cls.from_header_params(blob, store) if cls.needs_store else cls.from_header_params(blob)


class CodecCache:
    """A receiver's codecs by (id, header parameters): the stages are stateless, so one instance
    per setting serves every message of its owner. Owned by one exchange or backend and used
    from its thread only (nothing here is shared between owners)."""

    def __init__(self, store: Any = None, limit: int = 256) -> None:
        self.store = store  # the SymbolModelStore 'ans' headers are looked up in (None: such payloads are refused)
        self.limit = limit
        self._codecs: dict[tuple[int, bytes], LosslessCodec] = {}

    def get(self, codec_id: int, params: bytes) -> LosslessCodec:
        key = (codec_id, bytes(params))
        codec = self._codecs.get(key)
        if codec is None:
            codec = codec_from_header(codec_id, key[1], self.store)
            if len(self._codecs) < self.limit:
                self._codecs[key] = codec
        return codec


_tables(STAGES)  # resolve the table at import: a broken or duplicate entry fails here
