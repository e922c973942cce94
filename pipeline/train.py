"""Train stage: a PyTorch classifier behind the fitted feature transform, tracked in MLflow.

    python -m pipeline.train --params params.yaml --schema data/schema.json \
        --features models/features --data data/prepared --tuned params/tuned.json \
        --model models/model.pt --checkpoint models/checkpoints/train.pt \
        --metrics metrics/train.json --history plots/train_history.csv \
        --confusion plots/confusion_matrix.png --timing metrics/train_time.json \
        --warm-start data/warm_start.pt --tracking-db mlflow.db

Data-parallel on N processes (gloo on CPU, NCCL on GPUs); only rank 0 writes or logs:

    torchrun --nproc_per_node=2 -m pipeline.train <the same arguments>

A retrain (``--warm-start`` holds the champion's checkpoint, which the monitor copies there)
fine-tunes the champion's network for ``train.warm_start_epochs`` (a regressor's at
``train.regression_warm_start_lr``) instead of training ``train.epochs`` from scratch, if the
network this run builds has its shape; an empty file (as in git) means a first run.

The loop lives in :mod:`pipeline.learning.training`. Outputs that later stages read (the model,
the metrics) are a function of the inputs; wall-clock figures and the MLflow run id go to
``--timing``, which no stage depends on. The stage also fits scikit-learn baselines on the same
features.

What differs between tasks is the task's (:mod:`pipeline.learning.tasks`): a regression target
trains the same network with one output on the
standardised target (logged first when it is positive and skewed above 1, ``train.log_target``),
with ``train.regression_loss``; metrics are RMSE, MAE and R², the baselines
``train.regression_baselines`` (ridge, gradient-boosted trees), and ``--confusion`` holds its
figure: predicted against true values and the residuals on the test split.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist

from pipeline.contracts.io import atomic_outputs, dump_json, load_json
from pipeline.contracts.params import TrainConfig, overlay
from pipeline.learning import stage
from pipeline.learning.checkpoint import (
    Checkpoint,
    save_checkpoint,
    transform_identity,
    warm_start,
)
from pipeline.learning.model import (
    ModelConfig,
    build_net,
    transform_state_tensors,
)
from pipeline.learning.plots import plot_curves
from pipeline.learning.tasks import task_for
from pipeline.learning.training import (
    FitResult,
    Inputs,
    Resume,
    apply_tuned,
    fit,
    init_distributed,
    load_inputs,
    run_fingerprint,
)

FLAGS = (
    "--schema",
    "--features",  # prefix of the .npz / .json transform
    "--data",  # folder with train/val/test.parquet
    "--tuned",  # the tune stage's best params (JSON)
    "--model",
    "--checkpoint",
    "--metrics",
    "--history",
    "--confusion",
    "--timing",
    "--warm-start",  # the champion's checkpoint on a retrain; empty: train from scratch
    "--tracking-db",
)


def timing(result: FitResult, wall: float, cfg: TrainConfig, run_id: str) -> dict[str, Any]:
    return {
        "wall_seconds": wall,
        "train_seconds": result.train_seconds,
        "train_samples_per_second": result.samples_seen / max(result.train_seconds, 1e-9),
        "tta_target": cfg.tta_target,
        "time_to_accuracy_seconds": result.tta_seconds,
        "autocast": result.autocast,  # bf16 on a CUDA device that supports it (train.amp)
        "mlflow_run_id": run_id,
    }


def body(ctx: stage.Context) -> None:
    args = ctx.args
    rank, world = init_distributed()
    try:
        cfg = apply_tuned(ctx.section("train", TrainConfig), load_json(args.tuned))
        inputs = load_inputs(args.schema, args.features, args.data)
        task = task_for(inputs.schema)
        mcfg = task.model_config(cfg, inputs.transform, inputs.schema, inputs.image_shape)
        train(ctx, cfg, mcfg, inputs, rank, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


def train(
    ctx: stage.Context,
    cfg: TrainConfig,
    mcfg: ModelConfig,
    inputs: Inputs,
    rank: int,
    world: int,
) -> None:
    args = ctx.args
    device = ctx.device()
    torch.manual_seed(cfg.seed)  # the initial weights are part of the run's identity
    task = task_for(inputs.schema)
    model = task.new_model(inputs.transform.module(), build_net(mcfg), inputs.train, cfg)
    identity = transform_identity(inputs.transform.kind, inputs.transform.n_components)
    warm, warm_note = warm_start(args.warm_start, mcfg.as_dict(), identity)
    if warm is not None:  # a retrain: fine-tune the champion's network on the new data
        model, gentler = task.warm(model, warm, cfg)  # a regressor: its scale and learning rate
        model.net.load_state_dict(warm.net)
        cfg = overlay(cfg, "train", epochs=cfg.warm_start_epochs, **gentler)
    if rank == 0:
        print(f"train: {warm_note}")
    checkpoint = Path(args.checkpoint)

    def run_fit(**logging: Any) -> FitResult:
        """Every rank trains alike; rank 0 adds the MLflow hooks."""
        return fit(
            model,
            inputs.train,
            inputs.val,
            cfg,
            device,
            objective=task.objective,
            image_shape=inputs.image_shape,
            checkpoint=checkpoint,
            rank=rank,
            world=world,
            **logging,
        )

    if rank != 0:
        run_fit()
        return

    from pipeline.release.tracking import Tracker

    tracker = Tracker(args.tracking_db)
    resume_id = None
    # Continue its MLflow run only if fit() will resume it.
    resume = Resume.of_run(checkpoint, run_fingerprint(cfg, world, inputs.train, inputs.val))
    if resume is not None:
        resume_id = resume.extra.get("run_id")
    with tracker.run("train", resume=resume_id) as run:
        extra: dict[str, Any] = {"run_id": run.id}
        if resume_id is None:  # a resumed run already holds its params
            run.log_params({**cfg.model_dump(), "device": device.type, "world_size": world})
        start = time.perf_counter()
        result = run_fit(
            on_epoch=lambda epoch, row: run.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=epoch
            ),
            extra_state=extra,
        )
        wall = time.perf_counter() - start
        quality = task.quality(model, inputs, cfg)
        metrics = {
            **quality.metrics,
            "epochs_run": result.epochs_run,
            "device": device.type,
            "world_size": world,
            "warm_start": warm_note,
        }
        saved = Checkpoint(
            model_config=mcfg.as_dict(),
            net=model.net.state_dict(),
            transform_state=transform_state_tensors(inputs.transform.state()),
            transform=identity,  # a retrain keeps this transform (features --warm-start)
            feature_names=inputs.schema.names,
            classes=list(inputs.schema.classes),
            train_config=cfg.model_dump(),
            **task.saved(model),
        )
        times = timing(result, wall, cfg, run.id)
        outputs = (args.model, args.metrics, args.history, args.confusion, args.timing)
        with atomic_outputs(*outputs) as tmps:
            save_checkpoint(saved, tmps[0])
            dump_json(metrics, tmps[1])
            pd.DataFrame(result.history).to_csv(tmps[2], index=False)
            task.plot_test(inputs.test.y.numpy(), quality.test_predictions, inputs.schema, tmps[3])
            dump_json(times, tmps[4])
        digest = hashlib.sha256(Path(args.model).read_bytes()).hexdigest()
        run.set_tag("model_sha256", digest)  # harden finds this run by its input's hash
        flat = {f"test_{k}": v for k, v in metrics["test"].items()}
        for name, base in metrics["baselines"].items():
            for key, value in base.items():
                if task.logged_baseline(key):
                    flat[f"baseline_{name}_{key}"] = value
        run.log_metrics({**flat, **times, "epochs_run": result.epochs_run})
        run.log_artifact(args.confusion)
        run.log_artifact(args.metrics)
        with tempfile.TemporaryDirectory() as tmp:
            plot_curves(result.history, Path(tmp) / "history.png")
            run.log_artifact(Path(tmp) / "history.png")
    checkpoint.unlink(missing_ok=True)  # finished: nothing left to resume
    base = metrics["best_baseline"]
    key = task.main
    base_text = f"{base} {metrics['baselines'][base][f'test_{key}']:.4f}" if base else "none"
    print(
        f"train: test {key} {metrics['test'][key]:.4f} (baseline {base_text}), "
        f"{result.epochs_run} epochs, {times['train_samples_per_second']:.0f} samples/s "
        f"on {device.type} x{world}"
    )


def main(argv: list[str] | None = None) -> int:
    return stage.run("train", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
