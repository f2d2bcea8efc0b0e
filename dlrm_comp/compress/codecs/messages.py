"""Byte-message modes (``codec``, ``sz``): one self-describing wire message per destination
(``compress/wire.py``), whose size is known only after coding, so the transport's size protocol
runs before the data. The sender's chunk table and body planes come to the host in one copy
(the host lossless stages need bytes), one lossless call codes each section of a message, and
the receiver parses, checks and reconstructs on its device."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dlrm_comp.compress import cpu_kernels
from dlrm_comp.compress.batch_quant import dequantize_planes, ragged_ready
from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded, ModeCodec, pad_chunks, unpad_chunks
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.kinds import CONST_KIND, QUANT_KIND
from dlrm_comp.compress.lossless import CodecCache
from dlrm_comp.compress.lossless.identity import IdentityCodec
from dlrm_comp.compress.wire import HostChunks, Parsed, assemble, bitunpack, offsets, parse, section_ids

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
        if len(out) == 1:
            return out[0]
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
        return reconstruct(rec, self.device).view(int(rec.header["rows"].astype(np.int64).sum()), dim)


def reconstruct(rec: Parsed, dev: torch.device, base: torch.Tensor | None = None) -> torch.Tensor:
    """The receiver's values of a parsed message, chunk after chunk, flat (``rows * cols`` each)
    on ``dev``; ``base``: the row cache's copies the codes are differences from, laid out alike.
    The fused loop straight from the planes where ``ragged_ready``; elsewhere the planes padded
    to one width (``pad_chunks``) through ``dequantize_planes`` (Triton, or torch), then unpadded."""
    h = rec.header
    n = h["rows"].astype(np.int64) * rec.cols
    at = offsets(n)
    low, low_at, high, high_at = _code_planes(rec, n, at)
    kind = h["kind"]
    travelled = [] if (rec.holds & ~cpu_kernels.TABLE_HAS_BITPACK) == 0 else \
        np.flatnonzero((kind != QUANT_KIND) & (kind != CONST_KIND)).tolist()  # RAW, SZ
    if base is None and ragged_ready(dev, rec.dtype):
        out = np.empty(int(at[-1]), np.float32)
        cpu_kernels.dequantize_rows(low, low_at, high, high_at, h["bits"], kind, h["minimum"], h["step"], n, out,
                                    at[:-1])
        for c in travelled:
            out[at[c]:at[c + 1]] = rec.values(c)
        return torch.from_numpy(out)
    return _padded_values(rec, dev, base, kind.astype(np.int64), h["bits"].astype(np.int64), n, at, low, high,
                          high_at, travelled)


def _padded_values(rec: Parsed, dev: torch.device, base, kind, bits, n, at, low, high, high_at,
                   travelled) -> torch.Tensor:
    """``reconstruct`` off the fused loop (its per-chunk arrays and code planes passed on): the
    planes laid out as the values, padded to one width (``pad_chunks``), through
    ``dequantize_planes`` (Triton, or torch) on ``dev``, unpadded."""
    h = rec.header
    rows, cols = h["rows"].astype(np.int64), rec.cols
    wide = np.zeros(int(at[-1]), np.uint8)
    for c in np.flatnonzero((kind == QUANT_KIND) & (bits > 8)).tolist():  # only QUANT chunks have high bytes
        wide[at[c]:at[c + 1]] = high[high_at[c]:high_at[c] + n[c]]
    raw = np.zeros(int(at[-1]), dtype=rec.np_dtype)
    for c in travelled:
        raw[at[c]:at[c + 1]] = rec.values(c)
    t = torch.from_numpy
    raw_t = t(raw).view(torch.bfloat16) if rec.dtype == torch.bfloat16 else t(raw)
    count = int(rows.sum())

    def pad(values: torch.Tensor) -> torch.Tensor:
        return pad_chunks(values.to(dev).view(count, cols), rows, cols)[0]
    y = dequantize_planes(t(kind).to(dev), t(h["minimum"].astype(np.float64)).to(dev),
                          t(h["step"].astype(np.float64)).to(dev), t(bits).to(dev),
                          pad(t(low[:int(at[-1])].copy())), pad(t(wide)), pad(raw_t), rec.dtype,
                          None if base is None else pad(base))
    return unpad_chunks(y, rows, cols).reshape(-1)


def _code_planes(rec: Parsed, n: np.ndarray, at: np.ndarray):
    """The low code bytes laid out as the values (the primary plane itself in the ``bytes``
    layout) and the high ones, with each chunk's offset in them: bit-packed chunks are unpacked
    (torch's ``bitunpack``, a chunk at a time: the ``bitpack`` layout is an option)."""
    p_at, h_at, _ = rec.at
    if (rec.holds & cpu_kernels.TABLE_HAS_BITPACK) == 0:
        return rec.primary, p_at[:-1], rec.high, h_at[:-1]
    bitpacked = rec.header["layout"] == 1
    packed = np.flatnonzero(bitpacked & (rec.header["kind"] == QUANT_KIND))
    low, high = np.zeros(int(at[-1]), np.uint8), np.zeros(int(at[-1]), np.uint8)
    for c in np.flatnonzero(~bitpacked).tolist():
        low[at[c]:at[c + 1]] = rec.primary[p_at[c]:p_at[c + 1]]
        high[at[c]:at[c + 1]] = rec.high[h_at[c]:h_at[c + 1]] if h_at[c + 1] > h_at[c] else 0
    for c in packed.tolist():
        row = np.zeros(2 * int(n[c]), np.uint8)
        row[:p_at[c + 1] - p_at[c]] = rec.primary[p_at[c]:p_at[c + 1]]
        codes = bitunpack(torch.from_numpy(row)[None], torch.tensor([int(rec.header["bits"][c])]), int(n[c]))[0]
        low[at[c]:at[c + 1]], high[at[c]:at[c + 1]] = (codes & 255).numpy(), (codes >> 8).numpy()
    return low, at[:-1], high, at[:-1]
