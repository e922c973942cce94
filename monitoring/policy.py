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
from scipy import stats

from pipeline.contracts.estimate import AccuracyEstimator
from pipeline.contracts.params import MonitorConfig
from pipeline.contracts.prodlog import Window

RETRAINS = ("retrain_promoted", "retrain_rejected", "retrain_failed")


def accuracy_figures(
    window: Window,
    expected: float,
    cfg: MonitorConfig,
    estimator: AccuracyEstimator | None = None,
) -> dict[str, Any]:
    """Feedback accuracy of a window and whether it is significantly below ``expected - drop``;
    the label-free estimate (the champion's ``estimator``, else mean confidence) and whether it
    is below ``expected - drop`` too (only with an estimator: mean confidence is no evidence)."""
    labelled = window.true_label >= 0
    n = int(labelled.sum())
    confidence = float(window.probabilities.max(axis=1).mean()) if len(window) else None
    estimate = estimator.estimate(window.probabilities) if estimator and len(window) else None
    floor = max(expected - cfg.accuracy_drop, 0.0)
    out: dict[str, Any] = {
        "labelled": n,
        "estimated_accuracy": confidence if estimate is None else estimate,
        "estimate_method": "confidence" if estimate is None else estimator.method,
        "mean_confidence": confidence,
        "estimate_dropped": bool(estimate is not None and estimate < floor),
        "accuracy": None,
        "accuracy_dropped": False,
    }
    if n:
        correct = int((window.label[labelled] == window.true_label[labelled]).sum())
        out["accuracy"] = correct / n
        if n >= cfg.min_labels:
            p = float(stats.binom.cdf(correct, n, floor))  # P(this few correct | at the floor)
            out["accuracy_p"] = p
            out["accuracy_dropped"] = bool(p < cfg.alpha)
    return out


def regression_figures(
    window: Window, test_mae: float, nominal: float, cfg: MonitorConfig
) -> dict[str, Any]:
    """A regressor's window from its labels: MAE (beside the champion's test MAE) and the
    realised coverage of its interval, with whether that coverage is significantly below
    ``nominal - accuracy_drop`` (one-sided binomial test at ``alpha``): the intervals stop
    holding the truth when the concept moves (a scaled or offset target), or the inputs move
    where the model errs more. No label-free estimate: harm needs labels."""
    labelled = ~np.isnan(window.true_value)
    n = int(labelled.sum())
    floor = max(nominal - cfg.accuracy_drop, 0.0)
    out: dict[str, Any] = {
        "labelled": n,
        "mae": None,
        "champion_test_mae": test_mae,
        "coverage": None,
        "nominal_coverage": nominal,
        "coverage_dropped": False,
        "estimate_dropped": False,
        "accuracy_dropped": False,
    }
    if n:
        truth = window.true_value[labelled]
        pred, lower, upper = window.probabilities[labelled].T.astype(np.float64)
        covered = int(((truth >= lower) & (truth <= upper)).sum())
        out["mae"] = float(np.abs(truth - pred).mean())
        out["coverage"] = covered / n
        if n >= cfg.min_labels:
            p = float(stats.binom.cdf(covered, n, floor))
            out["coverage_p"] = p
            out["coverage_dropped"] = out["accuracy_dropped"] = bool(p < cfg.alpha)
    return out


def window_figures(window: Window, n_classes: int) -> dict[str, Any]:
    """What the index page plots besides drift: class mix (a regressor: the mean prediction
    and interval width) and latency."""
    if n_classes == 0:
        values = window.probabilities.astype(np.float64)
        return {
            "mean_prediction": float(values[:, 0].mean()) if len(window) else None,
            "mean_width": float((values[:, 2] - values[:, 1]).mean()) if len(window) else None,
            "p50_ms": float(np.percentile(window.latency_ms, 50)) if len(window) else None,
            "p99_ms": float(np.percentile(window.latency_ms, 99)) if len(window) else None,
            "versions": sorted(set(window.model_version)),
        }
    mix = np.bincount(window.label, minlength=n_classes) / max(len(window), 1)
    return {
        "class_mix": mix.round(4).tolist(),
        "p50_ms": float(np.percentile(window.latency_ms, 50)) if len(window) else None,
        "p99_ms": float(np.percentile(window.latency_ms, 99)) if len(window) else None,
        "versions": sorted(set(window.model_version)),
    }


def alarm_reasons(f: dict[str, Any], cfg: MonitorConfig) -> list[str]:
    """Why a window alarms, in words."""
    out = []
    if f["drifted"]:
        out.append(
            f"input drift in {f['n_drifted_features']} feature(s), e.g. "
            f"{', '.join(f['drifted_features'][:3])} (min Bonferroni p {f['p_min']:.2g} < "
            f"alpha {cfg.alpha})"
        )
    if f.get("estimate_dropped"):
        out.append(
            f"estimated accuracy {f['estimated_accuracy']:.3f} ({f['estimate_method']}, no "
            f"labels) is below the champion's test accuracy {f['champion_test_accuracy']:.3f} - "
            f"{cfg.accuracy_drop}"
        )
    if f.get("coverage_dropped"):
        out.append(
            f"interval coverage {f['coverage']:.3f} on {f['labelled']} labels is below nominal "
            f"{f['nominal_coverage']:.2f} - {cfg.accuracy_drop} (binomial p {f['coverage_p']:.2g}"
            f"; MAE {f['mae']:.4g} vs the champion's test MAE {f['champion_test_mae']:.4g})"
        )
    elif f["accuracy_dropped"]:
        out.append(
            f"feedback accuracy {f['accuracy']:.3f} on {f['labelled']} labels is below the "
            f"champion's test accuracy {f['champion_test_accuracy']:.3f} - "
            f"{cfg.accuracy_drop} (binomial p {f['accuracy_p']:.2g})"
        )
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


def harmless_drift(f: dict[str, Any], cfg: MonitorConfig) -> tuple[str, list[str]]:
    """The decision for a window whose inputs drifted with no evidence that the champion is hurt:
    recorded, never a retrain (DESIGN.md: retraining acts on harm)."""
    if "nominal_coverage" in f:  # a regressor
        if f["labelled"] < cfg.min_labels:
            return "drift", [
                f"not retraining: {f['labelled']} labels in the window, min_labels "
                f"{cfg.min_labels} to test its interval's coverage"
            ]
        return "drift", [
            f"not retraining: interval coverage {f['coverage']:.3f} on {f['labelled']} labels is "
            f"not significantly below nominal {f['nominal_coverage']:.2f} - {cfg.accuracy_drop} "
            f"(MAE {f['mae']:.4g}, the champion's test MAE {f['champion_test_mae']:.4g})"
        ]
    if f["labelled"] < cfg.min_labels:
        return "drift", [
            f"not retraining: {f['labelled']} labels in the window, min_labels "
            f"{cfg.min_labels} to test its accuracy; estimated accuracy "
            f"{f['estimated_accuracy']:.3f} ({f['estimate_method']})"
        ]
    return "drift", [
        f"not retraining: feedback accuracy {f['accuracy']:.3f} on {f['labelled']} labels is not "
        f"significantly below the champion's test accuracy {f['champion_test_accuracy']:.3f} - "
        f"{cfg.accuracy_drop}"
    ]
