"""Byte-message modes (``codec``, ``sz``): one self-describing wire message per destination
(``compress/wire.py``), whose size is known only after coding, so the transport's size protocol
runs before the data. The sender's chunk table and body planes come to the host in one copy
(the host lossless stages need bytes), one lossless call codes each section of a message, and
the receiver parses, checks and reconstructs on its device."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dlrm_comp.compress.batch_quant import ChunkKind, dequantize_planes
from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded, ModeCodec, unpad_chunks
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless import CodecCache
from dlrm_comp.compress.lossless.identity import IdentityCodec
from dlrm_comp.compress.wire import HostChunks, Parsed, assemble, bitunpack, parse, section_ids

_IDENTITY = IdentityCodec()


class ByteMessageCodec(ModeCodec):
    """What ``codec`` and ``sz`` share: sections, assembly, parsing and reconstruction."""

    byte_messages = True

    def __init__(self, plan=None, cache: CodecCache | None = None, device: torch.device | str = "cpu"):
        super().__init__(plan, cache if cache is not None else CodecCache(), device)
        self._memo: dict = {}

    def sizes(self, layout: ChunkLayout) -> None:
        return None

    def section_key(self, table: int):
        """What chunks of one section share (one lossless call codes a section)."""
        return None

    def section_coder(self, table: int):
        return _IDENTITY

    def memo_key(self):
        """Changes whenever ``section_key`` may (memoised message layouts are rebuilt)."""
        return None

    def _memo_get(self, key, build):
        key = (key, self.memo_key())
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) > 256:
                self._memo.clear()
            hit = self._memo[key] = build()
        return hit

    def sections(self, layout: ChunkLayout) -> tuple[list[int], list[list]]:
        """Section index of every chunk and the coder of every section, per message."""
        def build() -> tuple[list[int], list[list]]:
            ids, coders = [], []
            for ts in layout.tables:
                keys = [self.section_key(t) for t in ts]
                ids += section_ids(keys)
                first = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
                coders.append([self.section_coder(ts[i]) for i in first])
            return ids, coders
        return self._memo_get(("sections", tuple(map(tuple, layout.tables))), build)

    def host_chunks(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout, sections: list[int]
                    ) -> tuple[HostChunks, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The chunks on the host, ready to assemble; their ideal bytes (None: as sent), error
        ratios and NaN/Inf count."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout) -> Encoded:
        sections, coders = self.sections(layout)
        hc, ideal_body, ratio, nonfinite = self.host_chunks(x, eb, layout, sections)
        ideal_host = None if ideal_body is None else ideal_body.cpu()  # one copy: the weights and the ideal
        messages, sent, framing = assemble(hc, x.dtype, layout.counts, coders,
                                           None if ideal_host is None else ideal_host.numpy())
        ideal = None if ideal_host is None else ideal_host + torch.from_numpy(framing)
        # the size protocol sends ``messages`` (joined once, there): no payload copy here
        return Encoded(torch.zeros(0, dtype=torch.uint8), [len(m) for m in messages], sent=torch.from_numpy(sent),
                       ideal=ideal, err_ratio=ratio.cpu(), nonfinite=nonfinite, messages=messages)

    def decode(self, received: Sequence, layout: ChunkLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
        out = [self.decode_message(msg, rows, layout.dim, ts, dtype)
               for msg, ts, rows in zip(received, layout.tables, layout.rows)]
        return torch.cat(out) if out else torch.zeros(0, layout.dim, device=self.device)

    def decode_message(self, msg, rows, dim: int, tables: list[int] | None = None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
        """One message's travelling rows ``[R, dim]``, in the sender's dtype (``rows``: of each
        chunk, or one count for all; ``tables`` and ``dtype``: what the receiver expects it to
        carry, checked)."""
        rec = parse(msg, rows, dim, self.cache, expect_chunks=None if tables is None else len(tables),
                    expect_dtype=dtype)
        if tables is not None and rec.header["table"].astype(np.int64).tolist() != list(tables):
            raise CorruptPayloadError(f"message carries tables {rec.header['table'].tolist()}, expected {list(tables)}")
        rows = rec.header["rows"].astype(np.int64)
        return unpad_chunks(reconstruct(rec, self.device, counts=rows * dim), rows, dim)


def reconstruct(rec: Parsed, dev: torch.device, base: torch.Tensor | None = None,
                counts: np.ndarray | None = None) -> torch.Tensor:
    """The receiver's ``[C, N]`` values of a parsed message, on ``dev`` (``base``: the row
    cache's copies the codes are differences from, ``[C, N]``; ``counts``: the values of each
    chunk read afterwards, the rest may be left unset)."""
    h = rec.header
    n = rec.low.shape[1]
    t = torch.from_numpy
    kind = np.where(h["kind"] == ChunkKind.SZ, ChunkKind.RAW, h["kind"]).astype(np.int64)
    bits = h["bits"].astype(np.int64)
    low, high = t(rec.low), t(rec.high)
    if rec.bitpacked is not None:  # bit-packed chunks: unpack (torch, on the device) into the planes
        codes = bitunpack(t(rec.bitpacked).to(dev), t(bits).to(dev), n)
        use = t(h["layout"] == 1).to(dev)[:, None]
        low = torch.where(use, (codes & 255).to(torch.uint8), low.to(dev))
        high = torch.where(use, (codes >> 8).to(torch.uint8), high.to(dev))
    raw = t(rec.raw.view(np.int16) if rec.dtype == torch.bfloat16 else rec.raw)
    raw = raw.view(torch.bfloat16) if rec.dtype == torch.bfloat16 else raw
    return dequantize_planes(t(kind).to(dev), t(h["minimum"].astype(np.float64)).to(dev),
                             t(h["step"].astype(np.float64)).to(dev), t(bits).to(dev), low.to(dev),
                             high.to(dev), raw.to(dev), rec.dtype, base, counts)
