"""``codec``: the batched error-bounded quantizer (``batch_quant.py``), then each table's lossless
stage over a destination's whole stream: the bytes that really travel.

Per step and direction: ``quantize_ragged`` over every (table x destination) chunk as its rows
lie (CPU float32), else ``quantize_batch`` on the device over the chunks padded to one width by
repeating their own rows, then the chunk table and code planes on the host in one copy ->
``wire.chunk_planes`` -> one lossless call per (message, section) -> ``wire.assemble``. A message's chunks
are grouped by lossless stage and code layout (a section each), stable within a stage.

The device message path (``compress.message_path``; ``compress/device_wire.py``): the same
quantizer, then every destination's message assembled by device ops in a format whose size
follows from the layout, one lossless call per direction on the device (nvcomp's ANS on CUDA,
the identity stage elsewhere; ``device_stages.py``), its coded sizes left on the device, and the
receiver parses by device ops and reconstructs with the same ``dequantize_planes``. No host copy
of the codes; the one host read per direction is the size protocol's
(``sizes.MessageSender.send_device``: the coded sizes and the receive splits, read together)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dlrm_comp.compress import device_stages, device_wire
from dlrm_comp.compress.batch_quant import ChunkKind, dequantize_planes, quantize_batch, quantize_ragged, ragged_ready
from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded, pad_chunks, unpad_chunks
from dlrm_comp.compress.codecs.cache_stage import message_flags
from dlrm_comp.compress.codecs.messages import ByteMessageCodec, reconstruct
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.kinds import QUANT_KIND, RAW_KIND
from dlrm_comp.compress.wire import HEADER_DTYPE, assemble, bitpack, chunk_planes, offsets, padded, parse
from dlrm_comp.runtime import to_device


class QuantCodec(ByteMessageCodec):
    """``plan.coders[t]`` / ``plan.bitpack[t]``: table t's lossless stage and code layout, read at
    encode time (the lossless tuner changes them through ``plan.set_coder``, which bumps
    ``plan.version``: memoised orders and sections follow it)."""

    name = "codec"
    row_cache = True
    host_only: str | None = None  # why the messages must be host wire messages (set by the exchange), None: free

    def __init__(self, plan=None, cache=None, device="cpu"):
        super().__init__(plan, cache, device)
        self._stages: dict = {}  # device -> its DeviceStage
        self._bad: torch.Tensor | None = None  # device count of device messages that failed their checks

    # ------------------------------------------------------------------ the device message path
    def device_path(self, x: torch.Tensor) -> bool:
        """Whether this call's messages take the device path: ``compress.message_path`` (the
        plan's), ``auto`` = rows on CUDA where nvcomp imports (without nvcomp the identity stage
        would send the codes uncoded: the host path's zstd is better there). ``device`` with a
        setting this path does not carry is refused, never quietly changed."""
        path = getattr(self.plan, "message_path", "host") if self.plan is not None else "host"
        if path == "host" or (path == "auto" and not x.is_cuda):
            return False
        blockers = [why for why, on in (
            ("compress.row_cache=on", self.stage is not None),
            ("compress.layout=bitpack", any(self.plan.bitpack)),
            (self.host_only, self.host_only is not None)) if on]
        if path == "auto":
            return x.is_cuda and device_stages.nvcomp_ready() and not blockers
        if blockers:
            raise ValueError(f"compress.message_path=device does not carry {blockers[0]}; accepted values with it: "
                             "host, auto")
        return True

    def device_stage(self, device) -> device_stages.DeviceStage:
        key = str(device)
        stage = self._stages.get(key)
        if stage is None:
            stage = self._stages[key] = device_stages.default_stage(device)
        return stage

    def _device_layout(self, layout: ChunkLayout, dtype: torch.dtype, device) -> device_wire.DeviceLayout:
        key = ("device", tuple(map(tuple, layout.tables)), layout.chunk_rows.tobytes(), layout.dim, dtype, str(device))
        return self._memo_get(key, lambda: device_wire.device_layout(layout.tables, layout.rows, layout.dim,
                                                                     dtype, device))

    def _encode_device(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout) -> Encoded:
        """Quantize, assemble every destination's message and code them all in one call, on
        ``x``'s device; per-chunk statistics as device tensors (the coded bytes of a message are
        split over its chunks by their order-0 entropy, as the host path does)."""
        rows, dim = layout.chunk_rows, layout.dim
        chunks, counts = pad_chunks(x, rows, dim)
        q = quantize_batch(chunks, eb, counts)
        lay = self._device_layout(layout, x.dtype, x.device)
        stage = self.device_stage(x.device)
        coded, sizes = stage.encode(device_wire.assemble(q, chunks, lay), lay.sizes)
        self.plan.device_stage = stage.name
        dev = x.device
        ideal = torch.where(q.kind == ChunkKind.QUANT, q.entropy_bytes().to(dev),
                            torch.where(q.kind == ChunkKind.RAW, lay.body, 0.0)) + lay.framing
        msg = lay.chunk_message
        total = torch.zeros(len(lay.sizes), dtype=torch.float64, device=dev).index_add_(0, msg, ideal)
        sent = ideal / total.index_select(0, msg).clamp_min(1e-300) * sizes.to(torch.float64).index_select(0, msg)
        return Encoded(coded, sizes, sent=sent, ideal=ideal, err_ratio=q.error_ratio(), nonfinite=q.nonfinite,
                       device_messages=True)

    def _decode_device(self, got: device_wire.DeviceReceived, layout: ChunkLayout,
                       dtype: torch.dtype | None) -> torch.Tensor:
        dtype = dtype or torch.float32
        dev = self.device  # the sender's stage runs here too (gloo hands CUDA rows' messages over on the host)
        lay = self._device_layout(layout, dtype, dev)
        messages, starts = self.device_stage(dev).decode(got.buffer.to(dev), got.sizes, lay.sizes)
        p = device_wire.parse(messages, lay, starts)
        values = dequantize_planes(p.kind, p.minimum, p.step, p.bits, p.low, p.high, p.raw, dtype)
        values = values.masked_fill(p.bad[:, None], float("nan"))  # a failed message never decodes to numbers
        bad = p.bad.sum()
        self._bad = bad if self._bad is None else self._bad + bad
        return unpad_chunks(values, layout.chunk_rows, layout.dim).to(self.device)

    def check_messages(self) -> None:
        """Raise CorruptPayloadError if a device message failed its checks since the last call
        (the count stays on the device until the statistics are read: no per-step host read)."""
        pending, self._bad = self._bad, None
        if pending is not None and int(pending):
            raise CorruptPayloadError(f"{int(pending)} chunks of device messages failed their checks (header or "
                                      "chunk table not what the layout expects): messages corrupted")

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
        bp = np.array([self.plan.bitpack[t] for t in tables], dtype=bool)
        quantized = _unpadded if ragged_ready(x.device, x.dtype) and not bp.any() else _padded
        q, low, high, raw = quantized(x, eb, layout, bp)
        h = np.zeros(len(tables), dtype=HEADER_DTYPE)
        kind, bits = q.kind.cpu().numpy(), q.bits.cpu().numpy()
        h["table"], h["kind"], h["bits"], h["rows"] = tables, kind, bits, rows
        h["minimum"], h["step"] = q.minimum.cpu().numpy(), q.step.cpu().numpy()
        h["section"], h["layout"] = sections, bp
        hc = chunk_planes(h, dim, x.element_size(), low(), high() if (bits > 8).any() else None,
                          raw() if (kind == RAW_KIND).any() else None)
        ideal = torch.where(q.kind == QUANT_KIND, q.entropy_bytes(),
                            torch.from_numpy(h["nbytes"].astype(np.float64)).to(q.kind.device))
        return hc, ideal, q.error_ratio(), q.nonfinite

    # ------------------------------------------------------------------ behind the row cache
    def encode(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout) -> Encoded:
        if self.device_path(x):
            return self._encode_device(x, eb, layout)
        if self.plan is not None:
            self.plan.device_stage = None
        if self.stage is None or not self.stage.active(layout):
            return super().encode(x, eb, layout)
        sections, coders = self.sections(layout)
        hc, ideal_body, ratio, nonfinite, hits, flag_bytes = self._cached_chunks(x, eb, layout, sections)
        ideal_host, flag_host, hits = torch.stack([ideal_body.to(torch.float64), flag_bytes.to(torch.float64),
                                                   hits.to(ideal_body.device, torch.float64)]).cpu()  # one copy
        messages, sent, framing = assemble(hc, x.dtype, layout.counts, coders, ideal_host.numpy())
        ideal = ideal_host + torch.from_numpy(framing) + flag_host
        return Encoded(torch.zeros(0, dtype=torch.uint8), [len(m) for m in messages], sent=torch.from_numpy(sent),
                       ideal=ideal, err_ratio=ratio.cpu(), nonfinite=nonfinite, messages=messages, hits=hits)

    def _cached_chunks(self, x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout, sections: list[int]):
        """``host_chunks`` behind the row cache: the quantizer decides the hits on the device,
        the hit rows come to the host with the low code plane (one copy), and there each chunk's
        travelling rows are packed to its front (its ``rows`` in the chunk table)."""
        rows, tables, dim = layout.chunk_rows, layout.chunk_tables, layout.dim
        q, step, chunks, _ = self.stage.quantize(x, eb, layout)
        hits_dev, flag_bytes = self.stage.chunk_stats(q, step, layout)
        c, n = chunks.shape
        u = n // dim if dim else 0
        hit_plane = q.hit.view(c, u, dim)[:, :, 0].to(torch.uint8) if u else torch.zeros(c, 0, dtype=torch.uint8)
        both = torch.cat([q.low, hit_plane.to(q.low.device)], 1).cpu().numpy()
        low, hit = both[:, :n], both[:, n:].astype(bool)
        kind, bits = q.kind.cpu().numpy(), q.bits.cpu().numpy()
        high = q.high.cpu().numpy() if (bits > 8).any() else None
        raw = chunks.contiguous().view(torch.uint8).reshape(c, -1).cpu().numpy() \
            if (kind == RAW_KIND).any() else None
        valid = np.arange(u)[None, :] < rows[:, None]
        travel = valid & ~hit
        order = np.argsort(~travel, axis=1, kind="stable")  # each chunk's travelling rows first, in order

        def front(plane):
            return np.take_along_axis(plane.reshape(c, u, -1), order[:, :, None], 1).reshape(c, -1)
        low, high, raw = front(low), None if high is None else front(high), None if raw is None else front(raw)
        h = np.zeros(c, dtype=HEADER_DTYPE)
        h["table"], h["kind"], h["bits"], h["rows"] = tables, kind, bits, travel.sum(1)
        h["minimum"], h["step"] = q.minimum.cpu().numpy(), q.step.cpu().numpy()
        h["section"] = sections
        bp = np.array([self.plan.bitpack[t] for t in tables], dtype=bool)
        h["layout"] = bp
        if bp.any():
            codes = torch.from_numpy(low).to(torch.int32)
            if high is not None:
                codes = codes | (torch.from_numpy(high).to(torch.int32) << 8)
            packed = bitpack(codes, torch.from_numpy(bits.astype(np.int64))).numpy()
            low = np.where(bp[:, None], packed, np.pad(low, ((0, 0), (0, n))))
        flags, flag_rows = message_flags(hit[valid], step.cached, layout)
        hc = chunk_planes(h, dim, chunks.element_size(), padded(low), None if high is None else padded(high),
                          None if raw is None else padded(raw), flags=flags, flag_rows=flag_rows)
        ideal = torch.where(q.kind == ChunkKind.QUANT, q.entropy_bytes(),
                            torch.from_numpy(h["nbytes"].astype(np.float64)).to(q.kind.device))
        return hc, ideal, q.error_ratio(), q.nonfinite, hits_dev, flag_bytes

    def decode(self, received, layout: ChunkLayout, dtype: torch.dtype | None = None) -> torch.Tensor:
        if isinstance(received, device_wire.DeviceReceived):
            return self._decode_device(received, layout, dtype)
        if self.stage is None or not self.stage.active(layout):
            return super().decode(received, layout, dtype)
        cache, step = self.stage.begin("recv", layout)
        rows, dim = layout.chunk_rows, layout.dim
        base = cache.rows(step, dtype or torch.float32)
        chunk = np.repeat(np.arange(len(rows)), rows)
        row_at = np.concatenate([[0], np.cumsum(layout.message_rows)])
        chunk_at = np.concatenate([[0], np.cumsum(layout.counts)])
        moved, parts = [], []
        for m, msg in enumerate(received):
            (r0, r1), (c0, c1) = (row_at[m], row_at[m + 1]), (chunk_at[m], chunk_at[m + 1])
            cached = step.cached[r0:r1]
            hit = np.zeros(r1 - r0, bool)

            def travelling(flags, hit=hit, cached=cached, r0=r0, r1=r1, c0=c0, c1=c1):
                hit[cached] = flags.astype(bool)
                return rows[c0:c1] - np.bincount(chunk[r0:r1][hit] - c0, minlength=c1 - c0)
            rec = parse(msg, travelling, dim, self.cache, expect_chunks=c1 - c0, expect_dtype=dtype,
                        flags=int(cached.sum()))
            if rec.header["table"].astype(np.int64).tolist() != list(layout.tables[m]):
                raise CorruptPayloadError(f"message carries tables {rec.header['table'].tolist()}, "
                                          f"expected {list(layout.tables[m])}")
            go = r0 + np.flatnonzero(~hit)  # the travelling rows, chunk after chunk
            copies = base.index_select(0, to_device(torch.from_numpy(go), base.device))
            parts.append(reconstruct(rec, self.device, copies.reshape(-1)).view(len(go), dim))
            moved.append(go)
        y = base.clone()
        if moved:
            go = np.concatenate(moved)
            y.index_copy_(0, to_device(torch.from_numpy(go), y.device), torch.cat(parts).to(y.dtype))
        cache.store(step, y)
        return y


def _unpadded(x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout, bp: np.ndarray):
    """The quantizer over each chunk's rows as they lie (``quantize_ragged``): its planes are
    flat, chunk after chunk, so each section's stream is a slice of them. Returns the result and
    its low, high and value planes as ``chunk_planes`` takes them (the last two read only when
    some chunk needs them)."""
    q = quantize_ragged(x, layout.chunk_rows, layout.dim, eb)
    at = offsets(layout.chunk_rows * layout.dim)[:-1]
    return (q, lambda: (q.low.numpy(), at), lambda: (q.high.numpy(), at),
            lambda: (x.detach().contiguous().view(torch.uint8).numpy().reshape(-1), at * x.element_size()))


def _padded(x: torch.Tensor, eb: torch.Tensor, layout: ChunkLayout, bp: np.ndarray):
    """``_unpadded`` through ``quantize_batch`` on the chunks padded to one width (any device and
    dtype; the ``bitpack`` layout packs its chunks' codes there)."""
    chunks, counts = pad_chunks(x, layout.chunk_rows, layout.dim)
    n = chunks.shape[1]
    q = quantize_batch(chunks, eb, counts)
    codes = q.low
    if bp.any():
        packed = bitpack(q.codes, q.bits)
        codes = torch.where(torch.from_numpy(bp).to(chunks.device)[:, None], packed, F.pad(codes, (0, n)))
    return (q, lambda: padded(codes.cpu().numpy()), lambda: padded(q.high.cpu().numpy()),
            lambda: padded(chunks.contiguous().view(torch.uint8).reshape(len(chunks), -1).cpu().numpy()))
