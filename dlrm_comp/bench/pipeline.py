"""The benchmark steps after the dump: quantize, pad, encode.

Layout (every step reads the previous one's directory):

* ``quantize``: ``codes/Q_{table}_iter_{k}_eb{eb}.bin`` (uint8 or uint16 little-endian codes of our
  error-bounded quantizer, relative to the chunk minimum, so always non-negative) and ``codes.json``
  (one entry per file: table, iteration, eb_rel, effective bound after decay, width, minimum, step,
  n, quant_s, dequant_s, the source dump and its batch/dim, plus the settings used).
* ``pad``: floats concatenated ``factor`` times (``dumps/`` + ``meta.json`` with batch x factor) and
  quantized with the same settings (the codes are the real codes repeated: same min and max), so
  padded messages emulate the large messages the reference measured.
* ``encode``: ``results.csv`` / ``results.json``: one row per (code file, encoder) with the wire
  size (frame header and CRC included), ratio vs fp32, encode/decode seconds and fp32-equivalent
  throughputs, the entropy ideal and efficiency, and ``size`` = ``real``, ``padded`` or ``dedup``.
* ``quantize --dedup``: the real dumps' distinct bags only (one row per distinct bag, from the
  ``BAGS_*`` files the dump writes), quantized with the same range: what a deduplicated chunk
  sends. Their ratios are against the whole dump's fp32 bytes, so they count both savings.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from dlrm_comp.bench.dumps import DumpFormatError, distinct_rows, dump_name, list_dumps, load_dump, read_meta, write_meta
from dlrm_comp.compress.backends import get_backend
from dlrm_comp.compress.decay import DecaySchedule
from dlrm_comp.compress.frame import FrameHeader, frame_overhead
from dlrm_comp.compress.lossless import (
    HAVE_CONSTRICTION,
    LosslessCodec,
    SymbolModelStore,
    AnsModelCodec,
    efficiency_report,
    get_lossless,
    nvcomp_available,
)
from dlrm_comp.compress.modes import FIXED_RATE
from dlrm_comp.compress.quantize import ChunkKind, dequantize_np, quantize_np
from dlrm_comp.compress.timing import best_time
from dlrm_comp.progress import progress_bar

WIDTHS = ("auto", "2")
CODE_DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2")}

# lossless stages measured on every code file (name, label, params); Btune's pick and 'ans' are added
LOSSLESS_SET: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("identity", "identity", {}),
    ("zlib", "zlib-auto", {"level": 1, "strategy": "auto"}),
    ("zlib", "zlib-huffman", {"level": 1, "strategy": "huffman"}),
    ("blosc2", "blosc2-zstd5", {"codec": "ZSTD", "clevel": 5}),
    ("blosc2", "blosc2-zstd9-bitshuffle-16k", {"codec": "ZSTD", "clevel": 9, "filter": "BITSHUFFLE", "blocksize": 16384}),
    ("blosc2", "blosc2-lz4-bitshuffle", {"codec": "LZ4", "clevel": 5, "filter": "BITSHUFFLE"}),
    ("blosc2", "blosc2-zlib9-bytedelta", {"codec": "ZLIB", "clevel": 9, "filter": "BYTEDELTA"}),
)


def _fmt_eb(eb: float) -> str:
    return f"{eb:.0e}".replace("e-0", "e-")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, best seconds per call): at least 3 calls, more until 2 ms were spent."""
    return best_time(fn, reps=3, min_s=0.002, max_reps=50)


# ------------------------------------------------------------------------------------------ quantize
def load_rows(entry: dict[str, Any]) -> np.ndarray:
    """The floats an entry's codes stand for: the whole dump, or its distinct bags (dedup)."""
    x = load_dump(Path(entry["source"]), entry["batch"], entry["dim"])
    return x[distinct_rows(Path(entry["source"]), entry["batch"])] if entry.get("dedup") else x


def quantize_dir(dumps: Path, out: Path, bounds: Sequence[float], width: str = "auto",
                 decay: DecaySchedule | None = None, batch: int | None = None, dim: int | None = None,
                 progress: bool = True, dedup: bool = False) -> list[dict[str, Any]]:
    """Quantize every dump at every relative bound; writes codes + codes.json, returns the entries.
    ``dedup``: only each dump's distinct bags (its range is the same, so are its codes)."""
    if width not in WIDTHS:
        raise ValueError(f"quantize.width: {width!r} is not one of {', '.join(WIDTHS)}")
    bounds = [float(b) for b in bounds]
    for b in bounds:
        if not (math.isfinite(b) and 0 < b <= 0.5):
            raise ValueError(f"quantize.bounds: each relative bound must be in (0, 0.5], got {b!r}")
    meta = read_meta(dumps, batch, dim)
    files = list_dumps(dumps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries, skipped = [], 0
    for table, it, path in progress_bar(files, desc="quantize" + (" (dedup)" if dedup else ""), unit="file",
                                        enabled=progress):
        x = load_dump(path, meta["batch"], meta["dim"])
        if dedup:
            keep = distinct_rows(path, meta["batch"])
            if keep is None:
                raise DumpFormatError(f"{path.name}: no bag file next to it (dumps of this version write "
                                      "BAGS_{table}_iter_{k}.bin); rerun the dump step")
            x = x[keep]
        x = torch.from_numpy(np.ascontiguousarray(x))
        for eb in bounds:
            eff = eb * (decay.multiplier(it) if decay is not None else 1.0)
            eff = min(eff, 0.5)
            q, qs = _timed(lambda: quantize_np(x, eff))
            if q is None or q.kind != ChunkKind.QUANT:
                skipped += 1
                continue
            codes = q.codes
            w = q.width
            if width == "2" and w == 1:
                codes, w = codes.astype("<u2"), 2
            if w not in CODE_DTYPES:
                skipped += 1
                continue
            _, dqs = _timed(lambda: dequantize_np(q.codes, q.minimum, q.step, np.dtype(np.float32)))
            name = f"Q_{table}_iter_{it}_eb{_fmt_eb(eb)}.bin"
            codes.astype(CODE_DTYPES[w], copy=False).tofile(out / name)
            entries.append({"file": name, "table": table, "iteration": it, "eb_rel": eb, "eb_eff": eff, "width": w,
                            "minimum": q.minimum, "step": q.step, "eb_abs": q.eb_abs, "n": int(codes.size),
                            "n_full": meta["batch"] * meta["dim"], "rows": int(x.shape[0]), "dedup": dedup,
                            "batch": meta["batch"], "dim": meta["dim"], "quant_s": qs, "dequant_s": dqs,
                            "source": str(Path(path).resolve())})
    index = {"settings": {"bounds": bounds, "width": width, "dumps": str(Path(dumps).resolve()), "dedup": dedup,
                          "decay": None if decay is None else {"func": decay.func, "constant": decay.constant,
                                                               "early_stage": decay.early_stage}},
             "meta": meta, "skipped": skipped, "entries": entries}
    (out / "codes.json").write_text(json.dumps(index, indent=1) + "\n")
    return entries


def read_codes_index(codes: Path) -> dict[str, Any]:
    p = Path(codes) / "codes.json"
    if not p.exists():
        raise DumpFormatError(f"{codes}: no codes.json (run the quantize step first)")
    return json.loads(p.read_text())


# ------------------------------------------------------------------------------------------ pad
def pad_dir(codes: Path, out: Path, factor: int, progress: bool = True) -> list[dict[str, Any]]:
    """Concatenate ``factor`` copies of every dump (floats) and re-quantize with the codes' settings."""
    if int(factor) < 1:
        raise ValueError(f"pad.factor: must be an integer >= 1, got {factor!r}")
    index = read_codes_index(codes)
    s = index["settings"]
    meta = index["meta"]
    out = Path(out)
    dumps_out = out / "dumps"
    dumps_out.mkdir(parents=True, exist_ok=True)
    for table, it, path in progress_bar(list_dumps(Path(s["dumps"])), desc="pad", unit="file", enabled=progress):
        x = load_dump(path, meta["batch"], meta["dim"])
        np.concatenate([x] * int(factor)).astype("<f4").tofile(dumps_out / dump_name(table, it))
    write_meta(dumps_out, meta["batch"] * int(factor), meta["dim"], meta.get("tables", []),
               meta.get("cardinalities", []), meta.get("every", 0), padded_factor=int(factor))
    decay = DecaySchedule(**s["decay"]) if s.get("decay") else None
    return quantize_dir(dumps_out, out / "codes", s["bounds"], s["width"], decay, progress=progress)


# ------------------------------------------------------------------------------------------ encode
def _overhead(entry: dict[str, Any], codec: LosslessCodec, body_len: int) -> int:
    h = FrameHeader("codec", ChunkKind.QUANT, torch.float32, (entry.get("rows", entry["batch"]), entry["dim"]), entry["width"],
                    codec.codec_id,
                    codec.header_params(), entry["eb_eff"], entry["eb_abs"], (entry["minimum"], entry["step"]))
    return frame_overhead(h, body_len)


def _row(entry: dict[str, Any], size: str, encoder: str, nbytes: int, enc_s: float, dec_s: float,
         ideal: float | None, params: str = "") -> dict[str, Any]:
    raw = 4 * entry.get("n_full", entry["n"])  # a dedup entry stands for its whole dump
    return {"table": entry["table"], "iteration": entry["iteration"], "eb_rel": entry["eb_rel"],
            "eb_eff": entry["eb_eff"], "width": entry["width"], "size": size, "message_bytes": raw,
            "encoder": encoder, "params": params, "bytes": nbytes, "cr": raw / nbytes,
            "enc_s": enc_s, "dec_s": dec_s, "tc_gbs": raw / enc_s / 1e9 if enc_s > 0 else float("inf"),
            "td_gbs": raw / dec_s / 1e9 if dec_s > 0 else float("inf"),
            "ideal_cr": raw / ideal if ideal else float("nan"),
            "efficiency": ideal / nbytes if ideal else float("nan")}


def encode_codes(entries: list[dict[str, Any]], codes_dir: Path, size: str, *, tune_bandwidth_gbs: float = 12.5,
                 tune_tradeoff: float = 0.5, tune_max_trials: int = 300, floats: bool = True,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Rows for every encoder on every code file of one directory (``size`` labels them)."""
    from dlrm_comp.adaptive.btune import SearchSpace, tune

    lossless = [(label, get_lossless(name, **params)) for name, label, params in LOSSLESS_SET]
    if nvcomp_available():  # pragma: no cover - GPU machines only
        lossless += [(f"nvcomp-{a}", get_lossless("nvcomp", algorithm=a)) for a in ("ANS", "Cascaded", "LZ4")]
    store = SymbolModelStore()
    tuned: dict[tuple, LosslessCodec] = {}
    history: dict[tuple, list[np.ndarray]] = {}
    fixed = {m: get_backend(m) for m in FIXED_RATE}
    sz = get_backend("sz")
    rows: list[dict[str, Any]] = []
    ordered = sorted(entries, key=lambda e: (e["table"], e["eb_rel"], e["iteration"]))
    for e in progress_bar(ordered, desc=f"encode ({size})", unit="file", enabled=progress):
        dt = CODE_DTYPES[e["width"]]
        path = Path(codes_dir) / e["file"]
        if path.stat().st_size != e["n"] * e["width"]:
            raise DumpFormatError(f"{path.name}: {path.stat().st_size} bytes, expected n * width = "
                                  f"{e['n']} * {e['width']}")
        codes = np.fromfile(path, dtype=dt)
        buf = codes.tobytes()
        ent = efficiency_report(codes, 0)
        ideal_body = ent["ideal_nbytes"]

        def add(label: str, codec: LosslessCodec, params: str = "") -> None:
            body, cs = _timed(lambda: codec.compress(buf, e["width"]))
            back, ds = _timed(lambda: codec.decompress(body, len(buf)))
            if back != buf:
                raise AssertionError(f"{label} does not round-trip on {e['file']}")
            oh = _overhead(e, codec, len(body))
            rows.append(_row(e, size, label, len(body) + oh, e["quant_s"] + cs, e["dequant_s"] + ds,
                             ideal_body + oh, params))

        for label, codec in lossless:
            add(label, codec)
        key = (e["table"], e["eb_rel"], e["width"])
        # Btune: tuned once per (table, bound) on the first dump, reused for later ones (as in training)
        if key not in tuned:
            res = tune(codes, e["width"], bandwidth_gbs=tune_bandwidth_gbs, tradeoff=tune_tradeoff,
                       space=SearchSpace(), extras=("zlib",), max_trials=tune_max_trials, use_env=False)
            tuned[key] = res.codec
        add("btune", tuned[key], json.dumps(tuned[key].spec.to_dict(), sort_keys=True))
        # model-based ANS: model learned from the earlier dumps of the same (table, bound)
        hist = history.setdefault(key, [])
        if HAVE_CONSTRICTION and hist:
            version = store.learn(e["table"], np.concatenate(hist[-4:]), e["width"])
            add("ans-model", AnsModelCodec(e["table"], version, store), f"version={version}")
        hist.append(codes)
        if floats:
            x = torch.from_numpy(np.ascontiguousarray(load_rows(e)))
            for label, be, eb in [("sz3", sz, e["eb_eff"])] + [(m, b, None) for m, b in fixed.items()]:
                enc, cs = _timed(lambda: be.encode(x, eb))
                _, ds = _timed(lambda: be.decode(enc))
                rows.append(_row(e, size, label, enc.nbytes, cs, ds, None))
    return rows


ROW_FIELDS = ("table", "iteration", "eb_rel", "eb_eff", "width", "size", "message_bytes", "encoder", "params",
              "bytes", "cr", "enc_s", "dec_s", "tc_gbs", "td_gbs", "ideal_cr", "efficiency")


def write_rows(rows: Iterable[dict[str, Any]], out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=0) + "\n")


def read_rows(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.exists():
        raise DumpFormatError(f"{path}: no results (run the encode step first)")
    ints = {"table", "iteration", "width", "message_bytes", "bytes"}
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (int(v) if k in ints else v if k in ("size", "encoder", "params") else float(v))
                         for k, v in r.items()})
    return rows
