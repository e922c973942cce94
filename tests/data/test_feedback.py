"""Labelled production rows as training data: ingest validates and appends them, preprocess keeps
the test split to the source, de-duplicates them and holds a stable share out as the production
holdout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import ingest
from pipeline.contracts.params import DataConfig, PreprocessConfig, section
from pipeline.contracts.schema import FEEDBACK, ROW
from pipeline.preprocess import preprocess
from tests.conftest import EMPTY_FEEDBACK, repo_params


def feedback_rows(n: int, offset: int = 0, seed: int = 0) -> pd.DataFrame:
    """Digits rows with some noise, as `python -m monitoring` exports them."""
    df = ingest.load_source("digits").frame
    rng = np.random.default_rng(seed)
    rows = df.sample(n, random_state=seed).reset_index(drop=True)
    pixels = [c for c in rows.columns if c != "target"]
    rows[pixels] = np.clip(rows[pixels].to_numpy() + rng.normal(0, 1, (n, len(pixels))), 0, 16)
    rows[FEEDBACK] = [f"req{offset + i}:0" for i in range(n)]
    return rows


@pytest.fixture(scope="module")
def cfg() -> PreprocessConfig:
    return section(repo_params(), "preprocess", PreprocessConfig)


def test_feedback_never_reaches_the_test_split_and_the_holdout_is_stable(
    tmp_path: Path, cfg: PreprocessConfig
) -> None:
    data = section(repo_params(), "data", DataConfig)
    base, schema = ingest.ingest(data, EMPTY_FEEDBACK)
    first = feedback_rows(300)
    first.to_parquet(tmp_path / "fb.parquet")
    raw, schema2 = ingest.ingest(data, tmp_path / "fb.parquet")
    assert schema2 == schema  # the schema comes from the source alone
    assert len(raw) == len(base) + 300 and raw[FEEDBACK].notna().sum() == 300

    without = preprocess(base, schema, cfg, None)
    with_fb = preprocess(raw, schema, cfg, None)
    pd.testing.assert_frame_equal(without.splits["test"], with_fb.splits["test"])
    holdout = with_fb.splits["holdout"]
    assert len(without.splits["holdout"]) == 0
    assert holdout[ROW].min() >= len(base)  # production rows only
    assert 0.1 < len(holdout) / 300 < 0.3  # feedback_holdout: 0.2
    in_train = set(with_fb.splits["train"][ROW]) | set(with_fb.splits["val"][ROW])
    assert len(in_train & set(range(len(base), len(raw)))) > 150
    assert with_fb.metrics["feedback_rows_in"] == 300
    # Each split names its production rows (harden budgets them apart): by their key.
    for name, split in with_fb.splits.items():
        production = (split[ROW] >= len(base)).to_numpy()
        assert (split[FEEDBACK].notna().to_numpy() == production).all(), name
    assert all(split[FEEDBACK].isna().all() for split in without.splits.values())

    # More feedback later (the first rows again, plus new ones): the first rows' holdout side is
    # unchanged, and the repeated rows are dropped as duplicates.
    more = pd.concat([first, feedback_rows(200, offset=300, seed=1)], ignore_index=True)
    more.to_parquet(tmp_path / "fb.parquet")
    raw2, _ = ingest.ingest(data, tmp_path / "fb.parquet")
    raw2 = pd.concat([raw2, raw2.iloc[[-1]].assign(**{FEEDBACK: "dup:0"})], ignore_index=True)
    later = preprocess(raw2, schema, cfg, None)
    pd.testing.assert_frame_equal(without.splits["test"], later.splits["test"])
    keys = raw2[FEEDBACK]
    held_before = set(keys.iloc[holdout[ROW]])
    held_after = set(keys.iloc[later.splits["holdout"][ROW]])
    assert held_before <= held_after
    assert later.metrics["feedback_duplicates_dropped"] >= 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda df: df.assign(target=df["target"].where(df.index != 4, 11)), "value 11 is not"),
        (lambda df: df.drop(columns=["pixel_3_3"]), "column 'pixel_3_3' is missing"),
        (lambda df: df.assign(**{FEEDBACK: "same:0"}), "appears twice"),
    ],
)
def test_bad_feedback_is_refused_with_a_message_and_nothing_written(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    write_params: Callable[..., Path],
    edit: Callable[[pd.DataFrame], pd.DataFrame],
    message: str,
) -> None:
    edit(feedback_rows(10)).to_parquet(tmp_path / "fb.parquet")
    out = tmp_path / "out"
    code = ingest.main(
        [
            "--params",
            str(write_params()),
            "--feedback",
            str(tmp_path / "fb.parquet"),
            "--data",
            str(out / "raw.parquet"),
            "--schema",
            str(out / "schema.json"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "fb.parquet" in err
    assert not out.exists() or not any(out.iterdir())
