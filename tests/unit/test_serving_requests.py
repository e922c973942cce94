"""Request validation from schema.json: every bad input names its field; good input encodes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.contracts.schema import Feature, Schema
from serving.requests import RecordEncoder, RequestError, parse_feedback, parse_json

SCHEMA = Schema(
    features=(
        Feature("size", "numeric", "float64", 0.0, 10.0),
        Feature("colour", "categorical", "object", categories=("blue", "red")),
        Feature("score", "numeric", "float64", -1.0, 1.0),
    ),
    target="churned",
    classes=("no", "yes"),
)
DIGITS_LIKE = Schema(
    features=tuple(Feature(f"p{j}", "numeric", "int64", 0.0, 16.0) for j in range(4)),
    target="target",
    classes=tuple(range(10)),
)
GOOD = {"size": 2.5, "colour": "red", "score": 0.1}


def encode(payload: Any, schema: Schema = SCHEMA, max_batch: int = 8) -> tuple[np.ndarray, list]:
    return RecordEncoder(schema, max_batch).encode(payload)


def test_records_encode_in_schema_order_with_category_indices() -> None:
    X, flags = encode({"records": [GOOD, {**GOOD, "colour": "blue", "size": None}]})
    assert X.dtype == np.float32 and X.shape == (2, 3)
    np.testing.assert_array_equal(X[0], np.float32([2.5, 1.0, 0.1]))
    assert math.isnan(X[1, 0]) and X[1, 1] == 0.0  # null: missing, imputed by the graph
    assert flags == ["", ""]


def test_numbers_outside_the_training_range_are_flagged_not_refused() -> None:
    X, flags = encode({"records": [GOOD, {**GOOD, "size": 11, "score": -3}]})
    assert flags == ["", "size,score"]
    assert X[1, 0] == 11.0


def test_numeric_only_schema_takes_ints_and_floats() -> None:
    X, flags = encode({"records": [{"p0": 1, "p1": 2.5, "p2": 0, "p3": 16}]}, DIGITS_LIKE)
    np.testing.assert_array_equal(X, [[1, 2.5, 0, 16]])
    assert flags == [""]


BAD: dict[str, tuple[Any, int, str]] = {
    "not an object": ([GOOD], 422, 'body: expected an object {"records": [...]}, got list'),
    "missing records": ({"rows": [GOOD]}, 422, "body: unknown field 'rows'"),
    "records not a list": ({"records": GOOD}, 422, "records: expected a list, got dict"),
    "empty list": ({"records": []}, 422, "records: empty list"),
    "too many records": ({"records": [GOOD] * 9}, 413, "at most serving.max_batch = 8"),
    "record not an object": ({"records": [GOOD, 3]}, 422, "records[1]: expected an object"),
    "unknown field": (
        {"records": [{**GOOD, "age": 3}]},
        422,
        "records[0]: unknown field 'age'",
    ),
    "missing field": (
        {"records": [GOOD, {"size": 1.0, "colour": "red"}]},
        422,
        "records[1]: missing field 'score'",
    ),
    "string for a number": (
        {"records": [{**GOOD, "size": "2.5"}]},
        422,
        "records[0].size: expected a number, got str '2.5'",
    ),
    "bool for a number": (
        {"records": [{**GOOD, "score": True}]},
        422,
        "records[0].score: expected a number, got bool True",
    ),
    "list for a number": (
        {"records": [{**GOOD, "score": [1]}]},
        422,
        "records[0].score: expected a number, got list",
    ),
    "unseen category": (
        {"records": [{**GOOD, "colour": "green"}]},
        422,
        "records[0].colour: category 'green' was never seen in training",
    ),
    "number for a category": (
        {"records": [{**GOOD, "colour": 1.5}]},
        422,
        "records[0].colour: expected a category (string), got float 1.5",
    ),
    "beyond float32": (
        {"records": [{**GOOD, "size": 1e39}]},
        422,
        "records[0].size: 1e+39 is not a finite float32 number",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_records_name_the_field(case: str) -> None:
    payload, status, message = BAD[case]
    with pytest.raises(RequestError) as info:
        encode(payload)
    assert info.value.status == status
    assert message in info.value.message


def test_a_numeric_schema_reports_the_same_way() -> None:
    with pytest.raises(RequestError, match=r"records\[1\]\.p2: expected a number, got dict {}"):
        encode({"records": [{"p0": 1, "p1": 1, "p2": 1, "p3": 1},
                            {"p0": 1, "p1": 1, "p2": {}, "p3": 1}]}, DIGITS_LIKE)  # fmt: skip


def test_malformed_json_and_nan_literals_are_400() -> None:
    for body in (b'{"records": [', b'{"records": [{"p0": NaN}]}', b"\xff"):
        with pytest.raises(RequestError) as info:
            parse_json(body)
        assert info.value.status == 400 and "malformed JSON" in info.value.message
    assert parse_json(orjson.dumps({"records": []})) == {"records": []}


def test_feedback_items_are_checked_against_the_classes() -> None:
    items = parse_feedback(
        {"feedback": [{"request_id": "a", "label": "yes"}, {"request_id": "b", "index": 2,
                                                             "label": "no"}]},
        SCHEMA,
        10,
    )  # fmt: skip
    assert items == [("a", 0, 1), ("b", 2, 0)]
    cases = [
        ({"feedback": [{"request_id": "a", "label": "maybe"}]}, "feedback[0].label: 'maybe'"),
        ({"feedback": [{"request_id": "a"}]}, "feedback[0]: missing field 'label'"),
        ({"feedback": [{"request_id": "", "label": "no"}]}, "feedback[0].request_id"),
        ({"feedback": [{"request_id": "a", "index": -1, "label": "no"}]}, "feedback[0].index"),
        ({"feedback": [{"request_id": "a", "label": "no", "x": 1}]}, "unknown field 'x'"),
        ({"feedback": []}, "feedback: expected a non-empty list"),
        ({"labels": []}, 'expected an object {"feedback": [...]}'),
    ]
    for payload, message in cases:
        with pytest.raises(RequestError) as info:
            parse_feedback(payload, SCHEMA, 10)
        assert info.value.status == 422 and message in info.value.message
    # True is not class 1, and an unhashable label is a 422, not a crash.
    for label in (True, [1], {"a": 1}):
        with pytest.raises(RequestError):
            parse_feedback({"feedback": [{"request_id": "a", "label": label}]}, DIGITS_LIKE, 10)
