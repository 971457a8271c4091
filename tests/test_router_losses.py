"""Router losses on hand-made gates: the Switch balance term, gate entropy, mixture NLL and their masking."""

from __future__ import annotations

import math

import pytest
import torch

from sopmoe_models.data import IGNORE_INDEX, output_mask
from sopmoe_models.routers.losses import (
    gate_entropy,
    gate_means,
    load_balance,
    mixture_nll,
    router_loss,
    shifted_targets,
    token_nll,
)


def g(rows):
    """(1, T, 2) gates from a list of (foundation, sft) rows."""
    return torch.tensor([rows], dtype=torch.float32)


ONES3 = torch.ones(1, 3)


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([(1.0, 0.0)] * 3, 2.0),  # everything routed to one expert with gate 1: E = 2
        ([(0.7, 0.3)] * 3, 1.4),  # f = (1, 0), P = (0.7, 0.3): 2 * 0.7
        ([(0.9, 0.1), (0.2, 0.8)], 1.0),  # f = (.5, .5), P = (.55, .45): 2 * (.275 + .225)
        ([(0.6, 0.4), (0.4, 0.6), (0.0, 1.0), (1.0, 0.0)], 1.0),  # balanced routing
    ],
)
def test_load_balance_on_hand_made_gates(rows, expected):
    gates = g(rows)
    assert load_balance(gates, torch.ones(1, len(rows))).item() == pytest.approx(expected)


def test_masked_positions_do_not_count():
    gates = g([(0.7, 0.3), (0.7, 0.3), (0.0, 1.0)])  # the last position is a prompt/pad position
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert load_balance(gates, mask).item() == pytest.approx(1.4)
    assert gate_entropy(gates, mask).item() == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)))
    assert gate_means(gates, mask).tolist() == pytest.approx([0.7, 0.3])


def test_per_layer_gates_average_over_layers():
    layer_a = [(1.0, 0.0)] * 3  # balance 2, entropy 0
    layer_b = [(0.5, 0.5)] * 3  # argmax ties go to expert 0: f = (1, 0), P = (.5, .5) -> 1; entropy log 2
    gates = torch.tensor([list(zip(layer_a, layer_b))], dtype=torch.float32)  # (1, 3, 2 layers, 2)
    assert gates.shape == (1, 3, 2, 2)
    assert load_balance(gates, ONES3).item() == pytest.approx(1.5)
    assert gate_entropy(gates, ONES3).item() == pytest.approx(math.log(2) / 2)
    assert torch.allclose(gate_means(gates, ONES3), torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


def test_entropy_limits():
    assert gate_entropy(g([(1.0, 0.0), (0.0, 1.0)]), torch.ones(1, 2)).item() == pytest.approx(0.0, abs=1e-6)
    assert gate_entropy(g([(0.5, 0.5)] * 2), torch.ones(1, 2)).item() == pytest.approx(math.log(2))


def test_balance_gradient_flows_only_through_mean_gate():
    logits = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]], requires_grad=True)
    gates = torch.softmax(logits, -1)
    load_balance(gates, torch.ones(1, 2)).backward()
    # all tokens routed to expert 0 (f = (1, 0)): the loss is 2 * P_0, which grows with the expert-0 logits
    assert (logits.grad[..., 0] > 0).all() and (logits.grad[..., 1] < 0).all()


def test_mixture_nll_is_the_nll_of_the_gated_mixture():
    p = torch.tensor([[[0.2, 0.6], [0.5, 0.1]]])  # p_e(y_t) for 2 positions, 2 experts
    gates = g([(0.3, 0.7), (1.0, 0.0)])
    expected = -(math.log(0.3 * 0.2 + 0.7 * 0.6) + math.log(0.5)) / 2
    assert mixture_nll(torch.log(p), gates, torch.ones(1, 2)).item() == pytest.approx(expected, rel=1e-6)
    # a one-hot gate is exactly that expert's NLL; masking drops a position
    assert mixture_nll(torch.log(p), g([(0.0, 1.0), (0.0, 1.0)]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(
        -math.log(0.6), rel=1e-6
    )


def test_output_mask_and_targets_shift_labels():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX]])
    assert output_mask(labels).tolist() == [[False, True, True, False]]  # position t predicts label t+1
    assert shifted_targets(labels).tolist() == [[0, 5, 6, 0]]


def test_router_loss_combines_the_terms():
    gates = g([(0.7, 0.3)] * 3)
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.125]]))
    parts = router_loss(lp, gates, ONES3, load_balance_weight=0.1, sparsity_weight=0.5)
    nll = token_nll(lp, ONES3)
    assert nll.item() == pytest.approx(-(math.log(0.5) + math.log(0.25) + math.log(0.125)) / 3)
    assert parts["loss"].item() == pytest.approx((nll + 0.1 * parts["balance"] + 0.5 * parts["entropy"]).item())
    assert parts["balance"].item() == pytest.approx(1.4)
