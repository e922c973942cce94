"""One service worker's state: its settings, model, encoders, counters and log writer.

Created once per worker by the BentoML class (:mod:`serving.service`); the routes
(:mod:`serving.routes`) read it. No torch, no training code.
"""

from __future__ import annotations

import itertools
import os
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import ServingConfig, overlay, read_params, section
from pipeline.contracts.prodlog import ProductionLog
from serving.metrics import Metrics
from serving.model import ChampionWatcher, LoadedModel
from serving.page import Assets
from serving.prodlog import GroupCommitWriter
from serving.requests import RecordEncoder


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
        self.explain_latency = self.metrics.latency.labels(endpoint="explain")
        self.in_flight = 0
        self.assets = Assets()  # the browser page's files, read on first request
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
