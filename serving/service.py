"""The REST service: the champion ONNX model behind validation, a production log and hot reload.

    make serve                                   # python -m serving: checks, then bentoml serve
    bentoml serve serving.service:Mlcycle --port 3000

Endpoints: ``POST /predict``, ``POST /feedback`` (bearer token), ``GET /model``,
``GET /openapi.json`` (built from schema.json), and BentoML's ``/healthz``, ``/livez``,
``/readyz`` (ready once a model is loaded and while the production log takes commits) and
``/metrics`` (Prometheus).

The hot routes (``/predict``, ``/feedback``) are raw ASGI handlers that :class:`FastPath` puts in
front of BentoML's app: BentoML's typed APIs cost about 2 ms of pydantic and dispatch per request
(0.17x a bare Starlette app's one-record requests/s), its per-request middlewares about 0.1 ms,
and its adaptive batcher slowed lone requests and answered 503 under load. ``/predict`` reads the
body once, checks it against schema.json in bulk, runs onnxruntime inline (a one-record CNN pass
is about 0.05 ms), queues one log row per record for the background group-commit writer and
answers. BentoML still gives the process model (workers), packaging (bentofile.yaml), health
probes, the metrics endpoint and the other routes (mounted Starlette app).

Settings come from the ``serving`` section of params.yaml (``MLCYCLE_PARAMS`` names another
file; ``MLCYCLE_REGISTRY``, ``MLCYCLE_LOG_URL`` and ``MLCYCLE_SPILL_DIR`` override the
locations). Imports no torch
and no training module.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import itertools
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import bentoml
import orjson
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import ServingConfig, overlay, read_params, section
from pipeline.contracts.prodlog import (
    FeedbackConflictError,
    ProductionLog,
    UnknownPredictionsError,
)
from serving import asgi
from serving.asgi import (
    BodyTooLargeError,
    DisconnectedError,
    Receive,
    Send,
    headers,
    read_body,
    respond,
)
from serving.metrics import Metrics
from serving.model import ChampionWatcher, LoadedModel
from serving.openapi import openapi_spec
from serving.prodlog import GroupCommitWriter
from serving.requests import RecordEncoder, RequestError, parse_feedback, parse_json

log = logging.getLogger("mlcycle.serving")
JSON = "application/json"


def settings() -> ServingConfig:
    """The ``serving`` section, with the environment's overrides."""
    params = read_params(os.environ.get("MLCYCLE_PARAMS", "params.yaml"))
    cfg = section(params, "serving", ServingConfig)
    overrides = {
        key: os.environ[var]
        for key, var in (
            ("registry", "MLCYCLE_REGISTRY"),
            ("log_url", "MLCYCLE_LOG_URL"),
            ("spill_dir", "MLCYCLE_SPILL_DIR"),
        )
        if os.environ.get(var)
    }
    return overlay(cfg, "serving", **overrides)  # validated like the file's own values


class State:
    """One worker's model, encoder, log writer and counters."""

    def __init__(self, cfg: ServingConfig, registry: Any = None) -> None:
        self.cfg = cfg
        self.metrics = Metrics(registry)
        self.encoders: dict[str, RecordEncoder] = {}
        self.class_counters: dict[str, list[Any]] = {}  # version -> counter child per class
        self.heads: dict[str, dict[str, Any]] = {}  # version -> the task's response keys
        # Request ids: a random prefix per process and a counter (unique across workers and
        # restarts, and cheaper than a uuid4 per request).
        self._prefix = secrets.token_hex(6)
        self._ids = itertools.count()
        self.watcher = ChampionWatcher(Path(cfg.registry), cfg.reload_interval_s, self._prepare)
        self.watcher.check()
        if self.watcher.current is None:
            target = self.watcher.target() or f"{cfg.registry}/champion (missing)"
            why = self.watcher.refused.get(target, "no champion has been promoted yet")
            raise MlcycleError(f"cannot serve {target}: {why}; run `make repro` to promote one")
        try:
            self.log = ProductionLog(cfg.log_url)
        except SQLAlchemyError as exc:
            raise MlcycleError(
                f"serving.log_url: cannot open the production log {cfg.log_url!r}: {exc}"
            ) from None
        self.writer = GroupCommitWriter(
            self.log,
            cfg.commit_interval_ms / 1000,
            cfg.max_queue,
            spill_dir=Path(cfg.spill_dir),
            on_commit=self._committed,
            on_error=self._write_failed,
            on_reject=lambda _, n: self.metrics.log_rejected.inc(n),
        )
        self.metrics.log_healthy.set(1)
        self.metrics.log_replayed.inc(self.writer.replayed)
        self.predict_latency = self.metrics.latency.labels(endpoint="predict")
        self.in_flight = 0
        self.token = os.environ.get(cfg.feedback_token_env) or None
        self.watcher.start()

    def next_id(self) -> str:
        return self._prefix + str(next(self._ids))

    def _prepare(self, model: LoadedModel) -> None:
        """The new model's encoder and counters, in place before any request can see it."""
        self.encoders[model.version] = RecordEncoder(model.schema, self.cfg.max_batch)
        self.class_counters[model.version] = [
            self.metrics.predictions.labels(label=series)
            for series in model.task.series(model.schema)  # a regressor: one series
        ]
        # What /predict's body says beside the predictions (the classes; the coverage).
        self.heads[model.version] = model.task.response_head(model.schema, model.export)
        for version in list(self.encoders):
            self.metrics.model.labels(version=version).set(int(version == model.version))

    def _committed(self, writer: GroupCommitWriter) -> None:
        self.metrics.queue.set(writer.depth)
        self.metrics.written.set(writer.written)
        self.metrics.log_healthy.set(1)

    def _write_failed(self, writer: GroupCommitWriter, _: Exception) -> None:
        self.metrics.log_errors.inc()
        self.metrics.log_healthy.set(0)
        self.metrics.queue.set(writer.depth)

    def close(self) -> None:
        """SIGTERM: every accepted row is committed, or (the database away longer than
        ``serving.shutdown_timeout_s``) kept in a spill file the next start replays."""
        self.watcher.stop()
        self.writer.close(self.cfg.shutdown_timeout_s)
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
        _current[:] = [self.state]  # the routes' handle on it (bentoml's lookup costs 7 us)
        # Everything loaded so far lives as long as the process: keep the garbage collector from
        # walking it again. Full collections over BentoML's import graph paused requests for
        # about 100 ms (p99 went from 0.4 ms to 80+ ms at one connection).
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        """Ready with a model loaded and the production log taking commits: during an outage
        the service still answers while its queue has room, but asks for no new traffic."""
        return self.state.watcher.current is not None and self.state.writer.healthy

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.state.close()


_current: list[State] = []  # this worker's state, set once by Mlcycle.__init__


def _state() -> State:
    return _current[0]


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


RETRY = [(b"retry-after", b"1")]


async def _refuse(
    send: Send,
    st: State,
    status: int,
    reason: str,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    st.metrics.rejected.labels(reason=reason).inc()
    await respond(send, status, orjson.dumps({"error": message}), extra)


async def _json_body(scope: dict[str, Any], receive: Receive, limit: int) -> Any:
    """The parsed JSON body, or :class:`RequestError` (415, 413, 400) naming the problem."""
    return parse_json(await _body(scope, receive, limit))


async def _body(scope: dict[str, Any], receive: Receive, limit: int) -> bytes:
    """The raw JSON body, or :class:`RequestError` (415, 413) naming the problem."""
    kind, length = headers(scope, b"content-type", b"content-length")
    if kind is None or kind.split(b";")[0].strip().lower() != asgi.JSON:
        shown = kind.decode("latin-1") if kind else "none"
        raise RequestError(415, f"content-type: {shown!r}; expected application/json")
    try:
        return await read_body(receive, length, limit)
    except BodyTooLargeError as exc:
        size = f"{exc.size} bytes" if exc.size is not None else "over the limit"
        raise RequestError(413, f"body: {size}; at most serving.max_body_bytes = {limit}") from None


async def predict(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """POST /predict: records -> labels and probabilities (a regressor: a prediction and its
    interval), each row logged."""
    start = time.perf_counter()
    st = _state()
    cfg = st.cfg
    # Refusals before the body is read: they cost a counter and a small response.
    if st.in_flight >= cfg.max_in_flight:
        return await _refuse(send, st, 503, "overloaded", "overloaded: too many requests", RETRY)
    if st.writer.depth >= cfg.max_queue:
        return await _refuse(
            send, st, 503, "log_backlog", "overloaded: the production log is behind", RETRY
        )
    st.in_flight += 1
    try:
        payload = await _json_body(scope, receive, cfg.max_body_bytes)
        model = st.watcher.current  # one model for the whole request, even if a swap happens
        X, flags = st.encoders[model.version].encode(payload)
        answer = model.task.answer(model.run(X), model.schema)
    except RequestError as exc:
        return await _refuse(send, st, exc.status, f"http_{exc.status}", exc.message)
    except DisconnectedError:
        st.metrics.rejected.labels(reason="disconnect").inc()
        return None
    finally:
        st.in_flight -= 1
    rid = st.next_id()
    now = time.time()
    latency_ms = (time.perf_counter() - start) * 1e3
    version = model.version
    values = answer.values
    rows = [  # prodlog.PREDICTION_COLUMNS order
        (rid, i, now, version, X[i].tobytes(), lab, values[i].tobytes(), latency_ms, flags[i])
        for i, lab in enumerate(answer.labels)
    ]
    if not st.writer.put(rows):  # no answer goes out that the log would not hold
        return await _refuse(
            send, st, 503, "log_backlog", "overloaded: the production log is behind", RETRY
        )
    out = answer.records
    flagged = [i for i, f in enumerate(flags) if f]
    for i in flagged:
        out[i]["out_of_range"] = flags[i].split(",")
    counters = st.class_counters[version]
    for series, count in answer.counts.items():
        counters[series].inc(count)
    if flagged:
        st.metrics.out_of_range.inc(len(flagged))
    body = orjson.dumps(
        {
            "request_id": rid,
            "model_version": version,
            **st.heads[version],
            "predictions": out,
        }
    )
    st.predict_latency.observe(time.perf_counter() - start)
    await respond(send, 200, body)
    return None


async def feedback(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """POST /feedback: true labels for served predictions (bearer token)."""
    st = _state()
    if st.token is None:
        return await _refuse(
            send,
            st,
            403,
            "feedback_disabled",
            f"feedback is disabled: set {st.cfg.feedback_token_env} in the service's environment "
            "to a secret token, restart, and send 'Authorization: Bearer <token>'",
        )
    (given,) = headers(scope, b"authorization")
    token = given[7:].decode("latin-1") if given and given.startswith(b"Bearer ") else ""
    if not hmac.compare_digest(token.encode(), st.token.encode()):
        return await _refuse(
            send,
            st,
            401,
            "unauthorized",
            "feedback needs 'Authorization: Bearer <token>'",
            [(b"www-authenticate", b"Bearer")],
        )
    try:
        payload = await _json_body(scope, receive, st.cfg.max_body_bytes)
        model = st.watcher.current
        items = parse_feedback(payload, model.schema, st.cfg.max_batch)
        # Predictions answered a moment ago may still be queued: commit them first.
        await asyncio.to_thread(st.writer.flush)
        result = await asyncio.to_thread(
            st.log.add_feedback, items, time.time(), model.task.feedback_column
        )
    except RequestError as exc:
        return await _refuse(send, st, exc.status, f"http_{exc.status}", exc.message)
    except DisconnectedError:
        return None
    except UnknownPredictionsError as exc:
        rid, idx = exc.keys[0]
        return await _refuse(
            send,
            st,
            404,
            "unknown_prediction",
            f"feedback: prediction {rid!r} index {idx} is not in the production log "
            f"({len(exc.keys)} unknown); use the request_id and index /predict returned",
        )
    except FeedbackConflictError as exc:
        return await _refuse(send, st, 409, "conflict", f"feedback: {exc}")
    await respond(send, 200, orjson.dumps(result))
    return None


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
        Route("/model", model_info, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
)
Mlcycle = bentoml.asgi_app(app)(Mlcycle)


class FastPath:
    """ASGI in front of BentoML's app: ``POST /predict`` and ``/feedback`` go straight to their
    handlers; everything else (health, metrics, /model, lifespan) to BentoML.

    BentoML wraps every request in its tracing, traffic-metrics, timeout and context middlewares
    (a timeout is an asyncio task per request): about 0.1 ms of CPU, as much as the bare app's
    whole request. The hot routes keep their own Prometheus series and overload guard instead.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.routes = {"/predict": predict, "/feedback": feedback}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
            if handler is not None:
                try:
                    return await handler(scope, receive, send)
                except Exception:  # a bug, not the client's fault: one 500, one traceback
                    log.exception("%s failed", scope["path"])
                    return await respond(send, 500, b'{"error": "internal error"}')
        return await self.inner(scope, receive, send)


class _Service(type(Mlcycle)):  # BentoML's Service, serving its app behind FastPath
    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        return FastPath(super().to_asgi(is_main))


Mlcycle.__class__ = _Service
