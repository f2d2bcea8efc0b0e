"""DLRM shapes, interaction widths, the hook seam, and the optimizers with sparse gradients."""
import pytest
import torch
import torch.nn.functional as F

from dlrm_comp.model import DLRM, interaction_width

CARDS = [50, 7, 300, 2]


def _inputs(batch=6, cards=CARDS, pooling=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, 13, generator=g)
    indices, offsets = [], []
    for c in cards:
        lengths = torch.randint(1, pooling + 1, (batch,), generator=g)
        indices.append(torch.randint(0, c, (int(lengths.sum()),), generator=g))
        offsets.append(torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]))
    return dense, indices, offsets


@pytest.mark.parametrize("interaction,self_int", [("dot", False), ("dot", True), ("cat", False)])
def test_forward_shapes(interaction, self_int):
    model = DLRM(CARDS, 8, "13-16-8", "32-16-1", interaction=interaction, self_interaction=self_int)
    out = model(*_inputs())
    assert out.shape == (6,)
    first_top = model.top[0]
    assert first_top.in_features == interaction_width(interaction, len(CARDS), 8, 8, self_int)


def test_interaction_width_matches_upstream_formula():
    # upstream: num_int = (n*(n-1))/2 + d with n = tables + 1 (no self interaction)
    assert interaction_width("dot", 26, 16, 16, False) == 27 * 26 // 2 + 16
    assert interaction_width("dot", 26, 16, 16, True) == 27 * 28 // 2 + 16
    assert interaction_width("cat", 26, 16, 64, False) == 64 + 26 * 16


def test_dot_interaction_values():
    model = DLRM([5, 5], 2, "13-2", "4-1", interaction="dot")
    x = torch.tensor([[1.0, 2.0]])
    e1, e2 = torch.tensor([[3.0, 4.0]]), torch.tensor([[5.0, 6.0]])
    out = model.interaction(x, [e1, e2])
    # [x, <e1,x>, <e2,x>, <e2,e1>]
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 11.0, 17.0, 39.0]]))


def test_bad_bottom_width_rejected():
    with pytest.raises(ValueError, match="emb_dim"):
        DLRM(CARDS, 8, "13-16-4", "8-1")


def test_hooks_see_pooled_outputs_and_can_change_them():
    model = DLRM(CARDS, 8, "13-16-8", "32-1")
    seen = []

    class Record(torch.nn.Module):
        def forward(self, pooled):
            seen.append(pooled.shape)
            return torch.zeros_like(pooled)

    inputs = _inputs()
    base = model(*inputs)
    model.set_pooled_hooks([Record() for _ in CARDS])
    hooked = model(*inputs)
    assert seen == [(6, 8)] * len(CARDS)
    assert not torch.equal(base, hooked)
    with pytest.raises(ValueError):
        model.set_pooled_hooks([Record()])


@pytest.mark.parametrize("opt_name", ["sgd", "adagrad"])
@pytest.mark.parametrize("sparse", [True, False])
def test_training_reduces_loss(opt_name, sparse):
    torch.manual_seed(0)
    model = DLRM(CARDS, 8, "13-16-8", "32-1", sparse=sparse)
    opt = torch.optim.SGD(model.parameters(), lr=0.3) if opt_name == "sgd" else \
        torch.optim.Adagrad(model.parameters(), lr=0.05)
    dense, indices, offsets = _inputs(batch=64)
    labels = (dense[:, 0] > 0.5).float()
    losses = []
    for _ in range(200):
        loss = F.binary_cross_entropy_with_logits(model(dense, indices, offsets), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    if sparse:
        assert model.embeddings[0].weight.grad.is_sparse


def test_embedding_init_range():
    model = DLRM([10000, 4], 8, "13-8", "16-1")
    w = model.embeddings[0].weight
    assert w.abs().max() <= (1 / 10000) ** 0.5
