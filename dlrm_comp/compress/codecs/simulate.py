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
    name = "simulate"

    def encode(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout) -> Encoded:
        rows = layout.chunk_rows
        chunks, counts = pad_chunks(x, rows, layout.dim)
        q = quantize_batch(chunks, eb, counts)
        n = to_device(torch.from_numpy((rows * layout.dim).astype(np.float64)), x.device)
        ideal = q.entropy_bytes() + CHUNK_HEADER
        raw_body = n * x.element_size()
        est = torch.where(q.kind == ChunkKind.QUANT, ideal,
                          torch.where(q.kind == ChunkKind.RAW, raw_body, 0.0) + CHUNK_HEADER)
        est = est + (PREAMBLE + SECTION_HEADER) / max(len(rows), 1) * len(layout.counts)
        y = unpad_chunks(q.received(), rows, layout.dim)
        return Encoded(y.reshape(-1), self.sizes(layout), sent=est, ideal=est, err_ratio=q.error_ratio(),
                       nonfinite=q.nonfinite)

    def decode(self, received: torch.Tensor, layout: ChunkLayout, dtype=None) -> torch.Tensor:
        return received.view(-1, layout.dim)
