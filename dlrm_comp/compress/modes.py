"""The compression modes, declared once: what each one is, the codec class that runs it, and
every list of modes derived from it.

The config's accepted values, the exchange, the offline tools, the study tools and the
benchmarks all read this table, so a new mode is one row here plus its codec class (a
``ModeCodec`` subclass in ``compress/codecs/``, named by the row). Imports nothing else of the
project (the codec is named, not imported), so the config layer can use it too.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, kw_only=True)
class Mode:
    """One value of ``compress.mode`` / ``compress.backward.mode``."""

    name: str
    codec: str = ""  # "module:Class" of its ModeCodec ("": TorchRec's own codec, not ours)
    error_bounded: bool = False  # a relative bound per chunk, verified (the backward needs its own bound)
    fixed_rate: bool = False  # size known from the shape alone, no bound (TorchRec's QComms formats)
    estimated: bool = False  # bytes estimated from the codes, the reconstruction travels
    byte_messages: bool = False  # variable-size byte messages: their sizes travel first
    torchrec_qcomm: bool = False  # TorchRec's own codec inside its output dist (model.backend=torchrec)


_C = "dlrm_comp.compress.codecs."
_TORCHREC_QCOMM = ("fp16", "bf16", "fp8", "int8")  # TorchRec's QCommsConfig precisions

MODES: tuple[Mode, ...] = (
    Mode(name="off", codec=_C + "exact:OffCodec"),
    Mode(name="simulate", codec=_C + "simulate:SimulateCodec", error_bounded=True, estimated=True),
    Mode(name="sz", codec=_C + "sz:SzCodec", error_bounded=True, byte_messages=True),
    Mode(name="codec", codec=_C + "quant:QuantCodec", error_bounded=True, byte_messages=True),
    Mode(name="fp16", codec=_C + "fixed:Fp16Codec", fixed_rate=True),
    Mode(name="bf16", codec=_C + "fixed:Bf16Codec", fixed_rate=True),
    Mode(name="fp8", codec=_C + "fixed:Fp8Codec", fixed_rate=True),
    Mode(name="int8", codec=_C + "fixed:Int8Codec", fixed_rate=True),
    Mode(name="mx4", codec=_C + "fixed:Mx4Codec", fixed_rate=True),
    *(Mode(name=f"torchrec_qcomm:{m}", torchrec_qcomm=True) for m in _TORCHREC_QCOMM),
)
BY_NAME: dict[str, Mode] = {m.name: m for m in MODES}


def names(keep: Callable[[Mode], bool]) -> tuple[str, ...]:
    """The names of the modes ``keep`` accepts, in table order."""
    return tuple(m.name for m in MODES if keep(m))


EXCHANGE_MODES = names(lambda m: not m.torchrec_qcomm)  # what our exchange runs ("off" included)
ERROR_BOUNDED = names(lambda m: m.error_bounded)
FIXED_RATE = names(lambda m: m.fixed_rate)
BYTE_MESSAGES = names(lambda m: m.byte_messages)
CODEC_MODES = names(lambda m: m.name != "off" and not m.torchrec_qcomm)  # what the offline tools compare
TORCHREC_QCOMM_MODES = names(lambda m: m.torchrec_qcomm)


def mode(name: str, valid: tuple[str, ...] = EXCHANGE_MODES, key: str = "compress.mode") -> Mode:
    """The mode called ``name``; ValueError naming ``key`` and the ``valid`` names otherwise."""
    if name not in valid:
        raise ValueError(f"{key}: unknown mode {name!r}; valid: {', '.join(valid)}")
    return BY_NAME[name]


def codec_class(name: str):
    """The ``ModeCodec`` subclass that runs mode ``name`` (imported on first use)."""
    m = mode(name)
    module, cls = m.codec.split(":")
    return getattr(importlib.import_module(module), cls)


def build_codec(name: str, plan=None, cache=None, device="cpu"):
    """Mode ``name``'s codec over ``plan`` (per-table settings), decoding through ``cache`` onto ``device``."""
    return codec_class(name)(plan, cache, device)
