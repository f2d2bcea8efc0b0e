"""Order-0 Shannon entropy of a code stream: the ideal size a perfect entropy coder with a free
model would reach, used to report how close the real lossless stage gets (efficiency)."""
from __future__ import annotations

import numpy as np
import torch


def entropy_bits_per_symbol(codes: torch.Tensor) -> float:
    """Empirical entropy (bits/symbol) of the flattened codes, computed on their device."""
    flat = codes.reshape(-1)
    n = flat.numel()
    if n == 0:
        return 0.0
    flat = flat.to(torch.int64)
    hi = int(flat.max().item())
    counts = torch.bincount(flat) if 0 <= int(flat.min().item()) and hi < (1 << 20) else torch.unique(flat, return_counts=True)[1]
    p = counts[counts > 0].to(torch.float64) / n
    return float(-(p * torch.log2(p)).sum().item())


def entropy_bytes(codes: torch.Tensor) -> float:
    """Ideal compressed size in bytes: n * H / 8."""
    return codes.numel() * entropy_bits_per_symbol(codes) / 8.0


def entropy_bytes_np(codes: np.ndarray) -> float:
    """entropy_bytes for a numpy array of unsigned codes (CPU fast path)."""
    n = codes.size
    if n == 0:
        return 0.0
    counts = np.bincount(codes.reshape(-1))
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum()) * n / 8.0


def efficiency_report(codes: np.ndarray | torch.Tensor, achieved_nbytes: int, overhead: int = 0,
                      raw_nbytes: int | None = None) -> dict[str, float]:
    """How close a lossless stage came to the order-0 ideal on ``codes``.

    ``achieved_nbytes`` is what the stage produced; ``overhead`` (frame header etc.) is added to
    both sides so the figures are wire figures. Returns bits/symbol, ideal and achieved bytes,
    efficiency = ideal / achieved (1.0 = at the entropy bound; can exceed 1 for data with repeats,
    which order-0 entropy does not see), and the ratios vs ``raw_nbytes`` (default fp32: 4 per code).
    """
    if isinstance(codes, torch.Tensor):
        n = codes.numel()
        h = entropy_bits_per_symbol(codes)
    else:
        arr = np.asarray(codes).reshape(-1)
        n = arr.size
        h = entropy_bytes_np(arr) * 8.0 / n if n else 0.0
    raw = 4 * n if raw_nbytes is None else int(raw_nbytes)
    ideal = n * h / 8.0 + overhead
    achieved = float(achieved_nbytes + overhead)
    return {
        "bits_per_symbol": h, "ideal_nbytes": ideal, "achieved_nbytes": achieved,
        "efficiency": ideal / achieved if achieved else float("nan"),
        "ideal_cr": raw / ideal if ideal else float("inf"), "cr": raw / achieved if achieved else float("inf"),
    }
