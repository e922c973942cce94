"""onnxruntime helpers shared by export, evaluate and serving: sessions, inference, latency."""

from __future__ import annotations

import time
from collections.abc import Callable
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


REGRESSION_OUTPUTS = ("prediction", "lower", "upper")


def predict_interval(
    sess, X: np.ndarray, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A regressor's (prediction, lower, upper), each (rows,), for raw encoded features ``X``."""
    parts: list[list[np.ndarray]] = [[], [], []]
    for i in range(0, len(X), batch):
        out = sess.run(
            list(REGRESSION_OUTPUTS),
            {"features": np.ascontiguousarray(X[i : i + batch], dtype=np.float32)},
        )
        for part, values in zip(parts, out, strict=True):
            part.append(values)
    pred, lower, upper = (np.concatenate(p) for p in parts)
    return pred, lower, upper


def latency_ms(
    sess,
    X: np.ndarray,
    batch: int = 1,
    repeats: int = 300,
    warmup: int = 20,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """p50 / p99 time of one ``sess.run`` on ``batch`` rows, in milliseconds.

    ``clock``: wall time by default (what a caller waits). ``time.thread_time`` counts only the
    CPU time of this thread, where a one-thread session runs the whole graph: the model's own
    cost, which other processes competing for the cores do not inflate (the gate's rule).
    """
    rows = np.ascontiguousarray(np.resize(X, (batch, X.shape[1])), dtype=np.float32)
    feed = {"features": rows}
    for _ in range(warmup):
        sess.run(None, feed)
    times = np.empty(repeats)
    for i in range(repeats):
        start = clock()
        sess.run(None, feed)
        times[i] = clock() - start
    return {
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
    }


def compute_ms(sess, X: np.ndarray) -> dict[str, float]:
    """Single-row p50 / p99 of the graph's CPU time in this thread (a one-thread session runs
    there): the gate's latency figures, which a machine loaded by other work does not inflate,
    so its decision does not depend on what else runs (export's side file keeps wall time)."""
    return latency_ms(sess, X, clock=time.thread_time)
