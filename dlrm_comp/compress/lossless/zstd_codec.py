"""Zstandard on a destination's whole code stream (python-zstandard, frames without checksum,
content size or dictionary id: the message's own header and per-chunk checksums cover those).

Measured (benchmarks/codec_cpu.py, one core): on a debug step's codes (26 tables x 2
destinations x 64x16 uint8 codes in one stream per destination) level 1 keeps the ratio of
per-chunk DEFLATE at several times its speed; negative levels drop Huffman and lose the ratio.
"""
from __future__ import annotations

import threading
from typing import Any

import zstandard

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless.base import LosslessCodec, check_size

BLOCK_LIMIT = 16384  # mean chunk bytes above which a block per chunk no longer pays (see compress_blocks)
_LOCAL = threading.local()  # zstd contexts are not thread-safe: one per thread and level


def _contexts(level: int) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    cache = getattr(_LOCAL, "ctx", None)
    if cache is None:
        cache = _LOCAL.ctx = {}
    ctx = cache.get(level)
    if ctx is None:
        params = zstandard.ZstdCompressionParameters.from_level(level, write_checksum=False, write_content_size=False,
                                                                write_dict_id=False)
        ctx = cache[level] = (zstandard.ZstdCompressor(compression_params=params), zstandard.ZstdDecompressor())
    return ctx


class ZstdCodec(LosslessCodec):
    name = "zstd"
    codec_id = 6

    def __init__(self, level: int = 1) -> None:
        if not -7 <= int(level) <= 22 or int(level) == 0:
            raise ValueError(f"lossless.level: zstd level must be in -7..-1 or 1..22, got {level!r}")
        self.level = int(level)

    @property
    def params(self) -> dict[str, Any]:
        return {"level": self.level}

    def compress(self, buf: bytes, typesize: int) -> bytes:
        return _contexts(self.level)[0].compress(buf)

    def compress_blocks(self, buf: bytes, blocks: list[int]) -> bytes:
        """A zstd frame per chunk, back to back: each chunk gets its own Huffman table, as
        per-chunk DEFLATE did. Measured on trained debug embeddings (26 chunks per destination
        stream): 11.95x vs 11.10x as one frame at 1,024 codes per chunk, 14.3x vs 12.6x at 2,048;
        at 65,536 (the Terabyte shape) 25.9x vs 25.7x for 10% more time, so chunks above
        BLOCK_LIMIT bytes share one frame. Frames rather than a block per chunk in one frame
        (``FLUSH_BLOCK``): the one-shot call skips the streaming API's copy of its input, 25%
        faster on 40 Kaggle-shaped gradient streams (359 to 448 MB/s, ratio 3.096 to 3.113)."""
        if len(blocks) <= 1 or len(buf) > BLOCK_LIMIT * len(blocks):
            return self.compress(buf, 1)
        ctx = _contexts(self.level)[0]
        view = memoryview(buf)
        out, pos = [], 0
        for size in blocks:
            out.append(ctx.compress(view[pos:pos + size]))
            pos += size
        return b"".join(out)

    def decompress(self, buf: bytes, nbytes: int) -> bytes:
        """One frame or several back to back (``compress_blocks``), read across frames in C."""
        try:
            with _contexts(self.level)[1].stream_reader(buf, read_size=max(len(buf), 1), read_across_frames=True) as r:
                out = r.read(nbytes)
                rest = r.read(1) if len(out) == nbytes else b""
        except zstandard.ZstdError as e:
            raise CorruptPayloadError(f"zstd: {e}") from None
        if rest:
            raise CorruptPayloadError(f"zstd: more than the {nbytes} bytes expected")
        return check_size(self.name, out, nbytes)

    def header_params(self) -> bytes:
        return (self.level & 0xFF).to_bytes(1, "little")

    @classmethod
    def from_header_params(cls, blob: bytes) -> "ZstdCodec":
        if len(blob) != 1:
            raise CorruptPayloadError("zstd: bad header parameters")
        level = blob[0] - 256 if blob[0] > 127 else blob[0]
        try:
            return cls(level)
        except ValueError as e:
            raise CorruptPayloadError(f"zstd: {e}") from None
