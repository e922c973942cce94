"""The monitor: windows of the production log, their drift and accuracy, and the retrain trigger.

    python -m monitoring check [--last N | --since T --until T] [--report] [--dry-run]
    python -m monitoring watch [--max-seconds S]

Each window of served predictions is compared with the champion's reference (its training
features, shipped as ``reference.parquet``) by :mod:`monitoring.detector`, and, where enough
feedback labels exist, its accuracy is tested against the champion's test accuracy (one-sided
binomial test: a concept shift, with unchanged inputs, is caught by labels alone); before labels
arrive, the champion's label-free estimate (``estimate.json``) below the same floor is evidence
of harm too. Retraining acts on harm, never on drift alone. The trigger policy
(``params.yaml: monitor``, :mod:`monitoring.policy`) decides:

- ``ok``: no drift, no harm; ``drift``: the inputs drifted with no evidence of harm (recorded,
  reported, never a retrain); ``alarm``: harm in fewer than ``debounce`` windows in a row so far;
- ``waiting_for_labels``: fewer than ``min_feedback`` labelled rows arrived since the last retrain;
- ``cooldown``: the last retrain was less than ``cooldown_s`` ago; ``busy``: another retrain holds
  the lock (this machine's file lock, or the production log's lease: another ``watch`` sharing a
  PostgreSQL log on another machine); ``dry_run``: a retrain was due, and only recorded;
- ``superseded``: every row of the window was answered by an earlier version than the champion
  (the backlog a promoted retrain leaves): its drift is recorded, its harm is that version's and
  never counts against the champion or towards a retrain;
- ``retrain_promoted`` / ``retrain_rejected`` / ``retrain_failed``: the labelled feedback was
  exported to ``data/feedback.parquet``, ``retrain_command`` (``dvc repro``) ran, and the gate
  decided; the running service hot-reloads a promoted champion by itself, and otherwise the old
  champion keeps serving.

Every decision goes to the production log's ``decisions`` table with its figures and reasons.
Imports no torch and no training code (docs/design.md's layers).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from monitoring.detector import Reference, cached_reference
from monitoring.policy import (
    RETRAINS,
    WindowDecision,
    WindowFigures,
    alarm_reasons,
    harmless_drift,
    trigger,
)
from monitoring.reports import drift_report, report_name, write_index
from monitoring.retrain import retrain, retrain_lock
from pipeline.contracts import champion
from pipeline.contracts.champion import Champion
from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import MonitorConfig
from pipeline.contracts.prodlog import ProductionLog, Window
from pipeline.contracts.tasks import served_task


class Monitor:
    """Checks windows and applies the trigger policy; one per process."""

    def __init__(
        self,
        cfg: MonitorConfig,
        log: ProductionLog,
        registry: Path,
        project: Path,
        background_reports: bool = False,
    ) -> None:
        """``background_reports`` (``watch``): Evidently reports are written by a worker thread
        while the monitor goes on deciding (a report takes seconds, the first one with
        Evidently's import about 10: a retrain the same window calls for does not wait for it);
        :meth:`close` waits for them."""
        self.cfg = cfg
        self.log = log
        self.registry = Path(registry)
        self.project = Path(project)
        self.reports = self.project / cfg.reports
        self._reference: tuple[str, Reference] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._background = background_reports

    # -- one window ---------------------------------------------------------------------------
    def group_rows(self, window: Window, champ: Champion) -> Window:
        """The champion's labelled rows up to ``window``'s end, at most ``GROUP_WINDOWS``
        windows' worth: what each group of ``data.sensitive`` is judged on (its latest
        ``monitor.window`` of them; :meth:`ServedTask.group_quality`). The window itself
        without groups."""
        if champ.figures.groups is None:
            return window
        return self.log.window(
            last=GROUP_WINDOWS * self.cfg.window,
            until=float(window.ts[-1]) + 1e-6,
            model_version=champ.version,
            labelled_only=True,
        )

    def reference(self, champ: Champion) -> Reference:
        if self._reference is None or self._reference[0] != champ.version:
            ref = cached_reference(
                champ.reference,
                champ.schema,
                self.reports / "cache",
                champ.version,
            )
            self._reference = (champ.version, ref)
        return self._reference[1]

    def assess(self, window: Window, champ: Champion) -> WindowFigures:
        task = served_task(champ.schema)
        drift = self.reference(champ).test(window.X, self.cfg.alpha)
        drifted = [champ.schema.names.index(name) for name in drift.features]
        return WindowFigures.measure(
            window,
            drift,
            task.quality(window, champ.figures, self.cfg, champ.estimator, drifted),
            task.group_quality(
                self.group_rows(window, champ), champ.figures, self.cfg, champ.schema
            ),
            task.mix(window, champ.schema),
            champ.version,
            self.log.rejected_count(),
        )

    def decide(
        self, window: Window, *, report: bool = False, dry_run: bool = False, index: bool = True
    ) -> WindowDecision:
        """Assess ``window``, apply the policy, record and return the decision.

        ``index``: rewrite the index page now (``step`` does it once for all its windows).
        """
        if len(window) == 0:
            raise MlcycleError("the window is empty: the production log has no rows there")
        champ = champion.read(self.registry)
        figures = self.assess(window, champ)
        task = served_task(champ.schema)
        reasons = alarm_reasons(figures, self.cfg, task)
        if report or (figures.drifted and self.cfg.report_on_drift and self._onset()):
            figures.report = self.write_report(
                window, champ, figures.drift.features[:10], list(figures.drift.missing)
            )
        decision = "ok"
        served = sorted(set(window.model_version))
        if champ.version not in served:
            # Answered before the champion was promoted: not evidence about the champion.
            figures.superseded = True
            decision = "superseded"
            reasons = [
                f"answered by version {', '.join(served)} before version {champ.version} became "
                "champion: not counted against it"
                + ("" if not reasons else f" ({'; '.join(reasons)})")
            ]
        elif figures.drifted and not figures.harm:
            decision, more = harmless_drift(figures, self.cfg, task)
            reasons += more
        elif figures.harm:
            decision, more = self._policy(dry_run or self.cfg.dry_run)
            reasons += more
            if decision in RETRAINS:
                figures.retrain = True
        out = self._record(window, decision, figures, reasons)
        if index:
            self.write_index()
        return out

    def _onset(self) -> bool:
        """True unless the previous window drifted too: one report per drift episode."""
        last = self.log.decisions(last=1)
        return not (last and last[-1]["figures"].get("drifted"))

    # -- the trigger policy -------------------------------------------------------------------
    def _policy(self, dry_run: bool) -> tuple[str, list[str]]:
        history = self.log.decisions(last=max(self.cfg.debounce, 1000))
        decision, reasons = trigger(history, time.time(), self.cfg, self.log.feedback_count)
        if decision != "due":
            return decision, reasons
        if dry_run:
            return "dry_run", [f"{reasons[0]}; dry run: not started"]
        with (
            retrain_lock(self.reports / "retrain.lock") as held,
            self.log.lease("retrain") as leased,
        ):
            if not held:
                return "busy", ["another retrain holds the lock"]
            if not leased:
                return "busy", ["another monitor sharing this production log is retraining"]
            champ = champion.read(self.registry)
            return retrain(self.cfg, self.log, champ, self.project, self.reports)

    def _record(
        self, window: Window, decision: str, figures: WindowFigures, reasons: list[str]
    ) -> WindowDecision:
        start, end = float(window.ts[0]), float(window.ts[-1])
        self.log.record_decision(
            window_start=start,
            window_end=end,
            rows=len(window),
            decision=decision,
            figures=figures.as_json(),
            reasons=reasons,
        )
        return WindowDecision(decision, reasons, figures, len(window))

    def write_index(self) -> None:
        task = served_task(champion.read(self.registry).schema)
        write_index(self.log.decisions(last=10_000), self.reports, task)

    def write_report(
        self, window: Window, champ: Champion, drifted: list[str], missing: list[str]
    ) -> str:
        """The report's file name; in the background it appears there once written (atomically:
        never half a file)."""
        if not self._background:
            return drift_report(window, champ, self.reports, drifted, missing)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="drift-report", initializer=_background_priority
            )
        name = report_name(window)
        job = self._pool.submit(drift_report, window, champ, self.reports, drifted, missing)
        job.add_done_callback(lambda done: _report_failed(done, name))
        return name

    def close(self) -> None:
        """Wait for the reports still being written."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

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

    def step(
        self, dry_run: bool = False, stop: Callable[[], bool] = lambda: False
    ) -> list[WindowDecision]:
        """Decide every new full window (until ``stop()``); the index page is written once."""
        out = []
        for w in self.new_windows():
            if stop():
                break
            out.append(self.decide(w, dry_run=dry_run, index=False))
        if out:
            self.write_index()
        return out


def _background_priority() -> None:
    """The report thread yields the CPU to the retrain the same window may have started (on
    Linux a thread has its own nice value; elsewhere this is a no-op)."""
    if sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):  # not permitted: the report competes as before
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + REPORT_NICE)


GROUP_WINDOWS = 20  # how far back a group's labelled rows are looked for, in windows
REPORT_NICE = 10  # the drift-report thread's niceness (the retrain's stages keep 0)


def _report_failed(job: Future, name: str) -> None:
    if job.exception() is not None:
        print(f"monitor: the drift report {name} failed: {job.exception()!r}", file=sys.stderr)


def project_dir(params: Path) -> Path:
    """The project a params file belongs to: where ``dvc repro`` runs."""
    return Path(os.path.dirname(os.path.abspath(params)))
