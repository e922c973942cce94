"""Harden stage: adversarial fine-tuning of the trained model, and its robustness evaluation.

    python -m pipeline.harden --params params.yaml --schema data/schema.json \
        --data data/prepared --model models/model.pt --train-metrics metrics/train.json \
        --out models/hardened.pt --metrics metrics/robustness.json \
        --plot plots/robustness.csv --figure plots/robustness.png \
        --reliability plots/reliability.png --timing metrics/harden_time.json \
        --warm-start data/warm_start.pt --tracking-db mlflow.db

Methods (``harden.method``): ``fgsm_rs`` (Wong et al. 2020, with the catastrophic-overfitting
stop), ``n_fgsm`` (de Jorge et al. 2022: large noise, no projection), ``pgd`` (Madry et al.,
k steps) and ``trades`` (Zhang et al. 2019). The threat model is
DESIGN.md's: L-inf in raw feature space, ``eps`` times each feature's range, clipped to its
observed bounds, attacked through the feature transform and the network together. Both the trained
and the hardened model are evaluated on the test split for every ``harden.eval_eps`` by the
per-row worst case over PGD, APGD-CE and APGD-DLR (Croce & Hein 2020), and cross-checked at
``harden.eps`` by the Adversarial Robustness Toolbox's AutoProjectedGradientDescent.

A retrain (``--warm-start`` holds the champion's hardened checkpoint, which the monitor copies
there) hardens on from those weights for ``harden.warm_start_epochs`` at
``harden.warm_start_lr`` (scoring and keeping a moving average of the weights,
``harden.warm_start_ema_decay``), with the trained model as the clean reference; the budget then
holds on val's source rows and production rows apart, and the evaluation on test is clean
accuracy only: the per-row worst case at ``eps`` is the gate's, which the evaluate stage
measures on both models (no sweep, no ART check: no decision reads them). An empty file (as in
git) means a first run.

The clean-accuracy budget (``max_clean_drop``) picks the epochs on val and is checked on test as
the gate checks it (the most robust epoch that holds it there ships, else the trained weights).
Then temperature scaling is fit on val (``temperature`` in the checkpoint; export puts it in the
graph) and a reliability diagram shows the test split before and after.

A regressor (schema.json's task regression; :mod:`pipeline.learning.regression`) is hardened
against the same threat model maximising its loss; the robust figure is the robust MAE (per row,
the worst absolute error over PGD on the error and PGD pushing the prediction up and down), the
budget is clean R² (within ``max_clean_drop`` of the trained model's, on val and then on test),
and instead of temperature scaling the split conformal interval at
``serving.interval_coverage`` is fit on val (``interval`` in the checkpoint; export puts it in
the graph): on a retrain whose val holds at least 200 labelled production rows, on those alone
(the rows it will serve; the gate then checks its coverage on the production holdout).
``--reliability`` then shows the test split's predictions with their intervals.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.contracts.io import atomic_outputs, dump_json, load_json
from pipeline.contracts.params import HardenConfig, ServingConfig, TrainConfig, overlay
from pipeline.contracts.schema import Schema
from pipeline.learning import stage
from pipeline.learning.adversarial import (
    Selection,
    budget_notes,
    check_budget_on_test,
    gradient_passes,
    harden,
)
from pipeline.learning.calibration import calibrate
from pipeline.learning.checkpoint import load_checkpoint, save_checkpoint, warm_start
from pipeline.learning.model import build
from pipeline.learning.plots import plot_regression, plot_reliability, plot_robustness
from pipeline.learning.robustness import evaluate_robustness, evaluation_method
from pipeline.learning.training import load_split

FLAGS = (
    "--schema",
    "--data",
    "--model",
    "--train-metrics",
    "--out",
    "--metrics",
    "--plot",
    "--figure",
    "--reliability",
    "--timing",
    "--warm-start",  # the champion's hardened checkpoint on a retrain; empty: from the trained
    "--tracking-db",
)


def body(ctx: stage.Context) -> None:
    args = ctx.args
    cfg = ctx.section("harden", HardenConfig)
    schema = Schema.from_dict(load_json(args.schema))
    if schema.regression:
        body_regression(ctx, cfg, schema)
        return
    data = Path(args.data)
    train, val, test = (load_split(data / f"{s}.parquet", schema) for s in ("train", "val", "test"))
    checkpoint = load_checkpoint(args.model)
    train_epochs = load_json(args.train_metrics)["epochs_run"]
    device = ctx.device()
    trained, hardened = build(checkpoint), build(checkpoint)
    history, seconds, selection = [], 0.0, Selection(kept="trained (harden.method none)")
    warm, warm_note = warm_start(
        args.warm_start, checkpoint["model_config"], checkpoint.get("transform")
    )
    if cfg.method == "none":
        warm_note = "none (harden.method none)"
    elif warm is not None:
        # A retrain: harden on from the champion's robust weights (the trained model, fine-tuned
        # on the new rows, stays the clean reference and the fallback), not from scratch.
        hardened.net.load_state_dict(warm["net"])
        # The loop's hot path evaluates what its decisions read: clean accuracy here (the
        # budget), and the per-row worst case at eps, which the gate measures on both models
        # with its own attacks. The sweep over harden.eval_eps and the ART cross-check, which
        # only a first run's report shows, are left out (README, Continuous learning).
        cfg = overlay(
            cfg,
            "harden",
            epochs=cfg.warm_start_epochs,
            lr=cfg.warm_start_lr,
            ema_decay=cfg.warm_start_ema_decay,
        )
    attack = warm is None
    print(f"harden: {warm_note}")
    if cfg.method != "none":
        history, seconds, selection = harden(
            hardened, train, val, schema, cfg, device, reference=trained
        )
    budget = check_budget_on_test(trained, hardened, test, schema, cfg, selection)
    robustness = evaluate_robustness(
        {"trained": trained, "hardened": hardened}, test, schema, cfg, device, attack
    )
    temperature, calibration, curves = calibrate(trained, hardened, val, test)
    rows = len(train.y)
    production = train.production
    attacked = (
        rows - int(production.sum())
        if production is not None and cfg.production_weight == 0
        else rows
    )
    metrics = {
        "method": cfg.method,
        "eps": cfg.eps,
        "evaluation": evaluation_method(cfg, attack),
        **robustness,
        "clean_accuracy_drop": robustness["trained"]["clean_accuracy"]
        - robustness["hardened"]["clean_accuracy"],
        "budget": budget,
        "calibration": calibration,
        "epochs_run": len(history),
        "warm_start": warm_note,
        # Deterministic cost: gradient passes relative to training's (wall time: --timing).
        "harden_to_train_passes": gradient_passes(cfg, len(history), rows, attacked)
        / max(train_epochs * rows, 1),
    }
    table = pd.DataFrame(
        {
            "eps": [float(e) for e in robustness["trained"]["by_eps"]],
            "trained": list(robustness["trained"]["by_eps"].values()),
            "hardened": list(robustness["hardened"]["by_eps"].values()),
            "trained_pgd": list(robustness["trained"]["pgd_by_eps"].values()),
            "hardened_pgd": list(robustness["hardened"]["pgd_by_eps"].values()),
        }
    )
    out_ckpt = {
        **checkpoint,
        "net": hardened.cpu().net.state_dict(),
        "harden_config": cfg.model_dump(),
        "temperature": temperature,  # export divides the logits by it inside the graph
    }
    outputs = (args.out, args.metrics, args.plot, args.figure, args.reliability, args.timing)
    with atomic_outputs(*outputs) as tmps:
        save_checkpoint(out_ckpt, tmps[0])
        dump_json(metrics, tmps[1])
        table.to_csv(tmps[2], index=False)
        plot_robustness(table, cfg.eps, tmps[3])
        plot_reliability(curves, tmps[4])
        dump_json({"harden_seconds": seconds, "epochs_run": len(history)}, tmps[5])
    log_to_mlflow(args, cfg, metrics, history, seconds)
    h, t = robustness["hardened"], robustness["trained"]
    art = h.get("art_robust_accuracy") or float("nan")
    robust = (
        f"eps={cfg.eps:g} worst-case robust accuracy {t['robust_accuracy']:.4f} -> "
        f"{h['robust_accuracy']:.4f} (ART APGD-CE {art:.4f})"
        if attack
        else f"eps={cfg.eps:g} worst case: the gate's (a retrain)"
    )
    for line in budget_notes(budget, cfg):
        print(f"harden: {line}")
    print(
        f"harden: temperature {temperature:.3f}: test ECE {calibration['test_ece_before']:.4f} "
        f"-> {calibration['test_ece_after']:.4f}"
    )
    print(
        f"harden: {robust}, clean {t['clean_accuracy']:.4f} -> {h['clean_accuracy']:.4f}, "
        f"{metrics['harden_to_train_passes']:.1f}x training's gradient passes, {seconds:.1f} s"
    )


def body_regression(ctx: stage.Context, cfg: HardenConfig, schema: Schema) -> None:
    """The stage for a regressor: hardening, the robust MAE, the conformal interval."""
    from pipeline.learning import regression as reg
    from pipeline.learning.attacks import Box

    args = ctx.args
    coverage = ctx.section("serving", ServingConfig).interval_coverage
    train_cfg = ctx.section("train", TrainConfig)
    loss = (train_cfg.regression_loss, train_cfg.huber_delta)
    data = Path(args.data)
    train, val, test = (load_split(data / f"{s}.parquet", schema) for s in ("train", "val", "test"))
    checkpoint = load_checkpoint(args.model)
    train_epochs = load_json(args.train_metrics)["epochs_run"]
    device = ctx.device()
    trained, hardened = build(checkpoint), build(checkpoint)
    warm, warm_note = warm_start(
        args.warm_start, checkpoint["model_config"], checkpoint.get("transform")
    )
    if cfg.method == "none":
        warm_note = "none (harden.method none)"
    elif warm is not None:
        hardened.net.load_state_dict(warm["net"])
        cfg = overlay(
            cfg, "harden", epochs=cfg.warm_start_epochs, lr=cfg.warm_start_lr, ema_decay=0.0
        )
    first_run = warm is None
    print(f"harden: {warm_note}")
    history: list[dict[str, float]] = []
    seconds = 0.0
    selection: dict[str, Any] = {"kept": "trained (harden.method none)", "limited": False}
    within: list[reg.Epoch] = []
    if cfg.method != "none":
        history, seconds, selection, within = reg.harden_regression(
            hardened, train, val, schema, cfg, device, loss, reference=trained
        )
    budget = reg.check_budget_on_test(trained, hardened, test, cfg, selection, within)
    # The sweep over eval_eps is a first run's report; a retrain measures eps (the gate's too).
    sweep = sorted({*cfg.eval_eps, cfg.eps}) if first_run else [cfg.eps]
    robustness: dict[str, Any] = {}
    for name, model in (("trained", trained), ("hardened", hardened)):
        model.to(device)
        by_eps = {
            f"{eps:g}": float(
                reg.worst_case_error(
                    model,
                    test.X,
                    test.y,
                    Box.from_schema(schema, eps),
                    cfg.eval_steps,
                    cfg.eval_restarts,
                    cfg.seed,
                    progress=f"harden: {name} at eps {eps:g}",
                ).mean()
            )
            for eps in sweep
        }
        model.cpu()
        _, _, pred = reg.evaluate_regression(model, test)
        robustness[name] = {
            **{f"clean_{k}": v for k, v in reg.regression_metrics(test.y.numpy(), pred).items()},
            "robust_mae": by_eps[f"{cfg.eps:g}"],
            "by_eps": by_eps,
        }
    calibration, calibrated_on = reg.calibration_rows(val)
    q = reg.fit_interval(hardened, calibration, coverage)
    pred, lower, upper = reg.predict_interval(hardened, test.X, q)
    _, v_lower, v_upper = reg.predict_interval(hardened, calibration.X, q)
    interval = {
        "method": "split conformal on the network's scale, fit on the validation split"
        + ("'s production rows" if calibrated_on == "production" else ""),
        "nominal_coverage": coverage,
        "half_width": q,  # on the network's (standardised) scale
        "calibrated_on": calibrated_on,
        "calibration_rows": len(calibration.y),
        "val": reg.interval_metrics(calibration.y.numpy(), v_lower, v_upper),
        "test": reg.interval_metrics(test.y.numpy(), lower, upper),
    }
    metrics = {
        "task": "regression",
        "method": cfg.method,
        "eps": cfg.eps,
        "evaluation": (
            f"per-row worst absolute error of PGD-{cfg.eval_steps} on the squared error "
            f"({cfg.eval_restarts} random start(s)) and PGD pushing the prediction up and down"
        ),
        **robustness,
        "clean_r2_drop": robustness["trained"]["clean_r2"] - robustness["hardened"]["clean_r2"],
        "budget": budget,
        "interval": interval,
        "epochs_run": len(history),
        "warm_start": warm_note,
        "harden_to_train_passes": gradient_passes(cfg, len(history), len(train.y))
        / max(train_epochs * len(train.y), 1),
    }
    table = pd.DataFrame(
        {
            "eps": [float(e) for e in robustness["trained"]["by_eps"]],
            "trained": list(robustness["trained"]["by_eps"].values()),
            "hardened": list(robustness["hardened"]["by_eps"].values()),
        }
    )
    out_ckpt = {
        **checkpoint,
        "net": hardened.cpu().net.state_dict(),
        "harden_config": cfg.model_dump(),
        # export puts it in the graph; the gate checks its coverage where it was calibrated
        "interval": {"half_width": q, "coverage": coverage, "calibrated_on": calibrated_on},
    }
    outputs = (args.out, args.metrics, args.plot, args.figure, args.reliability, args.timing)
    with atomic_outputs(*outputs) as tmps:
        save_checkpoint(out_ckpt, tmps[0])
        dump_json(metrics, tmps[1])
        table.to_csv(tmps[2], index=False)
        plot_robustness(table, cfg.eps, tmps[3], regression=True)
        plot_regression(test.y.numpy(), pred, schema.target, tmps[4], lower, upper)
        dump_json({"harden_seconds": seconds, "epochs_run": len(history)}, tmps[5])
    log_to_mlflow(args, cfg, metrics, history, seconds)
    t, h = robustness["trained"], robustness["hardened"]
    print(
        f"harden: eps={cfg.eps:g} robust MAE {t['robust_mae']:.4g} -> {h['robust_mae']:.4g}, "
        f"clean R² {t['clean_r2']:.4f} -> {h['clean_r2']:.4f} (kept: {budget['kept']}), "
        f"{seconds:.1f} s"
    )
    print(
        f"harden: {coverage:.0%} interval: test coverage {interval['test']['coverage']:.3f}, "
        f"mean width {interval['test']['mean_width']:.4g} (fit on {len(calibration.y)} "
        f"{calibrated_on} rows of val)"
    )


def log_to_mlflow(
    args: argparse.Namespace,
    cfg: HardenConfig,
    metrics: dict[str, Any],
    history: list[dict[str, float]],
    seconds: float,
) -> None:
    from pipeline.learning.tracking import Tracker  # mlflow: imported only when it is used

    tracker = Tracker(args.tracking_db)
    digest = hashlib.sha256(Path(args.model).read_bytes()).hexdigest()
    train_run = tracker.find_run("model_sha256", digest) or ""
    with tracker.run("harden", tags={"train_run_id": train_run}) as run:
        run.log_params({f"harden_{k}": v for k, v in cfg.model_dump().items()})
        for row in history:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        flat = {
            f"{model}_{key}": value
            for model in ("trained", "hardened")
            for key, value in metrics[model].items()
            if isinstance(value, float)
        }
        flat.update({k: v for k, v in metrics.items() if isinstance(v, float)})
        run.log_metrics({**flat, "harden_seconds": seconds})
        run.log_artifact(args.figure)
        run.log_artifact(args.metrics)


def main(argv: list[str] | None = None) -> int:
    return stage.run("harden", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
