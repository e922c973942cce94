"""The service's Prometheus series: request latency, predictions per class, refusals by reason,
the served version, the log's queue depth, rows written, failed writes, rows set aside and
whether the log is writable. ``GET /metrics`` serves them
(BentoML aggregates them over workers). Created by each worker's state in ``serving/service.py``.
"""

from __future__ import annotations

from typing import Any


class Metrics:
    """The service's Prometheus series (prometheus_client, aggregated over workers by BentoML)."""

    def __init__(self, registry: Any = None) -> None:
        """``registry``: prometheus_client's default unless given (tests use a fresh one)."""
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = REGISTRY if registry is None else registry
        self.latency = Histogram(
            "mlcycle_request_seconds",
            "Time from request to answer, by endpoint",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=registry,
        )
        self.predictions = Counter(
            "mlcycle_predictions",
            "Records answered, by predicted class",
            ["label"],
            registry=registry,
        )
        self.rejected = Counter(
            "mlcycle_rejected_requests",
            "Refused requests, by reason",
            ["reason"],
            registry=registry,
        )
        self.out_of_range = Counter(
            "mlcycle_out_of_range_records",
            "Records with a feature outside the training range",
            registry=registry,
        )
        self.model = Gauge(
            "mlcycle_model_version",
            "1 for the model version being served",
            ["version"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.queue = Gauge(
            "mlcycle_log_queue_rows",
            "Log rows waiting to be written",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.written = Gauge(
            "mlcycle_log_rows_written",
            "Log rows written by this process",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.log_errors = Counter(
            "mlcycle_log_write_errors",
            "Failed commits of the production log (the database away: retried)",
            registry=registry,
        )
        self.log_rejected = Counter(
            "mlcycle_log_rows_rejected",
            "Log rows the database refused, set aside in its rejected table",
            registry=registry,
        )
        self.log_replayed = Counter(
            "mlcycle_log_rows_replayed",
            "Log rows read back from an earlier shutdown's spill file",
            registry=registry,
        )
        self.log_healthy = Gauge(
            "mlcycle_log_writable",
            "1 while the production log takes commits, 0 during an outage",
            multiprocess_mode="livemin",
            registry=registry,
        )
