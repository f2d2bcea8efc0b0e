"""A lossless stage by value: its registry name and parameters.

Frozen and hashable, so a spec is a dict key or a set member. Two specs are equal when name and
parameters are, in the same order: compare the ``spec`` of built codecs (each stage lists its
parameters in its own order), as the tuner's "same setting?" test does. Serialized as the JSON object ``{"name": ..., **params}``
that configs, checkpoints and summaries hold. ``registry.build_lossless(spec)`` makes its codec
(a spec knows nothing of the registry: the stages' base class imports it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class LosslessSpec:
    name: str
    params: tuple[tuple[str, Any], ...] = ()  # (key, plain value) in the stage's own order

    @classmethod
    def of(cls, name: str, params: Mapping[str, Any] | None = None) -> "LosslessSpec":
        return cls(name, tuple((params or {}).items()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LosslessSpec":
        """Inverse of ``to_dict``."""
        rest = dict(data)
        return cls.of(rest.pop("name"), rest)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.params)}

    def label(self) -> str:
        """``name(k=v,...)`` without thread counts (they do not change the format)."""
        return f"{self.name}({','.join(f'{k}={v}' for k, v in self.params if k != 'nthreads')})"

