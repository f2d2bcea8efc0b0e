"""Measure lossless settings on embedding-like codes at real message sizes; prints JSON.

Run: ``python -m dlrm_comp.compress.lossless.select_default [--quick]``. Data: Gaussian
N(0, 0.05), Student-t(3) (heavy tails) and Laplace values, quantized by the training quantizer
(``batch_quant``) at eb_rel 1e-2 and 3e-2, in messages of 1 KiB, 4 KiB and 32 KiB of uint8 codes
(one chunk's section stream, as the codec hands it to its lossless stage). Ratio is fp32 bytes
over (lossless bytes + the wire format's preamble, chunk header, section header and the stage's
parameters), i.e. the wire figure; a setting is ranked by the geometric
mean ratio over all cases, and settings whose ratio ever drops to ~1 on codes (blosc2 storing
the block) are excluded. Throughput counts fp32-equivalent bytes on one core.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from typing import Any

import torch

from dlrm_comp.compress.codecs.offline import chunk_codes
from dlrm_comp.compress.lossless import get_lossless
from dlrm_comp.compress.timing import best_time
from dlrm_comp.compress.wire import CHUNK_HEADER, PREAMBLE, SECTION_HEADER

FRAMING = PREAMBLE + CHUNK_HEADER + SECTION_HEADER  # one message of one chunk in one section

SIZES = (1024, 4096, 32768)
EBS = (1e-2, 3e-2)


def _data(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(n, generator=gen) * 0.05
    if kind == "student_t3":
        z = torch.randn(n, generator=gen)
        chi = (torch.randn(3, n, generator=gen) ** 2).sum(0)
        return 0.05 * z / torch.sqrt(chi / 3)
    u = torch.rand(n, generator=gen) - 0.5
    return -0.05 * torch.sign(u) * torch.log1p(-2 * u.abs())


def candidates(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("identity", {})]
    out += [("zlib", {"level": lv, "strategy": st}) for lv in (1, 6, 9) for st in ("default", "huffman", "rle", "filtered")]
    codecs = ("LZ4", "ZSTD", "ZLIB") if quick else ("BLOSCLZ", "LZ4", "LZ4HC", "ZLIB", "ZSTD")
    levels = (5, 9) if quick else (1, 5, 9)
    for codec, lv, filt, bs in itertools.product(codecs, levels, ("NOFILTER", "SHUFFLE", "BITSHUFFLE", "BYTEDELTA"), (0, 1024, 16384)):
        out.append(("blosc2", {"codec": codec, "clevel": lv, "filter": filt, "blocksize": bs}))
    return out


def measure(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for kind, eb, n in itertools.product(("gaussian", "student_t3", "laplace"), EBS, SIZES):
        q, codes = chunk_codes(_data(kind, n, gen), eb)
        assert codes is not None and codes.dtype.itemsize == 1
        cases.append({"data": kind, "eb": eb, "n": n, "buf": codes.tobytes(),
                      "ideal_cr": 4 * n / (float(q.entropy_bytes()[0]) + FRAMING)})
    results = []
    for name, params in candidates(quick):
        codec = get_lossless(name, **params)
        ratios, enc_t, dec_t, raw = [], 0.0, 0.0, 0
        for c in cases:
            comp = codec.compress(c["buf"], 1)
            assert codec.decompress(comp, c["n"]) == c["buf"]
            reps = max(3, 200_000 // c["n"]) if not quick else 3
            enc_t += best_time(lambda: codec.compress(c["buf"], 1), reps)[1]
            dec_t += best_time(lambda: codec.decompress(comp, c["n"]), reps)[1]
            raw += 4 * c["n"]
            ratios.append(4 * c["n"] / (len(comp) + FRAMING + len(codec.header_params())))
        stored = any(len(codec.compress(c["buf"], 1)) >= 0.97 * c["n"] for c in cases) and name != "identity"
        results.append({
            "name": name, "params": codec.params, "geomean_cr": math.exp(sum(map(math.log, ratios)) / len(ratios)),
            "min_cr": min(ratios), "enc_MBps": raw / enc_t / 1e6, "dec_MBps": raw / dec_t / 1e6,
            "stores_uncompressed": stored, "cr": [round(r, 2) for r in ratios],
        })
    eligible = [r for r in results if not r["stores_uncompressed"] and r["name"] != "identity"]
    best = max(eligible, key=lambda r: (round(r["geomean_cr"], 2), r["enc_MBps"]))
    ranked = sorted(eligible, key=lambda r: -r["geomean_cr"])[:10]
    return {
        "cases": [{k: c[k] for k in ("data", "eb", "n")} | {"ideal_cr": round(c["ideal_cr"], 2)} for c in cases],
        "best": best, "top10": ranked,
        "best_per_family": {fam: max((r for r in eligible if r["name"] == fam), key=lambda r: r["geomean_cr"])
                            for fam in {r["name"] for r in eligible}},
        "identity": next(r for r in results if r["name"] == "identity"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller grid, fewer timing repetitions")
    args = ap.parse_args()
    print(json.dumps(measure(args.quick), indent=1))


if __name__ == "__main__":
    main()
