"""Harden stage: the mechanics on the tiny profile; robustness floors and ART in the slow tier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest


@pytest.mark.slow
def test_hardened_model_is_robust_and_keeps_clean_accuracy(default_run: Path) -> None:
    # Measured on digits, eps = 0.1 of each pixel's range, test split. PGD-50 x 3 alone, earlier
    # models: 81.9-83.1 % over four runs. The per-row worst case of PGD-50, APGD-CE and APGD-DLR
    # (100 iterations, 2 restarts) on the default (pgd-5 x 45 epochs), train and harden seeds
    # 42 / 0 / 1 / 2: 86.9 / 86.7 / 84.2 / 87.2 % (seed 1 ships epoch 20: the more robust epochs
    # lost 1.1 points on test); a reviewer's AutoAttack-style evaluation of an earlier default
    # model found 77.8 %. The floor sits 4 points below the worst seed.
    m = json.loads((default_run / "metrics/robustness.json").read_text())
    assert m["eps"] == 0.1 and m["method"] == "pgd" and "APGD-CE" in m["evaluation"]
    hard, base = m["hardened"], m["trained"]
    assert hard["robust_accuracy"] >= 0.80
    assert set(hard["by_attack"]) == {"pgd", "apgd-ce", "apgd-dlr"}
    assert hard["robust_accuracy"] <= min(hard["by_attack"].values())
    assert hard["clean_accuracy"] >= base["clean_accuracy"] - 0.01
    assert base["robust_accuracy"] < 0.2  # the unhardened model is far weaker
    # ART's APGD-CE (another implementation, solved in normalised coordinates) agrees with ours.
    assert abs(hard["art_robust_accuracy"] - hard["by_attack"]["apgd-ce"]) <= 0.02
    assert abs(base["art_robust_accuracy"] - base["by_attack"]["apgd-ce"]) <= 0.02
    sweep = list(hard["by_eps"].values())
    assert sweep == sorted(sweep, reverse=True)  # larger eps never helps the model
    # Temperature scaling on val: test ECE 0.024 -> 0.009 (seed 42); the goal is 0.03.
    assert m["calibration"]["test_ece_after"] <= 0.03


def test_metrics_record_the_sweep_and_the_cost(hardened: Path) -> None:
    m = json.loads((hardened / "robustness.json").read_text())
    assert m["method"] == "pgd" and m["epochs_run"] == 2
    for model in ("trained", "hardened"):
        by_eps = m[model]["by_eps"]
        assert set(by_eps) == {"0", "0.1"}
        assert by_eps["0.1"] <= by_eps["0"] == m[model]["clean_accuracy"]
    # pgd with 2 steps: 3 gradient passes a row, 2 epochs against train's 3 epochs.
    assert m["harden_to_train_passes"] == pytest.approx(3 * 2 / 3)
    timing = json.loads((hardened / "harden_time.json").read_text())
    assert timing["harden_seconds"] > 0 and "seconds" not in json.dumps(m)


def test_robustness_plot_and_table(hardened: Path) -> None:
    table = pd.read_csv(hardened / "robustness.csv")
    assert list(table.columns) == ["eps", "trained", "hardened", "trained_pgd", "hardened_pgd"]
    assert (table.hardened <= table.hardened_pgd).all()  # the worst case includes PGD
    m = json.loads((hardened / "robustness.json").read_text())
    assert table.hardened.tolist() == pytest.approx(list(m["hardened"]["by_eps"].values()))
    assert (hardened / "robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_no_epoch_within_budget_keeps_the_trained_weights(
    stage_inputs: Path, trained: Path
) -> None:
    """An impossible budget: every epoch is over it, so the starting weights ship (not the last
    epoch's, which the gate would then have to reject on clean accuracy)."""

    import torch

    from pipeline.contracts.params import HardenConfig, overlay, section
    from pipeline.contracts.schema import Schema
    from pipeline.learning.adversarial import harden
    from pipeline.learning.checkpoint import load_checkpoint
    from pipeline.learning.model import build
    from pipeline.learning.splits import load_split
    from tests.conftest import TINY, repo_params

    schema = Schema.from_dict(json.loads((stage_inputs / "data/schema.json").read_text()))
    train, val = (
        load_split(stage_inputs / f"data/prepared/{s}.parquet", schema) for s in ("train", "val")
    )
    ckpt = load_checkpoint(trained / "model.pt")
    cfg = overlay(
        section(repo_params(TINY), "harden", HardenConfig), "harden", max_clean_drop=-1.0, epochs=1
    )
    model = build(ckpt)
    history, _, selection = harden(model, train, val, schema, cfg, torch.device("cpu"))
    assert len(history) == 1 and selection.kept.startswith("trained")
    for name, tensor in build(ckpt).net.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], tensor), name


def test_budget_on_test_passes_over_epochs_that_break_it(stage_inputs: Path, trained: Path) -> None:
    """The most robust epoch on val that loses too much on test is passed over for the next one
    that holds the budget there; when none does, the trained weights ship."""

    import torch

    from pipeline.contracts.params import HardenConfig, overlay, section
    from pipeline.contracts.schema import Schema
    from pipeline.learning.adversarial import Epoch, Selection, check_budget_on_test
    from pipeline.learning.checkpoint import load_checkpoint
    from pipeline.learning.model import build
    from pipeline.learning.splits import load_split
    from tests.conftest import TINY, repo_params

    schema = Schema.from_dict(json.loads((stage_inputs / "data/schema.json").read_text()))
    test = load_split(stage_inputs / "data/prepared/test.parquet", schema)
    ckpt = load_checkpoint(trained / "model.pt")
    cfg = section(repo_params(TINY), "harden", HardenConfig)
    good = {k: v.clone() for k, v in build(ckpt).net.state_dict().items()}
    good = {k: v * 1.01 if v.is_floating_point() else v for k, v in good.items()}  # same calls
    broken = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in good.items()}

    def check(states: list[dict], budget: float) -> tuple[dict, dict]:
        hardened = build(ckpt)
        hardened.net.load_state_dict(states[0])
        within = [Epoch(9 - i, 0.9 - i / 10, 0.99, s) for i, s in enumerate(states)]
        selection = Selection(
            kept="hardened",
            val_clean_start=0.99,
            val_robust_start=0.1,
            val_robust_kept=0.9,
            kept_epoch=9,
            best_val_robust_any_epoch=0.9,
            within=within,
        )
        c = overlay(cfg, "harden", max_clean_drop=budget)
        result = check_budget_on_test(build(ckpt), hardened, test, schema, c, selection)
        return result, hardened.net.state_dict()

    budget, weights = check([broken, broken, good], 0.01)
    assert budget["test_clean_drop_of_best_val_epoch"] > 0.5 and budget["kept_epoch"] == 7
    assert budget["epochs_over_budget_on_test"] == 2 and budget["limited"]
    assert not budget["fallback_to_trained"] and "candidates" not in budget
    assert budget["test_clean_drop_of_kept"] <= 0.01
    assert all(torch.equal(weights[k], good[k]) for k in good)

    budget, weights = check([broken, broken], 0.01)
    assert budget["fallback_to_trained"] and budget["epochs_over_budget_on_test"] == 2
    trained_state = build(ckpt).net.state_dict()
    assert all(torch.equal(weights[k], trained_state[k]) for k in trained_state)

    budget, _ = check([good, broken], 0.01)  # the first holds: nothing else is tried
    assert budget["kept_epoch"] == 9 and budget["epochs_over_budget_on_test"] == 0


def test_weight_averaging_scores_and_keeps_the_average_and_trains_on(
    stage_inputs: Path, trained: Path
) -> None:
    """``ema_decay``: the moving average is what each epoch scores and what is kept, while
    training goes on from the live weights (the same losses as without averaging)."""

    import torch

    from pipeline.contracts.params import HardenConfig, overlay, section
    from pipeline.contracts.schema import Schema
    from pipeline.learning.adversarial import harden
    from pipeline.learning.attacks import Box, robust_accuracy
    from pipeline.learning.checkpoint import load_checkpoint
    from pipeline.learning.model import build
    from pipeline.learning.splits import load_split
    from tests.conftest import TINY, repo_params

    schema = Schema.from_dict(json.loads((stage_inputs / "data/schema.json").read_text()))
    train, val = (
        load_split(stage_inputs / f"data/prepared/{s}.parquet", schema) for s in ("train", "val")
    )
    ckpt = load_checkpoint(trained / "model.pt")
    base = overlay(
        section(repo_params(TINY), "harden", HardenConfig), "harden", max_clean_drop=1.0, epochs=2
    )
    runs = {}
    for decay in (0.0, 0.5):
        model = build(ckpt)
        cfg = overlay(base, "harden", ema_decay=decay)
        history, _, _ = harden(model, train, val, schema, cfg, torch.device("cpu"))
        clean = robust_accuracy(model, val.X, val.y, Box.from_schema(schema, 0.0), 1, 1)
        robust = [h["val_robust"] for h in history]
        kept = history[robust.index(max(robust))]
        assert kept["val_clean"] == clean  # the kept weights are the ones scored
        runs[decay] = ([h["train_loss"] for h in history], model.net.state_dict())
    assert runs[0.5][0] == runs[0.0][0]
    averaged, live = runs[0.5][1], runs[0.0][1]
    assert any(not torch.equal(averaged[k], live[k]) for k in live if live[k].is_floating_point())


def test_temperature_and_reliability_are_recorded(hardened: Path) -> None:
    import torch

    m = json.loads((hardened / "robustness.json").read_text())
    ckpt = torch.load(hardened / "hardened.pt", weights_only=True)
    assert ckpt["temperature"] == m["calibration"]["temperature"] > 0
    assert m["calibration"]["val_ece_after"] <= m["calibration"]["val_ece_before"] + 0.02
    assert {"fallback_to_trained", "limited", "test_clean_drop_of_kept"} <= set(m["budget"])
    assert (hardened / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_the_budget_holds_per_slice_and_the_production_weight_halves(
    stage_inputs: Path, trained: Path
) -> None:
    """A retrain's val split has source and production rows: an epoch within the budget on the
    source rows but over it on the production rows is not kept (the reference model's weights
    ship), and the production rows' adversarial share halves after it; on the source rows alone
    (the production slice left out) the same epoch is within budget and kept."""

    import dataclasses

    import torch

    from pipeline.contracts.params import HardenConfig, overlay, section
    from pipeline.contracts.schema import Schema
    from pipeline.learning.adversarial import harden
    from pipeline.learning.checkpoint import load_checkpoint
    from pipeline.learning.model import build
    from pipeline.learning.splits import Split, load_split
    from tests.conftest import TINY, repo_params

    schema = Schema.from_dict(json.loads((stage_inputs / "data/schema.json").read_text()))
    train, val = (
        load_split(stage_inputs / f"data/prepared/{s}.parquet", schema) for s in ("train", "val")
    )
    ckpt = load_checkpoint(trained / "model.pt")
    reference = build(ckpt)
    # The start: the reference with its output layer's rows rolled by one, so it answers class
    # c + 1 wherever the reference answers c.
    start = dict(ckpt.net)
    last_w = [k for k in start if k.endswith("weight")][-1]
    last_b = last_w.removesuffix("weight") + "bias"
    start[last_w], start[last_b] = start[last_w].roll(1, 0), start[last_b].roll(1, 0)
    with torch.no_grad():
        ref_pred = reference(val.X).argmax(1)
        rolled = build(ckpt)
        rolled.net.load_state_dict(start)
        rolled_pred = rolled(val.X).argmax(1)
    assert torch.equal(rolled_pred, (ref_pred + 1) % schema.n_classes)
    half = torch.arange(len(val.y)) % 2 == 1
    # Source rows: labelled as the start answers (the reference is far below it there, so no
    # loss of accuracy); production rows: as the reference answers (the start is far below it).
    labels = torch.where(half, ref_pred, rolled_pred)
    val_mixed = dataclasses.replace(val, y=labels, production=half)
    train_mixed = dataclasses.replace(train, production=torch.arange(len(train.y)) % 2 == 1)
    cfg = overlay(
        section(repo_params(TINY), "harden", HardenConfig),
        "harden",
        epochs=2,
        lr=1e-12,  # the weights stay where they start: the verdicts are the budget's alone
        max_clean_drop=0.05,
        production_weight=0.5,
    )

    def run(train_split: Split, val_split: Split) -> tuple[Any, ...]:
        model = build(ckpt)
        model.net.load_state_dict(start)
        return model, *harden(
            model, train_split, val_split, schema, cfg, torch.device("cpu"), reference=reference
        )

    model, history, _, selection = run(train_mixed, val_mixed)
    assert [h["production_weight"] for h in history] == [0.5, 0.25]
    assert all(h["val_clean_production"] < 0.7 for h in history)
    assert selection.kept.startswith("trained") and selection.production_weight_final == 0.125
    assert selection.val_clean_start_by_slice == {
        "source": 0.0,
        "production": 1.0,
    }
    for name, tensor in reference.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], tensor), name  # the reference ships

    source = ~half  # where the start answers as the labels say and the reference does not
    source_only = Split(val_mixed.X[source], val_mixed.y[source], val_mixed.w[source], None)
    _, history, _, selection = run(dataclasses.replace(train, production=None), source_only)
    assert "production_weight" not in history[0] and selection.kept == "hardened"
