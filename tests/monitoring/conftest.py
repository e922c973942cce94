"""A production log and a champion directory for the monitor, without a service or a network.

The digits are split once (seeded) into a training reference and held-out rows; a logistic
regression fitted on the reference plays the served model, and rows are written through the
production log's own interface, as the service writes them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from pipeline.contracts.estimate import AccuracyEstimator
from pipeline.contracts.params import MonitorConfig, SimulateConfig, overlay, read_params, section
from pipeline.contracts.prodlog import NO_ANSWER, ProductionLog
from pipeline.contracts.schema import Schema
from tests.conftest import ROOT


@dataclasses.dataclass
class Digits:
    schema: Schema
    X_ref: np.ndarray
    X_held: np.ndarray
    y_held: np.ndarray
    model: LogisticRegression


@pytest.fixture(scope="session")
def split(digits: tuple[pd.DataFrame, Schema]) -> Digits:
    df, schema = digits
    X, y = schema.encode(df), schema.encode_labels(df[schema.target])
    X_ref, X_held, y_ref, y_held = train_test_split(
        X, y, train_size=1163, stratify=y, random_state=0
    )
    model = LogisticRegression(max_iter=300).fit(X_ref / 16, y_ref)
    return Digits(schema, X_ref, X_held, y_held, model)


def make_champion(
    registry: Path,
    d: Digits,
    version: str = "1",
    accuracy: float = 0.97,
    estimator: bool = False,
) -> Path:
    """A champion directory with the files the monitor reads (no graph needed); ``estimator``:
    with the label-free estimator the evaluate stage ships, fit on held-out rows 400 on."""
    directory = registry / "versions" / version
    directory.mkdir(parents=True)
    if estimator:
        proba = d.model.predict_proba(d.X_held[400:] / 16)
        fitted = AccuracyEstimator.fit(proba, d.y_held[400:], X=d.X_held[400:])
        (directory / "estimate.json").write_text(json.dumps(fitted.to_dict()))
    (directory / "schema.json").write_text(json.dumps(d.schema.to_dict()))
    (directory / "model.pt").write_bytes(f"weights of version {version}".encode())  # copied only
    (directory / "evaluate.json").write_text(json.dumps({"candidate": {"accuracy": accuracy}}))
    pd.DataFrame(d.X_ref.astype(np.float32), columns=d.schema.names).to_parquet(
        directory / "reference.parquet"
    )
    link = registry / "champion"
    link.unlink(missing_ok=True)
    link.symlink_to(directory.resolve())
    return directory


def monitor_config(**overrides: Any) -> MonitorConfig:
    base = section(read_params(ROOT / "params.yaml"), "monitor", MonitorConfig)
    return overlay(base, "monitor", **{"report_on_drift": False, **overrides})


def simulate_config(**overrides: Any) -> SimulateConfig:
    base = section(read_params(ROOT / "params.yaml"), "simulate", SimulateConfig)
    return overlay(base, "simulate", **overrides)


class Traffic:
    """Writes served rows (and feedback) into a production log, as the service would."""

    def __init__(self, log: ProductionLog, d: Digits) -> None:
        self.log, self.d = log, d
        self.t = 1_000_000.0
        self.n = 0

    def serve(
        self,
        X: np.ndarray,
        y_true: np.ndarray | None = None,
        feedback: float = 1.0,
        version: str = "1",
    ) -> None:
        """One request per row; ``feedback`` share of rows labelled with ``y_true``."""
        # A null feature (NaN in the log, as the service logs it) reads 0: the graph imputes.
        probs = self.d.model.predict_proba(np.nan_to_num(X) / 16).astype(np.float32)
        labels = probs.argmax(axis=1)
        rows, items = [], []
        for i in range(len(X)):
            self.t += 0.01
            rid = f"r{self.n}"
            self.n += 1
            rows.append(
                (
                    rid,
                    0,
                    self.t,
                    version,
                    X[i].astype(np.float32).tobytes(),
                    int(labels[i]),
                    probs[i].tobytes(),
                    1.0 + i % 3,
                    "",
                    *NO_ANSWER,
                )
            )
            if y_true is not None and int((i + 1) * feedback) > int(i * feedback):
                items.append((rid, 0, int(y_true[i])))
        self.log.write_predictions(rows)
        if items:
            self.log.add_feedback(items, now=self.t)


@pytest.fixture
def traffic(tmp_path: Path, split: Digits) -> Traffic:
    log = ProductionLog(str(tmp_path / "production.db"))
    yield Traffic(log, split)
    log.close()


def fake_retrain(project: Path, promoted: bool | None, reasons: list[str] | None = None) -> tuple:
    """A retrain command that records its call and writes the gate's side file like evaluate.

    ``promoted`` None: the command fails (exit 1) without touching the gate file.
    """
    script = project / "fake_retrain.py"
    gate = {"promoted": promoted, "version": "2", "reasons": reasons or []}
    script.write_text(
        "import json, pathlib, sys\n"
        "root = pathlib.Path(__file__).parent\n"
        "(root / 'retrain_calls').open('a').write('x')\n"
        f"if {promoted is None}:\n"
        "    print('stage train failed: boom'); sys.exit(1)\n"
        "(root / 'metrics').mkdir(exist_ok=True)\n"
        f"(root / 'metrics/evaluate.json').write_text(json.dumps({gate!r}))\n"
    )
    return (sys.executable, str(script))
