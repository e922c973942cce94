"""Pure pieces of training: augmentation, tuned-params overlay, model checks, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import TrainConfig, overlay, section
from pipeline.learning.metrics import classification_metrics, expected_calibration_error
from pipeline.learning.model import CNN, MLP, ModelConfig
from pipeline.learning.training import apply_tuned, random_shift
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


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_networks_map_features_to_class_logits(arch: str) -> None:
    mcfg = ModelConfig(arch, 64, 10, 32, 2, 0.1, 8, (8, 8))
    net = (CNN if arch == "cnn" else MLP)(mcfg).eval()
    assert net(torch.randn(5, 64)).shape == (5, 10)


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
