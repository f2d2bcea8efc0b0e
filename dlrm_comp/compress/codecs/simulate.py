"""``simulate``: the error-bounded quantizer runs, its reconstruction travels, and the bytes are
estimated as the wire format would carry them at the codes' order-0 entropy (the upper bound of
what an ideal entropy coder would send, framing included)."""
from __future__ import annotations

import numpy as np
import torch

from dlrm_comp.compress.batch_quant import ChunkKind, quantize_batch
from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded, ModeCodec, pad_chunks, unpad_chunks
from dlrm_comp.compress.wire import CHUNK_HEADER, PREAMBLE, SECTION_HEADER
from dlrm_comp.runtime import to_device


class SimulateCodec(ModeCodec):
    """Behind the row cache (``cache_stage.py``) the estimate counts the rows that still travel
    and each message's flag section at the flags' entropy; the reconstruction (hits included)
    travels, so only the owner's mirror of the caches exists."""

    name = "simulate"
    row_cache = True

    def encode(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout) -> Encoded:
        rows = layout.chunk_rows
        hits = flag_bytes = None
        if self.stage is not None and self.stage.active(layout):
            q, step, _, y = self.stage.quantize(x, eb, layout)
            hits, flag_bytes = self.stage.chunk_stats(q, step, layout)
        else:
            chunks, counts = pad_chunks(x, rows, layout.dim)
            q = quantize_batch(chunks, eb, counts)
            y = unpad_chunks(q.received(), rows, layout.dim)
        n = to_device(torch.from_numpy((rows * layout.dim).astype(np.float64)), x.device)
        if hits is not None:
            n = n - hits * layout.dim
        ideal = q.entropy_bytes() + CHUNK_HEADER
        raw_body = n * x.element_size()
        est = torch.where(q.kind == ChunkKind.QUANT, ideal,
                          torch.where(q.kind == ChunkKind.RAW, raw_body, 0.0) + CHUNK_HEADER)
        est = est + (PREAMBLE + SECTION_HEADER * (1 if hits is None else 2)) / max(len(rows), 1) * len(layout.counts)
        if flag_bytes is not None:
            est = est + flag_bytes
        return Encoded(y.reshape(-1), self.sizes(layout), sent=est, ideal=est, err_ratio=q.error_ratio(),
                       nonfinite=q.nonfinite, hits=hits)

    def decode(self, received: torch.Tensor, layout: ChunkLayout, dtype=None) -> torch.Tensor:
        return received.view(-1, layout.dim)
