"""The adaptive-batching variant bench/serve.py measures: a typed, batchable BentoML API.

    MLCYCLE_BARE_DIR=registry/champion MLCYCLE_LOG_URL=/tmp/b.db \
        bentoml serve --working-dir bench batched_app:Batched --port 3002

``POST /predict`` takes ``{"features": [[...], ...]}`` (rows already in schema order, typed with
Shape / DType so garbage is a 400, not a 500), lets BentoML's adaptive batcher merge concurrent
requests into one onnxruntime call, and logs every row through the same group-commit writer as
the service. It exists only to be compared with the service's plain route.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import DType, Shape

from pipeline.contracts.prodlog import ProductionLog
from pipeline.contracts.runtime import session
from serving.prodlog import GroupCommitWriter

FOLDER = Path(os.environ.get("MLCYCLE_BARE_DIR", "registry/champion"))
WIDTH = len(json.loads((FOLDER / "schema.json").read_text())["features"])


@bentoml.service(name="batched", logging={"access": {"enabled": False}})
class Batched:
    def __init__(self) -> None:
        self.sess = session(FOLDER / "model.onnx")
        log = ProductionLog(os.environ["MLCYCLE_LOG_URL"])
        self.writer = GroupCommitWriter(log, 0.05, 200_000)
        self.count = 0

    @bentoml.api(batchable=True, max_batch_size=1024, max_latency_ms=1000)
    def predict(
        self, features: Annotated[np.ndarray, Shape((-1, WIDTH)), DType("float32")]
    ) -> np.ndarray:
        probs, labels = self.sess.run(None, {"features": features})
        now = time.time()
        self.count += 1
        rid = f"b{self.count}"
        self.writer.put(
            [
                (rid, i, now, "bench", features[i].tobytes(), int(lab), probs[i].tobytes(), 0.0, "")
                for i, lab in enumerate(labels.tolist())
            ]
        )
        return probs

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.writer.close()
