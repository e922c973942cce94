"""Production traffic for the running service: held-out rows, optionally shifted, and feedback.

    python -m monitoring simulate --url http://127.0.0.1:3000 [--scenario blur] [--requests N]

Replays ``simulate.rows_from`` (the validation split by default: the frozen test split must
never come back as training data), each row once per shuffled pass, through ``POST /predict``
over one keep-alive connection, with ``simulate.scenario``'s shift applied
(:mod:`monitoring.shifts`), and posts the true labels of a ``feedback_rate`` share of the
answered rows to ``POST /feedback`` ``feedback_delay_s`` later (bearer token from
``serving.feedback_token_env``). Bounded by ``requests`` and ``max_seconds``.
Prints, and returns, the accuracy of the answers per model version (a regressor's: MAE and the
intervals' coverage).
"""

from __future__ import annotations

import collections
import http.client
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.shifts import draw_rows, shift_inputs, true_labels
from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import SimulateConfig
from pipeline.contracts.schema import LABEL, Schema
from pipeline.contracts.tasks import served_task

FEEDBACK_EVERY_S = 0.2  # due labels are posted together, this often at most


def records(X: np.ndarray, schema: Schema) -> list[dict[str, Any]]:
    """Encoded rows -> request records (categorical indices back to their categories)."""
    out = []
    for row in X.tolist():
        rec: dict[str, Any] = {}
        for feat, v in zip(schema.features, row, strict=True):
            if v != v:  # NaN: a missing value
                rec[feat.name] = None
            elif feat.kind == "categorical":
                rec[feat.name] = (feat.categories or ())[int(v)]
            else:
                rec[feat.name] = v
        out.append(rec)
    return out


class Client:
    """One keep-alive HTTP/1.1 connection to the service."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise MlcycleError(f"--url {url!r}: expected http://host:port")
        self.host, self.port = parts.hostname, parts.port or 80
        self.token = token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, path: str, body: Any, auth: bool = False) -> tuple[int, Any]:
        headers = {"content-type": "application/json"}
        if auth and self.token:
            headers["authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode()
        for attempt in (0, 1):  # one reconnect: the server may close an idle connection
            try:
                self.conn.request("POST", path, data, headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def simulate(
    cfg: SimulateConfig, url: str, token: str | None, schema: Schema, rows_path: Path
) -> dict[str, Any]:
    """Send the traffic; returns what happened (statuses, accuracy per version, feedback)."""
    if not rows_path.is_file():
        raise MlcycleError(f"simulate.rows_from: {str(rows_path)!r} not found (run `make repro`)")
    held = pd.read_parquet(rows_path)
    X, y = held[schema.names].to_numpy(np.float64), held[LABEL].to_numpy()
    rng = np.random.default_rng(cfg.seed)
    client = Client(url, token)
    statuses: collections.Counter[int] = collections.Counter()
    # the task's tally: score (correct; a regressor's absolute error) sum, rows, rows covered
    task = served_task(schema)
    per_version: dict[str, list[Any]] = collections.defaultdict(lambda: [0, 0, 0])
    pending: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()
    feedback = collections.Counter()
    start = time.monotonic()
    deadline = start + cfg.max_seconds
    k = cfg.records_per_request

    last_post = [start]

    def flush(force: bool) -> None:
        # Labels go out in batches, as a labelling system sends them: the due ones at most every
        # FEEDBACK_EVERY_S (a POST per answer doubled the requests the traffic takes).
        now = time.monotonic()
        if not force and now - last_post[0] < FEEDBACK_EVERY_S:
            return
        batch = []
        while pending and (force or pending[0][0] <= now) and len(batch) < 1000:
            batch.append(pending.popleft()[1])
        if batch:
            last_post[0] = now
            status, _ = client.post("/feedback", {"feedback": batch}, auth=True)
            feedback[status] += len(batch)

    order = draw_rows(y, cfg.requests * k, cfg, schema, rng)
    sent = 0
    try:
        while sent < cfg.requests and time.monotonic() < deadline:
            idx = order[sent * k : (sent + 1) * k]
            truth = true_labels(y[idx], cfg, schema)
            status, body = client.post(
                "/predict", {"records": records(shift_inputs(X[idx], schema, cfg, rng), schema)}
            )
            sent += 1
            statuses[status] += 1
            if status == 200:
                tally = per_version[body["model_version"]]
                for p, t in zip(body["predictions"], truth.tolist(), strict=True):
                    score, covered = task.tally(p, t, schema)
                    tally[0] += score
                    tally[1] += 1
                    tally[2] += covered
                    if rng.random() < cfg.feedback_rate:
                        item = {
                            "request_id": body["request_id"],
                            "index": p["index"],
                            "label": task.feedback_value(t, schema),
                        }
                        pending.append((time.monotonic() + cfg.feedback_delay_s, item))
            flush(force=False)
        while pending and time.monotonic() < deadline + cfg.feedback_delay_s:
            flush(force=False)
            time.sleep(0.01)
        while pending:
            flush(force=True)
    finally:
        client.close()
    total = sum(n for _, n, _ in per_version.values())
    by_version = {v: {"rows": n, **task.summary(e, n, k)} for v, (e, n, k) in per_version.items()}
    summary = task.summary(
        sum(e for e, _, _ in per_version.values()),
        total,
        sum(k for _, _, k in per_version.values()),
    )
    return {
        "scenario": cfg.scenario,
        "requests": sent,
        "statuses": dict(statuses),
        "rows": total,
        **summary,
        "by_version": by_version,
        "feedback": dict(feedback),
        "seconds": round(time.monotonic() - start, 2),
    }
