"""Tune stage: Hyperband prunes trials, the study is shared through SQLite, train reads the best."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipeline import train, tune
from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import read_params, section
from tests.conftest import train_args

TUNE = {
    "tune.n_trials": 8,
    "tune.max_epochs": 4,  # Hyperband pruned 3-6 of the 8 trials at seeds 42, 0, 1, 2 (6: 3-6)
    "tune.min_epochs": 1,
    "train.model": "mlp",
    "train.patience": 100,
}


def run_tune(inputs: Path, params: Path, out: Path) -> dict:
    code = tune.main(
        [
            "--params",
            str(params),
            "--schema",
            f"{inputs}/data/schema.json",
            "--features",
            f"{inputs}/models/features",
            "--data",
            f"{inputs}/data/prepared",
            "--out",
            f"{out}/tuned.json",
            "--metrics",
            f"{out}/tune.json",
        ]
    )
    assert code == 0
    return json.loads((out / "tune.json").read_text())


@pytest.mark.slow  # 8 Optuna trials, a second worker and a train run: 6 s (make test < 2 min)
def test_hyperband_prunes_and_train_uses_the_best_params(
    stage_inputs: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    params = write_params({**TUNE, "tune.storage": str(tmp_path / "optuna.db")})
    summary = run_tune(stage_inputs, params, tmp_path)
    print(f"tune: {summary['complete']} complete, {summary['pruned']} pruned")
    assert summary["n_trials"] == 8
    assert summary["pruned"] >= 1
    assert summary["complete"] >= 1
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    space = read_params(params)["tune"]["space"]
    assert tuned == summary["best_params"] and set(tuned) == set(space)
    for key, spec in space.items():
        if "choices" in spec:
            assert tuned[key] in spec["choices"]
        else:
            assert spec["low"] <= tuned[key] <= spec["high"]

    # A second worker with the same space and data joins the same study rather than starting
    # over (its own trial count is not part of the study's identity).
    more = write_params({**TUNE, "tune.n_trials": 2, "tune.storage": str(tmp_path / "optuna.db")})
    again = run_tune(stage_inputs, more, tmp_path)
    assert again["study"] == summary["study"] and again["n_trials"] == 10
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    assert tuned == again["best_params"]

    short = write_params({**TUNE, "train.epochs": 3}, name="train.yaml")
    out = tmp_path / "train"
    assert train.main(train_args(stage_inputs, out, short, tmp_path / "tuned.json")) == 0
    used = torch.load(out / "model.pt", weights_only=True)["train_config"]
    assert {k: used[k] for k in tuned} == tuned


def test_zero_trials_writes_empty_params(
    stage_inputs: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    summary = run_tune(stage_inputs, write_params({"tune.n_trials": 0}), tmp_path)
    assert summary == {"n_trials": 0}
    assert json.loads((tmp_path / "tuned.json").read_text()) == {}


def test_space_keys_are_checked(write_params: Callable[..., Path]) -> None:
    params = read_params(write_params({"tune.space": {"momentum": {"low": 0.1, "high": 0.9}}}))
    with pytest.raises(MlcycleError, match=r"tune\.space\.momentum"):
        section(params, "tune", tune.TuneConfig)
