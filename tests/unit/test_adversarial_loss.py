"""Hardening on a retrain: rows of adversarial share 0 are never attacked; the epoch kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.contracts.params import HardenConfig, section
from pipeline.learning import adversarial
from pipeline.learning.attacks import Box
from tests.conftest import repo_params


def setup(method: str) -> tuple[nn.Module, HardenConfig, Box, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)  # no dropout, no batch norm: train and eval mode agree
    cfg = section(
        {**repo_params(), "harden": {**repo_params()["harden"], "method": method}},
        "harden",
        HardenConfig,
    )
    box = Box(torch.full((4,), 0.1), torch.zeros(4), torch.ones(4))
    return model, cfg, box, torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])


def shifted(model: nn.Module, xb: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    """A stand-in attack: deterministic, and it records which rows it was given."""
    shifted.rows.append(len(xb))  # type: ignore[attr-defined]
    return (xb + 0.05).clamp(0, 1)


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_only_rows_with_a_share_are_attacked(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, cfg, box, xb, yb = setup(method)
    shifted.rows = []  # type: ignore[attr-defined]
    monkeypatch.setattr(adversarial, "pgd", shifted)
    monkeypatch.setattr(adversarial, "trades_adv", lambda m, x, *a, **k: shifted(m, x))
    wb = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.5, 1.0])
    share = torch.tensor([0.0, 0.0, 0.25, 0.0, 1.0, 0.0])
    loss = adversarial.adversarial_loss(model, xb, yb, wb, cfg, box, share)
    assert shifted.rows == [2]  # type: ignore[attr-defined]  # the two rows of share > 0

    logits = model(xb)
    clean = F.cross_entropy(logits, yb, reduction="none")
    x_adv = (xb + 0.05).clamp(0, 1)
    if method == "pgd":
        adv = F.cross_entropy(model(x_adv), yb, reduction="none")
        expected = share * adv + (1 - share) * clean
    else:
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1), reduction="none").sum(1)
        expected = clean + cfg.trades_beta * share * kl
    assert loss.item() == pytest.approx(((expected * wb).sum() / wb.sum()).item(), rel=1e-6)

    # A batch of production rows only: the clean loss, and no attack at all.
    shifted.rows = []  # type: ignore[attr-defined]
    zero = adversarial.adversarial_loss(model, xb, yb, wb, cfg, box, torch.zeros(6))
    assert shifted.rows == []  # type: ignore[attr-defined]
    assert zero.item() == pytest.approx(((clean * wb).sum() / wb.sum()).item(), rel=1e-6)


def test_a_retrain_keeps_the_latest_of_the_epochs_within_two_standard_errors() -> None:
    """Robust 0.96 on 250 rows has an error of 0.0124: 0.95 and 0.94 are within two of them and
    the latest of those is kept, whatever its clean accuracy; 0.93 is not."""

    def epoch(n: int, robust: float, clean: float) -> adversarial.Epoch:
        return adversarial.Epoch(n, robust, clean, {})

    ranked = [epoch(8, 0.96, 0.973), epoch(16, 0.95, 0.986), epoch(12, 0.94, 0.99)]
    ranked.append(epoch(19, 0.93, 0.99))  # the latest, but further than two errors
    kept = adversarial.retrain_choice(ranked, scored_rows=250)
    assert [c.epoch for c in kept] == [16, 8, 12, 19]  # the rest keep their order
    # With ten times the rows the error is 0.0039: only the most robust epoch is near enough.
    assert adversarial.retrain_choice(ranked, scored_rows=2500)[0].epoch == 8
