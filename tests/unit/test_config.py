"""params.yaml loading: unknown, missing and ill-typed keys fail with the key's name."""

from __future__ import annotations

import pytest

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import (
    DataConfig,
    FeaturesConfig,
    PreprocessConfig,
    read_params,
    section,
)
from tests.conftest import ROOT, repo_params, with_overrides


def test_repo_params_load_every_section() -> None:
    params = read_params(ROOT / "params.yaml")
    assert section(params, "data", DataConfig).source == "digits"
    assert section(params, "preprocess", PreprocessConfig).noise.folds >= 2
    assert section(params, "features", FeaturesConfig).candidates


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.colour": 1}, "unknown key 'data.colour'"),
        ({"preprocess.noise.speed": 3}, "unknown key 'preprocess.noise.speed'"),
        ({"preprocess.test_size": "big"}, "preprocess.test_size = 'big'"),
        ({"preprocess.test_size": 0.7}, "expected a share in (0, 0.5)"),
        ({"preprocess.missing": "guess"}, "expected one of ['impute', 'drop']"),
        ({"features.candidates": ["fourier"]}, "features.candidates[0] = 'fourier'"),
        ({"features.cv_folds": True}, "features.cv_folds = True"),
    ],
)
def test_bad_params_name_the_key(overrides: dict, message: str) -> None:
    params = with_overrides(repo_params(), overrides)
    with pytest.raises(MlcycleError) as err:
        for name, cls in (
            ("data", DataConfig),
            ("preprocess", PreprocessConfig),
            ("features", FeaturesConfig),
        ):
            section(params, name, cls)
    assert message in str(err.value)


def test_missing_key_is_an_error_not_a_default() -> None:
    params = repo_params()
    del params["data"]["target"]
    with pytest.raises(MlcycleError, match=r"'data\.target' is missing"):
        section(params, "data", DataConfig)


def test_ints_are_accepted_for_floats() -> None:
    params = with_overrides(repo_params(), {"data.max_missing_share": 0})
    assert section(params, "data", DataConfig).max_missing_share == 0.0
