"""A request in flight when the champion changes finishes on the model it started with.

In-process, on the service's own ASGI handler: the swap is made to happen *during* the request's
inference (the graph's ``run`` triggers the reload), so the timing is exact, not a race.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from pipeline.contracts.params import ServingConfig, overlay, read_params, section
from pipeline.contracts.prodlog import ProductionLog
from pipeline.contracts.schema import Schema
from pipeline.registry import point_champion_at
from serving import routes
from serving.state import State


def call(handler: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """One request through an ASGI handler; (status, JSON body)."""
    sent: list[dict[str, Any]] = []
    raw = orjson.dumps(body)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))],
    }
    messages = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(handler(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    chunks = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(chunks)


def test_a_reload_during_inference_leaves_the_request_on_its_model(
    served_state: Path, stage_inputs: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    champion = (served_state / "registry/champion").resolve()
    v1 = Path(shutil.copytree(champion, registry / "versions/1"))
    v2 = Path(shutil.copytree(champion, registry / "versions/2"))
    point_champion_at(registry, v1)
    cfg = section(read_params(served_state / "params.yaml"), "serving", ServingConfig)
    cfg = overlay(cfg, "serving", registry=str(registry), log_url=str(tmp_path / "log.db"))
    state = State(cfg)
    state.watcher.stop()  # this test drives the reloads itself
    routes._current[:] = [state]
    try:
        first = state.watcher.current
        assert first.version == "1"

        class SwapDuringRun:
            """The graph's session; the first run promotes version 2 before it answers."""

            def __init__(self, inner: Any) -> None:
                self.inner, self.swapped = inner, False

            def run(self, outputs: Any, feed: Any) -> Any:
                if not self.swapped:
                    self.swapped = True
                    point_champion_at(registry, v2)
                    assert state.watcher.check()  # the new model is now the current one
                return self.inner.run(outputs, feed)

        state.watcher.current = dataclasses.replace(first, session=SwapDuringRun(first.session))
        schema = Schema.from_dict(json.loads((v1 / "schema.json").read_text()))
        test = pd.read_parquet(stage_inputs / "data/prepared/test.parquet")
        record = {k: float(v) for k, v in test[schema.names].iloc[0].items()}

        status, during = call(routes.predict, {"records": [record]})
        assert status == 200 and during["model_version"] == "1"
        assert state.watcher.current.version == "2"
        status, after = call(routes.predict, {"records": [record]})
        assert status == 200 and after["model_version"] == "2"
        assert during["predictions"] == after["predictions"]  # same files, same answer
        state.writer.flush()
        logged = ProductionLog(cfg.log_url).window()
        assert dict(zip(logged.request_id, logged.model_version, strict=True)) == {
            during["request_id"]: "1",
            after["request_id"]: "2",
        }
    finally:
        routes._current[:] = []
        state.close()
