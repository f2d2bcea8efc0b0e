"""The fixed-rate formats as Triton kernels, bit-identical to their torch definitions: MX4
(``compress/mx4.py``), int8 rowwise (fbgemm's fused rows) and fp8 e4m3 with a scale per chunk
(``codecs/fixed.py``). One launch per call, whatever the number of rows, chunks or messages
(fp8's encode: two, the per-chunk max then the codes, after a zero fill; its decode reads every
message of the receive buffer in one launch).

Why: their torch forms are tens of small kernels each (MX4's encode ~30). The arithmetic is the
torch ops', float32 with IEEE division (``div_rn``) and no FMA; format conversions are done on
bits (fp8 as c10's ``fp8e4m3fn_from_fp32_value``, rounding to nearest even), so the interpreter
and the GPU agree with torch. Rows holding a NaN/Inf decode to garbage in every implementation
(the codecs count them as non-finite); bit-identity holds on finite rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from dlrm_comp.compress.device.launches import launch
from dlrm_comp.compress.mx4 import GROUP, GROUP_BYTES

_GROUPS = 64  # MX4 groups per program


@triton.jit
def _rint32(v):
    """torch.round (half to even) on float32, exact for every v."""
    a = tl.abs(v)
    r = tl.where(a < 8388608.0, (a + 8388608.0) - 8388608.0, a)
    return tl.where(v < 0, -r, r)


@triton.jit
def _pow2(biased):
    """2^(biased - 127) as float32 for biased in [0, 254] (``mx4._pow2``)."""
    return tl.where(biased > 0, biased << 23, 1 << 22).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1(a, x):
    """E2M1 code of |x / 2^X| = a, ties to even code, with x's sign bit (``mx4.quantize_mx4``)."""
    code = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32) \
        + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32) + (a > 5.0).to(tl.int32)
    return code | (((x.to(tl.int32, bitcast=True) >> 31) & 1) << 3)


@triton.jit
def _mx4_quant_kernel(x_ptr, out_ptr, G, BLOCK_G: tl.constexpr):
    gs = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gm = gs < G
    j = tl.arange(0, 16)
    src = x_ptr + gs.to(tl.int64)[:, None] * 32 + 2 * j[None, :]
    ev = tl.load(src, mask=gm[:, None], other=0.0)
    od = tl.load(src + 1, mask=gm[:, None], other=0.0)
    amax = tl.maximum(tl.max(tl.abs(ev), axis=1), tl.max(tl.abs(od), axis=1))
    bad = (ev != ev) | (tl.abs(ev) == float("inf")) | (od != od) | (tl.abs(od) == float("inf"))
    finite = tl.max(bad.to(tl.int32), axis=1) == 0
    field = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF
    ebyte = tl.where(finite, tl.maximum(field - 2, 0), 255)
    inv_scale = _pow2(254 - tl.minimum(ebyte, 253))[:, None]
    ce = _e2m1(tl.abs(ev * inv_scale), ev)
    co = _e2m1(tl.abs(od * inv_scale), od)
    packed = tl.where(finite[:, None], ce | (co << 4), 0)
    dst = out_ptr + gs.to(tl.int64) * 17
    tl.store(dst[:, None] + j[None, :], packed.to(tl.uint8), mask=gm[:, None])
    tl.store(dst + 16, ebyte.to(tl.uint8), mask=gm)


@triton.jit
def _e2m1_value(c):
    """The signed E2M1 value of code c (``mx4._VALUES``; code 8 is -0.0)."""
    m = c & 7
    mag = tl.where(m < 4, m.to(tl.float32) * 0.5,
                   tl.where(m == 4, 2.0, tl.where(m == 5, 3.0, tl.where(m == 6, 4.0, 6.0))))
    return tl.where((c & 8) != 0, -mag, mag)


@triton.jit
def _mx4_dequant_kernel(p_ptr, out_ptr, G, BLOCK_G: tl.constexpr):
    gs = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gm = gs < G
    j = tl.arange(0, 16)
    src = p_ptr + gs.to(tl.int64) * 17
    p = tl.load(src[:, None] + j[None, :], mask=gm[:, None], other=0).to(tl.int32)
    ebyte = tl.load(src + 16, mask=gm, other=0).to(tl.int32)
    scale = tl.where(ebyte == 255, float("nan"), _pow2(tl.minimum(ebyte, 254)))[:, None]
    dst = out_ptr + gs.to(tl.int64)[:, None] * 32 + 2 * j[None, :]
    tl.store(dst, _e2m1_value(p & 15) * scale, mask=gm[:, None])
    tl.store(dst + 1, _e2m1_value(p >> 4) * scale, mask=gm[:, None])


def quantize_mx4(x: torch.Tensor) -> torch.Tensor:
    """``mx4.quantize_mx4``: [G, 32] float (computed in float32) -> uint8 [G, 17], one launch."""
    x = x.to(torch.float32).contiguous()
    g = x.shape[0]
    out = torch.empty((g, GROUP_BYTES), dtype=torch.uint8, device=x.device)
    if g:
        launch(_mx4_quant_kernel, (triton.cdiv(g, _GROUPS),), x, out, g, BLOCK_G=_GROUPS)
    return out


def dequantize_mx4(packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``mx4.dequantize_mx4``: uint8 [G, 17] -> [G, 32] of ``dtype``, one launch (+ the cast)."""
    packed = packed.contiguous()
    g = packed.shape[0]
    out = torch.empty((g, GROUP), dtype=torch.float32, device=packed.device)
    if g:
        launch(_mx4_dequant_kernel, (triton.cdiv(g, _GROUPS),), packed, out, g, BLOCK_G=_GROUPS)
    return out if dtype == torch.float32 else out.to(dtype)


@triton.jit
def _store_f32_bytes(ptr, v, mask):
    """A float32 as 4 little-endian bytes at any byte offset (records are not 4-aligned)."""
    b = v.to(tl.int32, bitcast=True)
    for k in tl.static_range(4):
        tl.store(ptr + k, ((b >> (8 * k)) & 255).to(tl.uint8), mask=mask)


@triton.jit
def _row_tile(R, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's block of rows of a row-wise format: row and column indices, the rows that
    exist, and the values that exist."""
    rs = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    rm = rs < R
    return rs, cols, rm, rm[:, None] & (cols < D)[None, :]


@triton.jit
def _load_f32_bytes(ptr, mask):
    b = tl.load(ptr, mask=mask, other=0).to(tl.int32)
    for k in tl.static_range(1, 4):
        b = b | (tl.load(ptr + k, mask=mask, other=0).to(tl.int32) << (8 * k))
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _int8_encode_kernel(x_ptr, out_ptr, R, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rs, cols, rm, m = _row_tile(R, D, BLOCK_R, BLOCK_D)
    v = tl.load(x_ptr + rs.to(tl.int64)[:, None] * D + cols[None, :], mask=m, other=0.0)
    mn = tl.min(tl.where(m, v, float("inf")), axis=1)
    mx = tl.max(tl.where(m, v, -float("inf")), axis=1)
    scale = tl.math.div_rn(mx, 255.0) - tl.math.div_rn(mn, 255.0)  # never (mx - mn): it may overflow
    safe = tl.where(scale > 0, scale, 1.0)
    t = tl.math.div_rn(v, safe[:, None]) - tl.math.div_rn(mn, safe)[:, None]
    codes = tl.minimum(tl.maximum(_rint32(t), 0.0), 255.0).to(tl.uint8)
    row = out_ptr + rs.to(tl.int64) * (D + 8)
    tl.store(row[:, None] + cols[None, :], codes, mask=m)
    _store_f32_bytes(row + D, scale, rm)
    _store_f32_bytes(row + D + 4, mn, rm)


@triton.jit
def _int8_decode_kernel(rec_ptr, out_ptr, R, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rs, cols, rm, m = _row_tile(R, D, BLOCK_R, BLOCK_D)
    row = rec_ptr + rs.to(tl.int64) * (D + 8)
    codes = tl.load(row[:, None] + cols[None, :], mask=m, other=0).to(tl.float32)
    scale = _load_f32_bytes(row + D, rm)
    bias = _load_f32_bytes(row + D + 4, rm)
    y = (codes * (scale * 0.5)[:, None] + (bias * 0.5)[:, None]) * 2.0  # halved then doubled, as torch
    tl.store(out_ptr + rs.to(tl.int64)[:, None] * D + cols[None, :], y, mask=m)


def _row_blocks(r: int, d: int) -> tuple[int, int]:
    """(rows, padded columns) per program: ~4096 values, the shape a function of d alone (each
    distinct shape is a compilation)."""
    bd = triton.next_power_of_2(max(d, 1))
    return max(1, 4096 // bd), bd


def int8_encode_rows(x: torch.Tensor) -> torch.Tensor:
    """``Int8Codec.encode_rows``' records: [R, d] float32 -> uint8 [R, d + 8], one launch."""
    x = x.contiguous()
    r, d = x.shape
    out = torch.empty((r, d + 8), dtype=torch.uint8, device=x.device)
    if r:
        br, bd = _row_blocks(r, d)
        launch(_int8_encode_kernel, (triton.cdiv(r, br),), x, out, r, d, BLOCK_R=br, BLOCK_D=bd)
    return out


def int8_decode_rows(records: torch.Tensor) -> torch.Tensor:
    """``Int8Codec.decode_rows``: uint8 [R, d + 8] -> float32 [R, d], one launch."""
    records = records.contiguous()
    r, d = records.shape[0], records.shape[1] - 8
    out = torch.empty((r, d), dtype=torch.float32, device=records.device)
    if r and d:
        br, bd = _row_blocks(r, d)
        launch(_int8_decode_kernel, (triton.cdiv(r, br),), records, out, r, d, BLOCK_R=br, BLOCK_D=bd)
    return out


@triton.jit
def _fp8_amax_kernel(x_ptr, chunk_ptr, amax_ptr, R, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Each chunk's max|x| by an integer atomic max on the bits (|x| >= 0: int order = float order)."""
    rs, cols, rm, m = _row_tile(R, D, BLOCK_R, BLOCK_D)
    v = tl.abs(tl.load(x_ptr + rs.to(tl.int64)[:, None] * D + cols[None, :], mask=m, other=0.0))
    rmax = tl.max(v, axis=1).to(tl.int32, bitcast=True)
    tl.atomic_max(amax_ptr + tl.load(chunk_ptr + rs, mask=rm, other=0), rmax, mask=rm)


@triton.jit
def _fp8_scale(amax_bits):
    """``Fp8Codec``'s scale: 448 / max|x| in float64, capped at float32's max, 1 for a zero chunk."""
    amax = amax_bits.to(tl.float32, bitcast=True).to(tl.float64)
    s = tl.minimum(448.0 / tl.maximum(amax, 1e-300), 3.4028234663852886e38)
    return tl.where(amax > 0, s, 1.0).to(tl.float32)


@triton.jit
def _e4m3(v):
    """float32 (|v| <= 448 or NaN) -> e4m3fn byte, to nearest even (c10's conversion)."""
    a = tl.abs(v)
    bits = a.to(tl.int32, bitcast=True)
    sub = _rint32(a * 512.0).to(tl.int32)  # below 2^-6: multiples of 2^-9 (8 -> the least normal)
    nrm = ((bits + (0x7FFFF + ((bits >> 20) & 1))) >> 20) - 960  # 3 mantissa bits, exponent rebased
    code = tl.where(a < 0.015625, sub, nrm)
    code = tl.where(a != a, 0x7F, code)
    return code | (((v.to(tl.int32, bitcast=True) >> 31) & 1) << 7)


@triton.jit
def _e4m3_value(b):
    """e4m3fn byte -> float32, exact (0x7F/0xFF are NaN)."""
    e = (b >> 3) & 15
    m = (b & 7).to(tl.float32)
    mag = tl.where(e == 0, m * 0.001953125, (m + 8.0) * ((e + 117) << 23).to(tl.float32, bitcast=True))
    mag = tl.where((b & 0x7F) == 0x7F, float("nan"), mag)
    return tl.where((b & 0x80) != 0, -mag, mag)


@triton.jit
def _fp8_encode_kernel(x_ptr, chunk_ptr, amax_ptr, out_ptr, scale_ptr, R, D, C, BLOCK_R: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    if pid == 0:  # the trailers: every chunk's scale, rows or not
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            tl.store(scale_ptr + cs, _fp8_scale(tl.load(amax_ptr + cs, mask=cs < C, other=0)), mask=cs < C)
    rs = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    rm = rs < R
    m = rm[:, None] & (cols < D)[None, :]
    v = tl.load(x_ptr + rs.to(tl.int64)[:, None] * D + cols[None, :], mask=m, other=0.0)
    scale = _fp8_scale(tl.load(amax_ptr + tl.load(chunk_ptr + rs, mask=rm, other=0), mask=rm, other=0))
    y = tl.minimum(tl.maximum(v * scale[:, None], -448.0), 448.0)
    tl.store(out_ptr + rs.to(tl.int64)[:, None] * D + cols[None, :], _e4m3(y).to(tl.uint8), mask=m)


@triton.jit
def _fp8_decode_kernel(rec_ptr, scale_ptr, chunk_ptr, out_ptr, R, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rs, cols, rm, m = _row_tile(R, D, BLOCK_R, BLOCK_D)
    b = tl.load(rec_ptr + rs.to(tl.int64)[:, None] * D + cols[None, :], mask=m, other=0).to(tl.int32)
    scale = tl.load(scale_ptr + tl.load(chunk_ptr + rs, mask=rm, other=0), mask=rm, other=1.0)
    tl.store(out_ptr + rs.to(tl.int64)[:, None] * D + cols[None, :], tl.math.div_rn(_e4m3_value(b), scale[:, None]),
             mask=m)


def fp8_encode_rows(x: torch.Tensor, chunk: torch.Tensor, num_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``Fp8Codec.encode_rows``: records uint8 [R, d] and trailers uint8 [C, 4] (the float32
    scales); two launches after a zero fill."""
    x = x.contiguous()
    r, d = x.shape
    dev = x.device
    amax = torch.zeros(num_chunks, dtype=torch.int32, device=dev)
    scale = torch.empty(num_chunks, dtype=torch.float32, device=dev)
    out = torch.empty((r, d), dtype=torch.uint8, device=dev)
    chunk = chunk.contiguous()
    br, bd = _row_blocks(r, d)
    grid = (max(1, triton.cdiv(r, br)),)
    if r and d:
        launch(_fp8_amax_kernel, grid, x, chunk, amax, r, d, BLOCK_R=br, BLOCK_D=bd)
    if num_chunks:
        launch(_fp8_encode_kernel, grid, x, chunk, amax, out, scale, r, d, num_chunks, BLOCK_R=br, BLOCK_D=bd,
               BLOCK_C=128)
    return out, scale.view(torch.uint8).reshape(num_chunks, 4)


def fp8_decode_rows(records: torch.Tensor, trailers: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """``Fp8Codec.decode_rows``: float32 [R, d], one launch."""
    records = records.contiguous()
    r, d = records.shape
    out = torch.empty((r, d), dtype=torch.float32, device=records.device)
    if r and d:
        scale = trailers.contiguous().view(torch.float32).reshape(-1)
        br, bd = _row_blocks(r, d)
        launch(_fp8_decode_kernel, (triton.cdiv(r, br),), records, scale, chunk.contiguous(), out, r, d,
               BLOCK_R=br, BLOCK_D=bd)
    return out


@triton.jit
def _fp8_decode_messages_kernel(buf_ptr, meta_ptr, out_ptr, R, D, C, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Every message's rows at once: row r's record at r*D + 4*(chunks of earlier messages),
    its chunk's scale at that chunk's trailer offset (``meta`` = row chunks, shifts, trailers)."""
    rs, cols, rm, m = _row_tile(R, D, BLOCK_R, BLOCK_D)
    c = tl.load(meta_ptr + rs, mask=rm, other=0)
    rec = rs.to(tl.int64) * D + tl.load(meta_ptr + R + c, mask=rm, other=0)
    b = tl.load(buf_ptr + rec[:, None] + cols[None, :], mask=m, other=0).to(tl.int32)
    scale = _load_f32_bytes(buf_ptr + tl.load(meta_ptr + R + C + c, mask=rm, other=0), rm)
    tl.store(out_ptr + rs.to(tl.int64)[:, None] * D + cols[None, :], tl.math.div_rn(_e4m3_value(b), scale[:, None]),
             mask=m)


def fp8_decode_messages(received: torch.Tensor, meta: torch.Tensor, rows: int, dim: int, chunks: int) -> torch.Tensor:
    """``Fp8Codec.decode`` of the whole receive buffer (records then scales, message after
    message) in one launch: float32 [rows, dim]. ``meta`` (int64, on the device): each row's
    chunk, then per chunk the records' shift and the scale's byte offset (``Fp8Codec``)."""
    out = torch.empty((rows, dim), dtype=torch.float32, device=received.device)
    if rows and dim:
        br, bd = _row_blocks(rows, dim)
        launch(_fp8_decode_messages_kernel, (triton.cdiv(rows, br),), received.contiguous(), meta, out, rows, dim,
               chunks, BLOCK_R=br, BLOCK_D=bd)
    return out
