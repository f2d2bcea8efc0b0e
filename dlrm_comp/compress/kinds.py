"""How a chunk travels (the wire's ``kind`` field) and the dtypes the quantizer takes: shared by
the quantizer, its CPU kernels and the wire format, so it lives apart from all three."""
from __future__ import annotations

from enum import IntEnum

import torch

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ChunkKind(IntEnum):
    RAW = 0  # the values as they are (no usable bound, NaN/Inf, or the check failed)
    CONST = 1  # one value, exact
    QUANT = 2  # quantization codes
    SZ = 3  # an SZ3 body

# The kinds as plain ints: numpy compares an array with an IntEnum member 4x slower (3 us a call)
# than with an int, and numba compiles ints in as constants.
RAW_KIND, CONST_KIND, QUANT_KIND, SZ_KIND = (int(k) for k in (ChunkKind.RAW, ChunkKind.CONST, ChunkKind.QUANT,
                                                              ChunkKind.SZ))
