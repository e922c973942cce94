"""The REST service: the champion ONNX model behind validation, a production log and hot reload.

    make serve                                   # python -m serving: checks, then bentoml serve
    bentoml serve serving.service:Mlcycle --port 3000

Endpoints: ``POST /predict``, ``POST /feedback`` (bearer token), ``GET /model``,
``GET /openapi.json`` (built from schema.json), and BentoML's ``/healthz``, ``/livez``,
``/readyz`` (ready once a model is loaded) and ``/metrics`` (Prometheus).

The hot path is a plain Starlette route mounted on the BentoML service: BentoML's typed APIs cost
about 2 ms of pydantic and dispatch per request (measured: 0.17x a bare Starlette app's
one-record requests/s), and its adaptive batcher slowed lone requests and answered 503 under
load. The route reads the body once, checks it against schema.json in bulk, runs onnxruntime
inline (a one-record CNN pass is about 0.1 ms), queues one log row per record for the
background group-commit writer and answers. BentoML still gives the process model (workers),
packaging (bentofile.yaml), health probes and the metrics endpoint.

Settings come from the ``serving`` section of params.yaml (``MLCYCLE_PARAMS`` names another
file; ``MLCYCLE_REGISTRY`` and ``MLCYCLE_LOG_URL`` override the two locations). Imports no torch
and no training module.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.config import ServingConfig, read_params, section
from pipeline.errors import MlcycleError
from serving.model import ChampionWatcher, LoadedModel
from serving.openapi import openapi_spec
from serving.prodlog import (
    FeedbackConflictError,
    GroupCommitWriter,
    ProductionLog,
    UnknownPredictionsError,
)
from serving.requests import RecordEncoder, RequestError, parse_feedback, parse_json

log = logging.getLogger("mlcycle.serving")
JSON = "application/json"


def settings() -> ServingConfig:
    """The ``serving`` section, with the environment's overrides."""
    params = read_params(os.environ.get("MLCYCLE_PARAMS", "params.yaml"))
    cfg = section(params, "serving", ServingConfig)
    overrides = {
        key: os.environ[var]
        for key, var in (("registry", "MLCYCLE_REGISTRY"), ("log_url", "MLCYCLE_LOG_URL"))
        if os.environ.get(var)
    }
    return ServingConfig(**{**cfg.__dict__, **overrides})


class Metrics:
    """The service's Prometheus series (prometheus_client, aggregated over workers by BentoML)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.latency = Histogram(
            "mlcycle_request_seconds",
            "Time from request to answer, by endpoint",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
        )
        self.predictions = Counter(
            "mlcycle_predictions", "Records answered, by predicted class", ["label"]
        )
        self.rejected = Counter(
            "mlcycle_rejected_requests", "Refused requests, by reason", ["reason"]
        )
        self.out_of_range = Counter(
            "mlcycle_out_of_range_records", "Records with a feature outside the training range"
        )
        self.model = Gauge(
            "mlcycle_model_version",
            "1 for the model version being served",
            ["version"],
            multiprocess_mode="livemax",
        )
        self.queue = Gauge(
            "mlcycle_log_queue_rows", "Log rows waiting to be written", multiprocess_mode="livesum"
        )
        self.written = Gauge(
            "mlcycle_log_rows_written",
            "Log rows written by this process",
            multiprocess_mode="livesum",
        )


class State:
    """One worker's model, encoder, log writer and counters."""

    def __init__(self, cfg: ServingConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.encoders: dict[str, RecordEncoder] = {}
        self.watcher = ChampionWatcher(Path(cfg.registry), cfg.reload_interval_s, self._swapped)
        self.watcher.check()
        if self.watcher.current is None:
            target = self.watcher.target() or f"{cfg.registry}/champion (missing)"
            why = self.watcher.refused.get(target, "no champion has been promoted yet")
            raise MlcycleError(f"cannot serve {target}: {why}; run `make repro` to promote one")
        self.log = ProductionLog(cfg.log_url)
        self.writer = GroupCommitWriter(self.log, cfg.commit_interval_ms / 1000, cfg.max_queue)
        self.in_flight = 0
        self.token = os.environ.get(cfg.feedback_token_env) or None
        self.watcher.start()

    def _swapped(self, model: LoadedModel) -> None:
        self.encoders[model.version] = RecordEncoder(model.schema, self.cfg.max_batch)
        for version in list(self.encoders):
            self.metrics.model.labels(version=version).set(int(version == model.version))

    def close(self) -> None:
        self.watcher.stop()
        self.writer.close()  # SIGTERM: every accepted row is committed before exit
        self.metrics.written.set(self.writer.written)
        self.log.close()


@bentoml.service(
    name="mlcycle",
    workers=int(os.environ.get("MLCYCLE_WORKERS", "1")),  # `python -m serving --workers N`
    traffic={"timeout": 60},
    # The hot routes keep their own latency series; BentoML's per-request access log and
    # tracing spans would cost more than the inference itself.
    logging={"access": {"enabled": False}},
    tracing={"sample_rate": 0.0, "excluded_urls": ["/predict", "/feedback"]},
)
class Mlcycle:
    """One worker: loads the champion, starts the log writer and the reload watcher."""

    def __init__(self) -> None:
        try:
            self.state = State(settings())
        except MlcycleError as exc:
            log.error("serving: %s", exc)
            raise SystemExit(2) from None

    def __is_ready__(self) -> bool:
        return self.state.watcher.current is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.state.close()


def _state() -> State:
    return bentoml.get_current_service().state


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def _refuse(st: State, status: int, reason: str, message: str, **headers: str) -> Response:
    st.metrics.rejected.labels(reason=reason).inc()
    return _answer(status, {"error": message}, headers or None)


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise RequestError(413, f"body: {length} bytes; at most serving.max_body_bytes = {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body: over serving.max_body_bytes = {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_json(request: Request) -> None:
    kind = request.headers.get("content-type", "")
    if kind.split(";")[0].strip().lower() != JSON:
        raise RequestError(415, f"content-type: {kind or 'none'!r}; expected {JSON}")


async def predict(request: Request) -> Response:
    start = time.perf_counter()
    st = _state()
    cfg = st.cfg
    # Refusals before the body is read: they cost a counter and a small response.
    if st.in_flight >= cfg.max_in_flight:
        return _refuse(
            st, 503, "overloaded", "overloaded: too many requests in flight", **{"Retry-After": "1"}
        )
    if st.writer.depth >= cfg.max_queue:
        return _refuse(
            st,
            503,
            "log_backlog",
            "overloaded: the production log is behind",
            **{"Retry-After": "1"},
        )
    st.in_flight += 1
    try:
        _check_json(request)
        body = await _body(request, cfg.max_body_bytes)
        model = st.watcher.current  # one model for the whole request, even if a swap happens
        X, flags = st.encoders[model.version].encode(parse_json(body))
        probs, labels = model.predict(X)
    except RequestError as exc:
        return _refuse(st, exc.status, f"http_{exc.status}", exc.message)
    except ClientDisconnect:
        return _refuse(st, 400, "disconnect", "client disconnected")
    finally:
        st.in_flight -= 1
    rid = uuid.uuid4().hex
    now = time.time()
    latency_ms = (time.perf_counter() - start) * 1e3
    rows = [
        {
            "request_id": rid,
            "idx": i,
            "ts": now,
            "model_version": model.version,
            "features": X[i].tobytes(),
            "label": int(labels[i]),
            "probabilities": probs[i].tobytes(),
            "latency_ms": latency_ms,
            "out_of_range": flags[i],
        }
        for i in range(len(X))
    ]
    if not st.writer.put(rows):  # no answer goes out that the log would not hold
        return _refuse(
            st,
            503,
            "log_backlog",
            "overloaded: the production log is behind",
            **{"Retry-After": "1"},
        )
    classes = model.schema.classes
    out = [
        {"index": i, "label": classes[lab], "probabilities": p}
        for i, (lab, p) in enumerate(zip(labels.tolist(), probs.tolist(), strict=True))
    ]
    flagged = [i for i, f in enumerate(flags) if f]
    for i in flagged:
        out[i]["out_of_range"] = flags[i].split(",")
    m = st.metrics
    m.latency.labels(endpoint="predict").observe(time.perf_counter() - start)
    for lab, count in zip(*np.unique(labels, return_counts=True), strict=True):
        m.predictions.labels(label=str(classes[lab])).inc(int(count))
    if flagged:
        m.out_of_range.inc(len(flagged))
    m.queue.set(st.writer.depth)
    m.written.set(st.writer.written)
    return _answer(
        200,
        {"request_id": rid, "model_version": model.version, "classes": classes, "predictions": out},
    )


async def feedback(request: Request) -> Response:
    st = _state()
    if st.token is None:
        return _refuse(
            st,
            403,
            "feedback_disabled",
            f"feedback is disabled: set {st.cfg.feedback_token_env} in the service's environment "
            "to a secret token, restart, and send 'Authorization: Bearer <token>'",
        )
    given = request.headers.get("authorization", "")
    if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:], st.token)):
        return _refuse(
            st,
            401,
            "unauthorized",
            "feedback needs 'Authorization: Bearer <token>'",
            **{"WWW-Authenticate": "Bearer"},
        )
    try:
        _check_json(request)
        body = await _body(request, st.cfg.max_body_bytes)
        model = st.watcher.current
        items = parse_feedback(parse_json(body), model.schema, st.cfg.max_batch)
        # Predictions answered a moment ago may still be queued: commit them first.
        await asyncio.to_thread(st.writer.flush)
        result = await asyncio.to_thread(st.log.add_feedback, items, time.time())
    except RequestError as exc:
        return _refuse(st, exc.status, f"http_{exc.status}", exc.message)
    except UnknownPredictionsError as exc:
        rid, idx = exc.keys[0]
        return _refuse(
            st,
            404,
            "unknown_prediction",
            f"feedback: prediction {rid!r} index {idx} is not in the production log "
            f"({len(exc.keys)} unknown); use the request_id and index /predict returned",
        )
    except FeedbackConflictError as exc:
        return _refuse(st, 409, "conflict", f"feedback: {exc}")
    return _answer(200, result)


async def model_info(_: Request) -> Response:
    model = _state().watcher.current
    metrics_path = model.directory / "evaluate.json"
    metrics = orjson.loads(metrics_path.read_bytes()) if metrics_path.is_file() else None
    return _answer(
        200,
        {
            "version": model.version,
            "schema": model.schema.to_dict(),
            "metrics": metrics,
            "export": model.export,
            "model_card": model.card,
        },
    )


async def openapi(_: Request) -> Response:
    st = _state()
    return _answer(200, openapi_spec(st.watcher.current.schema, st.cfg))


app = Starlette(
    routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/model", model_info, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
)
Mlcycle = bentoml.asgi_app(app)(Mlcycle)
