"""The monitor: windows of the production log, their drift and accuracy, and the retrain trigger.

    python -m monitoring check [--last N | --since T --until T] [--report] [--dry-run]
    python -m monitoring watch [--max-seconds S]

Each window of served predictions is compared with the champion's reference (its training
features, shipped as ``reference.parquet``) by :mod:`monitoring.detector`, and, where enough
feedback labels exist, its accuracy is tested against the champion's test accuracy (one-sided
binomial test: a concept shift, with unchanged inputs, is caught by labels alone). A window
*alarms* when either fires. The trigger policy (``params.yaml: monitor``) then decides:

- ``ok``: no alarm; ``alarm``: fewer than ``debounce`` alarming windows in a row so far;
- ``waiting_for_labels``: fewer than ``min_feedback`` labelled rows arrived since the last retrain;
- ``cooldown``: the last retrain was less than ``cooldown_s`` ago; ``busy``: another retrain holds
  the lock; ``dry_run``: a retrain was due, and only recorded;
- ``retrain_promoted`` / ``retrain_rejected`` / ``retrain_failed``: the labelled feedback was
  exported to ``data/feedback.parquet``, ``retrain_command`` (``dvc repro``) ran, and the gate
  decided; the running service hot-reloads a promoted champion by itself, and otherwise the old
  champion keeps serving.

Every decision goes to the production log's ``decisions`` table with its figures and reasons.
Imports no torch and no training code (DESIGN.md's layers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from monitoring.detector import Reference, cached_reference
from pipeline.config import MonitorConfig
from pipeline.errors import MlcycleError
from pipeline.io import atomic_outputs, write_parquet
from pipeline.schema import FEEDBACK, Schema
from serving.prodlog import ProductionLog, Window

RETRAINS = ("retrain_promoted", "retrain_rejected", "retrain_failed")


@dataclasses.dataclass(frozen=True)
class Champion:
    version: str
    directory: Path
    schema: Schema
    test_accuracy: float


def champion(registry: Path) -> Champion:
    """The champion the service serves: ``<registry>/champion``, as promotion left it."""
    link = registry / "champion"
    if not link.exists():
        raise MlcycleError(f"{link}: no champion has been promoted yet; run `make repro`")
    directory = link.resolve()
    try:
        schema = Schema.from_dict(json.loads((directory / "schema.json").read_text()))
        gate = json.loads((directory / "evaluate.json").read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise MlcycleError(f"champion {directory}: unreadable: {exc}") from None
    if not (directory / "reference.parquet").is_file():
        raise MlcycleError(
            f"champion {directory}: no reference.parquet (promoted by an older mlcycle); "
            "run `make repro` once to promote a model that ships it"
        )
    return Champion(directory.name, directory, schema, float(gate["candidate"]["accuracy"]))


def accuracy_figures(window: Window, expected: float, cfg: MonitorConfig) -> dict[str, Any]:
    """Feedback accuracy of a window and whether it is significantly below ``expected - drop``."""
    labelled = window.true_label >= 0
    n = int(labelled.sum())
    out: dict[str, Any] = {
        "labelled": n,
        # What the model expects of itself: mean top probability (meaningful if calibrated).
        "estimated_accuracy": float(window.probabilities.max(axis=1).mean())
        if len(window)
        else None,
        "accuracy": None,
        "accuracy_dropped": False,
    }
    if n:
        correct = int((window.label[labelled] == window.true_label[labelled]).sum())
        out["accuracy"] = correct / n
        if n >= cfg.min_labels:
            floor = max(expected - cfg.accuracy_drop, 0.0)
            p = float(stats.binom.cdf(correct, n, floor))  # P(this few correct | at the floor)
            out["accuracy_p"] = p
            out["accuracy_dropped"] = bool(p < cfg.alpha)
    return out


def window_figures(window: Window, n_classes: int) -> dict[str, Any]:
    """What the index page plots besides drift: class mix and latency."""
    mix = np.bincount(window.label, minlength=n_classes) / max(len(window), 1)
    return {
        "class_mix": mix.round(4).tolist(),
        "p50_ms": float(np.percentile(window.latency_ms, 50)) if len(window) else None,
        "p99_ms": float(np.percentile(window.latency_ms, 99)) if len(window) else None,
        "versions": sorted(set(window.model_version)),
    }


class Monitor:
    """Checks windows and applies the trigger policy; one per process."""

    def __init__(
        self, cfg: MonitorConfig, log: ProductionLog, registry: Path, project: Path
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.registry = Path(registry)
        self.project = Path(project)
        self.reports = self.project / cfg.reports
        self._reference: tuple[str, Reference] | None = None

    # -- one window ---------------------------------------------------------------------------
    def reference(self, champ: Champion) -> Reference:
        if self._reference is None or self._reference[0] != champ.version:
            ref = cached_reference(
                champ.directory / "reference.parquet",
                champ.schema,
                self.reports / "cache",
                champ.version,
            )
            self._reference = (champ.version, ref)
        return self._reference[1]

    def assess(self, window: Window, champ: Champion) -> dict[str, Any]:
        drift = self.reference(champ).test(window.X, self.cfg.alpha)
        figures = {
            **drift.figures(),
            **accuracy_figures(window, champ.test_accuracy, self.cfg),
            **window_figures(window, champ.schema.n_classes),
            "champion": champ.version,
            "champion_test_accuracy": champ.test_accuracy,
        }
        figures["alarm"] = bool(drift.drifted or figures["accuracy_dropped"])
        return figures

    def decide(
        self, window: Window, *, report: bool = False, dry_run: bool = False, index: bool = True
    ) -> dict:
        """Assess ``window``, apply the policy, record and return the decision.

        ``index``: rewrite the index page now (``step`` does it once for all its windows).
        """
        if len(window) == 0:
            raise MlcycleError("the window is empty: the production log has no rows there")
        champ = champion(self.registry)
        figures = self.assess(window, champ)
        reasons = self._alarm_reasons(figures)
        if report or (figures["drifted"] and self.cfg.report_on_drift and self._onset()):
            figures["report"] = self.write_report(window, champ)
        decision = "ok"
        if figures["alarm"]:
            decision, more = self._policy(dry_run or self.cfg.dry_run)
            reasons += more
            if decision in RETRAINS:
                figures["retrain"] = True
        out = self._record(window, decision, figures, reasons)
        if index:
            self.write_index()
        return out

    def _onset(self) -> bool:
        """True unless the previous window drifted too: one report per drift episode."""
        last = self.log.decisions(last=1)
        return not (last and last[-1]["figures"].get("drifted"))

    def _alarm_reasons(self, f: dict[str, Any]) -> list[str]:
        out = []
        if f["drifted"]:
            out.append(
                f"input drift in {f['n_drifted_features']} feature(s), e.g. "
                f"{', '.join(f['drifted_features'][:3])} (min Bonferroni p {f['p_min']:.2g} < "
                f"alpha {self.cfg.alpha})"
            )
        if f["accuracy_dropped"]:
            out.append(
                f"feedback accuracy {f['accuracy']:.3f} on {f['labelled']} labels is below the "
                f"champion's test accuracy {f['champion_test_accuracy']:.3f} - "
                f"{self.cfg.accuracy_drop} (binomial p {f['accuracy_p']:.2g})"
            )
        return out

    # -- the trigger policy -------------------------------------------------------------------
    def _policy(self, dry_run: bool) -> tuple[str, list[str]]:
        history = self.log.decisions(last=max(self.cfg.debounce, 1000))
        streak = 1
        for d in reversed(history):
            if d["decision"] in RETRAINS or not d["figures"].get("alarm"):
                break
            streak += 1
        if streak < self.cfg.debounce:
            return "alarm", [f"{streak} of {self.cfg.debounce} alarming windows in a row"]
        last = next((d for d in reversed(history) if d["decision"] in RETRAINS), None)
        since = last["ts"] if last else None
        if last and time.time() - last["ts"] < self.cfg.cooldown_s:
            ago = time.time() - last["ts"]
            return "cooldown", [f"last retrain {ago:.0f} s ago; cooldown_s {self.cfg.cooldown_s}"]
        labels = self.log.feedback_count(since=since)
        if labels < self.cfg.min_feedback:
            return "waiting_for_labels", [
                f"waiting for labels: {labels} labelled rows since the last retrain, "
                f"min_feedback {self.cfg.min_feedback}"
            ]
        if dry_run:
            return "dry_run", [f"a retrain is due ({labels} new labels); dry run: not started"]
        with self._lock() as held:
            if not held:
                return "busy", ["another retrain holds the lock"]
            return self.retrain()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[bool]:
        path = self.reports / "retrain.lock"
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

    def retrain(self) -> tuple[str, list[str]]:
        """Export feedback, run the pipeline, read the gate. Returns (decision, reasons)."""
        champ = champion(self.registry)
        rows = export_feedback(self.log, champ.schema, self.project / self.cfg.feedback_path)
        gate_path = self.project / self.cfg.gate_metrics
        before = gate_path.stat().st_mtime if gate_path.is_file() else None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        log_path = self.reports / "retrain" / f"{stamp}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        reasons = [f"exported {rows} labelled production rows to {self.cfg.feedback_path}"]
        print(f"monitor: retraining ({' '.join(self.cfg.retrain_command)}), log {log_path}")
        try:
            with log_path.open("w") as out:
                done = subprocess.run(
                    list(self.cfg.retrain_command),
                    cwd=self.project,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=self.cfg.retrain_timeout_s,
                    check=False,
                )
        except subprocess.TimeoutExpired:
            return "retrain_failed", [*reasons, f"timed out after {self.cfg.retrain_timeout_s} s"]
        except OSError as exc:
            return "retrain_failed", [*reasons, f"{self.cfg.retrain_command[0]}: {exc}"]
        if done.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            return "retrain_failed", [
                *reasons,
                f"exit {done.returncode}; the champion keeps serving; {log_path}: "
                + " | ".join(tail),
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

    def _record(
        self, window: Window, decision: str, figures: dict[str, Any], reasons: list[str]
    ) -> dict:
        start, end = float(window.ts[0]), float(window.ts[-1])
        self.log.record_decision(
            window_start=start,
            window_end=end,
            rows=len(window),
            decision=decision,
            figures=figures,
            reasons=reasons,
        )
        return {"decision": decision, "reasons": reasons, "figures": figures, "rows": len(window)}

    def write_index(self) -> None:
        from monitoring.reports import write_index

        write_index(self.log.decisions(last=10_000), self.reports)

    def write_report(self, window: Window, champ: Champion) -> str:
        from monitoring.reports import drift_report

        return drift_report(window, champ, self.reports)

    # -- watch: consecutive windows ------------------------------------------------------------
    def new_windows(self) -> list[Window]:
        """Full windows of rows logged after the last decided window, oldest first."""
        history = self.log.decisions(last=1)
        since = None
        if history and history[-1]["window_end"] is not None:
            since = float(np.nextafter(history[-1]["window_end"], np.inf))
        size = self.cfg.window
        rows = self.log.window(since=since, last=size * self.cfg.max_windows)
        return [rows.slice(k, k + size) for k in range(0, len(rows) - size + 1, size)]

    def step(self, dry_run: bool = False, stop: Callable[[], bool] = lambda: False) -> list[dict]:
        """Decide every new full window (until ``stop()``); the index page is written once."""
        out = []
        for w in self.new_windows():
            if stop():
                break
            out.append(self.decide(w, dry_run=dry_run, index=False))
        if out:
            self.write_index()
        return out


def export_feedback(log: ProductionLog, schema: Schema, path: Path) -> int:
    """Every labelled production row, as source-like rows, to ``path`` (atomically)."""
    w = log.window(labelled_only=True)
    frame: dict[str, Any] = {}
    for j, feat in enumerate(schema.features):
        col = w.X[:, j].astype(np.float64)
        if feat.kind == "categorical":
            cats = np.array(feat.categories or (), dtype=object)
            ok = np.isfinite(col) & (col >= 0) & (col < len(cats))
            values = np.full(len(col), None, dtype=object)
            values[ok] = cats[col[ok].astype(np.int64)]
            frame[feat.name] = pd.array(values, dtype="string")
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


def project_dir(params: Path) -> Path:
    """The project a params file belongs to: where ``dvc repro`` runs."""
    return Path(os.path.dirname(os.path.abspath(params)))
