"""The model card: a Markdown page of data, model, metrics, robustness, gate and limits.

Written by the evaluate stage (:mod:`pipeline.evaluate`) beside the candidate's files; the
registry keeps it with the version and the service shows it at ``GET /model``. No I/O here.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.contracts.schema import Schema


def model_card(
    schema: Schema,
    decision: dict[str, Any],
    train: dict[str, Any],
    robustness: dict[str, Any],
    export: dict[str, Any],
    ckpt: dict[str, Any],
) -> str:
    """A Markdown model card: data, model, metrics, robustness, gate, limits."""
    c = decision["candidate"]
    cal = robustness.get("calibration", {})
    by_eps = robustness["hardened"]["by_eps"]
    n_cat = sum(f.kind == "categorical" for f in schema.features)
    lines = [
        f"# Model card: {decision['model_name']} ({decision['variant']})",
        "",
        "## Data",
        f"- {len(schema.features)} features ({n_cat} categorical), target `{schema.target}`, "
        f"classes {list(schema.classes)}",
        "- evaluated on the frozen test split cut once from the source",
        "",
        "## Model",
        f"- {ckpt['model_config']['arch'].upper()} behind the fitted feature transform, one ONNX "
        "graph from raw features to probabilities",
        f"- hardened with `{robustness['method']}` at eps = {robustness['eps']} of each feature's "
        "range",
        "",
        "## Test metrics",
        "| metric | candidate | champion |",
        "| --- | --- | --- |",
    ]
    champ = decision.get("champion") or {}
    keys = ["accuracy", "macro_f1", "log_loss", "ece", "robust_accuracy", "p99_latency_ms"]
    if "holdout_accuracy" in c:  # labelled production rows kept out of training
        keys += ["holdout_accuracy", "holdout_robust_accuracy"]
    for key in keys:
        lines.append(
            f"| {key} | {c[key]:.4f} | {champ[key]:.4f} |"
            if key in champ
            else f"| {key} | {c[key]:.4f} | - |"
        )
    lines += [
        "",
        f"Baselines on the same features: {json.dumps(train.get('baselines', {}))}",
        "",
        "## Robustness (test split)",
        f"Harden's evaluation: {robustness.get('evaluation', 'PGD')}. Gate's (the robust_accuracy "
        f"above, same for candidate and champion): {decision.get('robust_method', 'PGD')}.",
        "",
        "| eps | trained | hardened | hardened, PGD only |",
        "| --- | --- | --- | --- |",
    ]
    pgd_by_eps = robustness["hardened"].get("pgd_by_eps", by_eps)
    for eps, acc in by_eps.items():
        lines.append(
            f"| {eps} | {robustness['trained']['by_eps'][eps]:.4f} | {acc:.4f} | "
            f"{pgd_by_eps.get(eps, float('nan')):.4f} |"
        )
    square = c.get("square")
    masking = " - gradient masking suspected" if c.get("gradient_masking_suspected") else ""
    if square:
        lines += [
            "",
            f"Black-box check (Square-style search, {square.get('queries', 0)} queries, on the "
            f"shipped {decision['variant']} graph): {square.get('fooled', 0)} of "
            f"{square.get('rows_attacked', 0)} rows the gradient attacks could not break were "
            f"broken{masking}.",
        ]
    lines += [
        "",
        "## Calibration",
        f"- {cal.get('method', 'none')}: temperature {cal.get('temperature', 1.0):.3f}, test "
        f"ECE {cal.get('test_ece_before', float('nan')):.4f} -> "
        f"{cal.get('test_ece_after', float('nan')):.4f} (plots/reliability.png)",
        "",
        "## Export",
        f"- parity with PyTorch on {export['parity']['rows']} test rows: every probability "
        f"within {export['parity']['atol']:g}: {export['parity']['passed']}, labels equal "
        f"{export['parity']['labels_equal']}",
        "",
        f"## Gate: {'PROMOTED' if decision['promoted'] else 'REJECTED'}",
    ]
    lines += [
        f"- {'waived' if r.get('waived') else 'pass' if r['passed'] else 'FAIL'} {r['rule']}: "
        f"{r['value']:.4f} vs {r['threshold']:.4f} ({r['what']})"
        for r in decision["rules"]
    ]
    production = decision.get("production") or {}
    if production.get("champion_failing"):
        lines.append(f"- the champion fails in production: {production['why']}")
    lines += [f"- hint: {h}" for h in decision.get("hints", [])]
    lines += [
        "",
        "## Limits",
        "- Robustness covers L-inf perturbations within eps of each feature's observed "
        "range only; other threat models (patches, rotations, poisoning) are untested.",
        "- Gradient attacks run on the PyTorch twin of the graph (export proved them equal); "
        "the shipped graph itself, int8 included, is attacked only by the black-box search.",
        "- Inputs outside the training data's range or categories are out of distribution.",
    ]
    return "\n".join(lines) + "\n"


def model_card_regression(
    schema: Schema,
    decision: dict[str, Any],
    train: dict[str, Any],
    robustness: dict[str, Any],
    export: dict[str, Any],
    ckpt: dict[str, Any],
) -> str:
    """A regressor's model card: the same sections in its terms."""
    c = decision["candidate"]
    champ = decision.get("champion") or {}
    n_cat = sum(f.kind == "categorical" for f in schema.features)
    interval = robustness.get("interval", {})
    scaling = ckpt.get("target_scaling", {})
    lines = [
        f"# Model card: {decision['model_name']} ({decision['variant']}), regression",
        "",
        "## Data",
        f"- {len(schema.features)} features ({n_cat} categorical), target `{schema.target}` in "
        f"[{schema.target_min:g}, {schema.target_max:g}]",
        "- evaluated on the frozen test split cut once from the source (stratified on target "
        "quantile bins)",
        "",
        "## Model",
        f"- {ckpt['model_config']['arch'].upper()} behind the fitted feature transform, one ONNX "
        "graph from raw features to prediction, lower and upper"
        + (" (target learnt as log1p)" if scaling.get("log") else ""),
        f"- hardened with `{robustness['method']}` at eps = {robustness['eps']} of each feature's "
        "range",
        "",
        "## Test metrics",
        "| metric | candidate | champion |",
        "| --- | --- | --- |",
    ]
    keys = ["r2", "rmse", "mae", "coverage", "mean_width", "robust_mae", "p99_latency_ms"]
    keys += [k for k in ("holdout_r2", "holdout_mae", "holdout_coverage") if k in c]
    for key in keys:
        theirs = f"{champ[key]:.4f}" if key in champ else "-"
        lines.append(f"| {key} | {c[key]:.4f} | {theirs} |")
    lines += [
        "",
        f"Baselines on the same features: {json.dumps(train.get('baselines', {}))}",
        "",
        "## Interval",
        f"- {interval.get('method', 'split conformal')}, nominal coverage "
        f"{decision['interval_coverage']:.0%}, calibrated on {interval.get('calibration_rows')} "
        "rows; test coverage above",
        "",
        "## Robustness (test split, robust MAE)",
        f"Harden's evaluation: {robustness.get('evaluation')}. Gate's: "
        f"{decision.get('robust_method')}.",
        "",
        "| eps | trained | hardened |",
        "| --- | --- | --- |",
    ]
    for eps, mae in robustness["hardened"]["by_eps"].items():
        lines.append(f"| {eps} | {robustness['trained']['by_eps'][eps]:.4g} | {mae:.4g} |")
    lines += [
        "",
        "## Export",
        f"- parity with PyTorch on {export['parity']['rows']} test rows "
        f"({export['parity']['measure']} within {export['parity']['atol']:g}): "
        f"{export['parity']['passed']}",
        "",
        f"## Gate: {'PROMOTED' if decision['promoted'] else 'REJECTED'}",
    ]
    lines += [
        f"- {'waived' if r.get('waived') else 'pass' if r['passed'] else 'FAIL'} {r['rule']}: "
        f"{r['value']:.4f} vs {r['threshold']:.4f} ({r['what']})"
        for r in decision["rules"]
    ]
    production = decision.get("production") or {}
    if production.get("champion_failing"):
        lines.append(f"- the champion fails in production: {production['why']}")
    lines += [f"- hint: {h}" for h in decision.get("hints", [])]
    lines += [
        "",
        "## Limits",
        "- The interval's coverage is marginal (on average over rows like the validation "
        "split's), not per row; a shift in the inputs or the target can break it, which the "
        "monitor's coverage per window shows.",
        "- Robustness covers L-inf perturbations within eps of each feature's observed range only.",
        "- Inputs outside the training data's range or categories are out of distribution.",
    ]
    return "\n".join(lines) + "\n"
