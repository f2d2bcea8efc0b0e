"""nvcomp codecs (GPU) for codes that live in CUDA tensors; optional.

Present only when the ``nvidia-nvcomp-cu13`` wheel imports (``from nvidia import nvcomp``) and CUDA
is available; otherwise ``nvcomp_available()`` is False, ``get_lossless("nvcomp", ...)`` raises a
clear ImportError and nothing else changes (tests skip). The bytes interface copies to the GPU and
back so every path can measure it; ``compress_tensor`` / ``decompress_tensor`` keep data on the
device (the intended use in the GPU all-to-all).
"""
from __future__ import annotations

from typing import Any

from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless.base import LosslessCodec, check_size

ALGORITHMS = ("ANS", "Bitcomp", "Cascaded", "LZ4", "Zstd")

try:  # pragma: no cover - no GPU on the CPU machines
    from nvidia import nvcomp  # type: ignore
except Exception:  # noqa: BLE001 - ImportError or a CUDA loading error
    nvcomp = None


def nvcomp_available() -> bool:
    if nvcomp is None:
        return False
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001  # pragma: no cover
        return False


class NvcompCodec(LosslessCodec):
    name = "nvcomp"
    codec_id = 4

    def __init__(self, algorithm: str = "ANS") -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"lossless.algorithm: {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if not nvcomp_available():
            raise ImportError("lossless codec 'nvcomp' needs CUDA and the nvidia-nvcomp-cu13 wheel "
                              "(pip install nvidia-nvcomp-cu13)")
        self.algorithm = algorithm
        self._codec = nvcomp.Codec(algorithm=algorithm)  # pragma: no cover

    @property
    def params(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm}

    # device-side API ----------------------------------------------------------------------
    def compress_tensor(self, codes):  # pragma: no cover - GPU only
        """uint8 CUDA tensor -> compressed uint8 CUDA tensor (nvcomp's self-describing format)."""
        import torch
        if not codes.is_cuda:
            raise ValueError("nvcomp: compress_tensor takes a CUDA tensor")
        out = self._codec.encode(nvcomp.as_array(codes.contiguous().view(torch.uint8).reshape(-1)))
        return torch.as_tensor(out, device=codes.device).view(torch.uint8).reshape(-1)

    def decompress_tensor(self, comp):  # pragma: no cover - GPU only
        import torch
        out = self._codec.decode(nvcomp.as_array(comp.contiguous().reshape(-1)))
        return torch.as_tensor(out, device=comp.device).view(torch.uint8).reshape(-1)

    # bytes API (copies through the GPU) -----------------------------------------------------
    def compress(self, buf: bytes, typesize: int) -> bytes:  # pragma: no cover - GPU only
        import torch
        t = torch.frombuffer(bytearray(buf), dtype=torch.uint8).cuda()
        return self.compress_tensor(t).cpu().numpy().tobytes()

    def decompress(self, buf: bytes, nbytes: int) -> bytes:  # pragma: no cover - GPU only
        import torch
        try:
            t = torch.frombuffer(bytearray(buf), dtype=torch.uint8).cuda()
            out = self.decompress_tensor(t).cpu().numpy().tobytes()
        except Exception as e:  # noqa: BLE001
            raise CorruptPayloadError(f"nvcomp: {e}") from None
        return check_size(self.name, out, nbytes)

    def header_params(self) -> bytes:
        return bytes([ALGORITHMS.index(self.algorithm)])

    @classmethod
    def from_header_params(cls, blob: bytes) -> "NvcompCodec":
        if len(blob) != 1 or blob[0] >= len(ALGORITHMS):
            raise CorruptPayloadError("nvcomp: bad header parameters")
        try:
            return cls(ALGORITHMS[blob[0]])
        except ImportError as e:
            raise CorruptPayloadError(str(e)) from None
