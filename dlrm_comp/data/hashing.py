"""Counter-based randomness: every random number is a hash of (key, counter).

Why: a batch, a row or an embedding-table weight can then be computed on its own, in any order,
with no stored state (a 10M-row table's hidden weights cost no memory, and row r of a split is the
same whatever batch size asked for it). SplitMix64 over a golden-ratio counter stream.
"""
from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_U_GOLDEN, _U_M1, _U_M2 = np.uint64(_GOLDEN), np.uint64(_M1), np.uint64(_M2)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S11, _S32 = np.uint64(11), np.uint64(32)
_LO32 = np.uint64(0xFFFFFFFF)


def _mix_int(x: int) -> int:
    x &= _MASK
    x = ((x ^ (x >> 30)) * _M1) & _MASK
    x = ((x ^ (x >> 27)) * _M2) & _MASK
    return x ^ (x >> 31)


def derive_key(*parts: int) -> int:
    """A 64-bit stream key from a tuple of non-negative ints (seed, purpose, table, ...)."""
    key = 0x243F6A8885A308D3
    for p in parts:
        key = _mix_int(key + _GOLDEN + (int(p) & _MASK))
    return key


def hash_u64(key: int | np.ndarray, counters: np.ndarray) -> np.ndarray:
    """SplitMix64 outputs for `counters` (any int array) in stream `key` (scalar or broadcastable)."""
    with np.errstate(over="ignore"):
        x = counters.astype(np.uint64, copy=True)
        x *= _U_GOLDEN
        x += np.asarray(key, dtype=np.uint64)
        x ^= x >> _S30
        x *= _U_M1
        x ^= x >> _S27
        x *= _U_M2
        x ^= x >> _S31
    return x


def to_unit(h: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) from the top 53 bits."""
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def to_normal(h: np.ndarray) -> np.ndarray:
    """Standard normal float64 (Box-Muller on the two 32-bit halves of each hash)."""
    u1 = ((h >> _S32).astype(np.float64) + 0.5) * (1.0 / 4294967296.0)
    u2 = (h & _LO32).astype(np.float64) * (2.0 * np.pi / 4294967296.0)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(u2)


def to_uniform_lanes(h: np.ndarray, lanes: int) -> np.ndarray:
    """`lanes` (<= 4) independent zero-mean, unit-variance uniforms from 16-bit slices: [..., lanes]."""
    shifts = np.arange(lanes, dtype=np.uint64) * np.uint64(16)
    bits = (h[..., None] >> shifts) & np.uint64(0xFFFF)
    return (bits.astype(np.float64) + 0.5) * (2.0 * np.sqrt(3.0) / 65536.0) - np.sqrt(3.0)
