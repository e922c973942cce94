"""The service's OpenAPI 3 description, built from schema.json (``GET /openapi.json``).

The request body of ``/predict`` lists every feature with its type (number, or one of the
categories seen in training; ``null`` for a missing value), so a client generator or a fuzzer
(schemathesis, in the tests) knows exactly what the service accepts. The task decides the rest:
a classifier's feedback label is one of its classes and ``/predict`` answers a label and
probabilities; a regressor's label is a finite number and ``/predict`` answers a prediction
with its interval.
"""

from __future__ import annotations

from typing import Any

from pipeline.contracts.params import ServingConfig
from pipeline.contracts.schema import Schema
from pipeline.contracts.tasks import served_task


def _feature(f: Any) -> dict[str, Any]:
    if f.kind == "categorical":
        return {"type": "string", "enum": list(f.categories or ()), "nullable": True}
    return {"type": "number", "nullable": True}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A JSON object with these properties and no others."""
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": _json(
            {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        ),
    }


def _explained(schema: Schema) -> dict[str, Any]:
    """/explain's answer: per record, its attributions by feature (and a heatmap for images)."""
    number = {"type": "number"}
    item: dict[str, Any] = {
        "type": "object",
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "explained_value": number,
            "attributions": _object({n: number for n in schema.names}, schema.names),
        },
        "required": ["index", "explained_value", "attributions"],
    }
    if schema.image_shape is not None and len(schema.image_shape) == 2:
        item["properties"]["heatmap"] = {
            "type": "array",
            "items": {"type": "array", "items": number},
        }
        item["required"].append("heatmap")
    return {
        "type": "object",
        "properties": {
            "model_version": {"type": "string"},
            "explained": {"type": "string"},
            "method": {"type": "string"},
            "explanations": {"type": "array", "items": item},
        },
        "required": ["model_version", "explained", "method", "explanations"],
    }


def openapi_spec(schema: Schema, cfg: ServingConfig) -> dict[str, Any]:
    record = _object({f.name: _feature(f) for f in schema.features}, schema.names)
    task = served_task(schema)
    label, answer = task.openapi(schema)
    item = _object(
        {
            "request_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "index": {"type": "integer", "minimum": 0},
            "label": label,
        },
        ["request_id", "label"],
    )
    what = task.what
    records = {"type": "array", "items": record, "minItems": 1, "maxItems": cfg.max_batch}
    errors = {
        "400": _error("malformed JSON"),
        "413": _error("body or batch too large"),
        "415": _error("not application/json"),
        "422": _error("a field is missing, unknown or of the wrong type or value"),
        "503": _error("overloaded; retry after the Retry-After header's seconds"),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "mlcycle", "version": "1"},
        "paths": {
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "requestBody": {
                        "required": True,
                        "content": _json(_object({"records": records}, ["records"])),
                    },
                    "responses": {
                        "200": {"description": what, "content": _json(answer)},
                        **errors,
                    },
                }
            },
            "/explain": {
                "post": {
                    "operationId": "explain",
                    "requestBody": {
                        "required": True,
                        "content": _json(_object({"records": records}, ["records"])),
                    },
                    "responses": {
                        "200": {
                            "description": f"{what}, each with the fall of {task.explained} "
                            "when each feature is missing (occlusion)",
                            "content": _json(_explained(schema)),
                        },
                        **errors,
                    },
                }
            },
            "/feedback": {
                "post": {
                    "operationId": "feedback",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": _json(
                            _object(
                                {"feedback": {"type": "array", "minItems": 1, "items": item}},
                                ["feedback"],
                            )
                        ),
                    },
                    "responses": {
                        "200": {"description": "stored and duplicate counts"},
                        "401": _error("missing or wrong bearer token"),
                        "403": _error("feedback is not enabled on this service"),
                        "404": _error("unknown prediction"),
                        "409": _error("the prediction already has another label"),
                        **errors,
                    },
                }
            },
            "/model": {"get": {"responses": {"200": {"description": "the served model"}}}},
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
