"""``codec``: the batched error-bounded quantizer (``batch_quant.py``), then each table's lossless
stage over a destination's whole stream: the bytes that really travel.

Per step and direction: ``quantize_batch`` on the device over every (table x destination) chunk
(padded to one width by repeating their own rows) -> the chunk table and code planes on the host
in one copy -> one lossless call per (message, section) -> ``wire.assemble``. A message's chunks
are grouped by lossless stage and code layout (a section each), stable within a stage."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dlrm_comp.compress.batch_quant import ChunkKind, quantize_batch
from dlrm_comp.compress.codecs.base import ChunkLayout, pad_chunks
from dlrm_comp.compress.codecs.messages import ByteMessageCodec
from dlrm_comp.compress.wire import HEADER_DTYPE, HostChunks, bitpack, body_sizes


class QuantCodec(ByteMessageCodec):
    """``plan.coders[t]`` / ``plan.bitpack[t]``: table t's lossless stage and code layout, read at
    encode time (the lossless tuner changes them through ``plan.set_coder``, which bumps
    ``plan.version``: memoised orders and sections follow it)."""

    name = "codec"

    def memo_key(self):
        return id(self.plan), self.plan.version

    def section_key(self, table: int):
        c = self.plan.coders[table]
        return c.codec_id, c.header_params(), bool(self.plan.bitpack[table])

    def section_coder(self, table: int):
        return self.plan.coders[table]

    def order(self, tables: list[int]) -> list[int]:
        def build() -> list[int]:
            keys = [self.section_key(t) for t in tables]
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            return [t for _, t in sorted(zip(keys, tables), key=lambda kt: first[kt[0]])]
        return self._memo_get(("order", tuple(tables)), build)

    def host_chunks(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout, sections: list[int]):
        rows, tables, dim = layout.chunk_rows, layout.chunk_tables, layout.dim
        chunks, counts = pad_chunks(x, rows, dim)
        n = chunks.shape[1]
        q = quantize_batch(chunks, eb, counts)
        h = np.zeros(len(tables), dtype=HEADER_DTYPE)
        kind = q.kind.cpu().numpy()
        bits = q.bits.cpu().numpy()
        h["table"], h["kind"], h["bits"], h["rows"] = tables, kind, bits, rows
        h["minimum"], h["step"] = q.minimum.cpu().numpy(), q.step.cpu().numpy()
        h["section"] = sections
        bp = np.array([self.plan.bitpack[t] for t in tables], dtype=bool)
        h["layout"] = bp
        low = q.low
        if bp.any():
            packed = bitpack(q.codes, q.bits)
            low = torch.where(torch.from_numpy(bp).to(chunks.device)[:, None], packed, F.pad(low, (0, n)))
        high = q.high.cpu().numpy() if (bits > 8).any() else None
        raw = chunks.contiguous().view(torch.uint8).reshape(len(h), -1).cpu().numpy() \
            if (kind == ChunkKind.RAW).any() else None
        h["nbytes"] = body_sizes(h, dim, chunks.element_size())
        hc = HostChunks(h, n // dim if dim else 0, dim, low.cpu().numpy(), high, raw)
        ideal = torch.where(q.kind == ChunkKind.QUANT, q.entropy_bytes(),
                            torch.from_numpy(h["nbytes"].astype(np.float64)).to(q.kind.device))
        return hc, ideal, q.error_ratio(), q.nonfinite
