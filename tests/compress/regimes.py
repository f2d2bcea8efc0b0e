"""The hypothesis strategy of quantizer inputs every quantizer test draws from: [C, n] batches whose
rows mix regimes (Gaussian at several scales, offset, tiny and zero ranges, constants, magnitudes
near the dtype's overflow, subnormals, NaN/Inf), with a relative bound per row."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
REGIMES = ["gauss", "offset", "tiny", "const", "huge", "subnormal", "nonfinite"]
BOUNDS = [1e-5, 1e-4, 1e-3, 1e-2, 2e-2, 3e-2, 0.1, 0.5]


@st.composite
def mixed_batches(draw, max_chunks: int = 12, max_values: int = 300):
    """``(x [C, n], eb_rel [C] float64)``."""
    dtype = draw(st.sampled_from(DTYPES))
    c, n = draw(st.integers(1, max_chunks)), draw(st.integers(1, max_values))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    fmax = float(torch.finfo(dtype).max)
    rows = []
    for _ in range(c):
        z = torch.randn(n, generator=g, dtype=torch.float64)
        regime = draw(st.sampled_from(REGIMES))
        if regime == "gauss":
            r = z * draw(st.sampled_from([1e-3, 0.05, 1.0, 100.0]))
        elif regime == "offset":
            r = (1e6 if dtype != torch.float16 else 1000.0) + z * 1e-2
        elif regime == "tiny":
            r = 1.0 + z * draw(st.sampled_from([1e-7, 1e-12]))
        elif regime == "const":
            r = torch.full((n,), draw(st.sampled_from([0.0, -2.5, 3e4])), dtype=torch.float64)
        elif regime == "huge":
            r = torch.clamp(z, -1, 1) * fmax * draw(st.sampled_from([0.5, 0.999, 1.0]))
        elif regime == "subnormal":
            r = z * 1e-38
        else:
            r = z.clone()
            r[draw(st.integers(0, n - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        rows.append(r)
    x = torch.stack(rows).to(dtype)
    eb = np.array([draw(st.sampled_from(BOUNDS)) for _ in range(c)])
    return x, eb
