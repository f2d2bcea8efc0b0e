"""Raw Criteo TSV -> a memory-mappable cache (dense.npy, sparse.npy, labels.npy, meta.json).

Dense: missing -> 0, negative -> 0, then log(1 + x) as float32 (upstream DLRM preprocessing).
Categorical: hex -> int, then either
  * "hash"  (max_ind_range > 0, frequency_threshold == 0): value mod max_ind_range, missing reads
    as value 0 (as upstream), one pass;
  * "vocab" (otherwise): per column, values seen >= max(1, frequency_threshold) times get ids 2..
    by descending frequency (capped at max_ind_range rows when > 0), rarer ones share id 0 and
    missing has id 1; two passes (count, then write).
A cache whose meta.json has the same settings and source files (name, path, size, mtime and a
sha256 of each file's first and last MiB) is reused;
anything else is rebuilt in a temporary folder and swapped in, under a file lock so concurrent
ranks build it once.
"""
from __future__ import annotations

import json
import os
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

FORMAT_VERSION = 1
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
    format_version: int = FORMAT_VERSION

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @staticmethod
    def load(path: Path) -> CriteoMeta:
        return CriteoMeta(**json.loads(Path(path).read_text()))


CACHE_FILES = ("dense.npy", "sparse.npy", "labels.npy", "meta.json")


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
        existing = _reusable(cache, settings, sources)
        if existing is not None:
            return existing
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            meta = _build(paths, Path(tmp), settings, sources, chunk_lines)
            for name in CACHE_FILES[:-1]:
                os.replace(Path(tmp) / name, cache / name)
            meta.save(cache / "meta.json")
    return meta


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
    return meta if same else None


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
