"""The service over HTTP: a real `python -m serving` (bentoml serve) on loopback.

Answers equal the ONNX graph's on the whole test split, every bad request is a 4xx naming the
problem, every answered record is in the production log, feedback is authenticated and checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from pipeline.contracts.prodlog import ProductionLog
from pipeline.contracts.runtime import predict as graph_predict
from pipeline.contracts.runtime import session
from pipeline.contracts.schema import LABEL, Schema
from tests.conftest import ROOT
from tests.serving.conftest import Server, post
from tests.unit.test_explain import margin

TOKEN = {"Authorization": "Bearer s3cret"}


def split(stage_inputs: Path) -> tuple[list[dict[str, float]], np.ndarray, Schema]:
    schema = Schema.from_dict(json.loads((stage_inputs / "data/schema.json").read_text()))
    test = pd.read_parquet(stage_inputs / "data/prepared/test.parquet")
    X = test[schema.names].to_numpy(np.float32)
    records = [dict(zip(schema.names, row, strict=True)) for row in X.tolist()]
    return records, X, schema


def counted(server: Server, name: str) -> float:
    """The sum of a Prometheus series' samples (every label set) on ``GET /metrics``."""
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_logged(server: Server, n: int, timeout: float = 10) -> ProductionLog:
    log = ProductionLog(str(server.state / "production.db"))
    deadline = time.monotonic() + timeout
    while log.count()["predictions"] < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def test_answers_equal_the_graph_on_the_whole_test_split(
    server: Server, stage_inputs: Path, served_state: Path
) -> None:
    records, X, schema = split(stage_inputs)
    probs, labels = graph_predict(session(served_state / "registry/champion/model.onnx"), X)
    r = post(f"{server.url}/predict", {"records": records})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1" and body["classes"] == list(schema.classes)
    got = [p["label"] for p in body["predictions"]]
    assert got == [schema.classes[k] for k in labels.tolist()] and len(got) == 360
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], probs, atol=1e-6)
    for i in range(5):  # one record at a time, too
        one = post(f"{server.url}/predict", {"records": [records[i]]}).json()
        assert one["predictions"][0]["label"] == got[i]

    log = wait_logged(server, 365)
    window = log.window(model_version="1")
    mine = [k for k, rid in enumerate(window.request_id) if rid == body["request_id"]]
    assert len(mine) == 360  # one row per answered record
    np.testing.assert_array_equal(window.X[mine], X)
    np.testing.assert_array_equal(window.label[mine], labels)
    assert (window.latency_ms[mine] > 0).all()
    truth = pd.read_parquet(stage_inputs / "data/prepared/test.parquet")[LABEL].to_numpy()
    assert (np.array(got) == np.array([schema.classes[k] for k in truth])).mean() > 0.3


def record(schema_names: list[str], value: Any = 1.0) -> dict[str, Any]:
    return dict.fromkeys(schema_names, value)


BAD = {
    "unknown field": (lambda n: {"records": [{**record(n), "extra": 1}]}, 422, "unknown field"),
    "missing field": (lambda n: {"records": [record(n[1:])]}, 422, "missing field 'pixel_0_0'"),
    "wrong type": (
        lambda n: {"records": [{**record(n), "pixel_3_3": "x"}]},
        422,
        "records[0].pixel_3_3: expected a number, got str 'x'",
    ),
    "bool": (lambda n: {"records": [{**record(n), "pixel_1_1": True}]}, 422, "got bool"),
    "empty list": (lambda n: {"records": []}, 422, "records: empty list"),
    "too many records": (lambda n: {"records": [record(n)] * 1025}, 413, "max_batch = 1024"),
    "not an object": (lambda n: [record(n)], 422, "expected an object"),
}


@pytest.mark.parametrize("endpoint", ["predict", "explain"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_records_are_4xx_naming_the_problem(
    server: Server, stage_inputs: Path, case: str, endpoint: str
) -> None:
    _, _, schema = split(stage_inputs)
    make, status, message = BAD[case]
    r = post(f"{server.url}/{endpoint}", make(schema.names))
    assert r.status_code == status and message in r.json()["error"], r.text


def settled_rows(server: Server, timeout: float = 10) -> float:
    """Rows the service's log writer has written, once its queue is empty."""
    deadline = time.monotonic() + timeout
    while counted(server, "mlcycle_log_queue_rows") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return counted(server, "mlcycle_log_rows_written")


def test_explain_answers_as_predict_with_the_graphs_own_attributions(
    server: Server, stage_inputs: Path, served_state: Path
) -> None:
    """/explain answers each record as /predict does, with each pixel's attribution: the fall
    of the answered class's probability when the graph does not know it (checked against the
    graph itself), and a heatmap in the image's shape; nothing of it is logged."""
    records, X, schema = split(stage_inputs)
    sess = session(served_state / "registry/champion/model.onnx")
    before = settled_rows(server)
    r = post(f"{server.url}/explain", {"records": records[:20]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1"
    assert body["explained"].startswith("the answered class's log-odds")
    answered = post(f"{server.url}/predict", {"records": records[:20]}).json()["predictions"]
    probs, labels = graph_predict(sess, X[:20])
    for i, item in enumerate(body["explanations"]):
        assert item["label"] == answered[i]["label"] == schema.classes[labels[i]]
        np.testing.assert_allclose(item["probabilities"], answered[i]["probabilities"], atol=1e-6)
        own = margin(probs[i : i + 1], labels[i : i + 1])[0]
        assert item["explained_value"] == pytest.approx(own, abs=1e-4)
        got = np.array([item["attributions"][n] for n in schema.names])
        np.testing.assert_array_equal(np.array(item["heatmap"]).ravel(), got)
        occluded = np.repeat(X[i : i + 1], 64, axis=0)
        occluded[np.arange(64), np.arange(64)] = np.nan
        without = margin(graph_predict(sess, occluded)[0], np.full(64, labels[i]))
        np.testing.assert_allclose(got, own - without, atol=1e-4)
    assert settled_rows(server) == before + 20  # the /predict call's rows only
    too_many = post(f"{server.url}/explain", {"records": records[:1] * 1009})  # 65,585 rows
    assert too_many.status_code == 413 and "at most 65536" in too_many.json()["error"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (b'{"records": [', {"content-type": "application/json"}, 400, "malformed JSON"),
        (b'{"records": [{"a": NaN}]}', {"content-type": "application/json"}, 400, "malformed"),
        (b'{"records": [{"a": 1e999}]}', {"content-type": "application/json"}, 400, "malformed"),
        (b"records=1", {"content-type": "application/x-www-form-urlencoded"}, 415, "expected"),
        (b"{}", {}, 415, "content-type"),
        (b" " * (4 * 2**20 + 1), {"content-type": "application/json"}, 413, "4194305 bytes"),
    ],
)
def test_bad_bodies_are_4xx(
    server: Server, content: bytes, headers: dict, status: int, message: str
) -> None:
    r = httpx.post(f"{server.url}/predict", content=content, headers=headers, timeout=30)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_a_streamed_body_over_the_limit_is_cut_off(server: Server) -> None:
    def chunks():  # no Content-Length: the service counts as it reads
        for _ in range(5):
            yield b" " * 2**20

    r = httpx.post(
        f"{server.url}/predict",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_out_of_range_values_are_served_and_flagged(server: Server, stage_inputs: Path) -> None:
    records, _, _ = split(stage_inputs)
    rec = {**records[0], "pixel_0_0": 99.0}  # pixel_0_0 is 0 in every digit
    before = counted(server, "mlcycle_out_of_range_records_total")
    body = post(f"{server.url}/predict", {"records": [rec, records[1]]}).json()
    assert body["predictions"][0]["out_of_range"] == ["pixel_0_0"]
    assert "out_of_range" not in body["predictions"][1]
    # one flagged record of the two
    assert counted(server, "mlcycle_out_of_range_records_total") == before + 1


def test_feedback_needs_the_token_and_stores_only_valid_labels(server: Server) -> None:
    names = [f"pixel_{i}_{j}" for i in range(8) for j in range(8)]
    answer = post(f"{server.url}/predict", {"records": [record(names, 2.0)] * 2})
    rid = answer.json()["request_id"]
    good = {"feedback": [{"request_id": rid, "index": 1, "label": 3}]}
    assert post(f"{server.url}/feedback", good).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    r = post(f"{server.url}/feedback", good, headers=wrong)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"

    log = ProductionLog(str(server.state / "production.db"))
    before = log.count()["feedback"]
    unknown = {"feedback": [{"request_id": rid, "label": 3}, {"request_id": "nope", "label": 3}]}
    r = post(f"{server.url}/feedback", unknown, headers=TOKEN)
    assert r.status_code == 404 and "'nope' index 0 is not in the production log" in r.text
    bad_label = {"feedback": [{"request_id": rid, "label": 10}]}
    r = post(f"{server.url}/feedback", bad_label, headers=TOKEN)
    assert r.status_code == 422 and "feedback[0].label: 10 is not one of" in r.text
    assert log.count()["feedback"] == before  # nothing stored from the refused requests

    # Right after /predict: the rows may still be queued; feedback commits them first.
    assert post(f"{server.url}/feedback", good, headers=TOKEN).json() == {
        "stored": 1,
        "duplicates": 0,
    }
    again = post(f"{server.url}/feedback", good, headers=TOKEN)
    assert again.json() == {"stored": 0, "duplicates": 1}  # idempotent
    conflict = {"feedback": [{"request_id": rid, "index": 1, "label": 4}]}
    assert post(f"{server.url}/feedback", conflict, headers=TOKEN).status_code == 409
    assert log.count()["feedback"] == before + 1


def test_model_health_metrics_and_openapi(server: Server) -> None:
    answer = httpx.get(f"{server.url}/model")
    model = answer.json()
    assert model["version"] == "1" and len(model["schema"]["features"]) == 64
    etag = answer.headers["etag"]  # a client holding this answer is told 304 (the page)
    assert httpx.get(f"{server.url}/model", headers={"if-none-match": etag}).status_code == 304
    assert httpx.get(f"{server.url}/model", headers={"if-none-match": '"x"'}).status_code == 200
    assert model["metrics"]["promoted"] and "## Gate: PROMOTED" in model["model_card"]
    # The digits' card: each answered class's mean attribution map, as /explain attributes.
    assert "## What the answers rest on" in model["model_card"]
    assert "![mean attribution per answered class](data:image/png;base64," in model["model_card"]
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert 'mlcycle_model_version{version="1"} 1.0' in httpx.get(f"{server.url}/metrics").text
    # Every answered record counts once per class series, every refusal once, every logged row
    # once (the writer commits in the background: waited for).
    names = [f"pixel_{i}_{j}" for i in range(8) for j in range(8)]
    counters = ("mlcycle_predictions_total", "mlcycle_rejected_requests_total")
    before = {c: counted(server, c) for c in counters}
    answered = counted(server, "mlcycle_request_seconds_count")
    assert post(f"{server.url}/predict", {"records": [record(names, 1.0)] * 3}).status_code == 200
    assert post(f"{server.url}/predict", {"records": []}).status_code == 422
    assert counted(server, "mlcycle_predictions_total") == before[counters[0]] + 3
    assert counted(server, "mlcycle_rejected_requests_total") == before[counters[1]] + 1
    assert counted(server, "mlcycle_request_seconds_count") >= answered + 1
    written = ProductionLog(str(server.state / "production.db")).count()["predictions"]
    deadline = time.monotonic() + 10
    while counted(server, "mlcycle_log_rows_written") < written and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted(server, "mlcycle_log_rows_written") >= written
    spec = httpx.get(f"{server.url}/openapi.json").json()
    record_schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["properties"]["records"]["items"]
    assert len(record_schema["required"]) == 64 and not record_schema["additionalProperties"]
    explain = spec["paths"]["/explain"]["post"]
    assert explain["requestBody"] == spec["paths"]["/predict"]["post"]["requestBody"]
    item = explain["responses"]["200"]["content"]["application/json"]["schema"]["properties"][
        "explanations"
    ]["items"]
    assert (
        "heatmap" in item["required"] and len(item["properties"]["attributions"]["required"]) == 64
    )


@pytest.mark.slow  # 3 s: a `python -m serving` process of its own (make test keeps under 2 min)
def test_without_a_champion_serving_exits_with_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "serving"],
        cwd=ROOT,
        env={"MLCYCLE_PARAMS": str(tmp_path / "params.yaml"),
             "MLCYCLE_REGISTRY": str(tmp_path / "registry"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no champion to serve" in proc.stderr and "make repro" in proc.stderr


def test_the_readmes_request_is_answered(server: Server) -> None:
    """The README's example request, run as written (only the address is the test server's)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- readme-request -->")[1].split("<!-- /readme-request -->")[0]
    command = block.strip().removeprefix("```bash").removesuffix("```").strip()
    assert command.startswith("curl ") and "http://127.0.0.1:3000/predict" in command
    command = command.replace("http://127.0.0.1:3000", server.url)
    out = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    body = json.loads(out)
    assert body["model_version"] == "1" and body["request_id"]
    (answer,) = body["predictions"]
    assert answer["label"] in body["classes"]
    assert len(answer["probabilities"]) == len(body["classes"])
    assert abs(sum(answer["probabilities"]) - 1.0) < 1e-4
