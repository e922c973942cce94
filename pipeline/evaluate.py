"""Evaluate stage: the candidate against the champion on the frozen test split, then the gate.

    python -m pipeline.evaluate --params params.yaml --schema data/schema.json \
        --test data/prepared/test.parquet --holdout data/prepared/holdout.parquet \
        --val data/prepared/val.parquet --train data/prepared/train.parquet \
        --model models/hardened.pt --onnx models/model.onnx \
        --onnx-int8 models/model.int8.onnx --export-metrics metrics/export.json \
        --robustness metrics/robustness.json --train-metrics metrics/train.json \
        --registry registry --tracking-db mlflow.db --metrics metrics/evaluate.json

Candidate and champion are measured the same way on the same rows: accuracy, macro-F1, log loss,
calibration (ECE) and p99 single-row compute time in onnxruntime (one thread's CPU time, so the
decision does not depend on machine load), and robust accuracy under PGD at
``harden.eps`` (on each model's PyTorch twin, which export proved equal to its graph). The
champion's robust figures are read from its promotion record when they are a function of the
same inputs (:func:`gate_key`: the frozen test split makes that the rule), not re-attacked. The
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
split's features (after a retrain on enough feedback, its production rows alone), which the
monitor compares production windows with, and ``estimate.json``, the
label-free accuracy estimator (ATC, :mod:`pipeline.contracts.estimate`) fit on the validation
split through the graph that ships, which the monitor reads before labels arrive.

A regressor (schema.json's task regression) is measured by R², RMSE, MAE, the interval's
coverage and width, robust MAE (the per-row worst absolute error of PGD on the error and PGD
pushing the prediction up and down, at ``harden.eps``) and latency, and gated by
:func:`~pipeline.learning.gate.gate_regression` (the same keys, read in R²; no label-free
estimate: the monitor waits for labels).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline import registry
from pipeline.contracts import champion as champion_files
from pipeline.contracts.estimate import AccuracyEstimator
from pipeline.contracts.io import atomic_outputs, dump_json, load_json, read_parquet, require_file
from pipeline.contracts.params import GateConfig, HardenConfig
from pipeline.contracts.runtime import compute_ms, predict, predict_interval, session
from pipeline.contracts.schema import FEEDBACK, LABEL, Schema
from pipeline.learning import stage
from pipeline.learning.attacks import Box, square_attack, worst_case
from pipeline.learning.card import model_card
from pipeline.learning.checkpoint import load_checkpoint
from pipeline.learning.gate import (
    GateContext,
    champion_failing,
    choose_variant,
    coverage_failing,
    gate,
    gate_regression,
    hints,
    hints_regression,
    robust_method,
)
from pipeline.learning.metrics import classification_metrics
from pipeline.learning.model import build
from pipeline.learning.tracking import Tracker


def in_production(champion: dict[str, Any] | None, cfg: GateConfig) -> dict[str, Any]:
    """Whether the champion fails on the production holdout (see the gate's rules), and why."""
    if champion is None or not champion.get("holdout_rows"):
        return {"champion_failing": False, "why": "no champion or no labelled production rows"}
    rows, acc = champion["holdout_rows"], champion["holdout_accuracy"]
    failing, p = champion_failing(champion["accuracy"], round(acc * rows), rows, cfg)
    why = (
        f"holdout accuracy {acc:.4f} on {rows} rows vs test accuracy "
        f"{champion['accuracy']:.4f} - {cfg.max_accuracy_drop} (binomial p {p:.2g}, "
        f"gate.production_alpha {cfg.production_alpha})"
    )
    return {"champion_failing": failing, "p": p, "why": why}


def int8_latency_ratio(fp32: Path, int8: Path, X: np.ndarray) -> float:
    return compute_ms(session(int8), X)["p50_ms"] / compute_ms(session(fp32), X)["p50_ms"]


# The figures of the gate's attacks on the test split, which a version's promotion record keeps.
ROBUST_KEYS = ("robust_accuracy", "square", "gradient_masking_suspected")


def gate_key(
    onnx_path: Path, twin_path: Path, X: np.ndarray, y: np.ndarray, eps: float, cfg: GateConfig
) -> str:
    """What the gate's robust figures on the test split are a function of: the graph and its
    twin (their bytes), the rows, ``eps``, the attacks' settings and the torch version that
    runs them (kernels differ between versions)."""
    digest = hashlib.sha256()
    for part in (onnx_path.read_bytes(), twin_path.read_bytes(), X.tobytes(), y.tobytes()):
        digest.update(hashlib.sha256(part).digest())
    attacks = {
        "torch": torch.__version__,
        "eps": eps,
        **{k: getattr(cfg, k) for k in ("robust_steps", "apgd_iter", "robust_restarts")},
        **{k: getattr(cfg, k) for k in ("seed", "square_queries")},
    }
    digest.update(json.dumps(attacks, sort_keys=True).encode())
    return digest.hexdigest()


def measure(
    onnx_path: Path,
    twin: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    schema: Schema,
    eps: float,
    cfg: GateConfig,
    key: str,
    known: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Quality, robustness and latency of one model on the test rows.

    ``key``: :func:`gate_key`. ``known``: the figures this model's promotion record holds (the
    champion's); when its key matches (the same files, rows and attacks: the frozen test split
    makes that the rule), the robust figures are taken from it instead of re-attacking, since
    the seeded attacks would give the same again. Quality and latency are measured afresh."""
    sess = session(onnx_path)
    proba, _ = predict(sess, X)
    quality = classification_metrics(y, proba, schema.n_classes)
    base = {
        **{k: v for k, v in quality.items() if k != "per_class_recall"},
        "p99_latency_ms": compute_ms(sess, X)["p99_ms"],
        "gate_key": key,
    }
    if known is not None and known.get("gate_key") == key:
        return {**base, **{k: known[k] for k in ROBUST_KEYS if k in known}, "robust_cached": True}
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
    out = {**base, "robust_accuracy": robust["worst_case"], "robust_cached": False}
    if cfg.square_queries:
        out.update(square_check(sess, X, y, box, robust["robust_rows"], cfg))
    return out


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


def on_holdout(
    onnx_path: Path,
    twin: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    schema: Schema,
    eps: float,
    cfg: GateConfig,
) -> dict[str, Any]:
    """Accuracy and robust accuracy (the gate's worst case) on the production holdout: the
    labelled production rows kept out of training. Only the worst case is read here, so the
    attacks cascade (a row one breaks is not attacked again)."""
    proba, _ = predict(session(onnx_path), X)
    robust = worst_case(
        twin,
        torch.as_tensor(X),
        torch.as_tensor(y),
        Box.from_schema(schema, eps),
        n_iter=cfg.apgd_iter,
        restarts=cfg.robust_restarts,
        pgd_steps=cfg.robust_steps,
        seed=cfg.seed,
        cascade=True,
    )
    return {
        "holdout_accuracy": float((proba.argmax(axis=1) == y).mean()),
        "holdout_robust_accuracy": robust["worst_case"],
        "holdout_rows": len(y),
    }


FLAGS = (
    "--schema",
    "--test",
    "--holdout",
    "--val",
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


# A retrain's train split with at least this many production rows re-baselines the monitor on them.
REBASELINE_ROWS = 200


def drift_reference(train: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """The rows the monitor compares production windows with: the train split, or, once it holds
    at least ``REBASELINE_ROWS`` labelled production rows (a retrain on feedback), those rows
    alone: the model was refit on what production now sends, so the same shift would otherwise
    alarm in every window after a successful retrain (the mix of source and production rows
    differs from either)."""
    production = train[FEEDBACK].notna() if FEEDBACK in train.columns else None
    if production is not None and int(production.sum()) >= REBASELINE_ROWS:
        train = train[production]
    return train[schema.names].astype(np.float32)


def measure_regression(
    onnx_path: Path,
    twin: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    schema: Schema,
    eps: float,
    cfg: GateConfig,
    key: str,
    known: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A regressor's quality, interval, robustness and latency on the rows (``known``: as in
    :func:`measure`, the robust figure of a promotion record with the same key)."""
    from pipeline.learning import regression as reg

    sess = session(onnx_path)
    pred, lower, upper = predict_interval(sess, X)
    base = {
        **reg.regression_metrics(y, pred),
        **reg.interval_metrics(y, lower, upper),
        "rows": len(y),
        "p99_latency_ms": compute_ms(sess, X)["p99_ms"],
        "gate_key": key,
    }
    if known is not None and known.get("gate_key") == key and "robust_mae" in known:
        return {**base, "robust_mae": known["robust_mae"], "robust_cached": True}
    errors = reg.worst_case_error(
        twin,
        torch.as_tensor(X),
        torch.as_tensor(y, dtype=torch.float32),
        Box.from_schema(schema, eps),
        cfg.robust_steps,
        cfg.robust_restarts,
        cfg.seed,
        progress="evaluate: robust MAE",
    )
    return {**base, "robust_mae": float(errors.mean()), "robust_cached": False}


def on_holdout_regression(onnx_path: Path, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """R², MAE and interval coverage on the production holdout."""
    from pipeline.learning import regression as reg

    pred, lower, upper = predict_interval(session(onnx_path), X)
    quality = reg.regression_metrics(y, pred)
    return {
        "holdout_r2": quality["r2"],
        "holdout_mae": quality["mae"],
        "holdout_coverage": reg.interval_metrics(y, lower, upper)["coverage"],
        "holdout_rows": len(y),
    }


def body(ctx: stage.Context) -> None:
    args = ctx.args
    cfg = ctx.section("gate", GateConfig)
    eps = ctx.section("harden", HardenConfig).eps
    export = load_json(args.export_metrics)
    schema = Schema.from_dict(load_json(args.schema))
    if schema.regression:
        body_regression(ctx, cfg, eps, export, schema)
        return
    test = read_parquet(args.test)
    X, y = test[schema.names].to_numpy(np.float32), test[LABEL].to_numpy()
    ratio = None
    if cfg.variant == "auto" and "int8" in export:
        ratio = int8_latency_ratio(require_file(args.onnx), require_file(args.onnx_int8), X)
    variant = choose_variant(cfg, export, ratio)
    onnx_path = require_file(args.onnx_int8 if variant == "int8" else args.onnx)
    ckpt = load_checkpoint(args.model)
    twin = build(ckpt)
    train_metrics, robustness = load_json(args.train_metrics), load_json(args.robustness)
    key = gate_key(onnx_path, Path(args.model), X, y, eps, cfg)
    candidate = measure(onnx_path, twin, X, y, schema, eps, cfg, key)
    val = read_parquet(args.val)
    val_proba, _ = predict(session(onnx_path), val[schema.names].to_numpy(np.float32))
    estimator = AccuracyEstimator.fit(val_proba, val[LABEL].to_numpy())
    holdout = read_parquet(args.holdout)
    Xh, yh = holdout[schema.names].to_numpy(np.float32), holdout[LABEL].to_numpy()
    if len(yh):
        candidate.update(on_holdout(onnx_path, twin, Xh, yh, schema, eps, cfg))

    registry_dir = Path(args.registry)
    tracker = Tracker(args.tracking_db)
    for line in registry.repair(tracker, cfg.model_name, registry_dir):  # an interrupted promotion
        print(f"evaluate: registry: {line}")
    champ_version = tracker.champion_version(cfg.model_name)
    champ_dir = champion_files.directory(registry_dir)
    champion = None
    if champ_version is not None and champ_dir is not None:
        champ_twin = build(load_checkpoint(champ_dir / champion_files.TWIN))
        champ_onnx = champ_dir / champion_files.ONNX
        record = champ_dir / champion_files.DECISION
        known = load_json(record).get("candidate") if record.is_file() else None
        champ_key = gate_key(champ_onnx, champ_dir / champion_files.TWIN, X, y, eps, cfg)
        champion = measure(champ_onnx, champ_twin, X, y, schema, eps, cfg, champ_key, known)
        if len(yh):
            champion.update(on_holdout(champ_onnx, champ_twin, Xh, yh, schema, eps, cfg))
    production = in_production(champion, cfg)

    harden_cfg = ctx.section("harden", HardenConfig)
    baselines = train_metrics.get("baselines", {})
    best = max(baselines.items(), key=lambda kv: kv[1]["test_accuracy"], default=None)
    budget = robustness.get("budget", {})
    context = GateContext(
        baseline=(best[0], best[1]["test_accuracy"]) if best else None,
        trained_clean=robustness["trained"]["clean_accuracy"],
        max_clean_drop=harden_cfg.max_clean_drop
        + (cfg.max_int8_accuracy_drop if variant == "int8" else 0.0),
        budget_limited=bool(budget.get("limited", False)),
        champion_failing=production["why"] if production["champion_failing"] else None,
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
        "production": production,  # is the champion failing there (the relative rules' waiver)
        # What the monitor estimates accuracy with before labels arrive (bench/estimate.py).
        "estimate": estimator.to_dict(),
    }
    card = model_card(schema, decision, train_metrics, robustness, export, ckpt)
    version = publish(args, tracker, cfg, decision, card, onnx_path, schema, registry_dir)
    print(
        f"evaluate: {cfg.model_name} version {version} ({variant}) {verdict(decision)} "
        f"(accuracy {candidate['accuracy']:.4f}, robust {candidate['robust_accuracy']:.4f}, "
        f"p99 {candidate['p99_latency_ms']:.2f} ms)"
    )


def publish(
    args: Any,
    tracker: Tracker,
    cfg: GateConfig,
    decision: dict[str, Any],
    card: str,
    onnx_path: Path,
    schema: Schema,
    registry_dir: Path,
) -> str:
    """The candidate's files (with the model card, the decision, the monitor's drift reference
    and, for a classifier, its label-free estimate) registered as a new version, promoted if it
    passed; then ``--metrics`` and the hints. Returns the version (also set in ``decision``)."""
    with tempfile.TemporaryDirectory() as tmp:
        card_path = Path(tmp) / champion_files.CARD
        decision_path = Path(tmp) / champion_files.DECISION
        reference_path = Path(tmp) / champion_files.REFERENCE
        card_path.write_text(card)
        reference = drift_reference(read_parquet(args.train), schema)
        reference.to_parquet(reference_path, index=False)
        dump_json(decision, decision_path)  # the figures GET /model shows
        files = {
            champion_files.ONNX: onnx_path,
            champion_files.TWIN: Path(args.model),
            champion_files.SCHEMA: Path(args.schema),
            champion_files.EXPORT: Path(args.export_metrics),
            champion_files.DECISION: decision_path,
            champion_files.CARD: card_path,  # registered with the version, shipped if promoted
            champion_files.REFERENCE: reference_path,  # the monitor's reference for this version
        }
        if "estimate" in decision:  # the monitor's label-free estimate (a classifier's)
            estimate_path = Path(tmp) / champion_files.ESTIMATE
            dump_json(decision["estimate"], estimate_path)
            files[champion_files.ESTIMATE] = estimate_path
        version = register(tracker, decision, files, card, cfg)
        decision["version"] = version
        if decision["passed"]:
            registry.promote(tracker, cfg.model_name, version, registry_dir, files)
    with atomic_outputs(args.metrics) as (tmp_metrics,):
        dump_json(decision, tmp_metrics)
    for line in decision["hints"]:
        print(f"evaluate: hint: {line}")
    return version


def verdict(decision: dict[str, Any]) -> str:
    if decision["passed"]:
        return "promoted to champion"
    return "rejected: " + "; ".join(decision["reasons"])


def body_regression(
    ctx: stage.Context, cfg: GateConfig, eps: float, export: dict[str, Any], schema: Schema
) -> None:
    """The stage for a regressor: measure both models, gate, register, promote."""
    from pipeline.learning.card import model_card_regression

    args = ctx.args
    nominal = float(export["interval"]["coverage"])
    test = read_parquet(args.test)
    X, y = test[schema.names].to_numpy(np.float32), test[LABEL].to_numpy(np.float64)
    target_std = float(np.std(y)) or 1.0
    ratio = None
    if cfg.variant == "auto" and "int8" in export:
        ratio = int8_latency_ratio(require_file(args.onnx), require_file(args.onnx_int8), X)
    variant = choose_variant(cfg, export, ratio)
    onnx_path = require_file(args.onnx_int8 if variant == "int8" else args.onnx)
    ckpt = load_checkpoint(args.model)
    twin = build(ckpt)
    train_metrics, robustness = load_json(args.train_metrics), load_json(args.robustness)
    key = gate_key(onnx_path, Path(args.model), X, y, eps, cfg)
    candidate = measure_regression(onnx_path, twin, X, y, schema, eps, cfg, key)
    holdout = read_parquet(args.holdout)
    Xh, yh = holdout[schema.names].to_numpy(np.float32), holdout[LABEL].to_numpy(np.float64)
    if len(yh):
        candidate.update(on_holdout_regression(onnx_path, Xh, yh))

    registry_dir = Path(args.registry)
    tracker = Tracker(args.tracking_db)
    for line in registry.repair(tracker, cfg.model_name, registry_dir):
        print(f"evaluate: registry: {line}")
    champ_version = tracker.champion_version(cfg.model_name)
    champ_dir = champion_files.directory(registry_dir)
    champion = None
    if champ_version is not None and champ_dir is not None:
        champ_twin = build(load_checkpoint(champ_dir / champion_files.TWIN))
        champ_onnx = champ_dir / champion_files.ONNX
        record = champ_dir / champion_files.DECISION
        known = load_json(record).get("candidate") if record.is_file() else None
        champ_key = gate_key(champ_onnx, champ_dir / champion_files.TWIN, X, y, eps, cfg)
        champion = measure_regression(
            champ_onnx, champ_twin, X, y, schema, eps, cfg, champ_key, known
        )
        if len(yh):
            champion.update(on_holdout_regression(champ_onnx, Xh, yh))
    failing = champion is not None and coverage_failing(
        champion.get("holdout_coverage", 1.0), champion.get("holdout_rows", 0), nominal, cfg
    )
    production = {
        "champion_failing": bool(failing),
        "why": (
            f"holdout coverage {champion['holdout_coverage']:.3f} on "
            f"{champion['holdout_rows']} rows vs nominal {nominal:.2f} (binomial test at "
            f"gate.production_alpha {cfg.production_alpha})"
            if champion is not None and "holdout_coverage" in champion
            else "no champion or no labelled production rows"
        ),
    }
    harden_cfg = ctx.section("harden", HardenConfig)
    baselines = train_metrics.get("baselines", {})
    best = max(baselines.items(), key=lambda kv: kv[1]["test_r2"], default=None)
    budget = robustness.get("budget", {})
    context = GateContext(
        baseline=(best[0], best[1]["test_r2"]) if best else None,
        trained_clean=robustness["trained"]["clean_r2"],
        max_clean_drop=harden_cfg.max_clean_drop
        + (cfg.max_int8_accuracy_drop if variant == "int8" else 0.0),
        budget_limited=bool(budget.get("limited", False)),
        champion_failing=production["why"] if production["champion_failing"] else None,
    )
    calibrated_on = export["interval"].get("calibrated_on", "validation")
    rules = gate_regression(
        cfg,
        candidate,
        champion,
        bool(export["parity"]["passed"]),
        nominal,
        target_std,
        context,
        calibrated_on,
    )
    passed = all(r["passed"] for r in rules)
    advice = hints_regression(rules, eps, harden_cfg.max_clean_drop)
    decision: dict[str, Any] = {
        "task": "regression",
        "model_name": cfg.model_name,
        "variant": variant,
        "int8_latency_ratio": ratio,
        "eps": eps,
        "robust_method": (
            f"per-row worst absolute error of PGD-{cfg.robust_steps} on the squared error "
            f"({cfg.robust_restarts} random start(s)) and PGD pushing up and down, seed "
            f"{cfg.seed}, on the PyTorch twin"
        ),
        "interval_coverage": nominal,
        "target_std": target_std,
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
        "production": production,
    }
    card = model_card_regression(schema, decision, train_metrics, robustness, export, ckpt)
    version = publish(args, tracker, cfg, decision, card, onnx_path, schema, registry_dir)
    print(
        f"evaluate: {cfg.model_name} version {version} ({variant}) {verdict(decision)} "
        f"(R² {candidate['r2']:.4f}, RMSE {candidate['rmse']:.4g}, coverage "
        f"{candidate['coverage']:.3f}, robust MAE {candidate['robust_mae']:.4g}, "
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
