"""Exceptions of the compression library.

Both subclass ValueError so callers that validate inputs generically still catch them, while
code that must tell "bad data" from "bad wire bytes" can catch the specific class.
"""
from __future__ import annotations

NONFINITE_POLICIES = ("error", "passthrough")  # compress.nonfinite: stop the run, or send such chunks raw


class NonFiniteError(ValueError):
    """A chunk holds NaN or Inf values: an error bound relative to the range is meaningless."""

    def __init__(self, count: int, numel: int) -> None:
        super().__init__(
            f"chunk holds {count} non-finite value(s) (NaN/Inf) out of {numel}; "
            "configure nonfinite='passthrough' to store such chunks losslessly instead"
        )
        self.count = count
        self.numel = numel


class CorruptPayloadError(ValueError):
    """A payload failed validation (magic, version, lengths, checksum, codec output)."""
