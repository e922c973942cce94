"""Pure pieces of training: augmentation, tuned-params overlay, model checks, metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import TrainConfig, overlay, section
from pipeline.learning.metrics import classification_metrics, expected_calibration_error
from pipeline.learning.model import CNN, MLP, ModelConfig, TabM, build_net
from pipeline.learning.training import apply_tuned, fit, random_shift
from tests.conftest import repo_params


@pytest.fixture
def cfg() -> TrainConfig:
    return section(repo_params(), "train", TrainConfig)


def test_random_shift_moves_pixels_by_at_most_the_limit() -> None:
    img = torch.zeros(200, 8, 8)
    img[:, 4, 3] = 1.0
    gen = torch.Generator().manual_seed(0)
    out = random_shift(img.reshape(200, 64), (8, 8), 1, gen).reshape(200, 8, 8)
    assert torch.all(out.sum(dim=(1, 2)) == 1.0)  # one pixel in, one pixel out: nothing lost
    rows, cols = out.nonzero()[:, 1], out.nonzero()[:, 2]
    assert set(rows.tolist()) == {3, 4, 5} and set(cols.tolist()) == {2, 3, 4}
    same = random_shift(img.reshape(200, 64), (8, 8), 0, gen)
    assert torch.equal(same, img.reshape(200, 64))


def test_tuned_values_overlay_only_tunable_keys(cfg: TrainConfig) -> None:
    assert apply_tuned(cfg, {"lr": 0.01, "hidden": 64}) == overlay(cfg, "train", lr=0.01, hidden=64)
    with pytest.raises(MlcycleError, match="'epochs' is not tunable"):
        apply_tuned(cfg, {"epochs": 3})


@pytest.mark.parametrize("arch", ["mlp", "cnn", "tabm"])
def test_networks_map_features_to_class_logits(arch: str) -> None:
    mcfg = ModelConfig(arch, 64, 10, 32, 2, 0.1, 8, (8, 8), members=4)
    net = build_net(mcfg).eval()
    assert isinstance(net, {"mlp": MLP, "cnn": CNN, "tabm": TabM}[arch])
    assert net(torch.randn(5, 64)).shape == (5, 10)


def test_tabm_answers_the_mean_of_its_members() -> None:
    """Each member scales the row by its own adapter, the shared MLP sees every copy, and the
    head reads the members' mean: members with equal adapters answer as one MLP would."""
    torch.manual_seed(0)
    net = TabM(ModelConfig("tabm", 6, 3, 16, 2, 0.0, 4, None, members=5)).eval()
    assert set(net.adapter.detach().unique().tolist()) <= {-1.0, 1.0}
    x = torch.randn(7, 6)
    by_hand = torch.stack([net.body(x * a) for a in net.adapter]).mean(0)
    torch.testing.assert_close(net(x), net.head(by_hand))
    with torch.no_grad():
        net.adapter.fill_(1.0)
    torch.testing.assert_close(net(x), net.head(net.body(x)))


def test_cnn_refuses_features_that_are_not_an_image() -> None:
    with pytest.raises(ValueError, match="needs image_shape with 32 pixels"):
        CNN(ModelConfig("cnn", 32, 10, 32, 2, 0.1, 8, (8, 8)))


def test_calibration_error_and_metrics() -> None:
    y = np.array([0, 1, 0, 1])
    sure_right = np.eye(2)[y]
    assert expected_calibration_error(y, sure_right) == 0.0
    sure_half_wrong = np.eye(2)[[0, 1, 1, 0]]
    assert expected_calibration_error(y, sure_half_wrong) == pytest.approx(0.5)
    m = classification_metrics(y, np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]]), 2)
    assert m["accuracy"] == 0.75
    assert m["per_class_recall"] == {"0": 1.0, "1": 0.5}


def test_a_last_batch_of_one_row_trains_and_hardens(cfg: TrainConfig) -> None:
    """Batch norm cannot train on one row: with batch_size + 1 training rows (a retrain's row
    count is whatever feedback brought), training and hardening skip that last row's step
    instead of failing (a retrain's `dvc repro` once exited 1 on it)."""
    from pipeline.contracts.params import HardenConfig
    from pipeline.contracts.schema import Feature, Schema
    from pipeline.learning import adversarial
    from pipeline.learning.model import Classifier
    from pipeline.learning.splits import Split
    from pipeline.learning.tasks.classification import Classification
    from pipeline.learning.transforms import FeatureTransform

    rng = np.random.default_rng(0)
    n = cfg.batch_size + 1
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    split = Split(torch.tensor(X), torch.tensor(y), torch.ones(n))
    net = MLP(ModelConfig("mlp", 4, 2, 8, 1, 0.0, 4, None))
    model = Classifier(FeatureTransform().fit(X).module(), net)
    device = torch.device("cpu")
    short = overlay(cfg, "train", epochs=1)
    result = fit(model, split, split, short, device, objective=Classification().objective)
    assert result.epochs_run == 1
    schema = Schema(
        tuple(Feature(f"x{i}", "numeric", "float64", -4.0, 4.0) for i in range(4)), "y", (0, 1)
    )
    harden_cfg = overlay(
        section(repo_params(), "harden", HardenConfig), "harden", epochs=1, batch_size=n - 1
    )
    history, _, _ = adversarial.harden(model, split, split, schema, harden_cfg, device)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    # A retrain: production rows train clean (production_weight 0), so only the source rows
    # are attacked; a batch whose one source row is its only attacked row must train too.
    for method in ("pgd", "trades"):
        production = torch.ones(n, dtype=torch.bool)
        production[0] = False  # one source row, in whichever batch it falls
        retrain = dataclasses.replace(split, production=production)
        lone = overlay(harden_cfg, "harden", production_weight=0.0, method=method)
        history, _, _ = adversarial.harden(model, retrain, split, schema, lone, device)
        assert len(history) == 1 and np.isfinite(history[0]["train_loss"]), method


def test_a_pruned_model_hardened_against_its_unpruned_reference_keeps_its_best_epoch(
    cfg: TrainConfig,
) -> None:
    """harden's budget against a reference of another shape (a pruned model against the
    unpruned one): with no epoch within it, the model keeps its most accurate fine-tuned epoch
    (the reference's weights cannot load into it; its untuned start is no better)."""
    from pipeline.contracts.params import HardenConfig
    from pipeline.learning import adversarial
    from pipeline.learning.model import Classifier
    from pipeline.learning.splits import Split
    from pipeline.learning.tasks.classification import Classification
    from pipeline.learning.transforms import FeatureTransform

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    split = Split(torch.tensor(X), torch.tensor(y), torch.ones(len(y)))
    transform = FeatureTransform().fit(X).module()
    reference = Classifier(transform, MLP(ModelConfig("mlp", 4, 2, 16, 1, 0.0, 4, None)))
    fit(reference, split, split, overlay(cfg, "train", epochs=20), torch.device("cpu"),
        objective=Classification().objective)  # fmt: skip
    small = Classifier(transform, MLP(ModelConfig("mlp", 4, 2, 4, 1, 0.0, 4, None)))
    with torch.no_grad():
        small.net.net[-1].weight.zero_()  # answers class 0 for every row: about half right
        small.net.net[-1].bias.copy_(torch.tensor([1.0, 0.0]))
    start = {k: v.clone() for k, v in small.net.state_dict().items()}
    harden_cfg = overlay(
        section(repo_params(), "harden", HardenConfig), "harden", epochs=3, lr=1e-4,
        max_clean_drop=0.0,
    )  # fmt: skip
    history, _, selection = adversarial.harden(
        small, split, split, schema_of(4), harden_cfg, torch.device("cpu"), reference=reference
    )
    assert selection.val_clean_start > 0.9 and selection.kept.startswith("trained")
    assert max(h["val_clean"] for h in history) < selection.val_clean_start  # none within
    assert any(not torch.equal(v, start[k]) for k, v in small.net.state_dict().items())
    small.eval()
    with torch.no_grad():
        now = float((small(split.X).argmax(1) == split.y).float().mean())
    assert now == pytest.approx(max(h["val_clean"] for h in history), abs=1e-6)


def schema_of(n: int) -> Any:
    from pipeline.contracts.schema import Feature, Schema

    return Schema(
        tuple(Feature(f"x{i}", "numeric", "float64", -4.0, 4.0) for i in range(n)), "y", (0, 1)
    )


def test_gradient_boosting_is_a_classifier_baseline_by_name(cfg: TrainConfig) -> None:
    """``train.baselines: [hgb]`` fits scikit-learn's HistGradientBoostingClassifier beside the
    network (weighted, scored like the others); a name it does not know is refused by name."""
    from pipeline.learning.tasks.classification import Classification
    from pipeline.learning.training import fit_baselines

    task = Classification()
    models = task.baselines(overlay(cfg, "train", baselines=["hgb", "logreg"]))
    assert [type(m).__name__ for m in models.values()] == [
        "HistGradientBoostingClassifier",
        "LogisticRegression",
    ]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3))
    y = ((X[:, 0] * X[:, 1]) > 0).astype(np.int64)  # an interaction a linear model cannot draw
    scores = fit_baselines(
        models, X[:400], y[:400], np.ones(400), X[400:], y[400:], task.baseline_score
    )
    assert scores["hgb"]["test_accuracy"] > 0.85 > scores["logreg"]["test_accuracy"]
    with pytest.raises(MlcycleError, match="baselines"):
        overlay(cfg, "train", baselines=["xgb"])
