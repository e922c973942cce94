"""The gate's rules: what a candidate must show to replace the champion, and what to change.

Pure functions over the figures the evaluate stage measured (:mod:`pipeline.evaluate`): every
rule with its value, threshold and verdict, the hint for each failed or waived rule, and the
fp32 / int8 choice. No I/O; tests call them directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import GateConfig


def choose_variant(cfg: GateConfig, export: dict[str, Any], latency_ratio: float | None) -> str:
    """fp32 or int8: ``auto`` ships int8 only if it is faster and loses at most the allowed.

    ``latency_ratio``: int8 / fp32 single-row p50, measured here (None without an int8 graph).
    """
    if cfg.variant != "auto":
        if cfg.variant == "int8" and "int8" not in export:
            raise MlcycleError("gate.variant = 'int8' but export.quantize is false")
        return cfg.variant
    q = export.get("int8")
    ok = (
        q is not None
        and latency_ratio is not None
        and q.get("accuracy_delta", q.get("r2_delta", -1.0)) >= -cfg.max_int8_accuracy_drop
        and latency_ratio < 1.0
    )
    return "int8" if ok else "fp32"


def robust_method(cfg: GateConfig) -> str:
    return (
        f"per-row worst case of PGD-{cfg.robust_steps}, APGD-CE and APGD-DLR ({cfg.apgd_iter} "
        f"iterations), {cfg.robust_restarts} restart(s), seed {cfg.seed}, on the PyTorch twin; "
        f"Square ({cfg.square_queries} queries) on the shipped ONNX graph"
    )


@dataclasses.dataclass(frozen=True)
class GateContext:
    """What the earlier stages say about the candidate, for the data-relative rules."""

    baseline: tuple[str, float] | None = None  # the best scikit-learn baseline's test accuracy
    trained_clean: float | None = None  # the model before hardening, test accuracy
    max_clean_drop: float = 1.0  # harden.max_clean_drop (plus the int8 allowance if int8 ships)
    budget_limited: bool = False  # harden: robustness at eps costs more than the budget allows
    # Why the champion counts as failing in production (its accuracy on the production holdout
    # significantly below its test accuracy), or None: then the rules relative to it on the
    # test split do not bind (the holdout rule and every absolute floor still do).
    champion_failing: str | None = None


RELATIVE_ON_TEST = ("vs_champion_accuracy", "vs_champion_robust_accuracy")


def champion_failing(
    test_accuracy: float, holdout_correct: int, holdout_rows: int, cfg: GateConfig
) -> tuple[bool, float]:
    """Whether the champion's production-holdout accuracy is significantly (one-sided binomial
    test at ``gate.production_alpha``) below its test accuracy - ``gate.max_accuracy_drop``;
    returns (failing, p)."""
    from scipy import stats

    if holdout_rows == 0:
        return False, 1.0
    floor = max(test_accuracy - cfg.max_accuracy_drop, 0.0)
    p = float(stats.binom.cdf(holdout_correct, holdout_rows, floor))
    return bool(p < cfg.production_alpha), p


def gate(
    cfg: GateConfig,
    cand: dict[str, Any],
    champ: dict[str, Any] | None,
    parity_passed: bool,
    ctx: GateContext | None = None,
) -> list[dict[str, Any]]:
    """Every rule with its value, threshold and verdict.

    ``min_robust_accuracy`` is waived (passed, marked ``waived``) when ``gate.robust_floor`` is
    ``budget`` and harden reports that robustness at eps costs more clean accuracy than its
    budget allows: the model ships, and the hints say which parameter trades accuracy for
    robustness. ``strict`` always enforces the floor, and so does a champion that meets it: the
    waiver is for data whose robustness the budget cannot buy (a first run, or a champion that
    was waived too), never for a retrain that would replace a robust champion with a model
    below the floor (say, harden's fallback to the unhardened weights).
    """
    ctx = ctx or GateContext()
    # (rule, value, threshold, value must be at least the threshold (else at most), what)
    rules = [
        (
            "parity",
            float(parity_passed),
            1.0,
            True,
            "onnxruntime matches PyTorch on the test split",
        ),
        ("min_accuracy", cand["accuracy"], cfg.min_accuracy, True, "test accuracy >= floor"),
        (
            "min_robust_accuracy",
            cand["robust_accuracy"],
            cfg.min_robust_accuracy,
            True,
            "robust accuracy >= floor",
        ),
        ("max_ece", cand["ece"], cfg.max_ece, False, "calibration error <= ceiling"),
        (
            "max_p99_latency_ms",
            cand["p99_latency_ms"],
            cfg.max_p99_latency_ms,
            False,
            "p99 single-row compute time (one thread's CPU time) <= budget",
        ),
    ]
    if ctx.baseline is not None and cfg.max_baseline_gap is not None:
        name, acc = ctx.baseline
        rules.append(
            (
                "vs_baseline",
                cand["accuracy"],
                acc - cfg.max_baseline_gap,
                True,
                f"accuracy >= the {name} baseline's {acc:.4f} - {cfg.max_baseline_gap}",
            )
        )
    if ctx.trained_clean is not None:
        rules.append(
            (
                "clean_budget",
                cand["accuracy"],
                ctx.trained_clean - ctx.max_clean_drop,
                True,
                f"accuracy >= the model before hardening's {ctx.trained_clean:.4f} - "
                f"{ctx.max_clean_drop:g} (harden.max_clean_drop)",
            )
        )
    if champ is not None and "holdout_accuracy" in cand:
        rules.append(
            (
                "vs_champion_holdout_accuracy",
                cand["holdout_accuracy"],
                champ["holdout_accuracy"] - cfg.max_accuracy_drop,
                True,
                f"production holdout accuracy >= champion's {champ['holdout_accuracy']:.4f} - "
                f"{cfg.max_accuracy_drop}",
            )
        )
    if champ is not None:
        rules += [
            (
                "vs_champion_accuracy",
                cand["accuracy"],
                champ["accuracy"] - cfg.max_accuracy_drop,
                True,
                f"accuracy >= champion's {champ['accuracy']:.4f} - {cfg.max_accuracy_drop}",
            ),
            (
                "vs_champion_robust_accuracy",
                cand["robust_accuracy"],
                champ["robust_accuracy"] - cfg.max_robust_drop,
                True,
                f"robust accuracy >= champion's {champ['robust_accuracy']:.4f} - "
                f"{cfg.max_robust_drop}",
            ),
        ]
    out = [
        {
            "rule": r,
            "value": v,
            "threshold": t,
            "passed": bool(v >= t if at_least else v <= t),
            "what": w,
        }
        for r, v, t, at_least, w in rules
    ]
    # The relative rules on test are waived only for a candidate that does better than the
    # failing champion where it fails: on the production holdout.
    fixes = (
        ctx.champion_failing is not None
        and champ is not None
        and cand.get("holdout_accuracy", 0.0) > champ["holdout_accuracy"] + cfg.max_accuracy_drop
    )
    champion_meets_floor = champ is not None and champ["robust_accuracy"] >= cfg.min_robust_accuracy
    over_budget = cfg.robust_floor == "budget" and ctx.budget_limited
    for r in out:
        if r["rule"] == "min_robust_accuracy" and not r["passed"] and over_budget:
            if champion_meets_floor:
                r["what"] += (
                    f" (not waived: the champion meets it, robust {champ['robust_accuracy']:.4f};"
                    " gate.robust_floor: budget waives it only where no model has)"
                )
                continue
            r.update(passed=True, waived=True)
            r["what"] += " (waived: robustness at harden.eps costs more than the budget)"
        if r["rule"] in RELATIVE_ON_TEST and fixes and not r["passed"]:
            r.update(passed=True, waived=True)
            r["what"] += f" (waived: the champion fails in production: {ctx.champion_failing})"
    return out


HINTS = {
    "min_accuracy": "the model is below gate.min_accuracy: more data or train.epochs / "
    "tune.n_trials, or a floor that fits your data",
    "vs_baseline": "the network trails a scikit-learn baseline: raise train.epochs, try "
    "tune.n_trials: 30, or raise gate.max_baseline_gap",
    "clean_budget": "hardening cost more clean accuracy than harden.max_clean_drop",
    "min_robust_accuracy": "robust accuracy is below gate.min_robust_accuracy: raise "
    "harden.epochs, lower harden.eps, or lower the floor",
    "max_ece": "probabilities are miscalibrated: see metrics/robustness.json calibration",
    "max_p99_latency_ms": "too slow: set gate.variant: int8, a smaller train.hidden, or "
    "raise gate.max_p99_latency_ms",
}


def hints(rules: list[dict[str, Any]], eps: float, max_clean_drop: float) -> list[str]:
    """What to change, for each failed or waived rule."""
    out = []
    for r in rules:
        if r.get("waived") and r["rule"] in RELATIVE_ON_TEST:
            out.append(f"{r['rule']}: {r['value']:.4f} vs {r['threshold']:.4f} waived; {r['what']}")
        elif r.get("waived"):
            out.append(
                f"robust accuracy {r['value']:.4f} is below gate.min_robust_accuracy = "
                f"{r['threshold']:g}, waived because robustness at harden.eps = {eps:g} costs "
                f"more clean accuracy than harden.max_clean_drop = {max_clean_drop:g} allows: "
                "raise harden.max_clean_drop to trade accuracy for robustness, lower harden.eps, "
                "or set gate.robust_floor: strict to refuse such a model"
            )
        elif not r["passed"] and r["rule"] in HINTS:
            out.append(f"{r['rule']}: {HINTS[r['rule']]}")
    return out


# ---- a regressor's gate ----

REGRESSION_HINTS = {
    "min_r2": "the model is below gate.min_accuracy (read as R² for a regressor): more data or "
    "train.epochs / tune.n_trials, or a floor that fits your data",
    "vs_baseline": "the network trails a scikit-learn regressor: raise train.epochs, try "
    "train.regression_loss: mse, or raise gate.max_baseline_gap (in R²)",
    "clean_budget": "hardening cost more R² than harden.max_clean_drop",
    "coverage": "the interval's test coverage is off its nominal level: more validation rows "
    "(preprocess.val_size) calibrate it better; or widen gate.max_coverage_gap",
    "max_robust_mae": "robust MAE is above gate.max_robust_mae target standard deviations: raise "
    "harden.epochs, lower harden.eps, or raise the ceiling",
    "max_p99_latency_ms": HINTS["max_p99_latency_ms"],
}


def coverage_ok(coverage: float, rows: int, nominal: float, cfg: GateConfig) -> tuple[bool, float]:
    """Whether an interval's coverage on ``rows`` rows is within ``gate.max_coverage_gap`` of
    ``nominal``, or a two-sided binomial test at ``gate.production_alpha`` cannot tell it from
    nominal (a small test split); returns (ok, p)."""
    from scipy import stats

    if rows == 0:
        return True, 1.0
    p = float(stats.binomtest(round(coverage * rows), rows, nominal).pvalue)
    return bool(abs(coverage - nominal) <= cfg.max_coverage_gap or p >= cfg.production_alpha), p


def coverage_failing(coverage: float, rows: int, nominal: float, cfg: GateConfig) -> bool:
    """A champion's interval fails in production: its coverage on the production holdout is
    significantly below nominal (one-sided binomial test at ``gate.production_alpha``): the
    concept moved under it."""
    from scipy import stats

    if rows == 0:
        return False
    p = float(stats.binom.cdf(round(coverage * rows), rows, nominal))
    return bool(p < cfg.production_alpha and coverage < nominal - cfg.max_coverage_gap)


def gate_regression(
    cfg: GateConfig,
    cand: dict[str, Any],
    champ: dict[str, Any] | None,
    parity_passed: bool,
    nominal: float,
    target_std: float,
    ctx: GateContext | None = None,
    calibrated_on: str = "validation",
) -> list[dict[str, Any]]:
    """A regressor's rules, the classifier's in its terms: R² for accuracy (on the same rows an
    R² margin is an RMSE margin), robust MAE (in test target standard deviations, ``target_std``)
    for robust accuracy, the interval's coverage for calibration. The waivers are the
    classifier's: the robust ceiling under ``gate.robust_floor: budget`` when harden reports
    robustness costs more R² than its budget (unless the champion meets it), and the rules
    relative to the champion on test when it fails in production (its holdout coverage
    significantly below nominal) and the candidate does better there. An interval calibrated on
    production rows (``calibrated_on``, a retrain on enough of them) is checked on the
    production holdout, the rows like those it will serve, instead of the test split."""
    ctx = ctx or GateContext()
    ceiling = cfg.max_robust_mae * target_std
    where, covered, rows = "test", cand["coverage"], cand["rows"]
    if calibrated_on == "production" and cand.get("holdout_rows"):
        where, covered, rows = "production holdout", cand["holdout_coverage"], cand["holdout_rows"]
    ok, p = coverage_ok(covered, rows, nominal, cfg)
    rules = [
        (
            "parity",
            float(parity_passed),
            1.0,
            True,
            "onnxruntime matches PyTorch on the test split",
        ),
        ("min_r2", cand["r2"], cfg.min_accuracy, True, "test R² >= floor (gate.min_accuracy)"),
        (
            "max_robust_mae",
            cand["robust_mae"],
            ceiling,
            False,
            f"robust MAE <= {cfg.max_robust_mae:g} x the test target's standard deviation "
            f"{target_std:.4g}",
        ),
        (
            "coverage",
            float(ok),
            1.0,
            True,
            f"{where} coverage {covered:.3f} of the {nominal:.0%} interval within "
            f"{cfg.max_coverage_gap} of nominal, or not significantly off it (binomial p {p:.2g} "
            f">= {cfg.production_alpha})",
        ),
        (
            "max_p99_latency_ms",
            cand["p99_latency_ms"],
            cfg.max_p99_latency_ms,
            False,
            "p99 single-row compute time (one thread's CPU time) <= budget",
        ),
    ]
    if ctx.baseline is not None and cfg.max_baseline_gap is not None:
        name, best = ctx.baseline
        rules.append(
            (
                "vs_baseline",
                cand["r2"],
                best - cfg.max_baseline_gap,
                True,
                f"R² >= the {name} baseline's {best:.4f} - {cfg.max_baseline_gap} (RMSE "
                f"{cand['rmse']:.4g})",
            )
        )
    if ctx.trained_clean is not None:
        rules.append(
            (
                "clean_budget",
                cand["r2"],
                ctx.trained_clean - ctx.max_clean_drop,
                True,
                f"R² >= the model before hardening's {ctx.trained_clean:.4f} - "
                f"{ctx.max_clean_drop:g} (harden.max_clean_drop)",
            )
        )
    if champ is not None and "holdout_r2" in cand and "holdout_r2" in champ:
        rules.append(
            (
                "vs_champion_holdout_r2",
                cand["holdout_r2"],
                champ["holdout_r2"] - cfg.max_accuracy_drop,
                True,
                f"production holdout R² >= champion's {champ['holdout_r2']:.4f} - "
                f"{cfg.max_accuracy_drop}",
            )
        )
    if champ is not None:
        rules += [
            (
                "vs_champion_r2",
                cand["r2"],
                champ["r2"] - cfg.max_accuracy_drop,
                True,
                f"R² >= champion's {champ['r2']:.4f} - {cfg.max_accuracy_drop} (RMSE "
                f"{cand['rmse']:.4g} vs {champ['rmse']:.4g})",
            ),
            (
                "vs_champion_robust_mae",
                cand["robust_mae"],
                champ["robust_mae"] + cfg.max_robust_drop * target_std,
                False,
                f"robust MAE <= champion's {champ['robust_mae']:.4g} + {cfg.max_robust_drop} x "
                f"the target's standard deviation",
            ),
        ]
    out = [
        {
            "rule": r,
            "value": v,
            "threshold": t,
            "passed": bool(v >= t if at_least else v <= t),
            "what": w,
        }
        for r, v, t, at_least, w in rules
    ]
    fixes = (
        ctx.champion_failing is not None
        and champ is not None
        and cand.get("holdout_r2", -1e9) > champ.get("holdout_r2", 0.0) + cfg.max_accuracy_drop
    )
    champion_meets = champ is not None and champ["robust_mae"] <= ceiling
    over_budget = cfg.robust_floor == "budget" and ctx.budget_limited
    for r in out:
        if r["rule"] == "max_robust_mae" and not r["passed"] and over_budget:
            if champion_meets:
                r["what"] += (
                    f" (not waived: the champion meets it, robust MAE {champ['robust_mae']:.4g})"
                )
                continue
            r.update(passed=True, waived=True)
            r["what"] += " (waived: robustness at harden.eps costs more than the budget)"
        if r["rule"] in ("vs_champion_r2", "vs_champion_robust_mae") and fixes and not r["passed"]:
            r.update(passed=True, waived=True)
            r["what"] += f" (waived: the champion fails in production: {ctx.champion_failing})"
    return out


def hints_regression(rules: list[dict[str, Any]], eps: float, max_clean_drop: float) -> list[str]:
    """What to change, for each failed or waived rule of a regressor."""
    out = []
    for r in rules:
        if r.get("waived") and r["rule"] == "max_robust_mae":
            out.append(
                f"robust MAE {r['value']:.4g} is above the gate.max_robust_mae ceiling "
                f"{r['threshold']:.4g}, waived because robustness at harden.eps = {eps:g} costs "
                f"more R² than harden.max_clean_drop = {max_clean_drop:g} allows: raise "
                "harden.max_clean_drop to trade accuracy for robustness, lower harden.eps, or "
                "set gate.robust_floor: strict to refuse such a model"
            )
        elif r.get("waived"):
            out.append(f"{r['rule']}: {r['value']:.4f} vs {r['threshold']:.4f} waived; {r['what']}")
        elif not r["passed"] and r["rule"] in REGRESSION_HINTS:
            out.append(f"{r['rule']}: {REGRESSION_HINTS[r['rule']]}")
    return out
