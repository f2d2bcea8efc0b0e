"""OCP MX4 (MXFP4, Microscaling spec v1.0) as pure, vectorised torch functions (CPU and CUDA alike).

Why: MX4 is the wire format TorchRec's qcomm codecs and FBGEMM's ``triton_quantize_mx4`` use for
the embedding all-to-all, so it is the fixed-rate baseline to hold our compressor against:
4.25 bits per value, 32 / 4.25 = 7.5x smaller than fp32.

Format: groups of GROUP = 32 values share one E8M0 exponent X (byte = X + 127); each value is
an E2M1 code (bit 3 sign, bits 2-1 exponent, bit 0 mantissa; magnitudes by code & 7:
0, 0.5, 1, 1.5, 2, 3, 4, 6). X = floor(log2(max|x|)) - 2 (2 = emax of E2M1), clamped to
[-127, 127]; an all-zero group gets X = -127. Codes are x / 2^X rounded to nearest, ties to even
code, saturated at +-6. The sign bit is kept, so -0.0 and small negatives encode as code 8.

Layout of one group's GROUP_BYTES = 17 bytes (FBGEMM's): bytes 0..15 hold the codes, two per byte,
element 2i in the low nibble and element 2i+1 in the high nibble of byte i; byte 16 is X + 127.

Arithmetic is exact in float32: floor(log2) is read from the fp32 exponent field, scaling is by
powers of two built from bits, so CPU and CUDA give identical bytes. For finite float32 input X
is at most 125 (byte <= 252), as in FBGEMM, whose default rounding differs (ceil exponent, ties
away from zero); ours is the spec's floor exponent with ties to even.

Non-finite input (callers check finiteness first): nothing raises; a group holding a NaN or +-Inf
is encoded as the E8M0 NaN byte 0xFF with all codes 0, and decodes to 32 NaNs (spec: a NaN scale
makes the whole block NaN). Other groups are unaffected. float64 input beyond the float32 range
becomes Inf on the cast to float32, hence a NaN group.
"""
from __future__ import annotations

import torch

from dlrm_comp.compress import device as device_kernels

GROUP = 32
GROUP_BYTES = GROUP // 2 + 1  # 17
_E8M0_NAN = 255
# midpoints between consecutive E2M1 magnitudes; a tie at the midpoint after code i goes to the
# even one of (i, i + 1): stays for even i (strict >), goes up for odd i (>=)
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def mx4_nbytes(numel: int) -> int:
    """Bytes for ``numel`` values, padded up to whole groups of GROUP."""
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    return -(-numel // GROUP) * GROUP_BYTES


def _pow2(biased: torch.Tensor) -> torch.Tensor:
    """2^(biased - 127) as float32, exact for biased in [0, 254] (0 -> the subnormal 2^-127)."""
    bits = torch.where(biased > 0, biased << 23, torch.full_like(biased, 1 << 22))
    return bits.view(torch.float32)


def quantize_mx4(x: torch.Tensor) -> torch.Tensor:
    """[G, 32] float (any float dtype; computed in float32) -> uint8 [G, 17] on x's device."""
    if x.dim() != 2 or x.shape[1] != GROUP or not x.is_floating_point():
        raise ValueError(f"expected a float tensor [G, {GROUP}], got {x.dtype} {tuple(x.shape)}")
    if device_kernels.use_triton(x):  # one launch on CUDA (compress/device/fixed.py)
        from dlrm_comp.compress.device import fixed
        return fixed.quantize_mx4(x)
    x = x.to(torch.float32).contiguous()
    amax = x.abs().amax(dim=1)
    field = (amax.view(torch.int32) >> 23) & 0xFF  # biased fp32 exponent; 0 for 0 / subnormals
    finite = field != 0xFF
    # X + 127 = floor(log2 amax) - 2 + 127 = field - 2, clamped at X = -127 (subnormal amax too)
    ebyte = torch.where(finite, (field - 2).clamp_min(0), torch.full_like(field, _E8M0_NAN))
    inv_scale = _pow2(254 - ebyte.clamp(max=253))  # 2^-X, normal for X in [-127, 126]
    a = (x * inv_scale[:, None]).abs()  # exact up to underflow, which only hits values -> code 0
    code = torch.zeros_like(x, dtype=torch.int32)
    for i, m in enumerate(_MIDPOINTS):
        code += (a >= m) if i % 2 else (a > m)
    code |= torch.signbit(x).to(torch.int32) << 3
    code = torch.where(finite[:, None], code, 0)
    packed = code[:, 0::2] | (code[:, 1::2] << 4)
    return torch.cat([packed, ebyte[:, None]], dim=1).to(torch.uint8)


def dequantize_mx4(packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [G, 17] -> [G, 32] of ``dtype`` (exact in float32/64; cast for narrower dtypes)."""
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != GROUP_BYTES:
        raise ValueError(f"expected uint8 [G, {GROUP_BYTES}], "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    if device_kernels.use_triton(packed):
        from dlrm_comp.compress.device import fixed
        return fixed.dequantize_mx4(packed, dtype)
    p = packed.to(torch.int32)
    nib = torch.stack([p[:, :-1] & 0xF, p[:, :-1] >> 4], dim=2).reshape(-1, GROUP)
    lut = torch.tensor(_VALUES + tuple(-v for v in _VALUES), dtype=torch.float32, device=p.device)
    ebyte = p[:, -1]
    scale = _pow2(ebyte.clamp(max=254))
    scale = torch.where(ebyte == _E8M0_NAN, torch.nan, scale)
    return (lut[nib] * scale[:, None]).to(dtype)
