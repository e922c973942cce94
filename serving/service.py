"""The REST service: the champion ONNX model behind validation, a production log and hot reload.

    make serve                                   # python -m serving: checks, then bentoml serve
    bentoml serve serving.service:Mlcycle --port 3000

Endpoints: ``POST /predict``, ``POST /feedback`` (bearer token), ``GET /model``,
``GET /openapi.json`` (built from schema.json), and BentoML's ``/healthz``, ``/livez``,
``/readyz`` (ready once a model is loaded and while the production log takes commits) and
``/metrics`` (Prometheus).

The hot routes (``/predict``, ``/feedback``, :mod:`serving.routes`) are raw ASGI handlers that
:class:`~serving.routes.FastPath` puts in front of BentoML's app: BentoML's typed APIs cost
about 2 ms of pydantic and dispatch per request (0.17x a bare Starlette app's one-record
requests/s), its per-request middlewares about 0.1 ms, and its adaptive batcher slowed lone
requests and answered 503 under load. BentoML still gives the process model (workers),
packaging (bentofile.yaml), health probes, the metrics endpoint and the other routes (mounted
Starlette app). This module holds the BentoML class and the one place the hot path is put in
front of it; a worker's state is :mod:`serving.state`.

Settings come from the ``serving`` section of params.yaml (``MLCYCLE_PARAMS`` names another
file; ``MLCYCLE_REGISTRY``, ``MLCYCLE_LOG_URL`` and ``MLCYCLE_SPILL_DIR`` override the
locations; :mod:`serving.state`). Imports no torch and no training module.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import bentoml

from pipeline.contracts.errors import MlcycleError
from serving import routes
from serving.routes import FastPath
from serving.state import State, settings

log = logging.getLogger("mlcycle.serving")

__all__ = ["Mlcycle", "settings"]


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
        routes._current[:] = [self.state]  # the routes' handle on it (bentoml's lookup costs 7 us)
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


Mlcycle = bentoml.asgi_app(routes.app)(Mlcycle)


# The one place the hot path is put in front of BentoML: the service object's class becomes a
# subclass of BentoML's Service whose ASGI app is FastPath around BentoML's own
# (tests/serving/test_packaging.py pins it to the BentoML version it was written against).
class _Service(type(Mlcycle)):  # BentoML's Service, serving its app behind FastPath
    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        return FastPath(super().to_asgi(is_main))


Mlcycle.__class__ = _Service
