"""Retraining: the labelled feedback exported as training data, then the pipeline and its gate.

:func:`export_feedback` writes every labelled production row, as source-like rows, to
``monitor.feedback_path`` (``data/feedback.parquet``, a DVC dependency of ingest), and
:func:`copy_warm_start` the champion's weights to ``monitor.warm_start_path``
(``data/warm_start.pt``), which the train and harden stages start from; :func:`retrain` runs
``monitor.retrain_command`` (``dvc repro``) under :func:`retrain_lock` and the production log's
retrain lease (one retrain at a time across machines that share a PostgreSQL log), its output in
``<reports>/retrain/<time>.log``, and reads the gate's decision. The running service
hot-reloads a promoted champion by itself. Called by the monitor's trigger policy.

The command runs in a process group of its own: past ``monitor.retrain_timeout_s`` the whole
group (``dvc`` and the stage it is running) gets SIGTERM, then SIGKILL, so no stage outlives
the retrain. A killed ``dvc repro`` leaves nothing that blocks the next one: DVC's locks belong
to dead processes, the stage it was in re-runs (its outputs were deleted, ``dvc.lock`` not
written), and an evaluate killed part way through a promotion is repaired by the next evaluate
(:func:`pipeline.registry.repair`). The champion keeps serving meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts import champion as champion_files
from pipeline.contracts import kernels
from pipeline.contracts.champion import Champion
from pipeline.contracts.io import atomic_outputs, write_parquet
from pipeline.contracts.params import ComputeConfig, MonitorConfig, read_params, section
from pipeline.contracts.prodlog import ProductionLog, file_lock
from pipeline.contracts.schema import FEEDBACK, Schema
from pipeline.contracts.tasks import served_task

# This machine's retrain lock (a file under the reports folder); yields False if it is held.
retrain_lock = file_lock


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
    # compute.kernels' environment, set before dvc starts the stages (pipeline/contracts/kernels.py)
    params = project / "params.yaml"  # what `dvc repro` there reads (none: a custom command's)
    level = (
        section(read_params(params), "compute", ComputeConfig).kernels
        if params.is_file()
        else "native"
    )
    env = {**os.environ, **kernels.environment(level)}
    try:
        code = run_group(list(cfg.retrain_command), project, log_path, cfg.retrain_timeout_s, env)
    except OSError as exc:
        return "retrain_failed", [*reasons, f"{cfg.retrain_command[0]}: {exc}; log {log_path}"]
    if code is None:
        return "retrain_failed", [
            *reasons,
            f"timed out after {cfg.retrain_timeout_s} s (monitor.retrain_timeout_s): stopped; "
            f"the champion keeps serving; log {log_path}",
        ]
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        return "retrain_failed", [
            *reasons,
            f"{how}; the champion keeps serving; {log_path}: " + " | ".join(tail),
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


def run_group(
    cmd: list[str], cwd: Path, log_path: Path, timeout: float, env: dict[str, str] | None = None
) -> int | None:
    """Run ``cmd`` in a new process group, output to ``log_path``; its exit status (negative:
    the signal that killed it), or None if it ran past ``timeout`` and the group was stopped."""
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            out.write(f"\nmonitor: stopped after {timeout} s (monitor.retrain_timeout_s)\n")
            return None
        except BaseException:  # the monitor itself is stopping: take the retrain with it
            stop_group(proc)
            raise


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to ``proc``'s group, SIGKILL to whatever is left after ``grace_s``; returns once
    no process of the group is running (dvc exits first, and a stage it started can still be
    dying then: the next retrain must not start beside it)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):  # a stage that ignored dvc's exit
            os.killpg(proc.pid, signal.SIGKILL)
        break
    deadline = time.monotonic() + 30.0
    while group_running(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is alive (a zombie, already dead, is not)."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: any member, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            return True
    return False


def export_feedback(log: ProductionLog, schema: Schema, path: Path) -> int:
    """Every labelled production row, as source-like rows, to ``path`` (atomically)."""
    w = log.window(labelled_only=True)
    # No labelled rows (a retrain on the label-free estimate alone): an empty table, same columns.
    X = w.X if len(w) else np.empty((0, len(schema.features)), np.float32)
    frame: dict[str, Any] = {}
    for j, feat in enumerate(schema.features):
        col = X[:, j].astype(np.float64)
        if feat.kind == "categorical":
            frame[feat.name] = pd.array(feat.decode(col), dtype="string")
        else:
            frame[feat.name] = col
    frame[schema.target] = served_task(schema).true_values(w, schema)
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
