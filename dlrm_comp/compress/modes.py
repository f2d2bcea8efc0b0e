"""The compression modes, declared once: what each one is, and every list of modes derived from it.

The config's accepted values, the exchange's branches, the per-chunk backends and frame ids,
the study tools and the benchmarks all read this table, so a new mode is one row here (plus its
encoder: a branch in ``Exchange._run``, a backend in ``backends.py``). Imports nothing else of the
project, so the config layer can use it too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, kw_only=True)
class Mode:
    """One value of ``compress.mode`` / ``compress.backward.mode``."""

    name: str
    error_bounded: bool = False  # a relative bound per chunk, verified (the backward needs its own bound)
    fixed_rate: bool = False  # size known from the shape alone, no bound (TorchRec's QComms formats)
    estimated: bool = False  # bytes estimated from the codes, the reconstruction travels
    byte_messages: bool = False  # variable-size byte messages: their sizes travel first
    frame_id: int = 0  # the per-chunk frame's mode id (frame.py, 4 bits); 0: no per-chunk backend
    torchrec_qcomm: bool = False  # TorchRec's own codec inside its output dist (model.backend=torchrec)


_FIXED = ("fp16", "bf16", "fp8", "int8")

MODES: tuple[Mode, ...] = (
    Mode(name="off"),
    Mode(name="simulate", error_bounded=True, estimated=True, frame_id=1),
    Mode(name="sz", error_bounded=True, byte_messages=True, frame_id=2),
    Mode(name="codec", error_bounded=True, byte_messages=True, frame_id=3),
    *(Mode(name=m, fixed_rate=True, frame_id=4 + i) for i, m in enumerate(_FIXED)),
    *(Mode(name=f"torchrec_qcomm:{m}", torchrec_qcomm=True) for m in _FIXED),
)
BY_NAME: dict[str, Mode] = {m.name: m for m in MODES}


def names(keep: Callable[[Mode], bool]) -> tuple[str, ...]:
    """The names of the modes ``keep`` accepts, in table order."""
    return tuple(m.name for m in MODES if keep(m))


EXCHANGE_MODES = names(lambda m: not m.torchrec_qcomm)  # what our exchange runs ("off" included)
ERROR_BOUNDED = names(lambda m: m.error_bounded)
FIXED_RATE = names(lambda m: m.fixed_rate)
BYTE_MESSAGES = names(lambda m: m.byte_messages)
BACKEND_MODES = names(lambda m: m.frame_id > 0)  # per-chunk backends (offline benchmark, study tools)
TORCHREC_QCOMM_MODES = names(lambda m: m.torchrec_qcomm)


def mode(name: str, valid: tuple[str, ...] = EXCHANGE_MODES, key: str = "compress.mode") -> Mode:
    """The mode called ``name``; ValueError naming ``key`` and the ``valid`` names otherwise."""
    if name not in valid:
        raise ValueError(f"{key}: unknown mode {name!r}; valid: {', '.join(valid)}")
    return BY_NAME[name]
