"""A regressor's pieces, without a pipeline run: the task's inference, the target's scaling, the
split conformal interval, the graph's outputs and the gate's rules in regression terms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.contracts.params import GateConfig, read_params, section
from pipeline.contracts.schema import Schema
from pipeline.learning.infer_schema import infer_schema
from pipeline.learning.tasks.regression import Regression
from pipeline.release.gate import GateContext, Verdict, coverage_failing
from tests.conftest import ROOT, friedman_table


def _schema(df: pd.DataFrame, target: str, task: str = "auto") -> Schema:
    return infer_schema(df, target, None, 0.3, 50, task=task)[1]


def test_auto_task_reads_the_target() -> None:
    from sklearn.datasets import load_diabetes, load_digits

    assert _schema(load_digits(as_frame=True).frame, "target").task == "classification"
    # 214 distinct integers in 442 rows, most seen once or twice: no split could hold them as
    # classes, so auto calls it regression.
    diabetes = _schema(load_diabetes(as_frame=True, scaled=False).frame, "target")
    assert diabetes.regression and (diabetes.target_min, diabetes.target_max) == (25.0, 346.0)
    table = friedman_table(200, seed=0)
    prices = _schema(table, "price")
    assert prices.regression and prices.classes == ()
    assert Schema.from_dict(prices.to_dict()) == prices
    # Integer labels with few values stay classes; forcing classification on a price refuses.
    assert _schema(table.assign(price=np.arange(len(table)) % 3), "price").task == "classification"
    with pytest.raises(Exception, match=r"looks continuous .* set data.task: regression"):
        _schema(table, "price", task="classification")


def test_target_scaling_round_trips_and_logs_only_when_asked() -> None:
    from pipeline.learning.model import ModelConfig, Regressor, TargetScaling, build_net
    from pipeline.learning.transforms import FeatureTransform

    y = np.exp(np.random.default_rng(0).normal(3.0, 0.8, 500))
    X = np.random.default_rng(1).normal(size=(500, 3))
    net = build_net(ModelConfig("mlp", 3, 1, 8, 1, 0.0, 4, None))
    for log in (False, True):
        scaling = TargetScaling.fit(y, log)
        model = Regressor(FeatureTransform().fit(X).module(), net, scaling)
        z = model.standardize(torch.tensor(y, dtype=torch.float64))
        assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1.0) < 0.01
        back = model.unstandardize(z).numpy()
        np.testing.assert_allclose(back, y, rtol=1e-6)
    # A logged target's interval on the network's scale widens with the prediction.
    model = Regressor(FeatureTransform().fit(X).module(), net, TargetScaling.fit(y, True))
    z = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    widths = (model.unstandardize(z + 0.5) - model.unstandardize(z - 0.5)).numpy()
    assert widths[1] > 2 * widths[0]


def test_split_conformal_covers_at_the_nominal_rate() -> None:
    from pipeline.learning.regression import conformal_quantile

    assert conformal_quantile(np.arange(1.0, 9.0), 0.9) == np.inf  # 8 scores: ceil(8.1) = 9 > 8
    assert conformal_quantile(np.arange(1.0, 20.0), 0.9) == 18.0  # ceil(20 * 0.9) = 18th
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(400):  # exchangeable heavy-tailed residuals: calibration 100, test 100
        cal, test = np.abs(rng.standard_t(3, 100)), np.abs(rng.standard_t(3, 100))
        covered.append(np.mean(test <= conformal_quantile(cal, 0.9)))
    # Split conformal's mean coverage is ceil(101 * 0.9) / 101 = 0.9109 exactly.
    assert abs(np.mean(covered) - 91 / 101) < 0.005


def test_the_graph_answers_prediction_and_interval_as_pytorch(tmp_path: Path) -> None:
    from pipeline.contracts.runtime import predict_interval, session
    from pipeline.export import ServedRegressor, export_onnx
    from pipeline.learning.model import ModelConfig, Regressor, TargetScaling, build_net
    from pipeline.learning.transforms import FeatureTransform

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4))
    X[::7, 1] = np.nan  # imputed inside the graph
    y = np.exp(rng.normal(2.0, 0.5, 64))
    torch.manual_seed(0)
    net = build_net(ModelConfig("mlp", 4, 1, 16, 2, 0.0, 4, None))
    model = Regressor(FeatureTransform().fit(X).module(), net, TargetScaling.fit(y, True)).eval()
    export_onnx(ServedRegressor(model, 0.7), 4, tmp_path / "m.onnx", 18, Regression())
    sess = session(tmp_path / "m.onnx")
    assert [o.name for o in sess.get_outputs()] == ["prediction", "lower", "upper"]
    pred, lower, upper = predict_interval(sess, X.astype(np.float32))
    with torch.no_grad():
        ours = ServedRegressor(model, 0.7)(torch.as_tensor(X, dtype=torch.float32))
    for theirs, mine in zip((pred, lower, upper), ours, strict=True):
        np.testing.assert_allclose(theirs, mine.numpy(), rtol=1e-5)
    assert np.all(lower < pred) and np.all(pred < upper) and np.isfinite(pred).all()


def test_a_group_conditional_interval_covers_each_group_and_the_graph_answers_it(
    tmp_path: Path,
) -> None:
    """Group 1's targets are three times as noisy: one pooled quantile under-covers it and
    over-covers group 0; a quantile per group (Mondrian) holds both at nominal. The graph gives
    each row its group's half-width (a missing group: the pooled one), as PyTorch does."""
    from pipeline.contracts.runtime import predict_interval, session
    from pipeline.export import ServedRegressor, export_onnx
    from pipeline.learning import regression as reg
    from pipeline.learning.model import ModelConfig, Regressor, TargetScaling, build_net
    from pipeline.learning.splits import Split
    from pipeline.learning.transforms import FeatureTransform

    rng = np.random.default_rng(0)
    n = 4000
    X = np.c_[rng.normal(size=(n, 3)), (rng.random(n) < 0.3).astype(float)]
    y = np.where(X[:, 3] == 1, 3.0, 1.0) * rng.normal(size=n)  # the network predicts ~0
    torch.manual_seed(0)
    net = build_net(ModelConfig("mlp", 4, 1, 8, 1, 0.0, 4, None))
    model = Regressor(FeatureTransform().fit(X).module(), net, TargetScaling.fit(y, False)).eval()
    Xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    cal, test = Split(Xt[:2000], yt[:2000], torch.ones(2000)), slice(2000, None)
    q = reg.fit_interval(model, cal, 0.9)
    widths = reg.fit_group_intervals(model, cal, 0.9, 3)
    assert set(widths) == {0.0, 1.0} and widths[1.0] > 2 * widths[0.0]
    spec = {"column": 3, "codes": list(widths), "half_widths": list(widths.values())}
    group = X[test, 3] == 1
    for by_group, holds in ((None, False), (spec, True)):
        _, lower, upper = reg.predict_interval(model, Xt[test], q, by_group)
        covered = (y[test] >= lower) & (y[test] <= upper)
        each = [covered[group].mean(), covered[~group].mean()]
        assert all(abs(c - 0.9) < 0.03 for c in each) == holds, each

    rows = X[:64].copy()
    rows[:4, 3] = np.nan  # no group: the pooled half-width
    export_onnx(ServedRegressor(model, q, spec), 4, tmp_path / "m.onnx", 18, Regression())
    theirs = predict_interval(session(tmp_path / "m.onnx"), rows.astype(np.float32))
    ours = reg.predict_interval(model, torch.as_tensor(rows, dtype=torch.float32), q, spec)
    for a, b in zip(theirs, ours, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    half = (theirs[2] - theirs[1]) / 2 / float(model.scale)
    expect = np.where(rows[:, 3] == 1, widths[1.0], widths[0.0])
    expect[:4] = q
    np.testing.assert_allclose(half, expect, rtol=1e-4)


def gate_regression(
    cfg: GateConfig,
    cand: dict,
    champ: dict | None,
    parity: bool,
    nominal: float,
    target_std: float,
    ctx: GateContext,
    calibrated_on: str = "validation",
) -> list[dict]:
    """The regressor's rules as the evaluate stage judges them, on test rows whose standard
    deviation is ``target_std``."""
    export = {"interval": {"coverage": nominal, "calibrated_on": calibrated_on}}
    y = np.array([-target_std, target_std])
    return Regression().gate(cfg, cand, champ, parity, ctx, export, y)[0]


def _gate() -> GateConfig:
    return section(read_params(ROOT / "params.yaml"), "gate", GateConfig)


def _cand(**changes: float) -> dict[str, float]:
    base = {"r2": 0.85, "rmse": 40.0, "coverage": 0.9, "rows": 600, "robust_mae": 50.0}
    return {**base, "p99_latency_ms": 0.1, **changes}


def _rules(cand: dict, champ: dict | None = None, **ctx: object) -> dict[str, Verdict]:
    context = GateContext(**{"baseline": ("hgb", 0.86), "trained_clean": 0.85, **ctx})
    rules = gate_regression(_gate(), cand, champ, True, 0.9, 100.0, context)
    return {r.rule: r for r in rules}


def test_the_gate_reads_r2_against_the_best_baseline_and_the_champion() -> None:
    assert _rules(_cand())["vs_baseline"].passed  # 0.85 >= 0.86 - 0.02
    first = _rules(_cand(r2=0.83))["vs_baseline"]  # a first run ships, saying by how much
    assert first.waived and "trails the hgb baseline by 0.0300 R²" in first.what
    assert not _rules(_cand(r2=0.83), _cand(r2=0.85))["vs_baseline"].passed
    champ = _cand(r2=0.87)
    assert not _rules(_cand(), champ)["vs_champion_r2"].passed  # 0.85 < 0.87 - 0.005
    assert _rules(_cand(r2=0.866), champ)["vs_champion_r2"].passed
    # Robust MAE may exceed the champion's by max_robust_drop target standard deviations.
    assert not _rules(_cand(robust_mae=54.0), _cand(robust_mae=50.0))[
        "vs_champion_robust_mae"
    ].passed
    assert _rules(_cand(robust_mae=52.0), _cand(robust_mae=50.0))["vs_champion_robust_mae"].passed


def test_coverage_must_be_near_nominal_or_indistinguishable_from_it() -> None:
    assert _rules(_cand(coverage=0.87))["coverage"].passed  # within 0.05
    assert not _rules(_cand(coverage=0.80))["coverage"].passed  # 480 / 600: p < 1e-10
    # On 89 rows 0.82 is 2.4 standard errors low: a binomial test at 0.01 cannot tell.
    assert _rules(_cand(coverage=73 / 89, rows=89))["coverage"].passed
    assert not _rules(_cand(coverage=0.96))["coverage"].passed  # too wide counts too
    # A champion's holdout coverage significantly under nominal is failing in production.
    assert coverage_failing(0.6, 200, 0.9, _gate())
    assert not coverage_failing(0.88, 200, 0.9, _gate())


def test_the_robust_ceiling_is_waived_only_by_the_budget_and_only_where_no_model_meets_it() -> None:
    weak = _cand(robust_mae=150.0)  # ceiling: 1.0 x the target's standard deviation, 100
    assert not _rules(weak)["max_robust_mae"].passed
    waived = _rules(weak, budget_limited=True)["max_robust_mae"]
    assert waived.passed and waived.waived
    robust_champion = _cand(robust_mae=90.0)
    kept = _rules(weak, robust_champion, budget_limited=True)["max_robust_mae"]
    assert not kept.passed and "not waived" in kept.what


def test_a_failing_champion_waives_the_test_rules_only_for_a_candidate_that_fixes_it() -> None:
    champ = _cand(r2=0.9, holdout_r2=0.2)
    worse_on_test = _cand(r2=0.8, holdout_r2=0.7)
    rules = _rules(worse_on_test, champ, champion_failing="holdout coverage 0.5")
    assert rules["vs_champion_r2"].passed and rules["vs_champion_r2"].waived
    assert rules["vs_champion_holdout_r2"].passed
    no_better = _cand(r2=0.8, holdout_r2=0.2)
    rules = _rules(no_better, champ, champion_failing="holdout coverage 0.5")
    assert not rules["vs_champion_r2"].passed


def test_preprocess_freezes_the_test_split_and_never_filters_val() -> None:
    from pipeline.contracts.params import PreprocessConfig
    from pipeline.contracts.schema import FEEDBACK, LABEL, ROW
    from pipeline.preprocess import preprocess

    cfg = section(read_params(ROOT / "params.yaml"), "preprocess", PreprocessConfig)
    table = friedman_table(600, seed=1)
    wrong = np.arange(0, 400, 20)  # 20 prices entered 8x too high
    table.loc[wrong, "price"] *= 8
    raw, schema = infer_schema(table, "price", None, 0.3, 50, task="regression")
    raw[FEEDBACK] = pd.Series([None] * len(raw), dtype="string")
    first = preprocess(raw, schema, cfg, None)
    assert first.metrics["duplicates_dropped"] == 10
    flagged = set(first.noise_report[ROW])
    # val is cut first and never filtered (the interval is calibrated on it, drawn like test):
    # the wrong prices left in train are the ones found, few others are.
    pool = set(first.splits["train"][ROW]) | flagged
    in_pool = set(wrong) & pool
    assert len(flagged & in_pool) >= 0.8 * len(in_pool) and len(flagged - in_pool) <= 5
    assert not flagged & set(first.splits["val"][ROW])
    # The test split's target spread follows the whole table's (quantile-bin strata).
    test_y, all_y = first.splits["test"][LABEL], raw["price"]
    assert abs(test_y.median() - all_y.median()) < 0.1 * all_y.std()
    # Labelled production rows never move the test split.
    feedback = raw.sample(80, random_state=0).assign(price=lambda d: d.price * 1.5)
    feedback[FEEDBACK] = [f"r{i}:0" for i in range(len(feedback))]
    second = preprocess(pd.concat([raw, feedback], ignore_index=True), schema, cfg, None)
    pd.testing.assert_frame_equal(first.splits["test"], second.splits["test"])
    assert second.metrics["feedback_rows_in"] == 80 and len(second.splits["holdout"]) > 0


def test_an_interval_calibrated_on_production_rows_is_checked_on_the_holdout() -> None:
    # A retrain calibrated on val's production rows (a noisy sensor) covers the clean test split
    # more than nominal; the holdout, rows like those it serves, is where its coverage counts.
    cand = _cand(coverage=0.97, holdout_coverage=0.9, holdout_rows=400)
    context = GateContext(baseline=("hgb", 0.86), trained_clean=0.85)
    rules = {
        r.rule: r
        for r in gate_regression(_gate(), cand, None, True, 0.9, 100.0, context, "production")
    }
    assert rules["coverage"].passed and "production holdout" in rules["coverage"].what
    assert not _rules(cand)["coverage"].passed  # calibrated on val: the test split counts
    off = _cand(coverage=0.9, holdout_coverage=0.7, holdout_rows=400)
    rules = gate_regression(_gate(), off, None, True, 0.9, 100.0, context, "production")
    assert not {r.rule: r for r in rules}["coverage"].passed


def test_calibration_moves_to_production_rows_once_there_are_enough() -> None:
    from pipeline.learning.regression import PRODUCTION_CALIBRATION_ROWS, calibration_rows
    from pipeline.learning.splits import Split

    n = 500
    X, y, w = torch.zeros(n, 2), torch.arange(n, dtype=torch.float32), torch.ones(n)
    few = torch.arange(n) < PRODUCTION_CALIBRATION_ROWS - 1
    assert calibration_rows(Split(X, y, w, few))[1] == "validation"
    assert calibration_rows(Split(X, y, w, None))[1] == "validation"
    many = torch.arange(n) >= n - PRODUCTION_CALIBRATION_ROWS
    rows, where = calibration_rows(Split(X, y, w, many))
    assert where == "production" and torch.equal(rows.y, y[many])


def test_a_regressors_feedback_takes_finite_numbers_only() -> None:
    from serving.requests import RequestError, parse_feedback

    schema = _schema(friedman_table(200, seed=0), "price")
    items = [{"request_id": "r1", "index": 0, "label": 12.5}, {"request_id": "r1", "label": 3}]
    assert parse_feedback({"feedback": items}, schema, 10) == [("r1", 0, 12.5), ("r1", 0, 3.0)]
    for bad in ("12.5", True, None, 1e39, [1.0]):
        item = {"request_id": "r1", "index": 0, "label": bad}
        with pytest.raises(RequestError, match=r"feedback\[0\]\.label: .* not a finite number"):
            parse_feedback({"feedback": [item]}, schema, 10)


def test_the_prodlog_keeps_a_regressors_answer_in_named_columns(tmp_path: Path) -> None:
    """A log written before regression existed (no ``feedback.value``) and before the named
    answer columns (a regressor's three numbers in ``probabilities``) gets the columns on open;
    a window spanning rows of both kinds reads every row's interval."""
    import sqlite3

    from pipeline.contracts.prodlog import FeedbackConflictError, ProductionLog
    from pipeline.contracts.tasks.regression import ServedRegression

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE feedback (request_id VARCHAR(64), idx INTEGER, label INTEGER NOT NULL, "
            "ts FLOAT NOT NULL, PRIMARY KEY (request_id, idx))"
        )
        conn.execute(
            "CREATE TABLE predictions (request_id VARCHAR(64), idx INTEGER, ts FLOAT NOT NULL, "
            "model_version VARCHAR(64) NOT NULL, features BLOB NOT NULL, label INTEGER NOT NULL, "
            "probabilities BLOB NOT NULL, latency_ms FLOAT NOT NULL, out_of_range TEXT NOT NULL, "
            "PRIMARY KEY (request_id, idx))"
        )
        old = np.float32([10.0, 8.0, 12.0]).tobytes()
        conn.execute(
            "INSERT INTO predictions VALUES ('old', 0, 1.0, '1', ?, 0, ?, 0.1, '')",
            (np.zeros(2, np.float32).tobytes(), old),
        )
    log = ProductionLog(str(db))
    answer = ServedRegression().answer(
        [np.float32([20.0]), np.float32([18.0]), np.float32([23.0])],
        None,  # type: ignore[arg-type]
    )
    assert answer.values.shape == (1, 0) and answer.named == [(20.0, 18.0, 23.0)]
    log.write_predictions(
        [("new", 0, 2.0, "1", np.zeros(2, np.float32).tobytes(), 0, b"", 0.1, "", *answer.named[0])]
    )
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT prediction, lower, upper, length(probabilities) FROM "
                              "predictions WHERE request_id = 'new'").fetchone()  # fmt: skip
    assert stored == (20.0, 18.0, 23.0, 0)
    assert log.add_feedback([("old", 0, 11.25)], 2.0, column="value") == {
        "stored": 1,
        "duplicates": 0,
    }
    assert log.add_feedback([("old", 0, 11.25)], 3.0, column="value")["duplicates"] == 1
    with pytest.raises(FeedbackConflictError):
        log.add_feedback([("old", 0, 11.5)], 4.0, column="value")
    window = log.window()
    assert window.true_value[0] == 11.25 and np.isnan(window.true_value[1])
    assert window.interval().tolist() == [[10.0, 8.0, 12.0], [20.0, 18.0, 23.0]]
    assert np.isnan(window.probabilities[1]).all()  # the new row has no probabilities
    assert window.slice(1, 2).interval().tolist() == [[20.0, 18.0, 23.0]]
    log.close()


def test_a_cnn_regressor_on_image_inputs_answers_one_number_per_row(tmp_path: Path) -> None:
    from pipeline.contracts.runtime import predict_interval, session
    from pipeline.export import ServedRegressor, export_onnx
    from pipeline.learning.model import ModelConfig, Regressor, TargetScaling, build_net
    from pipeline.learning.transforms import FeatureTransform

    X = np.random.default_rng(0).uniform(0, 16, (32, 64))
    torch.manual_seed(0)
    net = build_net(ModelConfig("cnn", 64, 1, 16, 1, 0.0, 4, (8, 8)))
    scaling = TargetScaling.fit(np.arange(32.0), False)
    model = Regressor(FeatureTransform().fit(X).module(), net, scaling).eval()
    assert model(torch.as_tensor(X, dtype=torch.float32)).shape == (32,)
    export_onnx(ServedRegressor(model, 0.5), 64, tmp_path / "cnn.onnx", 18, Regression())
    pred, lower, upper = predict_interval(session(tmp_path / "cnn.onnx"), X.astype(np.float32))
    assert pred.shape == (32,) and np.all(lower < pred) and np.all(pred < upper)


def test_sensitive_reweighing_makes_group_and_target_bin_independent() -> None:
    from pipeline.contracts.params import PreprocessConfig
    from pipeline.contracts.schema import FEEDBACK, WEIGHT
    from pipeline.learning.sampling import target_bins
    from pipeline.preprocess import preprocess

    cfg = section(read_params(ROOT / "params.yaml"), "preprocess", PreprocessConfig)
    table = friedman_table(1000, seed=2)
    raw, schema = infer_schema(table, "price", None, 0.3, 50, task="regression")
    raw[FEEDBACK] = pd.Series([None] * len(raw), dtype="string")
    train = preprocess(raw, schema, cfg, "region").splits["train"]
    # region shifts the price, so group and bin are dependent; the weights undo it on train.
    bins = target_bins(train["_label"].to_numpy(), train["_label"].to_numpy(), 10)
    groups = schema.features[schema.names.index("region")].decode(train["region"].to_numpy())
    frame = pd.DataFrame({"g": groups, "b": bins, "w": train[WEIGHT].to_numpy()})
    assert abs(frame.w.mean() - 1.0) < 1e-9 and frame.w.std() > 0.05
    joint = frame.groupby(["g", "b"]).w.sum() / frame.w.sum()
    p_g, p_b = (
        frame.groupby("g").w.sum() / frame.w.sum(),
        frame.groupby("b").w.sum() / frame.w.sum(),
    )
    independent = (
        p_g.reindex(joint.index.get_level_values(0)).to_numpy()
        * p_b.reindex(joint.index.get_level_values(1)).to_numpy()
    )
    np.testing.assert_allclose(joint.to_numpy(), independent, atol=0.02)
