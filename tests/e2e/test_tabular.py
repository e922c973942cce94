"""A user's table through the whole pipeline with the default params (only ``data.*`` set):
`dvc repro` ends with a promoted champion whose served probabilities are calibrated. Slow tier.

Measured with tables of seeds 0 / 1 / 2 (3,000 rows + 10 duplicates, 30 numeric columns, two
categoricals, 3 % missing): test accuracy of the champion 0.977 / 0.983 / 0.973, ECE of the
served graph 0.012 / 0.017 / 0.010 (0.092 / 0.398 / 0.084 before temperature scaling), robust
accuracy at eps 0.1 far below the gate's 0.7 floor, which was waived with a hint each time
(robustness at eps 0.1 of every column's range costs this data more than a 1-point budget).
5,000 rows gave the same (0.974-0.984, ECE 0.006-0.012) in twice the time; at 2,000 rows seed 2
was not promoted (ECE 0.062 after scaling on 400 test rows, over the gate's 0.05).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from pipeline.learning.metrics import expected_calibration_error
from tests.conftest import churn_table
from tests.e2e.test_dvc_pipeline import copy_pristine, dvc, edit_params, ran

pytestmark = pytest.mark.slow


def test_a_typical_table_gets_a_calibrated_champion_with_default_params(tmp_path: Path) -> None:
    copy_pristine(tmp_path)
    churn_table(3000, seed=0).to_csv(tmp_path / "data/customers.csv", index=False)
    edit_params(tmp_path, "data", "source", "data/customers.csv")
    edit_params(tmp_path, "data", "target", "churn")

    output = dvc(tmp_path, "repro")
    assert "evaluate" in ran(output)
    decision = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    assert decision["promoted"], decision["reasons"]
    cand = decision["candidate"]
    assert cand["accuracy"] >= 0.95 and cand["ece"] <= 0.03

    # The clean-accuracy budget holds on test as on val, and the gate agrees with harden.
    robustness = json.loads((tmp_path / "metrics/robustness.json").read_text())
    budget = robustness["budget"]
    # The epoch chosen on val may lose more on test; then a less robust one (or the trained
    # weights) ships instead.
    assert budget["test_clean_drop_of_kept"] <= 0.01 + 1e-9
    shipped, before = robustness["hardened"], robustness["trained"]
    assert shipped["clean_accuracy"] >= before["clean_accuracy"] - 0.01 - 1e-9
    assert {r["rule"]: r["passed"] for r in decision["rules"]}["clean_budget"]
    cal = robustness["calibration"]
    # How miscalibrated the trained net is depends on how training landed (0.028 to 0.43 measured);
    # that temperature scaling recovers a known T is tests/unit/test_calibration.py's to show.
    assert cal["test_ece_after"] <= 0.03 and cal["temperature"] > 0
    assert (tmp_path / "plots/reliability.png").read_bytes()[:4] == b"\x89PNG"
    # The robust floor holds, or is waived exactly when it fails and harden reports that the
    # budget held robustness back; a waiver always comes with the parameter that would change it.
    floor = {r["rule"]: r for r in decision["rules"]}["min_robust_accuracy"]
    below = floor["value"] < floor["threshold"]
    assert floor["passed"]
    assert bool(floor.get("waived")) == below
    assert not below or budget["limited"]
    hinted = any("harden.max_clean_drop" in h for h in decision["hints"])
    assert hinted == below and ("hint: robust accuracy" in output) == below

    # The categoricals: inferred from text, encoded as schema indices, one-hot in the features.
    schema = json.loads((tmp_path / "data/schema.json").read_text())
    kinds = {f["name"]: f["kind"] for f in schema["features"]}
    assert kinds["region"] == kinds["plan"] == "categorical"
    assert sum(k == "numeric" for k in kinds.values()) == 30
    spec = json.loads((tmp_path / "models/features.json").read_text())
    by_name = dict(zip(kinds, spec["params"]["n_categories"], strict=True))
    # Four regions and two plans, both with missing cells (one more category if kept as one).
    assert by_name["region"] in (4, 5) and by_name["plan"] in (2, 3) and by_name["x00"] == 0
    train = pd.read_parquet(tmp_path / "data/prepared/train.parquet")
    assert set(train["region"].dropna()) <= set(map(float, range(by_name["region"])))
    import torch

    ckpt = torch.load(tmp_path / "models/model.pt", weights_only=True)
    assert ckpt["model_config"]["arch"] == "tabm"  # train.model: auto, and no image shape

    # The served graph: calibrated probabilities over the frozen test split.
    assert schema["target"]["classes"] == ["no", "yes"]
    names = [f["name"] for f in schema["features"]]
    test = pd.read_parquet(tmp_path / "data/prepared/test.parquet")
    session = ort.InferenceSession(str(tmp_path / "registry/champion/model.onnx"))
    proba, labels = session.run(None, {"features": test[names].to_numpy(np.float32)})
    y = test["_label"].to_numpy()
    assert float((labels == y).mean()) == pytest.approx(cand["accuracy"])
    assert expected_calibration_error(y, proba) == pytest.approx(cand["ece"], abs=1e-6)
