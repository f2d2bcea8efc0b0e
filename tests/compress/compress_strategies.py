"""Hypothesis strategies shared by the compression tests (chunks across hard value regimes)."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@st.composite
def chunks(draw, dtypes=DTYPES):
    """Tensors of 1..64x64 elements, 1-D or 2-D, across value regimes that broke the reference."""
    dtype = draw(st.sampled_from(dtypes))
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 4096)),)
    else:
        shape = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    seed = draw(st.integers(0, 2**31 - 1))
    regime = draw(st.sampled_from(["gauss", "tiny_range", "offset", "huge", "const", "uniform"]))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    fmax = float(torch.finfo(dtype).max)
    if regime == "gauss":
        x = z * draw(st.sampled_from([1e-3, 0.05, 1.0, 100.0]))
    elif regime == "tiny_range":
        x = 1.0 + z * 1e-6
    elif regime == "offset":
        x = 1e6 + z * 1e-3 if dtype != torch.float16 else 1000 + z * 1e-2
    elif regime == "huge":
        x = torch.clamp(z, -1, 1) * fmax * 0.9
    elif regime == "const":
        x = torch.full(shape, draw(st.sampled_from([0.0, -2.5, 3e4])), dtype=torch.float64)
    else:
        x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    return x.to(dtype)


EBS = st.one_of(st.sampled_from([1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.5]), st.floats(1e-5, 0.5))
