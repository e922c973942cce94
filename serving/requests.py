"""Request bodies checked against schema.json: what a client sent, turned into model input.

``POST /predict``  ``{"records": [{feature: value, ...}, ...]}``: every feature of schema.json,
no other; numbers for numeric features (``null`` for a missing value, which the graph imputes as
in training); for categorical features one of the categories seen in training. Numbers outside
the training range are served but flagged. ``POST /feedback`` ``{"feedback": [{"request_id": ...,
"index": 0, "label": <one of the schema's classes; a regressor's: a finite number>}, ...]}``.

Every problem raises :class:`RequestError` with the HTTP status and a message naming the field
(``records[3].pixel_0_0``), the value seen and what was expected. The common case is checked in
bulk (dictionary keys, then one pass over the values); only a failing request walks field by
field to name the culprit. No torch, no training code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from pipeline.contracts.schema import Schema
from pipeline.contracts.tasks import served_task

_NUMBER = (int, float)
_NUMBER_TYPES = frozenset(_NUMBER)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class RequestError(Exception):
    """A client error: ``status`` (4xx) and a message naming the field and the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class RecordEncoder:
    """Turns validated records into the ONNX input, from one schema."""

    def __init__(self, schema: Schema, max_batch: int) -> None:
        self.max_batch = max_batch
        self.names = schema.names
        self.keys = frozenset(self.names)
        self.categorical = {
            j: {c: float(i) for i, c in enumerate(f.categories or ())}
            for j, f in enumerate(schema.features)
            if f.kind == "categorical"
        }
        self.low, self.high = schema.bounds  # float64, schema order

    def records(self, payload: Any) -> list[Any]:
        if not isinstance(payload, dict):
            raise RequestError(
                422, f'body: expected an object {{"records": [...]}}, got {_kind(payload)}'
            )
        extra = sorted(set(payload) - {"records"})
        if extra:
            raise RequestError(422, f"body: unknown field {extra[0]!r}; expected only 'records'")
        if "records" not in payload:
            raise RequestError(422, "body: missing field 'records'")
        records = payload["records"]
        if not isinstance(records, list):
            raise RequestError(422, f"records: expected a list, got {_kind(records)}")
        if not records:
            raise RequestError(422, "records: empty list; send at least one record")
        if len(records) > self.max_batch:
            raise RequestError(
                413,
                f"records: {len(records)} records; at most serving.max_batch = {self.max_batch}",
            )
        return records

    def encode(self, payload: Any) -> tuple[np.ndarray, list[str]]:
        """(X (records, features) float32, per record the comma-joined out-of-range names)."""
        records = self.records(payload)
        names = self.names
        try:  # every record holds every feature (a missing one, or a non-object, raises) ...
            values = [rec[n] for rec in records for n in names]
        except (KeyError, TypeError, IndexError):
            values = None
        # ... and nothing else: with every feature present, equal key counts mean equal keys.
        if values is None or sum(map(len, records)) != len(records) * len(names):
            self._explain_records(records)
        if self.categorical:
            values = self._encode_categories(records, values)
        elif not set(map(type, values)) <= _NUMBER_TYPES:  # bool, str, None, list ...
            values = self._numbers_or_explain(records, values)
        X = np.array(values, dtype=np.float64).reshape(len(records), len(names))
        # One pass flags values outside the training range (NaN compares False: a missing value
        # is not out of range). Categoricals are valid indices by now, so only numbers trip it.
        outside = np.less(X, self.low) | np.greater(X, self.high)
        if not outside.any():
            return X.astype(np.float32), [""] * len(records)
        if (np.abs(X[outside]) > _FLOAT32_MAX).any():  # the graph computes in float32
            self._explain_values(records)
        flags = [""] * len(records)
        for i in np.flatnonzero(outside.any(axis=1)).tolist():
            flags[i] = ",".join(names[j] for j in np.flatnonzero(outside[i]).tolist())
        return X.astype(np.float32), flags

    def _numbers_or_explain(self, records: list[Any], values: list[Any]) -> list[Any]:
        if all(type(v) in _NUMBER or v is None for v in values):
            return [math.nan if v is None else v for v in values]
        self._explain_values(records)
        raise AssertionError("unreachable: _explain_values raises")

    def _encode_categories(self, records: list[Any], values: list[Any]) -> list[Any]:
        width = len(self.names)
        out = list(values)
        for k, v in enumerate(values):
            lookup = self.categorical.get(k % width)
            if v is None:  # missing: the graph imputes it
                out[k] = math.nan
            elif lookup is None:
                if type(v) not in _NUMBER:
                    self._explain_values(records)
            elif type(v) in (str, int) and str(v) in lookup:
                out[k] = lookup[str(v)]
            else:
                self._explain_values(records)
        return out

    def _explain_records(self, records: list[Any]) -> None:
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or rec.keys() != self.keys:
                self._explain_record(i, rec)
        raise AssertionError("unreachable: a record failed the bulk check")

    def _explain_record(self, i: int, rec: Any) -> None:
        where = f"records[{i}]"
        if not isinstance(rec, dict):
            raise RequestError(422, f"{where}: expected an object of features, got {_kind(rec)}")
        unknown = sorted(set(rec) - self.keys)
        if unknown:
            raise RequestError(
                422, f"{where}: unknown field {unknown[0]!r}; not a feature of schema.json"
            )
        missing = [n for n in self.names if n not in rec]
        raise RequestError(
            422,
            f"{where}: missing field {missing[0]!r} ({len(missing)} missing); every feature of "
            "schema.json is required (null for a missing value)",
        )

    def _explain_values(self, records: list[Any]) -> None:
        for i, rec in enumerate(records):
            for j, name in enumerate(self.names):
                v = rec[name]
                where = f"records[{i}].{name}"
                if v is None:
                    continue
                if j in self.categorical:
                    cats = self.categorical[j]
                    if type(v) not in (str, int):
                        raise RequestError(
                            422, f"{where}: expected a category (string), got {_kind(v)} {_show(v)}"
                        )
                    if str(v) not in cats:
                        shown = list(cats)[:20]
                        raise RequestError(
                            422,
                            f"{where}: category {_show(v)} was never seen in training; expected "
                            f"one of {shown}{' ...' if len(cats) > 20 else ''}",
                        )
                elif type(v) not in _NUMBER:
                    raise RequestError(
                        422, f"{where}: expected a number, got {_kind(v)} {_show(v)}"
                    )
                elif not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
                    raise RequestError(422, f"{where}: {_show(v)} is not a finite float32 number")
        raise RequestError(422, "records: a value is not a finite number")


def parse_feedback(payload: Any, schema: Schema, max_items: int) -> list[tuple[str, int, Any]]:
    """[(request id, index, true class index)] from a feedback body; a regressor's: (request
    id, index, true value as a float)."""
    if not isinstance(payload, dict) or set(payload) != {"feedback"}:
        raise RequestError(422, 'body: expected an object {"feedback": [...]} and nothing else')
    items = payload["feedback"]
    if not isinstance(items, list) or not items:
        raise RequestError(422, "feedback: expected a non-empty list")
    if len(items) > max_items:
        raise RequestError(413, f"feedback: {len(items)} items; at most {max_items}")
    task = served_task(schema)
    out = []
    for k, item in enumerate(items):
        where = f"feedback[{k}]"
        if not isinstance(item, dict):
            raise RequestError(422, f"{where}: expected an object, got {_kind(item)}")
        unknown = sorted(set(item) - {"request_id", "index", "label"})
        if unknown:
            raise RequestError(422, f"{where}: unknown field {unknown[0]!r}")
        rid, idx = item.get("request_id"), item.get("index", 0)
        if not isinstance(rid, str) or not 0 < len(rid) <= 64:
            raise RequestError(422, f"{where}.request_id: expected the id /predict returned")
        if type(idx) is not int or idx < 0:
            raise RequestError(422, f"{where}.index: expected an integer >= 0, got {_show(idx)}")
        if "label" not in item:
            raise RequestError(422, f"{where}: missing field 'label'")
        label = item["label"]
        try:
            out.append((rid, idx, task.feedback_label(label, schema)))
        except ValueError as exc:  # not one of the task's labels: the reason names it
            raise RequestError(422, f"{where}.label: {_show(label)} {exc}") from None
    return out
