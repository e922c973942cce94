"""Evaluate stage: the candidate against the champion on the frozen test split, then the gate.

    python -m pipeline.evaluate --params params.yaml --schema data/schema.json \
        --test data/prepared/test.parquet --holdout data/prepared/holdout.parquet \
        --train data/prepared/train.parquet --model models/hardened.pt --onnx models/model.onnx \
        --onnx-int8 models/model.int8.onnx --export-metrics metrics/export.json \
        --robustness metrics/robustness.json --train-metrics metrics/train.json \
        --registry registry --tracking-db mlflow.db --metrics metrics/evaluate.json

Candidate and champion are measured the same way on the same rows: accuracy, macro-F1, log loss,
calibration (ECE) and p99 single-row latency in onnxruntime, and robust accuracy under PGD at
``harden.eps`` (on each model's PyTorch twin, which export proved equal to its graph). The
candidate is registered in MLflow whatever the outcome; it is promoted (``champion`` alias, local
champion directory swapped atomically) only if every rule in ``params.yaml: gate`` holds. With no
champion yet, the absolute floors alone apply. Two floors are relative to the data: the
candidate may trail the best scikit-learn baseline (metrics/train.json) by at most
``gate.max_baseline_gap``, and the model before hardening by at most ``harden.max_clean_drop``
(the budget harden itself keeps, so the default gate never rejects what hardening produced on
clean accuracy). The decision, every reason and a hint naming the parameter to change for each
failed (or waived) rule go to the metrics and the model card.

When labelled production rows exist, both models are also measured on the production holdout
(``holdout.parquet``), and the candidate may trail the champion there by at most
``gate.max_accuracy_drop`` too. The champion directory also gets ``reference.parquet``, the train
split's features, which the monitor compares production windows with.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import registry, stage
from pipeline.attacks import Box, square_attack, worst_case
from pipeline.config import GateConfig, HardenConfig
from pipeline.errors import MlcycleError
from pipeline.io import (
    atomic_outputs,
    dump_json,
    load_checkpoint,
    load_json,
    read_parquet,
    require_file,
)
from pipeline.metrics import classification_metrics
from pipeline.model import build
from pipeline.runtime import latency_ms, predict, session
from pipeline.schema import LABEL, Schema
from pipeline.tracking import Tracker


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
        and q["accuracy_delta"] >= -cfg.max_int8_accuracy_drop
        and latency_ratio < 1.0
    )
    return "int8" if ok else "fp32"


def int8_latency_ratio(fp32: Path, int8: Path, X: np.ndarray) -> float:
    return latency_ms(session(int8), X)["p50_ms"] / latency_ms(session(fp32), X)["p50_ms"]


def measure(
    onnx_path: Path,
    twin: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    schema: Schema,
    eps: float,
    cfg: GateConfig,
) -> dict[str, Any]:
    """Quality, robustness and latency of one model on the test rows."""
    sess = session(onnx_path)
    proba, _ = predict(sess, X)
    quality = classification_metrics(y, proba, schema.n_classes)
    box = Box.from_schema(schema, eps)
    robust = worst_case(
        twin,
        torch.as_tensor(X),
        torch.as_tensor(y),
        box,
        n_iter=cfg.apgd_iter,
        restarts=cfg.robust_restarts,
        pgd_steps=cfg.robust_steps,
        seed=cfg.seed,
    )
    out = {
        **{k: v for k, v in quality.items() if k != "per_class_recall"},
        "robust_accuracy": robust["worst_case"],
        "p99_latency_ms": latency_ms(sess, X)["p99_ms"],
    }
    if cfg.square_queries:
        out.update(square_check(sess, X, y, box, robust["robust_rows"], cfg))
    return out


def robust_method(cfg: GateConfig) -> str:
    return (
        f"per-row worst case of PGD-{cfg.robust_steps}, APGD-CE and APGD-DLR ({cfg.apgd_iter} "
        f"iterations), {cfg.robust_restarts} restart(s), seed {cfg.seed}, on the PyTorch twin; "
        f"Square ({cfg.square_queries} queries) on the shipped ONNX graph"
    )


def square_check(
    sess: Any, X: np.ndarray, y: np.ndarray, box: Box, robust_rows: np.ndarray, cfg: GateConfig
) -> dict[str, Any]:
    """The black-box Square-style attack through onnxruntime on the rows the gradient attacks
    could not break. Any it breaks means the gradients mislead those attacks (gradient masking):
    they count against the robust figure, and the decision says so."""
    rows = np.flatnonzero(robust_rows)
    if len(rows) == 0 or not bool((box.eps > 0).any()):
        return {
            "square": {"queries": cfg.square_queries, "rows_attacked": 0, "fooled": 0},
            "gradient_masking_suspected": False,
        }

    def scores(features: np.ndarray) -> np.ndarray:
        return predict(sess, features)[0]

    fooled = square_attack(
        scores,
        X[rows].astype(np.float64),
        y[rows],
        box.eps.numpy().astype(np.float64),
        box.low.numpy().astype(np.float64),
        box.high.numpy().astype(np.float64),
        cfg.square_queries,
        cfg.seed,
    )
    return {
        "square": {
            "queries": cfg.square_queries,
            "rows_attacked": len(rows),
            "fooled": int(fooled.sum()),
        },
        "gradient_masking_suspected": bool(fooled.any()),
        "robust_accuracy": float((len(rows) - fooled.sum()) / len(y)),
    }


def holdout_accuracy(onnx_path: Path, X: np.ndarray, y: np.ndarray) -> float:
    """Accuracy on the production holdout (labelled production rows kept out of training)."""
    proba, _ = predict(session(onnx_path), X)
    return float((proba.argmax(axis=1) == y).mean())


@dataclasses.dataclass(frozen=True)
class Context:
    """What the earlier stages say about the candidate, for the data-relative rules."""

    baseline: tuple[str, float] | None = None  # the best scikit-learn baseline's test accuracy
    trained_clean: float | None = None  # the model before hardening, test accuracy
    max_clean_drop: float = 1.0  # harden.max_clean_drop (plus the int8 allowance if int8 ships)
    budget_limited: bool = False  # harden: robustness at eps costs more than the budget allows


def gate(
    cfg: GateConfig,
    cand: dict[str, Any],
    champ: dict[str, Any] | None,
    parity_passed: bool,
    ctx: Context | None = None,
) -> list[dict[str, Any]]:
    """Every rule with its value, threshold and verdict.

    ``min_robust_accuracy`` is waived (passed, marked ``waived``) when ``gate.robust_floor`` is
    ``budget`` and harden reports that robustness at eps costs more clean accuracy than its
    budget allows: the model ships, and the hints say which parameter trades accuracy for
    robustness. ``strict`` always enforces the floor.
    """
    ctx = ctx or Context()
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
            "p99 single-row latency <= budget",
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
    for r in out:
        over_budget = cfg.robust_floor == "budget" and ctx.budget_limited
        if r["rule"] == "min_robust_accuracy" and not r["passed"] and over_budget:
            r.update(passed=True, waived=True)
            r["what"] += " (waived: robustness at harden.eps costs more than the budget)"
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
        if r.get("waived"):
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
    if "holdout_accuracy" in c:
        keys.append("holdout_accuracy")
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
        f"- parity: max |probability difference| "
        f"{export['parity']['max_abs_probability_diff']:.2e}, labels equal "
        f"{export['parity']['labels_equal']}",
        "",
        f"## Gate: {'PROMOTED' if decision['promoted'] else 'REJECTED'}",
    ]
    lines += [
        f"- {'waived' if r.get('waived') else 'pass' if r['passed'] else 'FAIL'} {r['rule']}: "
        f"{r['value']:.4f} vs {r['threshold']:.4f} ({r['what']})"
        for r in decision["rules"]
    ]
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


FLAGS = (
    "--schema",
    "--test",
    "--holdout",
    "--train",
    "--model",
    "--onnx",
    "--onnx-int8",
    "--export-metrics",
    "--robustness",
    "--train-metrics",
    "--registry",
    "--tracking-db",
    "--metrics",
)


def body(ctx: stage.Context) -> None:
    args = ctx.args
    cfg = ctx.section("gate", GateConfig)
    eps = ctx.section("harden", HardenConfig).eps
    export = load_json(args.export_metrics)
    schema = Schema.from_dict(load_json(args.schema))
    test = read_parquet(args.test)
    X, y = test[schema.names].to_numpy(np.float32), test[LABEL].to_numpy()
    ratio = None
    if cfg.variant == "auto" and "int8" in export:
        ratio = int8_latency_ratio(require_file(args.onnx), require_file(args.onnx_int8), X)
    variant = choose_variant(cfg, export, ratio)
    onnx_path = require_file(args.onnx_int8 if variant == "int8" else args.onnx)
    ckpt = load_checkpoint(args.model)
    train_metrics, robustness = load_json(args.train_metrics), load_json(args.robustness)
    candidate = measure(onnx_path, build(ckpt), X, y, schema, eps, cfg)
    holdout = read_parquet(args.holdout)
    Xh, yh = holdout[schema.names].to_numpy(np.float32), holdout[LABEL].to_numpy()
    if len(yh):
        candidate["holdout_accuracy"] = holdout_accuracy(onnx_path, Xh, yh)
        candidate["holdout_rows"] = len(yh)

    registry_dir = Path(args.registry)
    tracker = Tracker(args.tracking_db)
    champ_version = tracker.champion_version(cfg.model_name)
    champ_dir = registry.champion_dir(registry_dir)
    champion = None
    if champ_version is not None and champ_dir is not None:
        twin = build(load_checkpoint(champ_dir / "model.pt"))
        champion = measure(champ_dir / "model.onnx", twin, X, y, schema, eps, cfg)
        if len(yh):
            champion["holdout_accuracy"] = holdout_accuracy(champ_dir / "model.onnx", Xh, yh)

    harden_cfg = ctx.section("harden", HardenConfig)
    baselines = train_metrics.get("baselines", {})
    best = max(baselines.items(), key=lambda kv: kv[1]["test_accuracy"], default=None)
    budget = robustness.get("budget", {})
    context = Context(
        baseline=(best[0], best[1]["test_accuracy"]) if best else None,
        trained_clean=robustness["trained"]["clean_accuracy"],
        max_clean_drop=harden_cfg.max_clean_drop
        + (cfg.max_int8_accuracy_drop if variant == "int8" else 0.0),
        budget_limited=bool(budget.get("limited", False)),
    )
    rules = gate(cfg, candidate, champion, bool(export["parity"]["passed"]), context)
    passed = all(r["passed"] for r in rules)
    advice = hints(rules, eps, harden_cfg.max_clean_drop)
    decision: dict[str, Any] = {
        "model_name": cfg.model_name,
        "variant": variant,
        "int8_latency_ratio": ratio,
        "eps": eps,
        "robust_method": robust_method(cfg),
        "passed": passed,
        "promoted": passed,
        "reasons": [
            f"{r['rule']}: {r['value']:.4f} vs {r['threshold']:.4f}"
            for r in rules
            if not r["passed"]
        ],
        "rules": rules,
        "hints": advice,
        "candidate": candidate,
        "champion": champion,
        "champion_version_before": champ_version,
    }
    card = model_card(schema, decision, train_metrics, robustness, export, ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        card_path, decision_path = Path(tmp) / "model_card.md", Path(tmp) / "evaluate.json"
        reference_path = Path(tmp) / "reference.parquet"
        card_path.write_text(card)
        reference = read_parquet(args.train)[schema.names].astype(np.float32)
        reference.to_parquet(reference_path, index=False)
        dump_json(decision, decision_path)  # the figures GET /model shows
        files = {
            "model.onnx": onnx_path,
            "model.pt": Path(args.model),
            "schema.json": Path(args.schema),
            "export.json": Path(args.export_metrics),
            "evaluate.json": decision_path,
            "model_card.md": card_path,  # registered with the version, shipped if promoted
            "reference.parquet": reference_path,  # the monitor's reference for this version
        }
        version = register(tracker, decision, files, card, cfg)
        decision["version"] = version
        if passed:
            registry.promote(tracker, cfg.model_name, version, registry_dir, files)
    with atomic_outputs(args.metrics) as (tmp_metrics,):
        dump_json(decision, tmp_metrics)
    verdict = "promoted to champion" if passed else "rejected: " + "; ".join(decision["reasons"])
    for line in advice:
        print(f"evaluate: hint: {line}")
    print(
        f"evaluate: {cfg.model_name} version {version} ({variant}) {verdict} "
        f"(accuracy {candidate['accuracy']:.4f}, robust {candidate['robust_accuracy']:.4f}, "
        f"p99 {candidate['p99_latency_ms']:.2f} ms)"
    )


def register(
    tracker: Tracker,
    decision: dict[str, Any],
    files: dict[str, Path],
    card: str,
    cfg: GateConfig,
) -> str:
    """Log the candidate's files to an MLflow run and create a registry version; returns it."""
    with tracker.run("evaluate") as run:
        for src in files.values():
            run.log_artifact(src, folder="model")
        run.log_metrics({f"candidate_{k}": v for k, v in decision["candidate"].items()})
        run.log_dict(decision, "evaluate.json")
        tags = {
            "gate": "passed" if decision["passed"] else "failed",
            "variant": decision["variant"],
            "failed_rules": ",".join(r["rule"] for r in decision["rules"] if not r["passed"]),
        }
        return tracker.register(cfg.model_name, run, "model", tags, card)


def main(argv: list[str] | None = None) -> int:
    return stage.run("evaluate", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
