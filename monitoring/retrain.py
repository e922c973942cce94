"""Retraining: the labelled feedback exported as training data, then the pipeline and its gate.

:func:`export_feedback` writes every labelled production row, as source-like rows, to
``monitor.feedback_path`` (``data/feedback.parquet``, a DVC dependency of ingest), and
:func:`copy_warm_start` the champion's weights to ``monitor.warm_start_path``
(``data/warm_start.pt``), which the train and harden stages start from; :func:`retrain` runs
``monitor.retrain_command`` (``dvc repro``) under :func:`retrain_lock`, its output in
``<reports>/retrain/<time>.log``, and reads the gate's decision. The running service
hot-reloads a promoted champion by itself. Called by the monitor's trigger policy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts import champion as champion_files
from pipeline.contracts.champion import Champion
from pipeline.contracts.io import atomic_outputs, write_parquet
from pipeline.contracts.params import MonitorConfig
from pipeline.contracts.prodlog import ProductionLog
from pipeline.contracts.schema import FEEDBACK, Schema


@contextlib.contextmanager
def retrain_lock(path: Path) -> Iterator[bool]:
    """Hold the retrain lock file at ``path`` while the block runs; yields False if another
    process holds it (nothing waits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def retrain(
    cfg: MonitorConfig, log: ProductionLog, champ: Champion, project: Path, reports: Path
) -> tuple[str, list[str]]:
    """Export feedback, run the pipeline, read the gate. Returns (decision, reasons)."""
    rows = export_feedback(log, champ.schema, project / cfg.feedback_path)
    copy_warm_start(champ, project / cfg.warm_start_path)
    gate_path = project / cfg.gate_metrics
    before = gate_path.stat().st_mtime if gate_path.is_file() else None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    log_path = reports / "retrain" / f"{stamp}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    reasons = [
        f"exported {rows} labelled production rows to {cfg.feedback_path}; training starts from "
        f"version {champ.version}'s weights ({cfg.warm_start_path})"
    ]
    print(f"monitor: retraining ({' '.join(cfg.retrain_command)}), log {log_path}")
    try:
        with log_path.open("w") as out:
            done = subprocess.run(
                list(cfg.retrain_command),
                cwd=project,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=cfg.retrain_timeout_s,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return "retrain_failed", [*reasons, f"timed out after {cfg.retrain_timeout_s} s"]
    except OSError as exc:
        return "retrain_failed", [*reasons, f"{cfg.retrain_command[0]}: {exc}"]
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return "retrain_failed", [
            *reasons,
            f"exit {done.returncode}; the champion keeps serving; {log_path}: " + " | ".join(tail),
        ]
    if not gate_path.is_file() or gate_path.stat().st_mtime == before:
        return "retrain_failed", [*reasons, f"the gate did not run ({gate_path} unchanged)"]
    gate = json.loads(gate_path.read_text())
    if gate.get("promoted"):
        return "retrain_promoted", [
            *reasons,
            f"the gate promoted version {gate.get('version')}; the service reloads it",
        ]
    return "retrain_rejected", [
        *reasons,
        f"the gate rejected version {gate.get('version')}: {'; '.join(gate['reasons'])}; "
        f"version {champ.version} keeps serving",
    ]


def export_feedback(log: ProductionLog, schema: Schema, path: Path) -> int:
    """Every labelled production row, as source-like rows, to ``path`` (atomically)."""
    w = log.window(labelled_only=True)
    frame: dict[str, Any] = {}
    for j, feat in enumerate(schema.features):
        col = w.X[:, j].astype(np.float64)
        if feat.kind == "categorical":
            frame[feat.name] = pd.array(feat.decode(col), dtype="string")
        else:
            frame[feat.name] = col
    frame[schema.target] = [schema.classes[c] for c in w.true_label]
    frame[FEEDBACK] = pd.array(
        [f"{r}:{i}" for r, i in zip(w.request_id, w.idx.tolist(), strict=True)], dtype="string"
    )
    df = pd.DataFrame(frame)
    with atomic_outputs(path) as (tmp,):
        write_parquet(df, tmp)
    return len(df)


def copy_warm_start(champ: Champion, path: Path) -> None:
    """The champion's hardened checkpoint (its twin) to ``path`` (atomically), where the train
    and harden stages start from it; a champion without one leaves ``path`` empty (scratch)."""
    twin = champ.directory / champion_files.TWIN
    with atomic_outputs(path) as (tmp,):
        if twin.is_file():
            shutil.copyfile(twin, tmp)
        else:
            Path(tmp).write_bytes(b"")
