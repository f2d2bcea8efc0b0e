"""``compress.peers=inter_node``: messages to peers on this rank's own node travel uncompressed.

Inside a node (loopback, NVLink) bytes are cheap and the codec is not: Meta's compressed
all-to-all (torchcomms' ctran) compresses only what leaves the node. This codec routes each
message by its peer: the mode's codec for peers on other nodes, the rows as they are (their
bytes, in the rows' dtype) for peers on this node, this rank included. Being on one node is
symmetric, so a receiver routes message m exactly as its sender did. Byte-message modes only
(``codec``, ``sz``): their messages travel with their sizes already (``dist.size_exchange=exact``),
so an uncompressed message is one more byte string and the exchange is unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded, ModeCodec
from dlrm_comp.compress.errors import CorruptPayloadError


def sub_layout(layout: ChunkLayout, messages: list[int]) -> ChunkLayout:
    """The layout of some of ``layout``'s messages, in order."""
    return ChunkLayout([layout.tables[m] for m in messages], [layout.rows[m] for m in messages],
                       [layout.slices[m] for m in messages], layout.dim, layout.deduplicated)


class PeerRoutedCodec(ModeCodec):
    """``inner`` (a byte-message codec) for the peers where ``local`` is False; raw rows elsewhere."""

    byte_messages = True

    def __init__(self, inner: ModeCodec, local: Sequence[bool]):
        if not inner.byte_messages:
            raise ValueError(f"compress.peers=inter_node routes byte-message modes (codec, sz), not {inner.name!r}")
        super().__init__(inner.plan, inner.cache, inner.device)
        self.inner, self.local = inner, [bool(v) for v in local]
        self.name = inner.name
        self.remote = [m for m, here in enumerate(self.local) if not here]
        self.bytes_local = 0  # bytes of the messages to this node's ranks (they never cross a link)

    def order(self, tables: list[int]) -> list[int]:
        return self.inner.order(tables)

    def sizes(self, layout: ChunkLayout) -> None:
        return None

    def encode(self, x: torch.Tensor, eb: torch.Tensor | None, layout: ChunkLayout) -> Encoded:
        rows = np.concatenate([[0], np.cumsum(layout.message_rows)])
        chunks = np.concatenate([[0], np.cumsum(layout.counts)])
        part = [x[rows[m]:rows[m + 1]] for m in range(len(self.local))]
        inner = None
        if self.remote:
            xr = torch.cat([part[m] for m in self.remote])
            ebr = None if eb is None else torch.cat([eb[chunks[m]:chunks[m + 1]] for m in self.remote])
            inner = self.inner.encode(xr, ebr, sub_layout(layout, self.remote))
        messages, sent, ideal, ratio = [], [], [], []
        nonfinite = torch.zeros((), dtype=torch.int64)
        at = 0  # chunk position in the inner codec's statistics
        pending = iter(inner.messages if inner is not None else ())
        for m, here in enumerate(self.local):
            n = int(chunks[m + 1] - chunks[m])
            if here:
                values = part[m].detach().contiguous().cpu()
                messages.append(values.view(torch.uint8).numpy().tobytes() if values.numel() else b"")
                self.bytes_local += len(messages[-1])
                raw = torch.from_numpy(layout.rows[m] * layout.dim * x.element_size()).to(torch.float64)
                sent.append(raw)
                ideal.append(raw)
                ratio.append(torch.zeros(n, dtype=torch.float64))
                nonfinite = nonfinite + (~torch.isfinite(values)).any().to(torch.int64)
                continue
            messages.append(next(pending))
            sent.append(inner.sent[at:at + n].to(torch.float64))
            ideal.append((inner.ideal if inner.ideal is not None else inner.sent)[at:at + n].to(torch.float64))
            ratio.append(None if inner.err_ratio is None else inner.err_ratio[at:at + n].to(torch.float64))
            at += n
        if inner is not None and inner.nonfinite is not None:
            nonfinite = nonfinite + inner.nonfinite.to(torch.int64).cpu()
        keep_ratio = inner is None or inner.err_ratio is not None
        return Encoded(torch.zeros(0, dtype=torch.uint8), [len(m) for m in messages], sent=torch.cat(sent),
                       ideal=torch.cat(ideal), err_ratio=torch.cat(ratio) if keep_ratio else None,
                       nonfinite=nonfinite, messages=messages)

    def decode(self, received: Sequence, layout: ChunkLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or torch.float32
        remote = None
        if self.remote:
            sub = sub_layout(layout, self.remote)
            got = self.inner.decode([received[m] for m in self.remote], sub, dtype)
            remote = iter(torch.split(got, sub.message_rows))
        out = []
        for m, here in enumerate(self.local):
            if not here:
                out.append(next(remote).to(self.device))
                continue
            msg = bytes(received[m])
            rows = int(layout.message_rows[m])
            if len(msg) != rows * layout.dim * torch.empty((), dtype=dtype).element_size():
                raise CorruptPayloadError(f"an uncompressed message from peer {m} holds {len(msg)} bytes, expected "
                                          f"{rows} rows of {layout.dim} {dtype}")
            values = torch.frombuffer(bytearray(msg), dtype=dtype) if msg else torch.zeros(0, dtype=dtype)
            out.append(values.view(rows, layout.dim).to(self.device))
        return torch.cat(out) if out else torch.zeros(0, layout.dim, device=self.device)
