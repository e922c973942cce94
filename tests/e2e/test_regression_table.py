"""A regression table through the whole pipeline with the default params (only ``data.*`` set):
`dvc repro` ends with a promoted champion whose graph answers a prediction with a 90 % interval;
then the service on that champion, and the loop on loopback under two sensor faults (one the
drift test sees, one only the intervals' coverage does). Slow tier.

The table (``tests.conftest.friedman_table``, 3,000 rows + 10 duplicates): Friedman #1's signal
and three noise columns, a categorical that shifts the target, 3 % missing cells, a skewed
positive price. Measured with seeds 0 / 1 / 2 (docs/regression.md): test R² of the champion
(a TabM ensemble) 0.882 / 0.895 / 0.894 against the best baseline's (HistGradientBoosting)
0.831 / 0.859 / 0.830, coverage of the 90 % interval 0.923 / 0.905 / 0.900; robust MAE at eps
0.1 above the gate's ceiling on every seed, waived with a hint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from pipeline.contracts.prodlog import ProductionLog
from pipeline.release.bundle import bundle
from pipeline.release.device_predict import Predictor
from tests.conftest import friedman_table
from tests.e2e.test_dvc_pipeline import copy_pristine, dvc, edit_params, ran
from tests.monitoring.test_loop import TOKEN as LOOP_TOKEN
from tests.monitoring.test_loop import env, set_params
from tests.serving.conftest import Server, post

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def price_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The generated price table through `dvc repro` with the repo's params but ``data.*``;
    read-only (a test that changes it works on a copy). Returns the project and dvc's output."""
    project = copy_pristine(tmp_path_factory.mktemp("prices") / "project")
    friedman_table(3000, seed=0).to_csv(project / "data/prices.csv", index=False)
    edit_params(project, "data", "source", "data/prices.csv")
    edit_params(project, "data", "target", "price")
    return project, dvc(project, "repro")


def test_a_regression_table_gets_a_champion_with_a_calibrated_interval(
    price_run: tuple[Path, str],
) -> None:
    tmp_path, output = price_run
    assert "evaluate" in ran(output)
    schema = json.loads((tmp_path / "data/schema.json").read_text())
    assert schema["task"] == "regression" and "classes" not in schema["target"]
    decision = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    assert decision["promoted"], decision["reasons"]
    cand = decision["candidate"]
    train = json.loads((tmp_path / "metrics/train.json").read_text())
    best = max(b["test_r2"] for b in train["baselines"].values())
    assert cand["r2"] >= best - 0.02, (cand["r2"], train["baselines"])
    assert 0.87 <= cand["coverage"] <= 0.93, cand["coverage"]
    assert train["target_scaling"]["log"]  # a positive price skewed above 1
    card = (tmp_path / "registry/champion/model_card.md").read_text()
    assert "TabM (an efficient ensemble of 8 members)" in card  # train.model: auto on a table
    hgb = train["baselines"]["hgb"]["test_r2"]
    assert f"hgb {hgb:.4f} (network {cand['r2'] - hgb:+.4f})" in card

    # The shipped graph answers the frozen test split as the gate measured it.
    test = pd.read_parquet(tmp_path / "data/prepared/test.parquet")
    names = [f["name"] for f in schema["features"]]
    sess = ort.InferenceSession(str(tmp_path / "registry/champion/model.onnx"))
    pred, lower, upper = sess.run(
        ["prediction", "lower", "upper"], {"features": test[names].to_numpy(np.float32)}
    )
    y = test["_label"].to_numpy()
    assert np.all(lower <= pred) and np.all(pred <= upper)
    assert abs(np.mean((y >= lower) & (y <= upper)) - cand["coverage"]) < 1e-9
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    assert abs(rmse - cand["rmse"]) < 1e-3 * cand["rmse"]
    # Every rule has its figure; a waived robust ceiling comes with the parameter to change.
    rules = {r["rule"]: r for r in decision["rules"]}
    assert {"vs_baseline", "coverage", "max_robust_mae", "clean_budget", "parity"} <= set(rules)
    if rules["max_robust_mae"].get("waived"):
        assert any("harden.max_clean_drop" in h for h in decision["hints"])
    # A regressor's compressed graphs: measured in its terms; each target's graph fails no floor.
    variants = json.loads((tmp_path / "metrics/compress.json").read_text())["variants"]
    assert [v["name"] for v in variants] == ["dense.fp32", "dense.int8", "p55.fp32", "p55.int8"]
    assert all({"r2", "coverage", "robust_mae"} <= set(v["figures"]) for v in variants)
    for target, choice in decision["deploy"].items():
        assert choice["bytes"] <= (65536 if target != "server" else choice["bytes"])
        assert choice["main"] >= rules["clean_budget"]["threshold"] - 0.005, (target, choice)
    for plot in ("plots/confusion_matrix.png", "plots/reliability.png", "plots/robustness.png",
                 "plots/frontier.png"):  # fmt: skip
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG"
    # A second repro is a no-op.
    assert ran(dvc(tmp_path, "repro")) <= {"source"}


TOKEN = "price-token"


def raw_records(project: Path, rows: pd.DataFrame, names: list[str]) -> list[dict]:
    """The source rows behind prepared ``rows`` as a client sends them (text categories, null
    for a missing value)."""
    raw = pd.read_parquet(project / "data/raw.parquet").iloc[rows["_row"].to_numpy()]
    return client_records(raw, names)


def client_records(frame: pd.DataFrame, names: list[str]) -> list[dict]:
    """Raw rows of ``frame`` as a client sends them: text categories, null for a missing value."""
    return [
        {n: (None if pd.isna(v) else v) for n, v in zip(names, rec, strict=True)}
        for rec in frame[names].astype(object).itertuples(index=False)
    ]


def test_the_service_answers_the_graphs_intervals_and_refuses_bad_feedback(
    price_run: tuple[Path, str], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(price_run[0], project, symlinks=True)
    schema = json.loads((project / "data/schema.json").read_text())
    names = [f["name"] for f in schema["features"]]
    test = pd.read_parquet(project / "data/prepared/test.parquet").iloc[:200]
    X = test[names].to_numpy(np.float32)
    champion = project / "registry/champion"
    want, device_want, browser_want = (
        ort.InferenceSession(str(champion / name)).run(None, {"features": X})
        for name in ("model.onnx", "device.onnx", "browser.onnx")
    )
    server = Server(project, str(project / "production.db"), {"MLCYCLE_FEEDBACK_TOKEN": TOKEN})
    server.start()
    try:
        records = raw_records(project, test, names)
        got = post(f"{server.url}/predict", {"records": records})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["coverage"] == 0.9
        answers = body["predictions"]
        for key, column in zip(("prediction", "lower", "upper"), want, strict=True):
            np.testing.assert_array_equal(np.float32([a[key] for a in answers]), column)
        # The device bundle answers the same raw records (text categories, nulls) as the
        # device's graph does on the service's encoding of them.
        made = bundle(project / "registry", project / "bundle/device", "device")
        assert made["task"] == "regression" and made["checked"]["rows"] > 0
        assert (
            made["variant"]
            == json.loads((champion / "evaluate.json").read_text())["deploy"]["device"]["variant"]
        )
        predictor = Predictor(project / "bundle/device")
        device = predictor.predict(raw_records(project, test, names))
        for key, column in zip(("prediction", "lower", "upper"), device_want, strict=True):
            np.testing.assert_allclose([d[key] for d in device], column, rtol=1e-5)
        # The browser page: a form from schema.json; the browser's graph answers the test rows
        # as onnxruntime in Python, and a record filled in answers as the service does.
        # The form asks about one record: a dynamically quantized graph answers a row alone as
        # it does in no batch of others (its activations' scales come from the batch).
        alone = [
            ort.InferenceSession(str(champion / name)).run(None, {"features": X[:1]})
            for name in ("browser.onnx", "model.onnx")
        ]
        table_in_the_browser(server.url, X, browser_want, alone, records[0])
        spec = httpx.get(f"{server.url}/openapi.json").json()
        label = spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]
        assert label["schema"]["properties"]["feedback"]["items"]["properties"]["label"] == {
            "type": "number"
        }
        auth = {"authorization": f"Bearer {TOKEN}"}
        rid = body["request_id"]
        for bad, says in (
            ("cheap", "is not a finite number"),
            (True, "is not a finite number"),
            (1e39, "is not a finite number"),
            (None, "is not a finite number"),
        ):
            item = {"request_id": rid, "index": 0, "label": bad}
            answer = post(f"{server.url}/feedback", {"feedback": [item]}, headers=auth)
            assert answer.status_code == 422 and says in answer.json()["error"], answer.text
        truth = test["_label"].to_numpy()
        items = [{"request_id": rid, "index": i, "label": float(truth[i])} for i in range(200)]
        ok = post(f"{server.url}/feedback", {"feedback": items}, headers=auth)
        assert ok.json() == {"stored": 200, "duplicates": 0}, ok.text
        again = post(f"{server.url}/feedback", {"feedback": items[:5]}, headers=auth)
        assert again.json() == {"stored": 0, "duplicates": 5}
        changed = [{**items[0], "label": items[0]["label"] + 1.0}]
        assert (
            post(f"{server.url}/feedback", {"feedback": changed}, headers=auth).status_code == 409
        )
    finally:
        server.stop()
    window = ProductionLog(str(project / "production.db")).window(labelled_only=True)
    np.testing.assert_allclose(window.true_value, truth)  # the exact numbers, in request order
    # The answer in its own columns: prediction, lower, upper; no probabilities.
    np.testing.assert_array_equal(window.interval(), np.stack(want, axis=1))
    assert window.probabilities.shape == (200, 0)


FRESH_SEED = 1000  # the fresh rows: the same generator, a seed no run trains on
ANSWER = ("prediction", "lower", "upper")


def served_on_fresh_rows(project: Path, rows: int = 500) -> dict[str, float]:
    """``rows`` fresh rows of the price table (the same generator, :data:`FRESH_SEED`) sent to
    `bentoml serve` on the project's champion as a client sends them (text regions, null for a
    missing cell): the served answers' R² and interval coverage, beside scikit-learn's
    HistGradientBoostingRegressor with its defaults fit on the project's train and validation
    rows (the region declared categorical, missing cells native), scored on the same rows."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.metrics import r2_score

    schema = json.loads((project / "data/schema.json").read_text())
    names = [f["name"] for f in schema["features"]]
    fresh = friedman_table(rows, seed=FRESH_SEED).iloc[:rows]
    prepared = project / "data/prepared"
    fit = pd.concat([pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "val")])
    raw = pd.read_parquet(project / "data/raw.parquet").iloc[fit["_row"].to_numpy()]
    regions = sorted(fresh["region"].unique())
    cats = pd.CategoricalDtype(regions)
    encode = lambda t: t[names].assign(region=t["region"].astype(cats).cat.codes)  # noqa: E731
    hgb = HistGradientBoostingRegressor(categorical_features=[names.index("region")])
    hgb.fit(encode(raw), fit["_label"].to_numpy())
    server = Server(project, str(project / "production.db"), {})
    server.start()
    try:
        got = post(f"{server.url}/predict", {"records": client_records(fresh, names)})
        assert got.status_code == 200, got.text
    finally:
        server.stop()
    answers = got.json()["predictions"]
    pred, lower, upper = (np.array([a[k] for a in answers]) for k in ANSWER)
    y = fresh["price"].to_numpy()
    return {
        "served_r2": float(r2_score(y, pred)),
        "hgb_r2": float(r2_score(y, hgb.predict(encode(fresh)))),
        "coverage": float(np.mean((y >= lower) & (y <= upper))),
    }


def test_fresh_rows_over_rest_beat_gradient_boosting_with_a_calibrated_interval(
    price_run: tuple[Path, str], tmp_path: Path
) -> None:
    """With only ``data.*`` set, the served network on 500 fresh rows is at or above
    HistGradientBoosting fit on the same rows it learnt from, and its 90 % interval covers
    0.86-0.94 of them. Measured over the table's seeds 0 / 1 / 2 (7 December 2026): served R²
    0.866 / 0.863 / 0.871 against HGB's 0.805 / 0.794 / 0.831, coverage 0.894 / 0.874 / 0.864
    (this test runs seed 0)."""
    project = tmp_path / "project"
    shutil.copytree(price_run[0], project, symlinks=True)
    figures = served_on_fresh_rows(project)
    assert figures["served_r2"] >= figures["hgb_r2"], figures
    assert 0.86 <= figures["coverage"] <= 0.94, figures


def same_quantized_answers(got: np.ndarray, want: np.ndarray) -> None:
    """onnxruntime-web's answers ``got`` against onnxruntime's ``want`` on the same batch from
    one graph (the browser target's). A dynamically quantized int8 graph (the export's: each
    activation quantized with a scale from the batch) may round a row's activation at a tie
    differently in the two runtimes' kernels: every row within 1e-5 but at most 2 % of them,
    and those within 5 % (a TabM champion's graph on the price table: 1 row of 200, 3.3 %)."""
    close = np.isclose(got, want, rtol=1e-5, atol=1e-5)
    assert (~close).mean() <= 0.02, f"{(~close).sum()} of {len(want)} answers differ"
    np.testing.assert_allclose(got, want, rtol=0.05)


def table_in_the_browser(url: str, X: np.ndarray, want: list, alone: list, record: dict) -> None:
    """The page at ``url`` in headless Chromium on a regressor: its graph (the browser
    target's) on the encoded rows ``X`` answers ``want`` (prediction, lower, upper) as
    :func:`same_quantized_answers` allows; the form filled with ``record`` (``X``'s first row,
    raw) answers in the browser as the browser graph does on that row alone and from the server
    as the server's graph does (``alone``: the two graphs' answers to ``X[:1]``), within 1e-5."""
    from playwright.sync_api import sync_playwright

    from tests.serving.test_browser_page import Visit, launch

    with sync_playwright() as pw:
        browser = launch(pw)
        visit = Visit(browser.new_context(), url)
        rows = [[None if np.isnan(v) else float(v) for v in row] for row in X]
        got = visit.page.evaluate("rows => window.mlcycle.run(rows)", rows)
        for key, column in zip(("prediction", "lower", "upper"), want, strict=True):
            same_quantized_answers(np.asarray(got[key]), np.asarray(column))
        page = visit.page
        for name, value in record.items():
            field = page.locator(f"#f-{name}")
            if field.evaluate("e => e.tagName") == "SELECT":
                field.select_option(label=str(value))
            else:
                field.fill("" if value is None else repr(float(value)))
        page.evaluate("() => window.mlcycle.settled()")
        assert page.evaluate("() => window.mlcycle.record()") == record
        page.click("#ask")
        page.locator("#server-answer .label").wait_for()
        here = json.loads(page.locator("#browser-answer").get_attribute("data-answer"))
        there = json.loads(page.locator("#server-answer").get_attribute("data-answer"))
        browser_alone, served_alone = alone
        for i, key in enumerate(("prediction", "lower", "upper")):
            mine, theirs = browser_alone[i][0], served_alone[i][0]
            assert abs(here[key] - mine) <= 1e-5 * max(1.0, abs(mine)), here
            assert abs(there[key] - theirs) <= 1e-5 * max(1.0, abs(theirs)), there
        assert not visit.errors, visit.errors
        browser.close()


NOISE_SIGMA = 20.0  # the traffic's sensor noise on every numeric column (their range: 0-100)


@dataclasses.dataclass
class Loop:
    """What one unattended loop left: the monitor's decisions up to and with the first retrain,
    the shifted held-out traffic's figures before and after it, and the retrain's gate."""

    decisions: list[dict]
    retrain: dict
    before: dict
    after: dict
    gate: dict
    robustness: dict
    project: Path

    @property
    def promoted(self) -> bool:
        return self.retrain["decision"] == "retrain_promoted"

    @property
    def alarmed(self) -> list[dict]:
        """The windows whose feedback coverage was harmed, up to the retrain's."""
        first = self.decisions.index(self.retrain)
        return [d for d in self.decisions[: first + 1] if d["figures"].get("coverage_dropped")]


def run_loop(price_run: tuple[Path, str], tmp_path: Path, shift: dict) -> Loop:
    """The regression loop (:func:`loop_on_loopback`) on the price table's champion, and what
    every shift's loop must show (:func:`check_the_retrain`)."""
    loop = loop_on_loopback(price_run[0], tmp_path, shift)
    check_the_retrain(loop)
    return loop


def loop_on_loopback(source: Path, tmp_path: Path, shift: dict) -> Loop:
    """The loop on loopback with the params of the project at ``source`` (a `dvc repro` that
    promoted version 1; copied) but ``simulate.*`` = ``shift``: `bentoml serve` on its champion,
    shifted held-out traffic, the shifted train and val rows labelled through /feedback,
    `monitoring watch` until its first retrain, which must end in the gate's decision, the
    shifted held-out traffic again on whatever the service then serves."""
    project = tmp_path / "project"
    shutil.copytree(source, project, symlinks=True)
    set_params(project, {"monitor": {"interval_s": 1}})
    prepared = project / "data/prepared"
    traffic = pd.concat([pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "val")])
    traffic.to_parquet(project / "traffic.parquet")
    shutil.copy(prepared / "test.parquet", project / "heldout.parquet")

    def simulate(rows: str, requests: int, feedback: float) -> dict:
        set_params(project, {"simulate": {**shift, "rows_from": rows, "feedback_rate": feedback}})
        command = [sys.executable, "-m", "monitoring", "--params", str(project / "params.yaml")]
        command += ["simulate", "--url", server.url, "--requests", str(requests)]
        out = subprocess.run(
            command, env=env(project), capture_output=True, text=True, timeout=300, check=False
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    server = Server(project, str(project / "production.db"), {"MLCYCLE_FEEDBACK_TOKEN": LOOP_TOKEN})
    server.start()
    watch = None
    try:
        before = simulate("heldout.parquet", 600, feedback=0.0)
        fed = simulate("traffic.parquet", len(traffic), feedback=1.0)
        assert fed["feedback"] == {"200": fed["rows"]}
        watch = subprocess.Popen(
            [
                *(sys.executable, "-m", "monitoring", "--params", str(project / "params.yaml")),
                *("watch", "--max-seconds", "900"),
            ],
            env=env(project),
            stdout=(tmp_path / "watch.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log = ProductionLog(str(project / "production.db"))
        deadline = time.monotonic() + 600
        retrains: list[dict] = []
        while time.monotonic() < deadline and watch.poll() is None and not retrains:
            retrains = [d for d in log.decisions(1000) if d["decision"].startswith("retrain")]
            time.sleep(1)
        decisions = log.decisions(1000)
        assert retrains, ([d["decision"] for d in decisions], (tmp_path / "watch.log").read_text())
        promoted = retrains[0]["decision"] == "retrain_promoted"
        retrain_logs = sorted((project / "reports").glob("**/retrain/*.log"))
        if not promoted and retrains[0]["decision"] != "retrain_rejected":
            # pytest.fail, not assert: an assertion's message is cut short, and the log's tail
            # is what names the cause of a retrain that failed.
            tails = "\n".join(f"--- {p}\n{p.read_text()[-6000:]}" for p in retrain_logs)
            pytest.fail(f"{retrains[0]['decision']}: {retrains[0]['reasons']}\n{tails}")
        want = "2" if promoted else "1"
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/model").json()["version"] != want:
            assert time.monotonic() < deadline, f"the service did not serve version {want}"
            time.sleep(0.5)
        after = simulate("heldout.parquet", 600, feedback=0.0)
        log.close()
    finally:
        if watch is not None:
            watch.terminate()
            watch.wait(60)
        server.stop()
    return Loop(
        decisions,
        retrains[0],
        before,
        after,
        json.loads((project / "metrics/evaluate.json").read_text()),  # the retrain's gate
        json.loads((project / "metrics/robustness.json").read_text()),
        project,
    )


def check_the_retrain(loop: Loop) -> None:
    """What every shift's loop must show, whichever way the gate decided: three harmed windows
    in a row (monitor.debounce) before the retrain, nothing but drift or alarms before them; version
    2's interval calibrated on val's production rows covers the production holdout at the
    nominal 90 % where version 1's does not; the service serves what the gate decided.

    Split conformal on exchangeable rows covers a fresh set at nominal on average; one run's
    realised coverage varies with the calibration rows (a Beta draw, variance about
    a(1 - a) / (n_cal + 2)) and with the holdout's own rows (binomial). The check allows four of
    their combined standard errors (about 0.03 with 200-odd rows of each): a CI run once saw
    0.952 on 228 holdout rows, inside that but outside a fixed 0.05."""
    harmful = loop.alarmed
    assert len(harmful) >= 3 and all(d["figures"]["coverage"] < 0.8 for d in harmful)
    first = loop.decisions.index(loop.retrain)
    assert set(d["decision"] for d in loop.decisions[:first]) <= {"drift", "alarm"}
    assert loop.before["coverage"] < 0.8
    gate2 = loop.gate
    assert gate2["version"] == "2"
    assert loop.robustness["interval"]["calibrated_on"] == "production"
    cand, n_cal = gate2["candidate"], loop.robustness["interval"]["calibration_rows"]
    se = math.sqrt(0.9 * 0.1 / cand["holdout_rows"] + 0.9 * 0.1 / (n_cal + 2))
    assert abs(cand["holdout_coverage"] - 0.9) < 4 * se, (cand, n_cal)
    assert gate2["champion"]["holdout_coverage"] < 0.8 and gate2["production"]["champion_failing"]
    assert {r["rule"]: r for r in gate2["rules"]}["coverage"]["what"].startswith(
        "production holdout"
    )
    want = "2" if loop.promoted else "1"
    assert set(loop.after["by_version"]) == {want}
    if loop.promoted:
        assert loop.after["coverage"] > loop.before["coverage"]
    print(
        f"regression loop: version 2 {loop.retrain['decision']}; shifted held-out coverage "
        f"{loop.before['coverage']:.3f} -> {loop.after['coverage']:.3f}; holdout coverage "
        f"{gate2['champion']['holdout_coverage']:.3f} (v1) vs "
        f"{gate2['candidate']['holdout_coverage']:.3f} (v2); drifted windows "
        f"{sum(bool(d['figures'].get('drifted')) for d in harmful)} of {len(harmful)} harmed; "
        f"rules {[(r['rule'], r['passed']) for r in gate2['rules']]}"
    )


def test_a_noisy_sensor_is_caught_by_coverage_and_retrained_on_loopback(
    price_run: tuple[Path, str], tmp_path: Path
) -> None:
    """Production inputs gain Gaussian noise of 20 (the true prices do not change) -> the
    intervals stop covering -> the monitor finds harm in feedback coverage, which its 50-row
    drift test does not see (the noise moves a uniform column's distribution function by at
    most 0.08; 50 rows detect about 0.24) -> `dvc repro` retrains on the labelled rows,
    calibrating the interval on the production rows -> the gate decides, and the service
    answers with whatever it promoted.

    What is asserted is the mechanics and the interval's guarantee, not how training landed:
    whether the gate promotes version 2 depends on it. Measured (seed 0 table; the
    service's random request ids move rows between holdout and training): at train.lr 0.003
    promoted in six of eight runs, rejected twice on vs_baseline alone, 0.7885 vs 0.7955 and
    0.7356 vs 0.7822 (the network, fine-tuned 10 epochs from version 1 on the noisy mix, against
    HistGradientBoosting refit on it, minus 0.02, on the clean test split); five retrain sets
    re-run at train.regression_warm_start_lr's 0.001: R² better on four (the first rejected set
    0.820), 0.0015 lower on one.
    """
    loop = run_loop(price_run, tmp_path, {"scenario": "noise", "noise_sigma": NOISE_SIGMA})
    assert not any(d["figures"].get("drifted") for d in loop.alarmed)  # harm, not drift


def test_a_miscalibrated_sensor_drifts_and_is_retrained_on_loopback(
    price_run: tuple[Path, str], tmp_path: Path
) -> None:
    """Every numeric input reads 60 % of its value (simulate.intensity, the repo's 0.6; the true
    prices do not change) -> the drift test flags the windows (KS on 8 of 9 columns) and their
    feedback coverage collapses -> an Evidently report at the onset -> `dvc repro` retrains on
    the labelled rows -> the gate decides; the service answers with what it promoted.

    Mechanics, not how training landed (as above). Measured (seed 0 table, four runs): promoted
    each time, shifted held-out coverage 0.100 -> 0.900-0.922, version 2's clean test R²
    0.761-0.778 against HistGradientBoosting refit on the same rows, 0.756-0.785, minus 0.02.
    """
    loop = run_loop(price_run, tmp_path, {"scenario": "intensity"})
    harmed = loop.alarmed
    assert all(d["figures"]["drifted"] and d["figures"]["n_drifted_features"] >= 5 for d in harmed)
    reports = loop.project / "reports/drift"
    assert list(reports.glob("*.html")) and (reports / "index.html").is_file()
