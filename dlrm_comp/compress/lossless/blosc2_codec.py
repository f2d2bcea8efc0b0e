"""Blosc2 stage (CPU). typesize is always the code width: blosc2's default of 8 is wrong for
uint8/uint16 codes (docs/architecture.md, reference facts), and some settings silently store the block, which is
why the codec backend falls back to identity whenever the output is not smaller.

Every blosc2 codec (CODECS), filter (FILTERS; BYTEDELTA runs after SHUFFLE, as blosc2 requires),
compression level, block size (0 = automatic, else a power of two >= 16), split mode and thread
count (``nthreads`` for compression, ``dthreads`` for decompression) is reachable. The header id (2)
and the 3-byte header parameters are unchanged: thread counts do not change the format, so they are
not serialized and old payloads decode as before."""
from __future__ import annotations

import importlib
from typing import Any

from dlrm_comp.checks import choice
from dlrm_comp.compress.errors import CorruptPayloadError
from dlrm_comp.compress.lossless.base import LosslessCodec, check_size

CODECS = ("BLOSCLZ", "LZ4", "LZ4HC", "ZLIB", "ZSTD")
FILTERS = ("NOFILTER", "SHUFFLE", "BITSHUFFLE", "BYTEDELTA")
SPLITMODES = ("ALWAYS_SPLIT", "NEVER_SPLIT", "AUTO_SPLIT", "FORWARD_COMPAT_SPLIT")


class Blosc2Codec(LosslessCodec):
    name = "blosc2"
    codec_id = 2

    def __init__(
        self,
        codec: str = "ZSTD",
        clevel: int = 5,
        filter: str = "NOFILTER",
        blocksize: int = 0,
        splitmode: str = "NEVER_SPLIT",
        nthreads: int = 1,
        dthreads: int | None = None,
    ) -> None:
        self.codec = choice("lossless.codec", codec, CODECS, upper=True)
        self.filter = choice("lossless.filter", filter, FILTERS, upper=True)
        self.splitmode = choice("lossless.splitmode", splitmode, SPLITMODES, upper=True)
        if isinstance(clevel, bool) or int(clevel) != clevel or not 0 <= int(clevel) <= 9:
            raise ValueError(f"lossless.clevel: must be an integer 0..9, got {clevel!r}")
        bs = int(blocksize)
        if bs != 0 and (bs < 16 or bs & (bs - 1) or bs > 2**30):
            raise ValueError(f"lossless.blocksize: 0 (automatic) or a power of two >= 16, got {blocksize!r}")
        for key, val in (("nthreads", nthreads), ("dthreads", nthreads if dthreads is None else dthreads)):
            if isinstance(val, bool) or int(val) != val or not 1 <= int(val) <= 256:
                raise ValueError(f"lossless.{key}: must be an integer in 1..256, got {val!r}")
        self.clevel, self.blocksize, self.nthreads = int(clevel), bs, int(nthreads)
        # decompression threads: not part of the format (not serialized), defaults to nthreads
        self.dthreads = int(nthreads if dthreads is None else dthreads)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "codec": self.codec, "clevel": self.clevel, "filter": self.filter,
            "blocksize": self.blocksize, "splitmode": self.splitmode, "nthreads": self.nthreads,
            "dthreads": self.dthreads,
        }

    def _cparams(self, typesize: int):
        blosc2 = _blosc2()
        filters = [blosc2.Filter[self.filter]]
        if self.filter == "BYTEDELTA":  # bytedelta works on shuffled byte streams
            filters = [blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA]
        return blosc2.CParams(
            codec=blosc2.Codec[self.codec], clevel=self.clevel, typesize=int(typesize),
            filters=filters, filters_meta=[0] * len(filters), blocksize=self.blocksize,
            splitmode=blosc2.SplitMode[self.splitmode], nthreads=self.nthreads,
        )

    def compress(self, buf: bytes, typesize: int) -> bytes:
        if int(typesize) not in (1, 2, 4, 8):
            raise ValueError(f"lossless.typesize: the code width in bytes, one of 1, 2, 4, 8; got {typesize!r}")
        return bytes(_blosc2().compress2(buf, cparams=self._cparams(typesize)))

    def decompress(self, buf: bytes, nbytes: int) -> bytes:
        blosc2 = _blosc2()
        try:
            n, cbytes, _ = blosc2.get_cbuffer_sizes(buf)
        except Exception as e:  # noqa: BLE001 - blosc2 raises assorted types on bad headers
            raise CorruptPayloadError(f"blosc2: bad chunk header ({e})") from None
        if n != nbytes or cbytes != len(buf):
            raise CorruptPayloadError(f"blosc2: chunk claims {n} bytes from {cbytes}, expected {nbytes} from {len(buf)}")
        try:
            out = blosc2.decompress2(buf, dparams=blosc2.DParams(nthreads=self.dthreads))
        except Exception as e:  # noqa: BLE001
            raise CorruptPayloadError(f"blosc2: {e}") from None
        return check_size(self.name, bytes(out), nbytes)

    def header_params(self) -> bytes:
        log_bs = self.blocksize.bit_length() - 1 if self.blocksize else 0
        return bytes([
            CODECS.index(self.codec) << 4 | self.clevel,
            FILTERS.index(self.filter) << 4 | SPLITMODES.index(self.splitmode),
            log_bs,
        ])

    @classmethod
    def from_header_params(cls, blob: bytes) -> "Blosc2Codec":
        try:
            if len(blob) != 3:
                raise ValueError("length")
            log_bs = blob[2]
            return cls(codec=CODECS[blob[0] >> 4], clevel=blob[0] & 15, filter=FILTERS[blob[1] >> 4],
                       splitmode=SPLITMODES[blob[1] & 15], blocksize=1 << log_bs if log_bs else 0)
        except (ValueError, IndexError):
            raise CorruptPayloadError("blosc2: bad header parameters") from None


def _blosc2():
    """blosc2, imported when a blosc2 stage first runs: the stage table lists it on hosts without
    the package (a GPU host with only torch's stack), where only choosing it fails."""
    try:
        return importlib.import_module("blosc2")
    except ImportError as exc:
        raise ImportError(f"the blosc2 lossless stage needs the blosc2 package ({exc}); "
                          "pip install 'blosc2>=4.0' or choose another compress.lossless.name", name="blosc2") from None
