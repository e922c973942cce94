"""onnxruntime helpers shared by export, evaluate and serving: sessions, inference, latency."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def session(
    path: str | Path, threads: int = 1, providers: list[str] | None = None
):  # -> onnxruntime.InferenceSession
    """An inference session, on the CPU unless ``providers`` says otherwise; one intra-op
    thread keeps single-row latency steady."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
    )


def predict(sess, X: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (rows, classes), labels (rows,)) for raw encoded features ``X``."""
    probs, labels = [], []
    for i in range(0, len(X), batch):
        p, lab = sess.run(
            ["probabilities", "label"],
            {"features": np.ascontiguousarray(X[i : i + batch], dtype=np.float32)},
        )
        probs.append(p)
        labels.append(lab)
    return np.concatenate(probs), np.concatenate(labels)


def latency_ms(
    sess, X: np.ndarray, batch: int = 1, repeats: int = 300, warmup: int = 20
) -> dict[str, float]:
    """p50 / p99 wall time of one ``sess.run`` on ``batch`` rows, in milliseconds."""
    rows = np.ascontiguousarray(np.resize(X, (batch, X.shape[1])), dtype=np.float32)
    feed = {"features": rows}
    for _ in range(warmup):
        sess.run(None, feed)
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        times[i] = time.perf_counter() - start
    return {
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
    }
