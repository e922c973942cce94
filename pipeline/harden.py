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
docs/design.md's: L-inf in raw feature space, ``eps`` times each feature's range, clipped to its
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

What differs between tasks is the task's (:mod:`pipeline.learning.tasks`): a regressor
(:mod:`pipeline.learning.regression`) is hardened
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
import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any

from pipeline.contracts.io import atomic_outputs, dump_json, load_json
from pipeline.contracts.params import HardenConfig, overlay
from pipeline.contracts.schema import Schema
from pipeline.learning import stage
from pipeline.learning.checkpoint import load_checkpoint, save_checkpoint, warm_start
from pipeline.learning.model import build
from pipeline.learning.plots import plot_robustness
from pipeline.learning.splits import load_split
from pipeline.learning.tasks import HardenRun, task_for

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
    task = task_for(schema)
    data = Path(args.data)
    train, val, test = (load_split(data / f"{s}.parquet", schema) for s in ("train", "val", "test"))
    checkpoint = load_checkpoint(args.model)
    train_epochs = load_json(args.train_metrics)["epochs_run"]
    trained, hardened = build(checkpoint), build(checkpoint)
    warm, warm_note = warm_start(args.warm_start, checkpoint.model_config, checkpoint.transform)
    if cfg.method == "none":
        warm_note = "none (harden.method none)"
    elif warm is not None:
        # A retrain: harden on from the champion's robust weights (the trained model, fine-tuned
        # on the new rows, stays the clean reference and the fallback), not from scratch. The
        # loop's hot path evaluates what its decisions read (docs/monitoring.md).
        hardened.net.load_state_dict(warm.net)
        changes = {"epochs": cfg.warm_start_epochs, "lr": cfg.warm_start_lr}
        cfg = overlay(cfg, "harden", **changes, **task.warm_overlay(cfg))
    print(f"harden: {warm_note}")
    out = task.harden(
        HardenRun(
            trained=trained,
            hardened=hardened,
            train=train,
            val=val,
            test=test,
            schema=schema,
            cfg=cfg,
            device=ctx.device(),
            first_run=warm is None,
            train_epochs=train_epochs,
            section=ctx.section,
        )
    )
    out.metrics["warm_start"] = warm_note
    out_ckpt = dataclasses.replace(
        checkpoint,
        net=hardened.cpu().net.state_dict(),
        harden_config=cfg.model_dump(),
        **out.checkpoint,  # the calibration head, which export puts in the graph
    )
    with atomic_outputs(
        args.out, args.metrics, args.plot, args.figure, args.reliability, args.timing
    ) as (ckpt_tmp, metrics_tmp, plot_tmp, figure_tmp, reliability_tmp, timing_tmp):
        save_checkpoint(out_ckpt, ckpt_tmp)
        dump_json(out.metrics, metrics_tmp)
        out.table.to_csv(plot_tmp, index=False)
        plot_robustness(out.table, cfg.eps, figure_tmp, task.robustness_axes)
        out.figure(reliability_tmp)
        dump_json({"harden_seconds": out.seconds, "epochs_run": len(out.history)}, timing_tmp)
    log_to_mlflow(args, cfg, out.metrics, out.history, out.seconds)
    for line in out.summary:
        print(f"harden: {line}")


def log_to_mlflow(
    args: argparse.Namespace,
    cfg: HardenConfig,
    metrics: dict[str, Any],
    history: list[dict[str, float]],
    seconds: float,
) -> None:
    from pipeline.release.tracking import Tracker  # mlflow: imported only when it is used

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
