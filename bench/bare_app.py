"""The floor bench/serve.py compares the service with: Starlette + onnxruntime, nothing else.

    MLCYCLE_BARE_DIR=registry/champion uvicorn --app-dir bench bare_app:app --port 3001

It parses the records, builds the input in schema order (no validation, no logging, no metrics),
runs the same ONNX graph and answers labels and probabilities: the least any JSON service of this
graph must do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_model: dict[str, Any] = {}


def _load() -> dict[str, Any]:
    if not _model:
        folder = Path(os.environ["MLCYCLE_BARE_DIR"])
        schema = json.loads((folder / "schema.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        _model["names"] = [f["name"] for f in schema["features"]]
        _model["classes"] = schema["target"]["classes"]
        _model["sess"] = ort.InferenceSession(str(folder / "model.onnx"), opts)
    return _model


async def predict(request: Request) -> Response:
    m = _load()
    records = orjson.loads(await request.body())["records"]
    names = m["names"]
    X = np.array([[r[n] for n in names] for r in records], dtype=np.float32)
    probs, labels = m["sess"].run(None, {"features": X})
    classes = m["classes"]
    out = [
        {"label": classes[lab], "probabilities": p}
        for lab, p in zip(labels.tolist(), probs.tolist(), strict=True)
    ]
    return Response(orjson.dumps({"predictions": out}), media_type="application/json")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
