"""dlrm_comp.compress: error-bounded (and fixed-rate baseline) compression of embedding chunks.

Independent of the training code (imports nothing outside this package). Entry points:
``get_backend(mode)`` -> encode / decode / roundtrip, ``decode_payload(bytes)`` on the receiver,
``ErrorBoundPolicy`` for eb(t, i), ``quantize`` / ``dequantize`` for the verified quantizer.
"""
from __future__ import annotations

from dlrm_comp.compress.backend_base import Backend, ChunkStats, Encoded
from dlrm_comp.compress.backends import get_backend
from dlrm_comp.compress.bounds import ErrorBoundPolicy, TableBoundSpec, parse_table_list, resolve_table_bounds
from dlrm_comp.compress.decay import DECAY_SCHEDULES, DecaySchedule
from dlrm_comp.compress.errors import CorruptPayloadError, NonFiniteError
from dlrm_comp.compress.modes import BACKEND_MODES, MODES, Mode
from dlrm_comp.compress.payload import decode_payload
from dlrm_comp.compress.quantize import QuantizedChunk, dequantize, quantize

__all__ = [
    "Backend", "ChunkStats", "CorruptPayloadError", "DECAY_SCHEDULES", "DecaySchedule", "Encoded",
    "BACKEND_MODES", "ErrorBoundPolicy", "MODES", "Mode", "NonFiniteError", "QuantizedChunk", "TableBoundSpec", "decode_payload",
    "dequantize", "get_backend", "parse_table_list", "quantize", "resolve_table_bounds",
]
