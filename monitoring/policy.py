"""The trigger policy: what a window's figures and the decision history call for.

Pure functions over the figures :mod:`monitoring.monitor` measured and the decisions it
recorded before; no I/O (labels are counted through the callable the monitor passes):

- ``ok``: no alarm; ``drift``: the inputs drifted, and neither labels nor the label-free
  estimate say the champion is hurt: recorded, no retrain (input drift alone never retrains);
- ``alarm``: the champion is hurt (feedback accuracy significantly below its test accuracy, or
  the estimate below it), in fewer than ``debounce`` windows in a row so far;
- ``cooldown``: the last retrain was less than ``cooldown_s`` ago;
- ``waiting_for_labels``: fewer than ``min_feedback`` labelled rows arrived since the last retrain;
- ``due``: a retrain is due (the monitor then records ``dry_run``, ``busy`` or runs it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from monitoring.detector import DriftResult
from pipeline.contracts.params import MonitorConfig
from pipeline.contracts.prodlog import Window
from pipeline.contracts.task import GroupsWindow, WindowQuality
from pipeline.contracts.tasks import ServedTask

RETRAINS = ("retrain_promoted", "retrain_rejected", "retrain_failed")


@dataclasses.dataclass
class WindowFigures:
    """What the monitor measured on one window: the drift test's verdict (``drift``: its
    figures), the task's figures from labels (``quality``), what the index page plots of the
    answers (``mix``), latency and the versions that answered; then what deciding added (the
    drift report's file name, ``superseded`` when the champion answered none of it, a retrain).
    :meth:`as_json` is the decision row's ``figures``."""

    drift: DriftResult
    quality: WindowQuality
    groups: GroupsWindow | None  # with data.sensitive: the task's figure per group
    mix: Mapping[str, Any]
    p50_ms: float | None
    p99_ms: float | None
    versions: list[str]
    champion: str
    log_rejected_rows: int  # rows the database refused, set aside by the service (no window's)
    report: str | None = None
    superseded: bool = False
    retrain: bool = False

    @classmethod
    def measure(
        cls,
        window: Window,
        drift: DriftResult,
        quality: WindowQuality,
        groups: GroupsWindow | None,
        mix: Mapping[str, Any],
        champion: str,
        log_rejected_rows: int,
    ) -> WindowFigures:
        n = len(window)
        return cls(
            drift,
            quality,
            groups,
            mix,
            p50_ms=float(np.percentile(window.latency_ms, 50)) if n else None,
            p99_ms=float(np.percentile(window.latency_ms, 99)) if n else None,
            versions=sorted(set(window.model_version)),
            champion=champion,
            log_rejected_rows=log_rejected_rows,
        )

    @property
    def drifted(self) -> bool:
        return self.drift.drifted

    @property
    def hurt(self) -> bool:
        """Its labels, its estimate or one group's labels say the champion is hurt."""
        return self.quality.harm or bool(self.groups and self.groups.dropped)

    @property
    def harm(self) -> bool:
        """Hurt, in a window the champion answered."""
        return self.hurt and not self.superseded

    @property
    def alarm(self) -> bool:
        return self.drifted or self.hurt

    def as_json(self) -> dict[str, Any]:
        out = {
            **self.drift.figures(),
            **self.quality.as_json(),
            **({"groups": dataclasses.asdict(self.groups)} if self.groups else {}),
            **self.mix,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "versions": self.versions,
            "champion": self.champion,
            "log_rejected_rows": self.log_rejected_rows,
            "harm": self.harm,
            "alarm": self.alarm,
        }
        if self.report is not None:
            out["report"] = self.report
        if self.superseded:
            out["harm_of_served"] = self.hurt
        if self.retrain:
            out["retrain"] = True
        return out


@dataclasses.dataclass(frozen=True)
class WindowDecision:
    """What the monitor decided for a window (the policy's words above), and why."""

    decision: str
    reasons: list[str]
    figures: WindowFigures
    rows: int


def alarm_reasons(f: WindowFigures, cfg: MonitorConfig, task: ServedTask) -> list[str]:
    """Why a window alarms, in words: drift, then the task's harm."""
    out = []
    if f.drifted:
        d = f.drift
        out.append(
            f"input drift in {len(d.features)} feature(s), e.g. "
            f"{', '.join(d.features[:3])} (min Bonferroni p {d.p_min:.2g} < alpha {cfg.alpha})"
        )
        if d.missing:
            out.append(
                "missing values changed in "
                + ", ".join(
                    f"{name} ({win:.0%} of the window, {ref:.0%} of the reference)"
                    for name, (win, ref) in list(d.missing.items())[:5]
                )
                + (f" and {len(d.missing) - 5} more" if len(d.missing) > 5 else "")
            )
    out += task.harm_reason(f.quality, cfg)
    out += task.group_harm(f.groups, cfg)
    return out


def trigger(
    history: list[dict[str, Any]],
    now: float,
    cfg: MonitorConfig,
    labels_since: Callable[[float | None], int],
) -> tuple[str, list[str]]:
    """The decision for an alarming window, given the decisions before it (oldest first).

    ``labels_since(ts)``: labelled rows that arrived at or after ``ts`` (all without it).
    Returns ``due`` with the count of new labels in its reason when a retrain should run.
    """
    streak = 1
    for d in reversed(history):
        if d["decision"] in RETRAINS or not d["figures"].get("harm"):
            break
        streak += 1
    if streak < cfg.debounce:
        return "alarm", [f"{streak} of {cfg.debounce} harmful windows in a row"]
    last = next((d for d in reversed(history) if d["decision"] in RETRAINS), None)
    since = last["ts"] if last else None
    if last and now - last["ts"] < cfg.cooldown_s:
        ago = now - last["ts"]
        return "cooldown", [f"last retrain {ago:.0f} s ago; cooldown_s {cfg.cooldown_s}"]
    labels = labels_since(since)
    if labels < cfg.min_feedback:
        return "waiting_for_labels", [
            f"waiting for labels: {labels} labelled rows since the last retrain, "
            f"min_feedback {cfg.min_feedback}"
        ]
    return "due", [f"a retrain is due ({labels} new labels)"]


def harmless_drift(f: WindowFigures, cfg: MonitorConfig, task: ServedTask) -> tuple[str, list[str]]:
    """The decision for a window whose inputs drifted with no evidence that the champion is hurt:
    recorded, never a retrain (docs/design.md: retraining acts on harm)."""
    return "drift", [task.no_harm_reason(f.quality, cfg)]
