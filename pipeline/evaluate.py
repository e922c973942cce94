"""Evaluate stage: the candidate against the champion on the frozen test split, then the gate.

    python -m pipeline.evaluate --params params.yaml --schema data/schema.json \
        --test data/prepared/test.parquet --holdout data/prepared/holdout.parquet \
        --val data/prepared/val.parquet --train data/prepared/train.parquet \
        --model models/hardened.pt --onnx models/model.onnx \
        --onnx-int8 models/model.int8.onnx --export-metrics metrics/export.json \
        --robustness metrics/robustness.json --train-metrics metrics/train.json \
        --compress-metrics metrics/compress.json --compressed models/compressed \
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
pushing the prediction up and down, at ``harden.eps``) and latency, and gated by the same judge
(:mod:`pipeline.release.gate`) over its task's terms (the same keys, read in R²; no label-free
estimate: the monitor waits for labels).

With ``data.sensitive`` set, both models are also measured per group of that column
(:mod:`pipeline.learning.groups`) and ``gate.max_group_gap`` applies. The model card shows what
the answers rest on: ``POST /explain``'s attributions on the test rows.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import registry
from pipeline.contracts import champion as champion_files
from pipeline.contracts.explain import occlusion
from pipeline.contracts.io import load_json, read_parquet, require_file
from pipeline.contracts.params import DataConfig, DeployConfig, GateConfig, HardenConfig
from pipeline.contracts.runtime import session
from pipeline.contracts.schema import Schema
from pipeline.contracts.tasks import served_task
from pipeline.learning import stage
from pipeline.learning.assess import deploy_variants, figures, group_figures, int8_latency_ratio
from pipeline.learning.checkpoint import load_checkpoint
from pipeline.learning.tasks import Record, task_for
from pipeline.release.decision import Decision
from pipeline.release.deploy import SERVED, Choice, Unmet, Variant, choose_all
from pipeline.release.gate import GateContext, choose_variant
from pipeline.release.publish import Release, drift_reference, publish, verdict
from pipeline.release.tracking import Tracker

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
    "--compress-metrics",
    "--compressed",
    "--registry",
    "--tracking-db",
    "--metrics",
)


def body(ctx: stage.Context) -> None:
    args = ctx.args
    cfg = ctx.section("gate", GateConfig)
    harden_cfg = ctx.section("harden", HardenConfig)
    eps = harden_cfg.eps
    export = load_json(args.export_metrics)
    schema = Schema.from_dict(load_json(args.schema))
    task = task_for(schema)
    test, holdout = read_parquet(args.test), read_parquet(args.holdout)
    X, y = test[schema.names].to_numpy(np.float32), task.target(test)
    Xh, yh = holdout[schema.names].to_numpy(np.float32), task.target(holdout)
    ratio = None
    if cfg.variant == "auto" and "int8" in export:
        ratio = int8_latency_ratio(require_file(args.onnx), require_file(args.onnx_int8), X)
    variant = choose_variant(cfg, export, ratio, task.int8_delta)
    onnx_path = require_file(args.onnx_int8 if variant == "int8" else args.onnx)
    train_metrics, robustness = load_json(args.train_metrics), load_json(args.robustness)

    registry_dir = Path(args.registry)
    tracker = Tracker(args.tracking_db)
    for line in registry.repair(tracker, cfg.model_name, registry_dir):  # an interrupted promotion
        print(f"evaluate: registry: {line}")
    champ_version = tracker.champion_version(cfg.model_name)
    champ_dir = champion_files.directory(registry_dir) if champ_version is not None else None
    rows = (X, y, Xh, yh)
    compressed = load_json(args.compress_metrics)
    candidate = figures(
        task, onnx_path, Path(args.model), rows, schema, eps, cfg,
        measured=[v["figures"] for v in compressed["variants"]],
    )  # fmt: skip
    champion = None
    if champ_dir is not None:
        champion = figures(
            task,
            champ_dir / champion_files.ONNX,
            champ_dir / champion_files.TWIN,
            rows,
            schema,
            eps,
            cfg,
            record=champ_dir / champion_files.DECISION,
        )
    groups, gaps = None, {}
    sensitive = ctx.section("data", DataConfig).sensitive
    if sensitive is not None:  # per-group figures and the group-gap rules
        groups, gaps = group_figures(
            task,
            sensitive,
            schema,
            (test, holdout),
            rows,
            {
                "candidate": onnx_path,
                "champion": champ_dir / champion_files.ONNX if champ_dir else None,
            },
        )
    production = task.production(champion, cfg, export)
    baselines = train_metrics.get("baselines", {})
    best = max(baselines.items(), key=lambda kv: kv[1][task.baseline_key], default=None)
    context = GateContext(
        baseline=(best[0], best[1][task.baseline_key]) if best else None,
        trained_clean=robustness["trained"][task.clean_key],
        max_clean_drop=harden_cfg.max_clean_drop
        + (cfg.max_int8_accuracy_drop if variant == "int8" else 0.0),
        budget_limited=bool(robustness.get("budget", {}).get("limited", False)),
        champion_failing=production.why if production.champion_failing else None,
        group_gap=gaps.get("candidate"),
        champion_group_gap=gaps.get("champion"),
    )
    rules, terms = task.gate(
        cfg, candidate, champion, bool(export["parity"]["passed"]), context, export, y
    )
    # Each deployment target's graph: the judged one where it fits, else the best compressed
    # variant within the budget and every floor; a target neither meets is a failed rule that
    # names the budget and the closest graph (pipeline/release/deploy.py).
    served = Variant(
        name=f"{SERVED} ({variant})",
        path=onnx_path,
        bytes=onnx_path.stat().st_size,
        p99_ms=float(candidate["p99_latency_ms"]),
        main=float(candidate[task.main]),
        robust=float(candidate[task.robust]),
    )
    variants = deploy_variants(
        task, compressed, Path(args.compressed), rows, cfg, context, export, served.main,
        harden_cfg.max_clean_drop,
    )  # fmt: skip

    targets = choose_all(
        ctx.section("deploy", DeployConfig), served, variants, task.robust_is_error
    )
    rules += [c.verdict() for c in targets.values() if isinstance(c, Unmet)]  # not promoted
    decision = Decision(
        model_name=cfg.model_name,
        variant=variant,
        int8_latency_ratio=ratio,
        eps=eps,
        head=task.decision_head(cfg, export, y),
        rules=rules,
        hints=task.hints(terms, rules, eps, harden_cfg.max_clean_drop),
        candidate=candidate,
        champion=champion,
        champion_version_before=champ_version,
        production=production,  # is the champion failing there (the relative rules' waiver)
        # What the monitor estimates with before labels (bench/estimate.py), or None.
        estimate=task.estimate(onnx_path, read_parquet(args.val), schema),
        groups=groups,
        deploy={t: c.as_json() for t, c in targets.items()},
    )
    checkpoint = load_checkpoint(args.model)
    explained = explain_test(onnx_path, X, schema)
    card = task.card(
        Record(schema, decision, train_metrics, robustness, export, checkpoint, explained)
    )
    release = Release(
        onnx=onnx_path,
        twin=Path(args.model),
        schema=Path(args.schema),
        export=Path(args.export_metrics),
        reference=drift_reference(read_parquet(args.train), schema),
        targets={t: c.variant.path for t, c in targets.items() if isinstance(c, Choice)},
    )
    version = publish(release, tracker, cfg, decision, card, registry_dir, args.metrics)
    for t, c in targets.items():
        chosen = f"{c.variant.name}, {c.variant.bytes:,} bytes" if isinstance(c, Choice) else "none"
        print(f"evaluate: deploy {t}: {chosen} ({c.as_json()['why']})")
    print(
        f"evaluate: {cfg.model_name} version {version} ({variant}) {verdict(decision)} "
        f"({task.summary(candidate)})"
    )


def explain_test(graph: Path, X: np.ndarray, schema: Schema) -> tuple[np.ndarray, Any]:
    """/explain's attributions on the test rows (at most ``EXPLAIN_ROWS`` graph rows: a wide
    table's are sampled), and each row's answered class (None for a regressor)."""
    sess = session(graph)
    rows = max(1, EXPLAIN_ROWS // (X.shape[1] + 1))
    sample = X[np.random.default_rng(0).permutation(len(X))[:rows]] if len(X) > rows else X
    done = occlusion(lambda b: sess.run(None, {"features": b}), sample, served_task(schema))

    return done.attributions, served_task(schema).answered_class(done.outputs)


EXPLAIN_ROWS = 200_000  # the card's occlusion: test rows x (features + 1), at most


def main(argv: list[str] | None = None) -> int:
    return stage.run("evaluate", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
