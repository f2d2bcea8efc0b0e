"""The one definition of "ideal": the order-0 entropy of quantization codes as the wire carries
them, byte plane by byte plane (the low byte of every code, then the high byte where any code is
wider than 8 bits). Exact for codes up to 8 bits and an upper bound of the codes' own entropy
beyond. Training computes the same per chunk, batched on the device (``BatchQuant.entropy_bytes``;
tests hold the two equal), so "ideal" means one thing in the recorder, the offline benchmark and
the lossless stages' efficiency."""
from __future__ import annotations

import numpy as np
import torch


def _plane_bytes(plane: np.ndarray) -> float:
    n = plane.size
    c = np.bincount(plane, minlength=1)
    c = c[c > 0].astype(np.float64)
    return float(n * np.log2(n) - (c * np.log2(c)).sum()) / 8.0


def entropy_bytes(codes: np.ndarray | torch.Tensor | bytes) -> float:
    """Bytes an ideal order-0 coder needs for unsigned codes of up to 16 bits (or a byte string)."""
    if isinstance(codes, (bytes, bytearray, memoryview)):
        codes = np.frombuffer(codes, dtype=np.uint8)
    arr = (codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)).reshape(-1)
    if arr.size == 0:
        return 0.0
    if arr.dtype == np.uint8:  # a byte stream (zlib's auto strategy): one plane, no widening copy
        return _plane_bytes(arr)
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= 1 << 16:
        raise ValueError("entropy_bytes: codes must be unsigned and at most 16 bits wide")
    return _plane_bytes(arr & 255) + (_plane_bytes(arr >> 8) if arr.max() > 255 else 0.0)


def efficiency_report(codes: np.ndarray | torch.Tensor, achieved_nbytes: int, overhead: int = 0,
                      raw_nbytes: int | None = None) -> dict[str, float]:
    """How close a lossless stage came to the ideal on ``codes``.

    ``achieved_nbytes`` is what the stage produced; ``overhead`` (the message's framing) is added to
    both sides so the figures are wire figures. Returns bits/symbol, ideal and achieved bytes,
    efficiency = ideal / achieved (1.0 = at the entropy bound; can exceed 1 for data with repeats,
    which order-0 entropy does not see), and the ratios vs ``raw_nbytes`` (default fp32: 4 per code).
    """
    n = codes.numel() if isinstance(codes, torch.Tensor) else np.asarray(codes).size
    ideal_body = entropy_bytes(codes)
    raw = 4 * n if raw_nbytes is None else int(raw_nbytes)
    ideal = ideal_body + overhead
    achieved = float(achieved_nbytes + overhead)
    return {
        "bits_per_symbol": 8.0 * ideal_body / n if n else 0.0, "ideal_nbytes": ideal, "achieved_nbytes": achieved,
        "efficiency": ideal / achieved if achieved else float("nan"),
        "ideal_cr": raw / ideal if ideal else float("inf"), "cr": raw / achieved if achieved else float("inf"),
    }
