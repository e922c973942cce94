"""Attacks: the threat-model box, and PGD against a linear model with a known worst case."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.contracts.schema import Feature, Schema
from pipeline.learning.attacks import (
    Box,
    apgd,
    fgsm_rs,
    pgd,
    robust_accuracy,
    square_attack,
    trades_adv,
    worst_case,
)


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


def three_class_linear() -> nn.Module:
    """Three classes by x0: class 0 below 1/3, class 2 above 2/3 (x1 irrelevant)."""
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-6.0, 0.0], [0.0, 0.0], [6.0, 0.0]]))
        model.bias.copy_(torch.tensor([2.0, 0.0, -4.0]))
    return model.eval()


def test_apgd_breaks_exactly_the_breakable_points() -> None:
    """Class 1 holds x0 in (1/3, 2/3): a row is breakable iff it lies within eps of an edge."""
    model = three_class_linear()
    x0 = torch.linspace(0.36, 0.64, 57)
    X = torch.stack([x0, torch.full_like(x0, 0.5)], dim=1)
    y = torch.ones(len(x0), dtype=torch.long)
    eps = 0.1
    breakable = (x0 - 1 / 3 < eps) | (2 / 3 - x0 < eps)
    torch.manual_seed(0)
    for loss in ("ce", "dlr"):
        adv = apgd(model, X, y, box(eps), n_iter=20, loss=loss)
        assert ((adv - X).abs() <= eps + 1e-6).all()
        fooled = model(adv).argmax(1) != y
        assert not (fooled & ~breakable).any(), loss  # never claims an unbreakable row
        # Both losses have a saddle where the runner-up class changes (x0 = 1/2): a random
        # start past it climbs the wrong way, which is what restarts are for.
        assert fooled.sum() >= 0.9 * breakable.sum(), loss


def test_worst_case_is_the_per_row_minimum_over_attacks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    X = torch.rand(300, 2)
    with torch.no_grad():
        y = model(X).argmax(1)  # every row correct when clean
    result = worst_case(model, X, y, box(0.05), n_iter=10, restarts=1, pgd_steps=5, seed=1)
    accs = result["by_attack"]
    assert set(accs) == {"pgd", "apgd-ce", "apgd-dlr"}
    assert result["worst_case"] <= min(accs.values()) < 1.0  # an undefended model breaks
    assert result["robust_rows"].mean() == result["worst_case"]
    again = worst_case(model, X, y, box(0.05), n_iter=10, restarts=1, pgd_steps=5, seed=1)
    assert (again["robust_rows"] == result["robust_rows"]).all()  # seeded
    clean = worst_case(model, X, y, box(0.0), n_iter=10, restarts=1, pgd_steps=5)
    assert clean["worst_case"] == 1.0
    # Cascaded (each attack on the rows the earlier ones left): cumulative per attack, the same
    # worst case but for the random starts a shorter run draws differently.
    cascaded = worst_case(
        model, X, y, box(0.05), n_iter=10, restarts=1, pgd_steps=5, seed=1, cascade=True
    )
    steps = list(cascaded["by_attack"].values())
    assert steps == sorted(steps, reverse=True) and steps[0] == accs["pgd"]
    assert steps[-1] == cascaded["worst_case"] == cascaded["robust_rows"].mean()
    assert abs(cascaded["worst_case"] - result["worst_case"]) <= 0.02


def test_worst_case_points_are_judged_by_the_shipped_graph_when_given() -> None:
    """A judge (an int8 graph) decides which rows survive each point crafted on the twin: the
    twin itself as judge gives the default's rows; a judge right everywhere keeps every row; the
    judge sees the clean rows and every attack's points, all inside the box."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    X = torch.rand(200, 2)
    with torch.no_grad():
        y = model(X).argmax(1)
    settings = {"n_iter": 10, "restarts": 1, "pgd_steps": 5, "seed": 1}
    default = worst_case(model, X, y, box(0.05), **settings)
    seen: list[torch.Tensor] = []

    def twin_judge(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        with torch.no_grad():
            return model(x).argmax(1) == t

    judged = worst_case(model, X, y, box(0.05), judge=twin_judge, **settings)
    assert (judged["robust_rows"] == default["robust_rows"]).all() and default["worst_case"] < 1
    assert torch.equal(seen[0], X) and len(seen) == 4  # clean, PGD, APGD-CE, APGD-DLR
    for points in seen[1:]:
        assert (points - X[: len(points)]).abs().max() <= 0.05 + 1e-6  # the box: eps 0.05 of 1
    always = worst_case(model, X, y, box(0.05), judge=lambda x, t: t == t, **settings)
    assert always["worst_case"] == 1.0


def test_square_attack_needs_no_gradients_and_finds_the_breakable_points() -> None:
    model = three_class_linear()
    x0 = np.linspace(0.36, 0.64, 57)
    X = np.stack([x0, np.full_like(x0, 0.5)], axis=1)
    y = np.ones(len(x0), dtype=np.int64)

    def scores(features: np.ndarray) -> np.ndarray:  # a black box: numpy in, numpy out
        with torch.no_grad():
            return torch.softmax(model(torch.as_tensor(features)), 1).numpy()

    eps = np.full(2, 0.1)
    fooled = square_attack(scores, X, y, eps, np.zeros(2), np.ones(2), queries=50, seed=0)
    np.testing.assert_array_equal(fooled, (x0 - 1 / 3 < 0.1) | (2 / 3 - x0 < 0.1))
    none = square_attack(scores, X, y, 0 * eps, np.zeros(2), np.ones(2), queries=50)
    assert not none.any()
