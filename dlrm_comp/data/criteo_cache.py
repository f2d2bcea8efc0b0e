"""Raw Criteo TSV -> a memory-mappable cache (dense.npy, sparse.npy, labels.npy, meta.json).

Dense: missing -> 0, negative -> 0, then log(1 + x) as float32 (upstream DLRM preprocessing).
Categorical: hex -> int, then either
  * "hash"  (max_ind_range > 0, frequency_threshold == 0): value mod max_ind_range, missing reads
    as value 0 (as upstream), one pass;
  * "vocab" (otherwise): per column, values seen >= max(1, frequency_threshold) times get ids 2..
    by descending frequency (capped at max_ind_range rows when > 0), rarer ones share id 0 and
    missing has id 1; two passes (count, then write).
A cache whose meta.json has the same settings and source files (name, path, size, mtime and a
sha256 of each file's first and last MiB) and whose arrays still match what preprocessing wrote
(`arrays`: shape, dtype, size and a sampled sha256 of each .npy) is reused; anything else is
rebuilt in a temporary folder and swapped in, under a file lock so concurrent ranks build it once.
A build killed half way leaves a `.build-*` folder; the next build under the lock removes it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dlrm_comp.data.criteo_files import check_tsv_file, file_identity
from dlrm_comp.data.criteo_parse import NUM_DENSE, NUM_SPARSE, CriteoFormatError, ParsedChunk, parse_lines
from dlrm_comp.data.npy_writer import NpyAppender
from dlrm_comp.data.vocab import ValueCounter, Vocabulary
from dlrm_comp.filelock import file_lock

FORMAT_VERSION = 2  # 2: meta.json records each array (`arrays`)
IDENTITY_KEYS = ("name", "path", "size", "mtime_ns", "head_tail_sha256")
MAX_SKIPPED_REPORTED = 10
ON_MALFORMED = ("error", "skip")


@dataclass
class CriteoMeta:
    """What meta.json records about a cache."""

    rows: int
    cardinalities: list[int]
    settings: dict[str, Any]
    sources: list[dict[str, Any]]
    skipped_lines: int = 0
    first_skipped: list[dict[str, Any]] = field(default_factory=list)  # {file, line, reason}
    positives: int = 0
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> array_fingerprint
    format_version: int = FORMAT_VERSION

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @staticmethod
    def load(path: Path) -> CriteoMeta:
        return CriteoMeta(**json.loads(Path(path).read_text()))


CACHE_FILES = ("dense.npy", "sparse.npy", "labels.npy", "meta.json")
ARRAY_FILES = CACHE_FILES[:-1]
_SAMPLES, _SAMPLE_BYTES = 64, 1 << 16  # blocks hashed per array: every byte of one up to 4 MiB


def array_fingerprint(path: Path) -> dict[str, Any]:
    """Shape, dtype, size and a sha256 over evenly spaced blocks of a .npy: cheap to recheck at
    every open at any data size, and it catches an overwritten, truncated or swapped array (a
    single flipped byte inside a large one goes unseen)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        digest = hashlib.sha256(str(size).encode())
        step = max(size // _SAMPLES, _SAMPLE_BYTES)
        for offset in range(0, size, step):
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE_BYTES))
    return {"shape": list(shape), "dtype": dtype.str, "bytes": size, "sampled_sha256": digest.hexdigest()}


def array_problem(cache: Path, meta: CriteoMeta) -> str | None:
    """None when every array of the cache is the one preprocessing wrote, else what differs."""
    for name in ARRAY_FILES:
        path = cache / name
        expected = meta.arrays.get(name)
        if expected is None:
            return f"meta.json records no fingerprint of {name}"
        try:
            found = array_fingerprint(path)
        except (OSError, ValueError) as exc:
            return f"{name} is unreadable ({exc})"
        data_bytes = int(np.prod(found["shape"])) * np.dtype(found["dtype"]).itemsize
        if found["bytes"] < data_bytes:
            return f"{name} is truncated ({found['bytes']} bytes, its header promises {data_bytes} of data)"
        for key in ("shape", "dtype", "bytes", "sampled_sha256"):
            if found[key] != expected[key]:
                return f"{name} differs from what preprocessing wrote ({key}: {found[key]} != {expected[key]})"
    return None


def preprocess_criteo(tsv_paths: list[str | Path], cache_dir: str | Path, *, max_ind_range: int = 0,
                      frequency_threshold: int = 0, on_malformed: str = "error",
                      chunk_lines: int = 200_000) -> CriteoMeta:
    """Build (or reuse) the cache of `tsv_paths` in `cache_dir`; files are read in the given order."""
    if on_malformed not in ON_MALFORMED:
        raise ValueError(f"on_malformed must be one of {', '.join(ON_MALFORMED)}, got {on_malformed!r}")
    if max_ind_range < 0 or frequency_threshold < 0 or chunk_lines < 1:
        raise ValueError("max_ind_range and frequency_threshold must be >= 0 and chunk_lines >= 1")
    if not tsv_paths:
        raise ValueError("preprocess_criteo needs at least one TSV file")
    paths = [Path(p) for p in tsv_paths]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"Criteo TSV file not found: {p}")
        problem = check_tsv_file(p)
        if problem:
            raise CriteoFormatError(problem)
    mode = "hash" if max_ind_range > 0 and frequency_threshold == 0 else "vocab"
    if mode == "vocab" and 0 < max_ind_range < 3:
        raise ValueError(f"max_ind_range={max_ind_range} leaves no room for values next to the OOV and missing ids")
    settings = {"mode": mode, "max_ind_range": max_ind_range, "frequency_threshold": frequency_threshold,
                "on_malformed": on_malformed}
    sources = [{"name": p.name, "path": str(p.resolve()), **file_identity(p)} for p in paths]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / ".lock"):
        _remove_stale_builds(cache)
        existing = _reusable(cache, settings, sources)
        if existing is not None:
            return existing
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            meta = _build(paths, Path(tmp), settings, sources, chunk_lines)
            meta.arrays = {name: array_fingerprint(Path(tmp) / name) for name in ARRAY_FILES}
            (cache / "meta.json").unlink(missing_ok=True)  # no meta.json beside arrays it does not describe
            for name in ARRAY_FILES:
                os.replace(Path(tmp) / name, cache / name)
            meta.save(cache / "meta.json")
    return meta


def _remove_stale_builds(cache: Path) -> None:
    """Folders of builds killed half way (we hold the lock: no build is running)."""
    for stale in cache.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _reusable(cache: Path, settings: dict, sources: list[dict]) -> CriteoMeta | None:
    if not all((cache / name).is_file() for name in CACHE_FILES):
        return None
    try:
        meta = CriteoMeta.load(cache / "meta.json")
    except (ValueError, TypeError):
        return None
    identity = [{k: src.get(k) for k in IDENTITY_KEYS} for src in meta.sources]
    wanted = [{k: src.get(k) for k in IDENTITY_KEYS} for src in sources]
    same = meta.format_version == FORMAT_VERSION and meta.settings == settings and identity == wanted
    if not same:
        return None
    problem = array_problem(cache, meta)
    if problem:
        print(f"warning: Criteo cache {cache}: {problem}; rebuilding it", file=sys.stderr, flush=True)
        return None
    return meta


class _Skips:
    """Malformed-line policy: raise on the first one, or count them and keep a few examples."""

    def __init__(self, policy: str):
        self.policy, self.count, self.first = policy, 0, []
        self.per_file: dict[str, int] = {}

    def record(self, path: Path, chunk: ParsedChunk) -> None:
        if not chunk.bad:
            return
        line, reason = chunk.bad[0]
        if self.policy == "error":
            raise CriteoFormatError(f"{path}: line {line}: {reason} (set on_malformed='skip' to skip such lines)")
        self.count += len(chunk.bad)
        self.per_file[str(path)] = self.per_file.get(str(path), 0) + len(chunk.bad)
        for line, reason in chunk.bad[:MAX_SKIPPED_REPORTED - len(self.first)]:
            self.first.append({"file": path.name, "line": line, "reason": reason})


def _chunks(paths: list[Path], chunk_lines: int, skips: _Skips) -> Iterator[tuple[int, ParsedChunk]]:
    for file_index, path in enumerate(paths):
        with open(path, "rb") as handle:
            line_no = 1
            while True:
                lines = [line for line in (handle.readline() for _ in range(chunk_lines)) if line]
                if not lines:
                    break
                chunk = parse_lines(lines, line_no)
                skips.record(path, chunk)
                line_no += len(lines)
                yield file_index, chunk


def _build(paths: list[Path], tmp: Path, settings: dict, sources: list[dict], chunk_lines: int) -> CriteoMeta:
    cap, mode = settings["max_ind_range"], settings["mode"]
    vocabs: list[Vocabulary] = []
    if mode == "vocab":
        counters = [ValueCounter() for _ in range(NUM_SPARSE)]
        for _, chunk in _chunks(paths, chunk_lines, _Skips(settings["on_malformed"])):
            for j, counter in enumerate(counters):
                counter.add(chunk.cats[~chunk.cat_missing[:, j], j])
        vocabs = [Vocabulary.build(*c.result(), settings["frequency_threshold"], cap) for c in counters]
        cardinalities = [v.size for v in vocabs]
    else:
        cardinalities = [cap] * NUM_SPARSE
    id_dtype = np.int32 if max(cardinalities) < 2 ** 31 else np.int64
    skips = _Skips(settings["on_malformed"])
    rows_per_file = [0] * len(paths)
    positives = 0
    with NpyAppender(tmp / "dense.npy", np.float32, (NUM_DENSE,)) as dense_out, \
            NpyAppender(tmp / "sparse.npy", id_dtype, (NUM_SPARSE,)) as sparse_out, \
            NpyAppender(tmp / "labels.npy", np.uint8) as label_out:
        for file_index, chunk in _chunks(paths, chunk_lines, skips):
            dense_out.append(np.log1p(np.maximum(chunk.dense, 0).astype(np.float64)).astype(np.float32))
            if mode == "hash":
                ids = (chunk.cats % np.uint64(cap)).astype(np.int64)
            else:
                ids = np.stack([v.lookup(chunk.cats[:, j], chunk.cat_missing[:, j])
                                for j, v in enumerate(vocabs)], axis=1)
            sparse_out.append(ids)
            label_out.append(chunk.labels)
            positives += int(chunk.labels.sum())
            rows_per_file[file_index] += chunk.rows
        rows = label_out.rows
    if rows == 0:
        raise CriteoFormatError(f"no valid rows in {', '.join(str(p) for p in paths)}")
    sources = [{**src, "rows": n, "skipped_lines": skips.per_file.get(str(path), 0)}
               for src, n, path in zip(sources, rows_per_file, paths)]
    return CriteoMeta(rows=rows, cardinalities=cardinalities, settings=settings, sources=sources,
                      skipped_lines=skips.count, first_skipped=skips.first, positives=positives)
