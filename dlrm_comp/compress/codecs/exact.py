"""``off``: the rows travel as they are. With bag deduplication fewer rows travel, and that
saving is measured like any other (``sent`` per chunk); without it there is nothing to record."""
from __future__ import annotations

import torch

from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded, ModeCodec, rows_bytes


class OffCodec(ModeCodec):
    name = "off"

    def encode(self, x: torch.Tensor, eb: torch.Tensor | None, layout: ChunkLayout) -> Encoded:
        sent = rows_bytes(layout, layout.dim * x.element_size(), 0, x.device) if layout.deduplicated else None
        return Encoded(x.reshape(-1), self.sizes(layout), sent=sent)

    def decode(self, received: torch.Tensor, layout: ChunkLayout, dtype=None) -> torch.Tensor:
        return received.view(-1, layout.dim)
