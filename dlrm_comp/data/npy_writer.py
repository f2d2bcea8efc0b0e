"""Append rows to a .npy file whose length is unknown until the end (streaming preprocessing).

The header is written with a fixed padded size first and rewritten in place with the final row
count, so the result is a normal .npy that `np.load(mmap_mode="r")` maps without a copy.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_HEADER_BYTES = 128  # magic(6) + version(2) + length(2) + dict, a multiple of 64 as the format asks


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (dtype.str, shape)
    body = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    if len(body) != _HEADER_BYTES - 10:
        raise ValueError(f"npy header for shape {shape} does not fit in {_HEADER_BYTES} bytes")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


class NpyAppender:
    """Write-only .npy of rows with a fixed trailing shape; use as a context manager."""

    def __init__(self, path: str | Path, dtype: np.dtype | type, row_shape: tuple[int, ...] = ()):
        self.path, self.dtype, self.row_shape = Path(path), np.dtype(dtype), tuple(row_shape)
        self.rows = 0
        self._file = open(self.path, "wb")
        self._file.write(_header(self.dtype, (0, *self.row_shape)))

    def append(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {array.shape[1:]}, expected {self.row_shape}")
        self._file.write(array.tobytes())
        self.rows += array.shape[0]

    def close(self) -> None:
        if not self._file.closed:
            self._file.seek(0)
            self._file.write(_header(self.dtype, (self.rows, *self.row_shape)))
            self._file.close()

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
