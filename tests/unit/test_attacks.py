"""Attacks: the threat-model box, and PGD against a linear model with a known worst case."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.attacks import Box, fgsm_rs, pgd, robust_accuracy, trades_adv
from pipeline.schema import Feature, Schema


def linear_model() -> nn.Module:
    """Two classes, logit difference 2 * (x0 - 0.5): class 1 iff x0 > 0.5."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.5, -0.5]))
    return model.eval()


def box(eps: float) -> Box:
    return Box(torch.full((2,), eps), torch.zeros(2), torch.ones(2))


def test_box_from_schema_scales_by_range_and_skips_categoricals() -> None:
    schema = Schema(
        (
            Feature("a", "numeric", "float64", 0.0, 16.0),
            Feature("b", "numeric", "float64", -1.0, 1.0),
            Feature("c", "categorical", "string", categories=("x", "y", "z")),
        ),
        "t",
        (0, 1),
    )
    b = Box.from_schema(schema, 0.1)
    torch.testing.assert_close(b.eps, torch.tensor([1.6, 0.2, 0.0]))
    x = torch.tensor([[15.5, 0.0, 1.0]])
    out = b.project(x + torch.tensor([[5.0, -5.0, 0.7]]), x)
    torch.testing.assert_close(out, torch.tensor([[16.0, -0.2, 1.0]]))


def test_attacks_stay_in_the_box() -> None:
    model, b = linear_model(), box(0.1)
    x = torch.rand(64, 2)
    y = (x[:, 0] > 0.5).long()
    for adv in (
        pgd(model, x, y, b, 10, 0.25),
        fgsm_rs(model, x, y, b),
        trades_adv(model, x, b, 5, 0.5),
    ):
        assert ((adv - x).abs() <= 0.1 + 1e-6).all()
        assert ((adv >= 0) & (adv <= 1)).all()


def test_pgd_finds_exactly_the_breakable_points() -> None:
    # A point is breakable iff its distance to the boundary x0 = 0.5 is below eps.
    model = linear_model()
    x0 = torch.tensor([0.3, 0.45, 0.58, 0.62, 0.9])
    x = torch.stack([x0, torch.full_like(x0, 0.5)], dim=1)
    y = (x0 > 0.5).long()
    adv = pgd(model, x, y, box(0.1), steps=20, step_frac=0.25)
    broken = model(adv).argmax(1) != y
    assert broken.tolist() == [False, True, True, False, False]
    assert robust_accuracy(model, x, y, box(0.1), 20, 2, step_frac=0.25) == 3 / 5
    assert robust_accuracy(model, x, y, box(0.0), 20, 2) == 1.0
