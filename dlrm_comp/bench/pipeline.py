"""The benchmark steps after the dump: quantize, pad, encode.

Layout (every step reads the previous one's directory):

* ``quantize``: ``codes/Q_{table}_iter_{k}_eb{eb}.bin`` (uint8 or uint16 little-endian codes of the
  training quantizer ``batch_quant.quantize_batch``, one step per chunk, up to 16 bits, relative to
  the chunk minimum, so always non-negative) and ``codes.json``
  (one entry per file: table, iteration, eb_rel, effective bound after decay, width, minimum, step,
  n, quant_s, dequant_s, the source dump and its batch/dim, plus the settings used).
* ``pad``: floats concatenated ``factor`` times (``dumps/`` + ``meta.json`` with batch x factor) and
  quantized with the same settings (the codes are the real codes repeated: same min and max), so
  padded messages emulate the large messages the reference measured.
* ``encode``: ``results.csv`` / ``results.json``: one row per (code file, encoder) with the wire
  size, ratio vs fp32, encode/decode seconds and fp32-equivalent throughputs, the entropy ideal
  and efficiency, and ``size`` = ``real``, ``padded`` or ``dedup``. Every encoder is the training
  codec (``codecs/offline.py``) on the file's floats, a message per file: a lossless stage is the
  ``codec`` mode with that stage (preamble, chunk table and section header included; the codes
  files are what the stage sees for codes of up to 8 bits), ``sz3`` and the fixed-rate rows their
  modes; times are whole encodes and decodes, quantization and reconstruction included.
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
from dlrm_comp.compress.batch_quant import dequantize_planes
from dlrm_comp.compress.codecs.offline import chunk_codes, roundtrip
from dlrm_comp.compress.decay import DecaySchedule
from dlrm_comp.compress.lossless import (
    HAVE_CONSTRICTION,
    AnsModelCodec,
    CodecCache,
    LosslessCodec,
    SymbolModelStore,
    get_lossless,
    nvcomp_available,
)
from dlrm_comp.compress.modes import FIXED_RATE
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


TIMING = {"reps": 3, "min_s": 0.002}  # best of at least 3 calls, more until 2 ms were spent


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    return best_time(fn, **TIMING)


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
        flat = torch.from_numpy(np.ascontiguousarray(x)).reshape(1, -1)
        for eb in bounds:
            eff = min(eb * (decay.multiplier(it) if decay is not None else 1.0), 0.5)
            (q, codes), qs = _timed(lambda: chunk_codes(flat, eff))
            if codes is None:
                skipped += 1
                continue
            w = 2 if width == "2" else codes.dtype.itemsize
            _, dqs = _timed(lambda: dequantize_planes(q.kind, q.minimum, q.step, q.bits, q.low, q.high, flat,
                                                      flat.dtype))
            name = f"Q_{table}_iter_{it}_eb{_fmt_eb(eb)}.bin"
            codes.astype(CODE_DTYPES[w]).tofile(out / name)
            entries.append({"file": name, "table": table, "iteration": it, "eb_rel": eb, "eb_eff": eff, "width": w,
                            "minimum": float(q.minimum[0]), "step": float(q.step[0]), "eb_abs": float(q.eb_abs[0]),
                            "n": int(codes.size), "n_full": meta["batch"] * meta["dim"], "rows": int(x.shape[0]),
                            "dedup": dedup, "batch": meta["batch"], "dim": meta["dim"], "quant_s": qs,
                            "dequant_s": dqs, "source": str(Path(path).resolve())})
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
    """Rows for every encoder on every code file of one directory (``size`` labels them). The
    files of one dump iteration and bound are one step: an encoder codes them in one call, one
    message per table, as training codes a step (one call, a message per destination), and each
    file's share of the call's times is its share of the raw bytes."""
    from dlrm_comp.adaptive.btune import SearchSpace, tune

    lossless = [(label, get_lossless(name, **params)) for name, label, params in LOSSLESS_SET]
    if nvcomp_available():  # pragma: no cover - GPU machines only
        lossless += [(f"nvcomp-{a}", get_lossless("nvcomp", algorithm=a)) for a in ("ANS", "Cascaded", "LZ4")]
    store = SymbolModelStore()
    cache = CodecCache(store)  # the receiver's: it decodes the ans-model rows
    tuned: dict[tuple, LosslessCodec] = {}
    history: dict[tuple, list[np.ndarray]] = {}
    steps: dict[tuple, list[dict[str, Any]]] = {}
    for e in sorted(entries, key=lambda e: (e["iteration"], e["eb_rel"], e["table"])):
        steps.setdefault((e["iteration"], e["eb_rel"]), []).append(e)
    rows: list[dict[str, Any]] = []
    for step in progress_bar(list(steps.values()), desc=f"encode ({size})", unit="step", enabled=progress):
        codes = [read_codes(Path(codes_dir), e) for e in step]
        xs = [torch.from_numpy(np.ascontiguousarray(load_rows(e))) for e in step]
        keys = [(e["table"], e["eb_rel"], e["width"]) for e in step]

        def add(label: str, mode: str, coders: list | None = None, params: list[str] | None = None,
                only: list[int] | None = None) -> None:
            only = list(range(len(step))) if only is None else only
            r = roundtrip(mode, [xs[i] for i in only], [step[i]["eb_eff"] for i in only], coder=coders,
                          counts=[1] * len(only), cache=cache, **TIMING)
            if r.max_err_ratio is not None and r.max_err_ratio > 1.0:
                raise AssertionError(f"{label} exceeds the bound at iteration {step[0]['iteration']}")
            for j, i in enumerate(only):
                share = r.raw[j] / r.bytes_raw
                rows.append(_row(step[i], size, label, round(r.sent[j]), r.enc_s * share, r.dec_s * share,
                                 r.ideal[j] if mode == "codec" else None, params[j] if params else ""))

        for label, codec in lossless:
            add(label, "codec", [codec] * len(step))
        # Btune: tuned once per (table, bound) on the first dump, reused for later ones (as in training)
        for key, c, e in zip(keys, codes, step):
            if key not in tuned:
                tuned[key] = tune(c, e["width"], bandwidth_gbs=tune_bandwidth_gbs, tradeoff=tune_tradeoff,
                                  space=SearchSpace(), extras=("zlib",), max_trials=tune_max_trials,
                                  use_env=False).codec
        picks = [tuned[k] for k in keys]
        add("btune", "codec", picks, [json.dumps(p.spec.to_dict(), sort_keys=True) for p in picks])
        # model-based ANS: a model of the stream's bytes (the coder's symbols) learned from the
        # earlier dumps of the same (table, bound)
        known = [i for i, k in enumerate(keys) if history.get(k)]
        if HAVE_CONSTRICTION and known:
            versions = [store.learn(step[i]["table"], np.concatenate(history[keys[i]][-4:]).view(np.uint8), 1)
                        for i in known]
            add("ans-model", "codec", [AnsModelCodec(step[i]["table"], v, store) for i, v in zip(known, versions)],
                [f"version={v}" for v in versions], known)
        for k, c in zip(keys, codes):
            history.setdefault(k, []).append(c)
        if floats:
            for label, mode in [("sz3", "sz")] + [(m, m) for m in FIXED_RATE]:
                add(label, mode)
    rows.sort(key=lambda r: (r["table"], r["eb_rel"], r["iteration"]))  # stable: encoders in order
    return rows


def read_codes(codes_dir: Path, entry: dict[str, Any]) -> np.ndarray:
    """One code file, its size checked against its entry."""
    path = codes_dir / entry["file"]
    if path.stat().st_size != entry["n"] * entry["width"]:
        raise DumpFormatError(f"{path.name}: {path.stat().st_size} bytes, expected n * width = "
                              f"{entry['n']} * {entry['width']}")
    return np.fromfile(path, dtype=CODE_DTYPES[entry["width"]])


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
