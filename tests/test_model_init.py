"""Model construction owns its randomness: a DLRM's initial parameters come from its seed alone,
and building one leaves the process's global RNG as it was."""
from __future__ import annotations

import torch

from dlrm_comp.model import DLRM

ARGS = dict(cardinalities=[50, 7, 300], emb_dim=4, bottom_mlp="13-8-4", top_mlp="8-4-1")


def test_construction_leaves_the_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    DLRM(**ARGS, seed=5)
    assert torch.equal(torch.get_rng_state(), before)


def test_same_seed_same_parameters_whatever_the_global_rng():
    torch.manual_seed(1)
    a = DLRM(**ARGS, seed=7).state_dict()
    torch.rand(1000)  # the global stream moved on: no effect on the model
    b = DLRM(**ARGS, seed=7).state_dict()
    c = DLRM(**ARGS, seed=8).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["bottom.0.weight"], c["bottom.0.weight"])


def test_dense_init_matches_a_global_rng_seeded_with_the_seed():
    """The dense layers draw what nn.Linear's init then upstream's normal init drew from
    `torch.manual_seed(seed)`, as models built before the local generator did."""
    model = DLRM(**ARGS, seed=3)
    torch.manual_seed(3)
    for layer in [m for m in (*model.bottom, *model.top) if isinstance(m, torch.nn.Linear)]:
        n_out, n_in = layer.weight.shape
        reference = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            reference.weight.normal_(0.0, (2.0 / (n_in + n_out)) ** 0.5)
            reference.bias.normal_(0.0, (1.0 / n_out) ** 0.5)
        assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
