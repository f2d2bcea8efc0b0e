"""The training codec outside training: the offline tools (``launch/bench.py``, ``benchmarks/``,
``lossless/select_default.py``) encode and decode chunks through the very codec classes the
exchange runs, so their ratios, ideals, errors and times are those of training.

``roundtrip`` gives the codec a plan over the chunks (each chunk its own table: its own bound and
lossless stage; only what a codec reads of a direction's plan, so this layer imports no
exchange), sends them as one message or as runs of consecutive chunks (a message per chunk, or
per destination, where a tool needs those figures), and times both sides with
``timing.best_time`` (the device's stopwatch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dlrm_comp.compress.batch_quant import BatchQuant, quantize_batch
from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded
from dlrm_comp.compress.kinds import ChunkKind
from dlrm_comp.compress.lossless import CodecCache, LosslessCodec, default_lossless
from dlrm_comp.compress.modes import build_codec
from dlrm_comp.compress.timing import best_time


@dataclass
class ChunkPlan:
    """What a codec reads of a direction's plan (``exchange.plan.DirectionPlan``), per chunk."""

    coders: list[LosslessCodec]
    bitpack: list[bool]
    version: int = 0


@dataclass
class Roundtrip:
    """One offline encode and decode. Per chunk: ``sent`` wire bytes (a message's framing and a
    shared stream split as the recorder splits them), ``ideal`` bytes at the codes' order-0
    entropy (as sent where the mode has none), ``err_ratio`` max error / bound (None: no bound)."""

    encoded: Encoded
    decoded: list[torch.Tensor]  # each chunk as the receiver rebuilds it, in the chunk's dtype
    sent: list[float]
    ideal: list[float]
    err_ratio: list[float] | None
    raw: list[int]  # bytes of each chunk as it is
    enc_s: float  # best-of seconds of one encode of every chunk
    dec_s: float

    @property
    def bytes_raw(self) -> int:
        return sum(self.raw)

    @property
    def messages(self) -> list[bytes] | None:
        return self.encoded.messages

    @property
    def bytes_sent(self) -> float:
        """Exact for modes that send bytes; the estimate for ``simulate``."""
        if self.messages is not None:
            return float(sum(len(m) for m in self.messages))
        return float(sum(self.sent))

    @property
    def cr(self) -> float:
        return self.bytes_raw / self.bytes_sent if self.bytes_sent else float("inf")

    @property
    def max_err_ratio(self) -> float | None:
        return max(self.err_ratio, default=0.0) if self.err_ratio is not None else None


def layout_of(rows: Sequence[int], dim: int, counts: Sequence[int] | None = None, order=list) -> ChunkLayout:
    """Chunk c is table c; message m holds the next ``counts[m]`` chunks (None: one message),
    in the codec's ``order``."""
    rows = [int(r) for r in rows]
    starts = np.cumsum([0, *(counts if counts is not None else [len(rows)])])
    if starts[-1] != len(rows):
        raise ValueError(f"counts {list(counts)} do not add up to {len(rows)} chunks")
    groups = [order(list(range(a, b))) for a, b in zip(starts[:-1], starts[1:])]
    return ChunkLayout(groups, [np.array([rows[c] for c in g], np.int64) for g in groups],
                       [(0, max((rows[c] for c in g), default=0)) for g in groups], dim,
                       deduplicated=len(set(rows)) > 1)


def chunk_codes(x: torch.Tensor, eb_rel: float) -> tuple[BatchQuant, np.ndarray | None]:
    """One chunk (all of ``x``) through the training quantizer: its result, and its codes as
    little-endian uint8, or uint16 beyond 8 bits (None unless the chunk is QUANT)."""
    q = quantize_batch(x.reshape(1, -1), torch.tensor([float(eb_rel)], dtype=torch.float64))
    if int(q.kind[0]) != ChunkKind.QUANT:
        return q, None
    return q, q.codes[0].cpu().numpy().astype("<u1" if int(q.bits[0]) <= 8 else "<u2")


def roundtrip(mode: str, chunks: Sequence[torch.Tensor], eb_rel: Sequence[float] | float | None = None,
              coder: LosslessCodec | Sequence[LosslessCodec] | None = None, bitpack: bool = False,
              counts: Sequence[int] | None = None, cache: CodecCache | None = None, reps: int = 1,
              min_s: float = 0.0) -> Roundtrip:
    """Encode ``chunks`` (each ``[r_c, d]``, one dtype and device) with mode ``mode`` at relative
    bounds ``eb_rel`` and lossless stage ``coder`` (each one per chunk or one for all; bounds are
    ignored by fixed-rate modes, the default stage is training's), code layout ``bitpack``, as
    messages of ``counts`` consecutive chunks (None: one message); then decode as the receiver
    does (through ``cache``: a model coder's store). Times are the best of ``reps`` calls (more
    until ``min_s`` seconds)."""
    chunks = [c.reshape(c.shape[0], -1) if c.dim() > 1 else c.reshape(1, -1) for c in chunks]
    n, dim = len(chunks), chunks[0].shape[1] if chunks else 0
    device = chunks[0].device if chunks else torch.device("cpu")
    ebs = list(eb_rel) if isinstance(eb_rel, Sequence) else [0.01 if eb_rel is None else float(eb_rel)] * n
    coders = list(coder) if isinstance(coder, Sequence) else [coder if coder is not None else default_lossless()] * n
    codec = build_codec(mode, ChunkPlan(coders, [bitpack] * n), cache, device)
    layout = layout_of([c.shape[0] for c in chunks], dim, counts, codec.order)
    order = layout.chunk_tables
    x = torch.cat([chunks[c] for c in order]) if chunks else torch.zeros(0, 0)
    eb = torch.tensor([ebs[c] for c in order], dtype=torch.float64, device=device)
    enc, enc_s = best_time(lambda: codec.encode(x, eb, layout), reps, min_s, device=device)
    received = enc.messages if enc.messages is not None else enc.payload
    y, dec_s = best_time(lambda: codec.decode(received, layout), reps, min_s, device=device)
    back = dict(zip(order, y.to(x.dtype).split([chunks[c].shape[0] for c in order])))
    pos = {c: i for i, c in enumerate(order)}

    def by_chunk(t: torch.Tensor | None) -> list[float] | None:
        vals = None if t is None else t.detach().to(torch.float64).cpu().tolist()
        return None if vals is None else [vals[pos[c]] for c in range(n)]

    raw = [c.numel() * c.element_size() for c in chunks]
    sent = by_chunk(enc.sent) or [float(r) for r in raw]
    return Roundtrip(enc, [back[c] for c in range(n)], sent, by_chunk(enc.ideal) or sent,
                     by_chunk(enc.err_ratio), raw, enc_s, dec_s)
