"""Answer records with the model of this folder, on a device: onnxruntime and numpy only.

    pip install -r requirements.txt
    python predict.py records.json > answers.json     # or: from predict import Predictor

``records.json`` holds ``{"records": [{feature: value, ...}, ...]}`` (the service's /predict
body: every feature of schema.json, categories as their names, null for a missing value); the
answer is one object per record: the class label and its probabilities, or a regressor's
prediction and interval. The graph (``model.ort``, onnxruntime's ORT format) encodes nothing
itself: :meth:`Predictor.encode` turns records into the float32 matrix it reads, as the service
does (a category as its index in schema.json, missing as NaN). ``mlcycle`` writes this file
into the bundle (``python -m pipeline.registry bundle --target device``); it imports nothing
of mlcycle.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
NUMBER = (int, float, np.integer, np.floating)  # JSON's numbers, and numpy's from Python callers


def finite_number(value: Any) -> bool:
    """A number as the service takes one: not true / false, not text, not NaN or infinite."""
    return not isinstance(value, bool) and isinstance(value, NUMBER) and math.isfinite(value)


def categories(features: list[dict[str, Any]]) -> dict[int, dict[str, int]]:
    """Per categorical feature (by position), each category's index in schema.json."""
    return {
        j: {str(c): k for k, c in enumerate(f["categories"])}
        for j, f in enumerate(features)
        if f["kind"] == "categorical"
    }


class Predictor:
    """The bundle's graph and schema, loaded once; :meth:`predict` answers a list of records."""

    def __init__(self, folder: Path = HERE) -> None:
        self.schema = json.loads((folder / "schema.json").read_text())
        self.features = self.schema["features"]
        self.session = ort.InferenceSession(
            str(folder / "model.ort"), providers=["CPUExecutionProvider"]
        )
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.categories = categories(self.features)

    def encode(self, records: list[dict[str, Any]]) -> np.ndarray:
        """(records, features) float32: numbers as they are, a category as its index, None
        as NaN; a missing feature, an unknown category or a value that is not a finite
        number (text, true / false) is a ValueError naming the record and the feature."""
        X = np.full((len(records), len(self.features)), np.nan, dtype=np.float32)
        for i, record in enumerate(records):
            for j, feature in enumerate(self.features):
                name = feature["name"]
                if name not in record:
                    raise ValueError(f"records[{i}]: missing feature {name!r}")
                value = record[name]
                if value is None:
                    continue
                if j in self.categories:
                    if str(value) not in self.categories[j]:
                        raise ValueError(f"records[{i}].{name}: unknown category {value!r}")
                    X[i, j] = self.categories[j][str(value)]
                elif finite_number(value):
                    X[i, j] = value
                else:
                    raise ValueError(f"records[{i}].{name}: {value!r} is not a finite number")
        return X

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = self.session.run(None, {"features": self.encode(records)})
        out = {name: results[k] for k, name in enumerate(self.outputs)}
        rows = range(len(records))  # (no zip(strict=): the device's Python may predate 3.10)
        if self.schema["task"] == "regression":
            return [
                {key: float(out[key][i]) for key in ("prediction", "lower", "upper")} for i in rows
            ]
        classes = self.schema["target"]["classes"]
        return [
            {
                "label": classes[int(out["label"][i])],
                "probabilities": [float(v) for v in out["probabilities"][i]],
            }
            for i in rows
        ]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python predict.py records.json", file=sys.stderr)
        return 2
    records = json.loads(Path(argv[0]).read_text())["records"]
    json.dump({"predictions": Predictor().predict(records)}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
