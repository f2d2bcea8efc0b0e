"""A toy lossless stage, the way an engineer adds one: this file, plus one line in
``dlrm_comp/compress/lossless/registry.py`` STAGES (the test adds that line, see
tests/test_lossless_stage.py). DEFLATE over the stream reversed: a format of its own (id 200)."""
from __future__ import annotations

import zlib
from typing import Any

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless.base import LosslessCodec, check_size


class ToyCodec(LosslessCodec):
    name = "toy"
    codec_id = 200

    def __init__(self, level: int = 1) -> None:
        self.level = int(level)

    @property
    def params(self) -> dict[str, Any]:
        return {"level": self.level}

    def compress(self, buf: bytes, typesize: int) -> bytes:
        return zlib.compress(bytes(buf)[::-1], self.level)

    def decompress(self, buf: bytes, nbytes: int) -> bytes:
        try:
            out = zlib.decompress(bytes(buf))[::-1]
        except zlib.error as e:
            raise CorruptPayloadError(f"toy: {e}") from None
        return check_size(self.name, out, nbytes)
