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

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.contracts.params import MonitorConfig
from pipeline.contracts.prodlog import Window
from pipeline.contracts.tasks import ServedTask

RETRAINS = ("retrain_promoted", "retrain_rejected", "retrain_failed")


def window_figures(window: Window) -> dict[str, Any]:
    """What the index page plots besides drift and the task's figures: latency and versions."""
    return {
        "p50_ms": float(np.percentile(window.latency_ms, 50)) if len(window) else None,
        "p99_ms": float(np.percentile(window.latency_ms, 99)) if len(window) else None,
        "versions": sorted(set(window.model_version)),
    }


def alarm_reasons(f: dict[str, Any], cfg: MonitorConfig, task: ServedTask) -> list[str]:
    """Why a window alarms, in words: drift, then the task's harm."""
    out = []
    if f["drifted"]:
        out.append(
            f"input drift in {f['n_drifted_features']} feature(s), e.g. "
            f"{', '.join(f['drifted_features'][:3])} (min Bonferroni p {f['p_min']:.2g} < "
            f"alpha {cfg.alpha})"
        )
    out += task.harm_reason(f, cfg)
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


def harmless_drift(
    f: dict[str, Any], cfg: MonitorConfig, task: ServedTask
) -> tuple[str, list[str]]:
    """The decision for a window whose inputs drifted with no evidence that the champion is hurt:
    recorded, never a retrain (docs/design.md: retraining acts on harm)."""
    return "drift", [task.no_harm_reason(f, cfg)]
