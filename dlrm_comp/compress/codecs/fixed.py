"""Fixed-rate modes: a chunk's size is a function of its row count alone, so the receiver knows
every split from the layout (no size exchange, no host read) and a deduplicated chunk (fewer
rows) is encoded the same way. Bytes, not fp8/int16 tensors, cross the collective (gloo refuses
those). These carry no bound: the arithmetic is float32.

The row formats are those of TorchRec's QComms FP16/BF16/FP8/INT8: fp16 saturates at +-65504,
bf16 at its maximum, fp8 is e4m3 with a per-chunk scale mapping max|x| to 448, int8 is row-wise
asymmetric in fbgemm's fused layout (per row: ``dim`` uint8 codes, then float32 scale and bias).
A message is its chunks' row records, then their trailers (fp8's scale). MX4 (``mx4.py``, the
OCP format of FBGEMM and TorchRec's MX4 comms) groups each chunk's values by 32.
"""
from __future__ import annotations

import numpy as np
import torch

from dlrm_comp.compress import device as device_kernels
from dlrm_comp.compress.codecs.base import ChunkLayout, Encoded, ModeCodec, chunk_ids, nonfinite_count, rows_bytes
from dlrm_comp.compress.mx4 import GROUP, GROUP_BYTES, dequantize_mx4, quantize_mx4
from dlrm_comp.runtime import to_device

_FP16_MAX = 65504.0
_BF16_MAX = float(torch.finfo(torch.bfloat16).max)
_FP8_MAX = 448.0
_F32_MAX = float(torch.finfo(torch.float32).max)


class RowFormatCodec(ModeCodec):
    """A row record of ``row_bytes(dim)`` per row, then ``trailer_bytes`` per chunk."""

    trailer_bytes = 0

    def row_bytes(self, dim: int) -> int:
        raise NotImplementedError

    def encode_rows(self, x: torch.Tensor, chunk: torch.Tensor | None, num_chunks: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Finite rows ``[R, d]`` float32 (row i in chunk ``chunk[i]``) -> records ``[R, row_bytes]``
        and trailers ``[num_chunks, trailer_bytes]``, uint8."""
        raise NotImplementedError

    def decode_rows(self, records: torch.Tensor, trailers: torch.Tensor, chunk: torch.Tensor | None) -> torch.Tensor:
        """Inverse of ``encode_rows``: float32 ``[R, d]``."""
        raise NotImplementedError

    def sizes(self, layout: ChunkLayout) -> list[int]:
        rb, cb = self.row_bytes(layout.dim), self.trailer_bytes
        return [r * rb + c * cb for r, c in zip(layout.message_rows, layout.counts)]

    def encode(self, x: torch.Tensor, eb, layout: ChunkLayout) -> Encoded:
        rows, cb = layout.chunk_rows, self.trailer_bytes
        records, trailers = self.encode_rows(x.to(torch.float32), chunk_ids(rows, x.device) if cb else None,
                                             len(rows))
        if cb:
            parts, r0, c0 = [], 0, 0
            for r, c in zip(layout.message_rows, layout.counts):
                parts += [records[r0:r0 + r].reshape(-1), trailers[c0:c0 + c].reshape(-1)]
                r0, c0 = r0 + r, c0 + c
            send = torch.cat(parts)
        else:
            send = records.reshape(-1)
        return Encoded(send, self.sizes(layout), sent=rows_bytes(layout, self.row_bytes(layout.dim), cb, x.device),
                       nonfinite=nonfinite_count(x))

    def decode(self, received: torch.Tensor, layout: ChunkLayout, dtype=None) -> torch.Tensor:
        """float32 rows (the exchange casts them to its model's dtype)."""
        rb, cb, d = self.row_bytes(layout.dim), self.trailer_bytes, layout.dim
        if not cb:
            return self.decode_rows(received.view(-1, rb), received[:0], None)
        out = []
        for part, r, chunk_rows in zip(received.split(self.sizes(layout)), layout.message_rows, layout.rows):
            out.append(self.decode_rows(part[:r * rb].view(r, rb), part[r * rb:], chunk_ids(chunk_rows, part.device)))
        return torch.cat(out) if out else received.new_zeros(0, d, dtype=torch.float32)


def _row_chunk(chunk: torch.Tensor | None, r: int, device) -> torch.Tensor:
    return chunk if chunk is not None else torch.zeros(r, dtype=torch.int64, device=device)


class HalfCodec(RowFormatCodec):
    """A 16-bit float per value, saturated at the format's maximum (what both halves share)."""

    dtype: torch.dtype
    limit: float

    def row_bytes(self, dim: int) -> int:
        return 2 * dim

    def encode_rows(self, x, chunk, num_chunks):
        r, d = x.shape
        return x.clamp(-self.limit, self.limit).to(self.dtype).view(torch.uint8).reshape(r, 2 * d), \
            x.new_zeros((num_chunks, 0), dtype=torch.uint8)

    def decode_rows(self, records, trailers, chunk):
        return records.contiguous().view(self.dtype).to(torch.float32)


class Fp16Codec(HalfCodec):
    name, dtype, limit = "fp16", torch.float16, _FP16_MAX


class Bf16Codec(HalfCodec):
    name, dtype, limit = "bf16", torch.bfloat16, _BF16_MAX


class Fp8Codec(RowFormatCodec):
    """e4m3 with one float32 scale per chunk (max|x| -> 448)."""

    name = "fp8"
    trailer_bytes = 4

    def row_bytes(self, dim: int) -> int:
        return dim

    def encode_rows(self, x, chunk, num_chunks):
        r, d = x.shape
        if device_kernels.use_triton(x):  # 2 launches on CUDA (compress/device/fixed.py)
            from dlrm_comp.compress.device import fixed
            return fixed.fp8_encode_rows(x, _row_chunk(chunk, r, x.device), num_chunks)
        row_max = x.abs().amax(dim=1) if d else x.new_zeros(r)
        amax = x.new_zeros(num_chunks)
        if r:
            amax = amax.scatter_reduce(0, _row_chunk(chunk, r, x.device), row_max, reduce="amax")
        amax = amax.to(torch.float64)
        scale = torch.where(amax > 0, (_FP8_MAX / amax.clamp_min(1e-300)).clamp_max(_F32_MAX), 1.0).to(torch.float32)
        per_row = scale[_row_chunk(chunk, r, x.device)] if r else scale[:0]
        y = (x * per_row[:, None]).clamp_(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
        return y.reshape(r, d), scale.view(torch.uint8).reshape(num_chunks, 4)

    def decode(self, received: torch.Tensor, layout: ChunkLayout, dtype=None) -> torch.Tensor:
        if not device_kernels.use_triton(received):
            return super().decode(received, layout, dtype)
        from dlrm_comp.compress.device import fixed  # every message in one launch
        meta = to_device(torch.from_numpy(self._decode_offsets(layout)), received.device)
        return fixed.fp8_decode_messages(received, meta, int(layout.chunk_rows.sum()), layout.dim,
                                         len(layout.chunk_rows))

    @staticmethod
    def _decode_offsets(layout: ChunkLayout) -> np.ndarray:
        """Each row's chunk; per chunk, 4 x the chunks of earlier messages (a row's record lies at
        row*d + that) and the byte offset of its scale (after its message's records)."""
        counts, d = np.asarray(layout.counts, np.int64), layout.dim
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # each message's first chunk
        msg_rows = np.asarray(layout.message_rows, np.int64)
        start = np.concatenate([[0], np.cumsum(msg_rows * d + 4 * counts)[:-1]]).astype(np.int64)
        of_chunk = np.repeat(np.arange(len(counts)), counts)
        c = np.arange(int(counts.sum()))
        shift = 4 * first[of_chunk]
        scale_at = start[of_chunk] + msg_rows[of_chunk] * d + 4 * (c - first[of_chunk])
        return np.concatenate([np.repeat(c, layout.chunk_rows), shift, scale_at]).astype(np.int64)

    def decode_rows(self, records, trailers, chunk):
        r = records.shape[0]
        if device_kernels.use_triton(records):
            from dlrm_comp.compress.device import fixed
            return fixed.fp8_decode_rows(records, trailers, _row_chunk(chunk, r, records.device))
        scale = trailers.contiguous().view(torch.float32).reshape(-1)
        per_row = scale[_row_chunk(chunk, r, records.device)] if r else scale[:0]
        return records.contiguous().view(torch.float8_e4m3fn).to(torch.float32) / per_row[:, None]


class Int8Codec(RowFormatCodec):
    """Row-wise asymmetric uint8 codes, then the row's float32 scale and bias (fbgemm's fused rows)."""

    name = "int8"

    def row_bytes(self, dim: int) -> int:
        return dim + 8

    def encode_rows(self, x, chunk, num_chunks):
        r, d = x.shape
        if device_kernels.use_triton(x):  # one launch on CUDA (compress/device/fixed.py)
            from dlrm_comp.compress.device import fixed
            return fixed.int8_encode_rows(x), x.new_zeros((num_chunks, 0), dtype=torch.uint8)
        mn, mx = (x.amin(dim=1), x.amax(dim=1)) if d else (x.new_zeros(r), x.new_zeros(r))
        scale = mx / 255.0 - mn / 255.0  # no overflow for ranges beyond the float32 maximum
        safe = torch.where(scale > 0, scale, 1.0)[:, None]
        t = x / safe - mn[:, None] / safe  # never (x - mn): it overflows where the range does
        codes = torch.round(t).clamp_(0, 255).to(torch.uint8)
        return torch.cat([codes, scale[:, None].view(torch.uint8), mn[:, None].view(torch.uint8)], dim=1), \
            x.new_zeros((num_chunks, 0), dtype=torch.uint8)

    def decode_rows(self, records, trailers, chunk):
        if device_kernels.use_triton(records):
            from dlrm_comp.compress.device import fixed
            return fixed.int8_decode_rows(records)
        records = records.contiguous()
        d = records.shape[1] - 8
        codes = records[:, :d].to(torch.float32)
        scale = records[:, d:d + 4].contiguous().view(torch.float32)
        bias = records[:, d + 4:].contiguous().view(torch.float32)
        # halved, then doubled (exact): code*scale alone can exceed the float32 maximum by up to 2x
        return (codes * (scale * 0.5) + bias * 0.5) * 2.0


class Mx4Codec(ModeCodec):
    """OCP MX4 (``mx4.py``): each chunk's values, row after row, in groups of 32 (the last one
    zero-padded), 17 bytes a group: 4.25 bits per value, 7.5x against fp32."""

    name = "mx4"

    @staticmethod
    def _groups(layout: ChunkLayout) -> np.ndarray:
        return -(-layout.chunk_rows * layout.dim // GROUP)

    def sizes(self, layout: ChunkLayout) -> list[int]:
        groups, out, c0 = self._groups(layout), [], 0
        for c in layout.counts:
            out.append(int(groups[c0:c0 + c].sum()) * GROUP_BYTES)
            c0 += c
        return out

    @staticmethod
    def _slots(layout: ChunkLayout) -> tuple[np.ndarray, np.ndarray]:
        """For every value, its slot among the chunks' groups; and for every slot, its value (or -1)."""
        n = layout.chunk_rows * layout.dim
        groups = -(-n // GROUP)
        slot_start = np.concatenate([[0], np.cumsum(groups * GROUP)[:-1]]).astype(np.int64)
        value_start = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        within = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(value_start, n)
        slot_of_value = np.repeat(slot_start, n) + within
        value_of_slot = np.full(int(groups.sum()) * GROUP, -1, np.int64)
        value_of_slot[slot_of_value] = np.arange(int(n.sum()), dtype=np.int64)
        return slot_of_value, value_of_slot

    @staticmethod
    def _whole_groups(layout: ChunkLayout) -> bool:
        """Every chunk fills whole groups (d a multiple of 32, or even rows at d=16): the groups
        are the values as they lie, no slot map to build."""
        return bool((layout.chunk_rows * layout.dim % GROUP == 0).all())

    def encode(self, x: torch.Tensor, eb, layout: ChunkLayout) -> Encoded:
        if self._whole_groups(layout):
            groups = x.reshape(-1, GROUP)
        else:
            _, value_of_slot = self._slots(layout)
            flat = torch.cat([x.reshape(-1), x.new_zeros(1)])
            groups = flat[to_device(torch.from_numpy(value_of_slot), x.device)].view(-1, GROUP)  # -1: the zero
        packed = quantize_mx4(groups)
        sent = to_device(torch.from_numpy((self._groups(layout) * GROUP_BYTES).astype(np.float64)), x.device)
        return Encoded(packed.reshape(-1), self.sizes(layout), sent=sent, nonfinite=nonfinite_count(x))

    def decode(self, received: torch.Tensor, layout: ChunkLayout, dtype=None) -> torch.Tensor:
        values = dequantize_mx4(received.view(-1, GROUP_BYTES)).reshape(-1)
        if self._whole_groups(layout):
            return values.view(-1, layout.dim)
        slot_of_value, _ = self._slots(layout)
        return values[to_device(torch.from_numpy(slot_of_value), values.device)].view(-1, layout.dim)
