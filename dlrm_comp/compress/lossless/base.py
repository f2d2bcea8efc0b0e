"""The lossless-stage interface (the stages are listed in ``registry.py``).

A codec is identified on the wire by a one-byte id plus a few parameter bytes, so a receiver in
another process rebuilds it from the payload alone. Parameters that do not change the format
(thread counts) are not serialized. A stage whose payloads decode only with state the receiver
holds (the 'ans' coder's symbol models) says so with ``needs_store``: it is then built with,
and rebuilt from headers with, the owner's ``SymbolModelStore`` (never a process-wide one).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless.spec import LosslessSpec


class LosslessCodec(ABC):
    """compress(buf, typesize) -> bytes; decompress(buf, nbytes) -> exactly nbytes bytes."""

    name: ClassVar[str]
    codec_id: ClassVar[int]  # the wire's u8 codec id, unique
    needs_store: ClassVar[bool] = False  # built with store=, rebuilt by from_header_params(blob, store)

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The settings as plain values (for logs, configs and the tuner)."""

    @property
    def spec(self) -> LosslessSpec:
        """This setting by value (hashable; ``build_lossless(spec)`` makes an equal codec)."""
        return LosslessSpec.of(self.name, self.params)

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
        """Rebuild from ``header_params`` (a ``needs_store`` stage also takes the receiver's store)."""
        if blob:
            raise CorruptPayloadError(f"codec {cls.name!r} takes no header parameters, got {len(blob)} bytes")
        return cls()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def check_size(name: str, out: bytes, nbytes: int) -> bytes:
    if len(out) != nbytes:
        raise CorruptPayloadError(f"{name} decompressed {len(out)} bytes, expected {nbytes}")
    return out
