"""Raw DEFLATE (zlib without its 6-byte wrapper): no container header, which matters on 1 KiB messages."""
from __future__ import annotations

import zlib
from typing import Any

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless.base import LosslessCodec, check_size
from dlrm_comp.compress.lossless.entropy import entropy_bytes


class ZlibCodec(LosslessCodec):
    name = "zlib"
    codec_id = 1

    def __init__(self, level: int = 6, strategy: str = "default") -> None:
        if not 0 <= int(level) <= 9:
            raise ValueError(f"lossless.level: zlib level must be 0..9, got {level!r}")
        if strategy not in _STRATEGIES:
            raise ValueError(f"lossless.strategy: must be one of {list(_STRATEGIES)}, got {strategy!r}")
        self.level = int(level)
        self.strategy = strategy

    @property
    def params(self) -> dict[str, Any]:
        return {"level": self.level, "strategy": self.strategy}

    def compress(self, buf: bytes, typesize: int) -> bytes:
        if self.strategy == "auto":
            return _compress_auto(buf, self.level)
        if self.strategy == "default":  # one call, no stream object
            return zlib.compress(buf, self.level, -15)
        c = zlib.compressobj(self.level, zlib.DEFLATED, -15, 9, _STRATEGIES[self.strategy])
        return c.compress(buf) + c.flush()

    def decompress(self, buf: bytes, nbytes: int) -> bytes:
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(buf, nbytes + 1)  # max_length: never inflate past what the header promised
        except zlib.error as e:
            raise CorruptPayloadError(f"zlib: {e}") from None
        if not d.eof or d.unconsumed_tail or d.unused_data:
            raise CorruptPayloadError("zlib: stream length does not match the header")
        return check_size(self.name, out, nbytes)

    def header_params(self) -> bytes:
        return bytes([self.level | (list(_STRATEGIES).index(self.strategy) << 4)])

    @classmethod
    def from_header_params(cls, blob: bytes) -> "ZlibCodec":
        if len(blob) != 1 or (blob[0] & 15) > 9 or (blob[0] >> 4) >= len(_STRATEGIES):
            raise CorruptPayloadError("zlib: bad header parameters")
        return cls(blob[0] & 15, list(_STRATEGIES)[blob[0] >> 4])


_STRATEGIES = {"default": zlib.Z_DEFAULT_STRATEGY, "filtered": zlib.Z_FILTERED, "huffman": zlib.Z_HUFFMAN_ONLY, "rle": zlib.Z_RLE,
               "auto": zlib.Z_DEFAULT_STRATEGY}
_AUTO_SLACK = 16  # bytes: DEFLATE block header / code-length table


def _compress_auto(buf: bytes, level: int) -> bytes:
    """Raw DEFLATE with matches (level ``level``, default strategy): embedding outputs repeat whole
    rows (popular and small-cardinality categories), which LZ77 matches turn into a few bytes.
    When the matches did not beat what Huffman-only coding reaches (the order-0 byte entropy),
    also run Huffman-only and keep the smaller. Both are plain raw DEFLATE: decoding is the same."""
    out = zlib.compress(buf, level, -15)
    if len(out) > entropy_bytes(buf) + _AUTO_SLACK:  # the order-0 byte entropy: what Huffman-only reaches
        c = zlib.compressobj(level or 1, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
        alt = c.compress(buf) + c.flush()
        if len(alt) < len(out):
            return alt
    return out
