"""The synthetic Criteo-like source: determinism, layout, distributions, teacher and learnability."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dlrm_comp.data import Batch, BatchSource
from dlrm_comp.data.synthetic import PROFILES, SyntheticCriteo, resolve_cardinalities


@pytest.fixture(scope="module")
def tiny() -> SyntheticCriteo:
    return SyntheticCriteo(resolve_cardinalities("tiny", None, 0), num_val_samples=4096, num_test_samples=2048)


@pytest.fixture(scope="module")
def multi_hot() -> SyntheticCriteo:
    return SyntheticCriteo([50, 7, 1, 300], pooling_factor=4, num_val_samples=1024, num_test_samples=1024, seed=3)


def assert_same(a: Batch, b: Batch) -> None:
    assert torch.equal(a.dense, b.dense) and torch.equal(a.labels, b.labels)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert all(torch.equal(x, y) for x, y in zip(a.offsets, b.offsets))


def assert_valid_layout(batch: Batch, cards: list[int], bsz: int, num_dense: int = 13) -> None:
    assert batch.dense.shape == (bsz, num_dense) and batch.dense.dtype == torch.float32
    assert batch.labels.shape == (bsz,) and batch.labels.dtype == torch.float32
    assert set(batch.labels.unique().tolist()) <= {0.0, 1.0}
    assert len(batch.indices) == len(batch.offsets) == len(cards)
    for ids, offs, card in zip(batch.indices, batch.offsets, cards):
        assert ids.dtype == offs.dtype == torch.int64 and offs.shape == (bsz,)
        assert offs[0] == 0 and bool((offs[1:] >= offs[:-1]).all()) and offs[-1] < len(ids)
        assert int(ids.min()) >= 0 and int(ids.max()) < card


def test_is_a_batch_source(tiny):
    assert isinstance(tiny, BatchSource)
    assert tiny.num_dense == 13 and tiny.cardinalities == PROFILES["tiny"]
    json.dumps(tiny.describe())


def test_deterministic_and_stateless(tiny):
    again = SyntheticCriteo(resolve_cardinalities("tiny", None, 0), num_val_samples=4096, num_test_samples=2048)
    assert_same(tiny.batch("train", 5, 64), again.batch("train", 5, 64))
    assert_same(tiny.batch("train", 5, 64), tiny.batch("train", 5, 64))  # no iterator state
    assert not torch.equal(tiny.batch("train", 5, 64).dense, tiny.batch("train", 6, 64).dense)
    other_seed = SyntheticCriteo(PROFILES["tiny"], seed=1, num_val_samples=256)
    assert not torch.equal(tiny.batch("train", 0, 64).dense, other_seed.batch("train", 0, 64).dense)


def test_rows_do_not_depend_on_batch_size(tiny, multi_hot):
    for src in (tiny, multi_hot):
        big = src.batch("val", 0, 128)
        assert_same(big.slice(64, 128), src.batch("val", 1, 64))


def test_splits_are_disjoint(tiny):
    rows = {s: {tuple(r) for r in tiny.batch(s, 0, 2048).dense.tolist()} for s in ("train", "val", "test")}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


@pytest.mark.parametrize("profile,cap", [("tiny", 0), ("kaggle", 0), ("kaggle", 10000), ("terabyte", 0),
                                         ("terabyte", 1000)])
def test_layout_and_ids_in_range(profile, cap):
    cards = resolve_cardinalities(profile, None, cap)
    assert len(cards) == (8 if profile == "tiny" else 26) and (cap == 0 or max(cards) <= cap)
    src = SyntheticCriteo(cards, num_val_samples=512, num_test_samples=512)
    assert_valid_layout(src.batch("train", 3, 256), cards, 256)
    assert_valid_layout(src.batch("test", 1, 256), cards, 256)


def test_multi_hot_bags(multi_hot):
    batch = multi_hot.batch("train", 0, 512)
    assert_valid_layout(batch, multi_hot.cardinalities, 512)
    for t in range(batch.num_tables):
        sizes = batch.bag_sizes(t)
        assert int(sizes.min()) >= 1 and int(sizes.max()) <= 4 and len(set(sizes.tolist())) == 4
    bags = [nn.EmbeddingBag(c, 3, mode="sum") for c in multi_hot.cardinalities]
    out = [bag(i, o) for bag, i, o in zip(bags, batch.indices, batch.offsets)]
    assert all(o.shape == (512, 3) for o in out)
    one_hot = SyntheticCriteo([50, 7], num_val_samples=64).batch("train", 0, 64)
    assert all(bool((one_hot.bag_sizes(t) == 1).all()) for t in range(2))


def test_zipf_skew_with_scattered_hot_ids():
    src = SyntheticCriteo([10000, 5000], num_val_samples=64)
    ids = np.concatenate([src.batch("train", i, 4096).indices[0].numpy() for i in range(5)])
    counts = np.bincount(ids, minlength=10000)
    top = np.sort(counts)[::-1]
    assert top[:10].sum() > 0.3 * len(ids)  # the head dominates
    assert top[0] > 20 * np.median(counts[counts > 0])
    assert (counts > 0).sum() > 1000  # but the tail is drawn too
    hot = np.argsort(counts)[::-1][:10]
    assert hot.max() - hot.min() > 1000  # hot ids are spread over the table, not piled at 0
    expected = src.zipf.probabilities(0, 3)
    assert np.allclose(top[:3] / len(ids), expected, rtol=0.1)


def test_dense_features_look_like_log_counts(tiny):
    dense = tiny.batch("train", 0, 4096).dense
    assert float(dense.min()) >= 0.0 and float(dense.mean()) < 5
    assert float((dense > 12).float().mean()) < 1e-3
    assert float((dense == 0).float().mean()) > 0.05  # zero / missing counts


@pytest.mark.parametrize("rate", [0.25, 0.1])
def test_click_rate_near_target(rate):
    src = SyntheticCriteo(PROFILES["tiny"], click_rate=rate, num_val_samples=16384)
    labels = torch.cat([src.batch("val", i, 4096).labels for i in range(4)])
    assert abs(float(labels.mean()) - rate) < 0.02


@pytest.mark.parametrize("profile,cap", [("tiny", 0), ("kaggle", 10000)])
def test_bayes_auc_in_target_range(profile, cap):
    src = SyntheticCriteo(resolve_cardinalities(profile, None, cap))
    assert 0.78 <= src.bayes_auc("val") <= 0.86
    assert abs(src.bayes_auc("test") - src.bayes_auc("val")) < 0.03
    probs = src.click_probabilities("val", 0, 4096)
    assert probs.shape == (4096,) and 0 < probs.min() and probs.max() < 1


def test_a_small_model_learns_most_of_the_signal(tiny):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads thrash on a loaded 2-core machine
    try:
        torch.manual_seed(0)
        embs = nn.ModuleList(nn.EmbeddingBag(c, 16, mode="sum", sparse=True) for c in tiny.cardinalities)
        for e in embs:
            nn.init.normal_(e.weight, 0.0, 0.01)
        mlp = nn.Sequential(nn.Linear(13 + 16 * len(embs), 64), nn.ReLU(), nn.Linear(64, 1))
        opt = torch.optim.Adagrad([*embs.parameters(), *mlp.parameters()], lr=0.1)

        def forward(b: Batch) -> torch.Tensor:
            pooled = [e(i, o) for e, i, o in zip(embs, b.indices, b.offsets)]
            return mlp(torch.cat([b.dense, *pooled], dim=1)).squeeze(1)

        for step in range(1500):
            b = tiny.batch("train", step, 128)
            loss = nn.functional.binary_cross_entropy_with_logits(forward(b), b.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = tiny.batch("val", 0, 4096)
            scores = forward(val).numpy()
    finally:
        torch.set_num_threads(threads)
    from sklearn.metrics import roc_auc_score
    auc = roc_auc_score(val.labels.numpy(), scores)
    assert auc > 0.7
    assert tiny.bayes_auc("val") - auc < 0.06


def test_num_batches(tiny):
    assert tiny.num_batches("train", 128) is None
    assert tiny.num_batches("val", 1000) == 4 and tiny.num_batches("test", 2048) == 1
    with pytest.raises(IndexError, match="val"):
        tiny.batch("val", 4, 1000)


def test_errors_name_the_accepted_values(tiny):
    with pytest.raises(ValueError, match="kaggle, terabyte, tiny, criteo_like, custom"):
        resolve_cardinalities("huge", None, 0)
    with pytest.raises(ValueError, match="custom"):
        resolve_cardinalities("custom", None, 0)
    assert resolve_cardinalities("custom", [5, 500], 100) == [5, 100]
    for bad in ("dev", "training"):
        with pytest.raises(ValueError, match="train, val, test"):
            tiny.batch(bad, 0, 8)
        with pytest.raises(ValueError, match="train, val, test"):
            tiny.num_batches(bad, 8)
    with pytest.raises(ValueError):
        SyntheticCriteo([10, 0])
    with pytest.raises(ValueError):
        SyntheticCriteo([10], click_rate=1.5)


def test_batch_slice_and_to(multi_hot):
    batch = multi_hot.batch("train", 2, 96)
    bags = [nn.EmbeddingBag(c, 4, mode="sum") for c in multi_hot.cardinalities]
    full = [bag(i, o) for bag, i, o in zip(bags, batch.indices, batch.offsets)]
    parts = [batch.slice(0, 40), batch.slice(40, 41), batch.slice(41, 96)]
    assert [p.batch_size for p in parts] == [40, 1, 55]
    for t, bag in enumerate(bags):
        assert torch.allclose(torch.cat([bag(p.indices[t], p.offsets[t]) for p in parts]), full[t])
        assert torch.equal(torch.cat([p.indices[t] for p in parts]), batch.indices[t])
        assert all(int(p.offsets[t][0]) == 0 for p in parts)
    assert batch.slice(5, 5).batch_size == 0
    with pytest.raises(IndexError):
        batch.slice(10, 97)
    moved = batch.to("cpu")
    assert_same(moved, batch)
    assert moved.dense.device.type == "cpu"


def test_criteo_like_profile_reproduces_the_measured_distinct_fractions():
    """Per-table exponents are fitted so that 128-row chunks hold real Criteo's distinct-id
    fractions (at the run's capped cardinalities)."""
    import numpy as np
    from dlrm_comp.data.synthetic import DISTINCT_FRACTIONS, PROFILES, SyntheticCriteo, profile_exponents
    cards = [min(c, 10000) for c in PROFILES["criteo_like"]]
    source = SyntheticCriteo(cards, zipf_exponent=profile_exponents("criteo_like", cards, 1.1),
                             num_val_samples=64, num_test_samples=64)
    rows, want = DISTINCT_FRACTIONS["criteo_like"]
    got = np.zeros(len(cards))
    for i in range(40):
        batch = source.batch("train", i, rows)
        got += [len(np.unique(ids.numpy())) / rows for ids in batch.indices]
    assert np.abs(got / 40 - np.array(want)).max() < 0.05
