"""The no-op stage: used when nothing else shrinks the codes (the codec backend falls back to it)."""
from __future__ import annotations

from typing import Any

from dlrm_comp.compress.lossless.base import LosslessCodec, check_size


class IdentityCodec(LosslessCodec):
    name = "identity"
    codec_id = 0

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def compress(self, buf: bytes, typesize: int) -> bytes:
        return bytes(buf)

    def decompress(self, buf: bytes, nbytes: int) -> bytes:
        return check_size(self.name, bytes(buf), nbytes)
