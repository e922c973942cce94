"""The service's routes: the raw-ASGI hot path (``POST /predict``, ``POST /feedback``,
``POST /explain``) and the browser page (``GET /``, ``/web/...``, ``/model/browser.onnx``:
:mod:`serving.page`) that :class:`FastPath` puts in front of BentoML's app, and the Starlette
app's ``GET /model`` and ``GET /openapi.json``.

BentoML's typed APIs cost about 2 ms of pydantic and dispatch per request (0.17x a bare
Starlette app's one-record requests/s), its per-request middlewares about 0.1 ms: ``/predict``
reads the body once, checks it against schema.json in bulk, runs onnxruntime inline, queues one
log row per record for the background group-commit writer and answers. The task
(:mod:`pipeline.contracts.tasks`) shapes the answer and its log rows.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.contracts import champion
from pipeline.contracts import explain as explanations
from pipeline.contracts.prodlog import FeedbackConflictError, UnknownPredictionsError
from pipeline.contracts.task import Answer
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
from serving.openapi import openapi_spec
from serving.page import RuntimeMissingError, current, etag, send_asset, send_text
from serving.requests import RequestError, parse_feedback, parse_json
from serving.state import State

log = logging.getLogger("mlcycle.serving")
T = TypeVar("T")
JSON = "application/json"

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


async def _records(
    scope: dict[str, Any],
    receive: Receive,
    send: Send,
    st: State,
    work: Callable[[Any, np.ndarray], Awaitable[T]],
) -> tuple[Any, np.ndarray, list[str], T] | None:
    """Read the body's records, encode them against the served model's schema and run ``work``
    on them, counted in flight; a bad request is refused (None) with the 4xx naming why. One
    model for the whole request, even if a swap happens."""
    st.in_flight += 1
    try:
        payload = await _json_body(scope, receive, st.cfg.max_body_bytes)
        model = st.watcher.current
        X, flags = st.encoders[model.version].encode(payload)
        return model, X, flags, await work(model, X)
    except RequestError as exc:
        await _refuse(send, st, exc.status, f"http_{exc.status}", exc.message)
    except DisconnectedError:
        st.metrics.rejected.labels(reason="disconnect").inc()
    finally:
        st.in_flight -= 1
    return None


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

    async def answer_records(model: Any, X: np.ndarray) -> Answer:
        return model.task.answer(model.run(X), model.schema)

    got = await _records(scope, receive, send, st, answer_records)
    if got is None:
        return None
    model, X, flags, answer = got
    rid = st.next_id()
    now = time.time()
    latency_ms = (time.perf_counter() - start) * 1e3
    version = model.version
    values, named = answer.values, answer.named
    rows = [  # prodlog.PREDICTION_COLUMNS order
        (rid, i, now, version, X[i].tobytes(), lab, values[i].tobytes(), latency_ms, flags[i])
        + named[i]
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


async def explain(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """POST /explain: the records of a /predict request -> each answer with its per-feature
    attributions (:mod:`pipeline.contracts.explain`), from the served graph. Not logged: an
    explanation is not production traffic, and the monitor's windows stay what /predict
    answered."""
    start = time.perf_counter()
    st = _state()
    cfg = st.cfg
    if st.in_flight >= cfg.max_in_flight:
        return await _refuse(send, st, 503, "overloaded", "overloaded: too many requests", RETRY)

    async def attribute(model: Any, X: np.ndarray) -> explanations.Explained:
        rows = len(X) * (X.shape[1] + 1)
        if rows > explanations.MAX_ROWS:
            raise RequestError(
                413,
                f"records: {len(X)} records of {X.shape[1]} features need {rows} graph rows to "
                f"explain; at most {explanations.MAX_ROWS} a request (send fewer records)",
            )
        return await asyncio.to_thread(explanations.occlusion, model.run, X, model.task)

    got = await _records(scope, receive, send, st, attribute)
    if got is None:
        return None
    model, _, flags, done = got
    out = model.task.answer(done.outputs, model.schema).records
    for item, why in zip(out, explanations.records(done, model.schema), strict=True):
        item.update(why)
        if flags[item["index"]]:
            item["out_of_range"] = flags[item["index"]].split(",")
    body = orjson.dumps(
        {
            "model_version": model.version,
            "explained": model.task.explained,
            "method": "occlusion: each feature missing (imputed by the graph) in turn",
            "explanations": out,
        }
    )
    st.explain_latency.observe(time.perf_counter() - start)
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


async def page(scope: dict[str, Any], _: Receive, send: Send) -> None:
    """GET (or HEAD) ``/``, ``/web/...`` and ``/model/browser.onnx``: the browser page, its
    script, the pinned onnxruntime-web runtime and the champion's browser graph
    (:mod:`serving.page`)."""
    st = _state()
    path = scope["path"]
    try:
        if path == BROWSER_GRAPH:
            model = st.watcher.current  # one model for the whole answer, even across a swap
            asset = await asyncio.to_thread(
                st.assets.graph, model.version, champion.target_graph(model.directory, "browser")
            )
            version = [(b"x-model-version", model.version.encode())]
            return await send_asset(scope, send, asset, version)
        asset = await asyncio.to_thread(st.assets.file, path)
    except RuntimeMissingError as exc:
        return await send_text(send, 503, str(exc))
    if asset is None:
        return await send_text(send, 404, f"not found: {path}")
    return await send_asset(scope, send, asset)


BROWSER_GRAPH = "/model/browser.onnx"


async def model_info(request: Request) -> Response:
    """GET /model: the served version, its schema, gate figures, export report and card; with an
    ETag, so a client that has this version's answer (the browser page) is told 304."""
    model = _state().watcher.current
    metrics_path = model.directory / "evaluate.json"
    metrics = orjson.loads(metrics_path.read_bytes()) if metrics_path.is_file() else None
    body = orjson.dumps(
        {
            "version": model.version,
            "schema": model.schema.to_dict(),
            "metrics": metrics,
            "export": model.export,
            "model_card": model.card,
        }
    )
    tag = etag(body)
    cache = {"etag": tag.decode(), "cache-control": "no-cache"}
    if current(request.headers.get("if-none-match", "").encode("latin-1") or None, tag):
        return Response(status_code=304, headers=cache)
    return Response(body, status_code=200, media_type=JSON, headers=cache)


async def openapi(_: Request) -> Response:
    st = _state()
    return _answer(200, openapi_spec(st.watcher.current.schema, st.cfg))


app = Starlette(
    routes=[
        Route("/model", model_info, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
)


class FastPath:
    """ASGI in front of BentoML's app: ``POST /predict``, ``/feedback`` and ``/explain`` go
    straight to their handlers; everything else (health, metrics, /model, lifespan) to BentoML.

    BentoML wraps every request in its tracing, traffic-metrics, timeout and context middlewares
    (a timeout is an asyncio task per request): about 0.1 ms of CPU, as much as the bare app's
    whole request. The hot routes keep their own Prometheus series and overload guard instead.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.routes = {"/predict": predict, "/feedback": feedback, "/explain": explain}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            handler = None
            if scope["method"] == "POST":
                handler = self.routes.get(scope["path"])
            elif scope["method"] in ("GET", "HEAD") and _is_page(scope["path"]):
                handler = page
            if handler is not None:
                try:
                    return await handler(scope, receive, send)
                except Exception:  # a bug, not the client's fault: one 500, one traceback
                    log.exception("%s failed", scope["path"])
                    return await respond(send, 500, b'{"error": "internal error"}')
        return await self.inner(scope, receive, send)


def _is_page(path: str) -> bool:
    return path == "/" or path == BROWSER_GRAPH or path.startswith("/web/")
