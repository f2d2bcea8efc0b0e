"""The lossless-stage interface and its registry.

A codec is identified on the wire by a one-byte id plus a few parameter bytes, so a receiver in
another process rebuilds it from the payload alone. Parameters that do not change the format
(thread counts) are not serialized.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from dlrm_comp.compress.errors import CorruptPayloadError


class LosslessCodec(ABC):
    """compress(buf, typesize) -> bytes; decompress(buf, nbytes) -> exactly nbytes bytes."""

    name: ClassVar[str]
    codec_id: ClassVar[int]

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The settings as plain values (for logs, configs and the tuner)."""

    @abstractmethod
    def compress(self, buf: bytes, typesize: int) -> bytes: ...

    def compress_blocks(self, buf: bytes, blocks: list[int]) -> bytes:
        """Compress a stream made of consecutive blocks (one per chunk): a coder that can start
        a new entropy table per block does so; the default codes the stream as one. The result
        decompresses with ``decompress`` alone."""
        return self.compress(buf, 1)

    @abstractmethod
    def decompress(self, buf: bytes, nbytes: int) -> bytes:
        """Must raise CorruptPayloadError unless the output is exactly nbytes long."""

    def header_params(self) -> bytes:
        """Format-relevant parameters, serialized for the frame header (empty when none)."""
        return b""

    @classmethod
    def from_header_params(cls, blob: bytes) -> "LosslessCodec":
        if blob:
            raise CorruptPayloadError(f"codec {cls.name!r} takes no header parameters, got {len(blob)} bytes")
        return cls()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


_BY_NAME: dict[str, type[LosslessCodec]] = {}
_BY_ID: dict[int, type[LosslessCodec]] = {}


def register(cls: type[LosslessCodec]) -> type[LosslessCodec]:
    """Class decorator adding a codec to the registry (name and id must be unique)."""
    if cls.name in _BY_NAME or cls.codec_id in _BY_ID:
        raise ValueError(f"lossless codec {cls.name!r} / id {cls.codec_id} registered twice")
    _BY_NAME[cls.name] = cls
    _BY_ID[cls.codec_id] = cls
    return cls


def lossless_names() -> list[str]:
    return sorted(_BY_NAME)


def get_lossless(name: str, **params: Any) -> LosslessCodec:
    """Build a registered codec by name; unknown names raise ValueError listing the valid ones."""
    if name not in _BY_NAME:
        raise ValueError(f"lossless: unknown codec {name!r}; valid: {', '.join(lossless_names())}")
    return _BY_NAME[name](**params)


def codec_from_header(codec_id: int, blob: bytes) -> LosslessCodec:
    """Rebuild the codec a payload names (receiver side)."""
    cls = _BY_ID.get(codec_id)
    if cls is None:
        raise CorruptPayloadError(f"unknown lossless codec id {codec_id}")
    return cls.from_header_params(blob)


def check_size(name: str, out: bytes, nbytes: int) -> bytes:
    if len(out) != nbytes:
        raise CorruptPayloadError(f"{name} decompressed {len(out)} bytes, expected {nbytes}")
    return out
