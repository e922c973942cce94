"""A retrain starts from the champion's weights (``data/warm_start.pt``, which the monitor writes):
empty means from scratch, a network of another shape is refused with the key that differs, and
the train stage then fine-tunes for ``train.warm_start_epochs`` instead of ``train.epochs``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipeline import train
from pipeline.learning.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    transform_identity,
    warm_start,
)
from tests.conftest import NO_WARM_START, repo_params, run_harden, train_args


def test_empty_mismatched_and_matching_warm_starts(trained: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(trained / "model.pt")
    config = ckpt.model_config
    assert NO_WARM_START.stat().st_size == 0  # what git holds
    saved, why = warm_start(NO_WARM_START, config)
    assert saved is None and "from scratch" in why and "empty" in why

    other = tmp_path / "other.pt"
    wider = {**config, "hidden": config["hidden"] * 2}
    save_checkpoint(dataclasses.replace(ckpt, model_config=wider), other)
    saved, why = warm_start(other, config)
    assert saved is None and "differs in hidden" in why

    # The same network reading another transform's outputs is no warm start either.
    assert ckpt.transform == transform_identity(ckpt.transform["kind"], None)
    quantile = transform_identity("quantile", None)
    saved, why = warm_start(trained / "model.pt", config, quantile)
    assert saved is None and "differs in transform" in why

    saved, why = warm_start(trained / "model.pt", config, ckpt.transform)
    assert saved is not None and why.startswith("warm start")
    assert all(torch.equal(saved.net[k], v) for k, v in ckpt.net.items())
    # A champion saved before checkpoints recorded their transform is still warm-started.
    older = tmp_path / "older.pt"
    save_checkpoint({k: v for k, v in ckpt.as_dict().items() if k != "transform"}, older)
    assert warm_start(older, config, quantile)[0] is not None


@pytest.mark.slow  # two train stage runs (16 s with their MLflow runs)
def test_the_train_stage_fine_tunes_the_warm_start(
    stage_inputs: Path, trained: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    params = write_params({"train.warm_start_epochs": 2, "train.patience": 100})
    out = tmp_path / "warm"
    assert train.main(train_args(stage_inputs, out, params, warm=trained / "model.pt")) == 0
    metrics = json.loads((out / "train.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["warm_start"].startswith("warm start")
    # From scratch the same params run train.epochs (the tiny profile's 3).
    cold = tmp_path / "cold"
    assert train.main(train_args(stage_inputs, cold, params)) == 0
    assert json.loads((cold / "train.json").read_text())["epochs_run"] == 3


@pytest.mark.slow  # a harden stage run of the repo's harden.warm_start_epochs (tiny MLP: ~10 s)
def test_a_retrain_hardens_on_and_leaves_the_worst_case_to_the_gate(
    stage_inputs: Path, trained: Path, hardened: Path, tmp_path: Path
) -> None:
    """With a warm start, harden runs harden.warm_start_epochs from the champion's weights and
    measures the test split clean only (the gate's worst case covers both models); a first run
    (the ``hardened`` fixture) sweeps its radii."""
    out = run_harden(stage_inputs, trained, tmp_path, warm=trained / "model.pt")
    m = json.loads((out / "robustness.json").read_text())
    assert m["warm_start"].startswith("warm start")
    repo = repo_params()["harden"]
    assert m["epochs_run"] == repo["warm_start_epochs"]
    assert m["evaluation"].startswith("clean accuracy only")
    # The weights kept are a moving average's, at the retrain's own decay and learning rate.
    ckpt = torch.load(out / "hardened.pt", weights_only=True)
    assert ckpt["harden_config"]["ema_decay"] == repo["warm_start_ema_decay"] > 0
    assert ckpt["harden_config"]["lr"] == repo["warm_start_lr"] != repo["lr"]
    for model in ("trained", "hardened"):
        assert m[model]["robust_accuracy"] is None and list(m[model]["by_eps"]) == ["0"]
        assert "art_robust_accuracy" not in m[model]
    first = json.loads((hardened / "robustness.json").read_text())
    assert first["warm_start"].startswith("from scratch")
    assert first["hardened"]["robust_accuracy"] is not None and len(first["hardened"]["by_eps"]) > 1
