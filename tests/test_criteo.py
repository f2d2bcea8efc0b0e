"""Raw Criteo TSV -> cache -> batches, on small generated files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrm_comp.data import BatchSource
from dlrm_comp.data import criteo_cache
from dlrm_comp.data.criteo import CriteoDataset, CriteoFormatError, preprocess_criteo
from dlrm_comp.data.vocab import MISSING_INDEX, OOV_INDEX


def make_rows(n: int, seed: int = 0, distinct: int = 40) -> list[tuple[int, list, list]]:
    """(label, 13 dense ints or None, 26 categorical ints or None) with missing and negative values."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        dense = [None if rng.random() < 0.2 else int(rng.integers(-3, 1000)) for _ in range(13)]
        cats = [None if rng.random() < 0.1 else int(rng.zipf(1.5)) % distinct * 0x9E3779B1 % 2**32
                for _ in range(26)]
        rows.append((int(rng.random() < 0.3), dense, cats))
    return rows


def write_tsv(path: Path, rows, extra: dict[int, str] | None = None) -> Path:
    """Write rows; `extra` maps 0-based positions to raw lines inserted there (malformed ones)."""
    lines = []
    for label, dense, cats in rows:
        fields = [str(label)] + ["" if d is None else str(d) for d in dense]
        fields += ["" if c is None else format(c, "08x") for c in cats]
        lines.append("\t".join(fields))
    for pos, raw in sorted((extra or {}).items()):
        lines.insert(pos, raw)
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_dense(rows) -> np.ndarray:
    return np.array([[math.log1p(max(d or 0, 0)) for d in dense] for _, dense, _ in rows], dtype=np.float32)


@pytest.fixture
def rows():
    return make_rows(300)


def test_hash_mode_round_trip(tmp_path, rows):
    src = write_tsv(tmp_path / "day_0", rows)
    meta = preprocess_criteo([src], tmp_path / "cache", max_ind_range=97, chunk_lines=64)
    assert meta.rows == 300 and meta.cardinalities == [97] * 26 and meta.skipped_lines == 0
    assert meta.settings["mode"] == "hash" and meta.sources[0]["name"] == "day_0"
    assert meta.positives == sum(r[0] for r in rows)
    dense = np.load(tmp_path / "cache" / "dense.npy", mmap_mode="r")
    sparse = np.load(tmp_path / "cache" / "sparse.npy", mmap_mode="r")
    labels = np.load(tmp_path / "cache" / "labels.npy", mmap_mode="r")
    assert dense.dtype == np.float32 and dense.shape == (300, 13)
    np.testing.assert_allclose(dense, expected_dense(rows), rtol=1e-6)
    assert (dense[:, :] >= 0).all()  # negatives -> 0 before log1p
    assert sparse.shape == (300, 26)
    assert np.array_equal(sparse, [[(c or 0) % 97 for c in cats] for _, _, cats in rows])
    assert np.array_equal(labels, [r[0] for r in rows])
    json.loads((tmp_path / "cache" / "meta.json").read_text())


def test_chunking_does_not_change_the_result(tmp_path, rows):
    src = write_tsv(tmp_path / "train.txt", rows)
    preprocess_criteo([src], tmp_path / "a", max_ind_range=1000, chunk_lines=7)
    preprocess_criteo([src], tmp_path / "b", max_ind_range=1000, chunk_lines=10_000)
    for name in ("dense.npy", "sparse.npy", "labels.npy"):
        assert np.array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name))


def test_vocabulary_with_threshold(tmp_path):
    base = [(0, [1] * 13, [7] * 26)]
    col0 = [0xAA] * 5 + [0xBB] * 3 + [0xCC] * 2 + [0xDD] + [None] * 2  # counts 5, 3, 2, 1, missing
    rows = [(i % 2, [i] * 13, [c] + [0x10 + i % 3] * 25) for i, c in enumerate(col0)] + base
    src = write_tsv(tmp_path / "t.txt", rows)
    meta = preprocess_criteo([src], tmp_path / "v", frequency_threshold=2)
    sparse = np.load(tmp_path / "v" / "sparse.npy")
    col = sparse[:-1, 0]
    assert meta.cardinalities[0] == 2 + 3  # OOV, missing, AA, BB, CC
    assert list(col[:5]) == [2] * 5 and list(col[5:8]) == [3] * 3 and list(col[8:10]) == [4] * 2  # by frequency
    assert col[10] == OOV_INDEX and list(col[11:13]) == [MISSING_INDEX] * 2 and sparse[-1, 0] == OOV_INDEX
    capped = preprocess_criteo([src], tmp_path / "c", frequency_threshold=2, max_ind_range=4)
    assert capped.cardinalities[0] == 4
    assert list(np.load(tmp_path / "c" / "sparse.npy")[:13, 0]) == [2] * 5 + [3] * 3 + [0] * 3 + [1] * 2
    full = preprocess_criteo([src], tmp_path / "f")  # no cap, no threshold: every value gets its own id
    assert full.settings["mode"] == "vocab" and full.cardinalities[0] == 2 + 5
    assert len(set(np.load(tmp_path / "f" / "sparse.npy")[:, 0].tolist())) == 2 + 4  # 5 values + missing


@pytest.mark.parametrize("raw,what", [
    ("1\t2\t3", "expected 40 tab-separated columns, found 3"),
    ("1\t" + "\t".join(["x1"] + ["0"] * 12 + ["ab"] * 26), "I1"),
    ("0\t" + "\t".join(["0"] * 13 + ["ab"] * 25 + ["zz"]), "C26"),
    ("2\t" + "\t".join(["0"] * 13 + ["ab"] * 26), "label"),
])
def test_malformed_line_error_names_file_and_line(tmp_path, rows, raw, what):
    src = write_tsv(tmp_path / "bad.txt", rows[:10], extra={4: raw})
    with pytest.raises(CriteoFormatError) as err:
        preprocess_criteo([src], tmp_path / "cache", max_ind_range=10, chunk_lines=3)
    assert "bad.txt" in str(err.value) and "line 5" in str(err.value) and what in str(err.value)


def test_malformed_lines_skipped_and_counted(tmp_path, rows):
    good = write_tsv(tmp_path / "day_0", rows[:50])
    bad = write_tsv(tmp_path / "day_1", rows[50:100], extra={0: "garbage", 20: "1\t2", 30: ""})
    meta = preprocess_criteo([good, bad], tmp_path / "cache", max_ind_range=10, on_malformed="skip", chunk_lines=8)
    assert meta.rows == 100 and meta.skipped_lines == 3
    assert [(s["file"], s["line"]) for s in meta.first_skipped] == [("day_1", 1), ("day_1", 21), ("day_1", 31)]
    assert [s["skipped_lines"] for s in meta.sources] == [0, 3] and [s["rows"] for s in meta.sources] == [50, 50]
    np.testing.assert_allclose(np.load(tmp_path / "cache" / "dense.npy"), expected_dense(rows[:100]), rtol=1e-6)
    with pytest.raises(CriteoFormatError, match="day_1: line 1"):
        preprocess_criteo([good, bad], tmp_path / "strict", max_ind_range=10)


def test_cache_is_reused_and_rebuilt_on_new_settings(tmp_path, rows, monkeypatch):
    src = write_tsv(tmp_path / "train.txt", rows)
    first = preprocess_criteo([src], tmp_path / "cache", max_ind_range=50)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    with monkeypatch.context() as m:
        m.setattr(criteo_cache, "_build", no_rebuild)
        assert preprocess_criteo([src], tmp_path / "cache", max_ind_range=50) == first
    second = preprocess_criteo([src], tmp_path / "cache", max_ind_range=20)
    assert second.cardinalities == [20] * 26
    assert int(np.load(tmp_path / "cache" / "sparse.npy").max()) < 20
    write_tsv(src, rows[:100])  # the source changed (size): rebuilt
    assert preprocess_criteo([src], tmp_path / "cache", max_ind_range=20).rows == 100


def test_splits_are_contiguous_and_disjoint(tmp_path, rows):
    src = write_tsv(tmp_path / "train.txt", rows)
    preprocess_criteo([src], tmp_path / "cache", max_ind_range=1000)
    ds = CriteoDataset(tmp_path / "cache", val_fraction=0.1, test_fraction=0.2)
    assert isinstance(ds, BatchSource)
    assert [ds.split_range(s) for s in ("train", "val", "test")] == [(0, 210), (210, 240), (240, 300)]
    assert ds.num_batches("train", 50) == 4 and ds.num_batches("val", 50) == 0 and ds.num_batches("test", 25) == 2
    seen = {}
    for split in ("train", "val", "test"):
        n = ds.num_batches(split, 10)
        seen[split] = torch.cat([ds.batch(split, i, 10).dense for i in range(n)])
    expected = torch.from_numpy(expected_dense(rows))
    assert torch.allclose(seen["train"], expected[:210]) and torch.allclose(seen["val"], expected[210:240])
    assert torch.allclose(seen["test"], expected[240:300])
    with pytest.raises(IndexError):
        ds.batch("val", 3, 10)  # rows 240..250 belong to test
    with pytest.raises(ValueError, match="train, val, test"):
        ds.batch("eval", 0, 10)
    json.dumps(ds.describe())


def test_batch_contents_match_the_file(tmp_path, rows):
    src = write_tsv(tmp_path / "train.txt", rows)
    preprocess_criteo([src], tmp_path / "cache", max_ind_range=101)
    ds = CriteoDataset(tmp_path / "cache")
    batch = ds.batch("train", 3, 16)
    again = CriteoDataset(tmp_path / "cache").batch("train", 3, 16)
    part = rows[48:64]
    assert torch.equal(batch.labels, torch.tensor([r[0] for r in part], dtype=torch.float32))
    assert torch.allclose(batch.dense, torch.from_numpy(expected_dense(part)))
    for t in range(26):
        assert batch.indices[t].dtype == torch.int64 and torch.equal(batch.offsets[t], torch.arange(16))
        assert batch.indices[t].tolist() == [(cats[t] or 0) % 101 for _, _, cats in part]
        assert torch.equal(batch.indices[t], again.indices[t])
    bag = torch.nn.EmbeddingBag(101, 2, mode="sum")
    assert bag(batch.indices[0], batch.offsets[0]).shape == (16, 2)


def test_argument_errors(tmp_path, rows):
    src = write_tsv(tmp_path / "train.txt", rows[:5])
    with pytest.raises(ValueError, match="error, skip"):
        preprocess_criteo([src], tmp_path / "c", on_malformed="ignore")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        preprocess_criteo([tmp_path / "nope.txt"], tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="preprocess_criteo"):
        CriteoDataset(tmp_path / "empty")
    only_bad = tmp_path / "bad.txt"
    only_bad.write_text("junk\n")
    with pytest.raises(CriteoFormatError, match="no valid rows"):
        preprocess_criteo([only_bad], tmp_path / "c2", on_malformed="skip", max_ind_range=5)


# ----------------------------------------------------------------------------- issue 24: the cache checked on open
def test_an_overwritten_cache_array_is_rebuilt(tmp_path, rows, capsys):
    src = write_tsv(tmp_path / "train.txt", rows)
    first = preprocess_criteo([src], tmp_path / "cache", max_ind_range=50)
    labels = tmp_path / "cache" / "labels.npy"
    np.save(labels, np.ones(first.rows, dtype=np.uint8))  # same shape, same dtype, other values
    with pytest.raises(ValueError, match="labels.npy differs from what preprocessing wrote"):
        CriteoDataset(tmp_path / "cache")
    preprocess_criteo([src], tmp_path / "cache", max_ind_range=50)
    assert "labels.npy differs" in capsys.readouterr().err
    assert np.load(labels).tolist() == [r[0] for r in rows]
    assert CriteoDataset(tmp_path / "cache").meta.positives == first.positives


def test_a_truncated_cache_array_is_rebuilt(tmp_path, rows, capsys):
    src = write_tsv(tmp_path / "train.txt", rows)
    preprocess_criteo([src], tmp_path / "cache", max_ind_range=50)
    sparse = tmp_path / "cache" / "sparse.npy"
    whole = sparse.read_bytes()
    sparse.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="sparse.npy is truncated"):
        CriteoDataset(tmp_path / "cache")
    preprocess_criteo([src], tmp_path / "cache", max_ind_range=50)
    assert "sparse.npy is truncated" in capsys.readouterr().err and sparse.read_bytes() == whole
    assert CriteoDataset(tmp_path / "cache").batch("train", 0, 10).labels.shape == (10,)


def test_a_killed_build_leaves_no_folder_behind_the_next_build(tmp_path, rows):
    src = write_tsv(tmp_path / "train.txt", rows)
    stale = tmp_path / "cache" / ".build-killed123"
    stale.mkdir(parents=True)
    (stale / "dense.npy").write_bytes(b"partial")
    preprocess_criteo([src], tmp_path / "cache", max_ind_range=50)
    assert not list((tmp_path / "cache").glob(".build-*"))


def test_a_repeated_file_is_found_by_path_link_or_contents(tmp_path, rows):
    from dlrm_comp.data.criteo_files import repeated_file
    src = write_tsv(tmp_path / "a.tsv", rows)
    other = write_tsv(tmp_path / "b.tsv", rows[:200])
    (tmp_path / "link.tsv").symlink_to(src)
    (tmp_path / "copy.tsv").write_bytes(src.read_bytes())
    assert repeated_file([src, other]) is None
    for twin, why in ((src, "the same file"), (tmp_path / "link.tsv", "the same file"),
                      (tmp_path / "copy.tsv", "the same contents")):
        assert why in repeated_file([src, other, twin])
