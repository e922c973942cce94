"""Training library: data splits, the training loop, baselines. Used by train, tune, harden, bench.

No stage lives here (``python -m pipeline.train`` is the stage). :func:`fit` trains a
:class:`~pipeline.learning.model.Classifier` on CPU or CUDA (bf16 autocast where supported,
pinned memory, non-blocking copies), data-parallel under torchrun, writing a resumable
checkpoint every epoch (weights, optimizer, scheduler, epoch, RNG state, early-stopping state):
a killed run resumes from it and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.io import atomic_outputs, load_json, require_file
from pipeline.contracts.params import TUNABLE, TrainConfig, overlay
from pipeline.contracts.schema import Schema
from pipeline.learning.checkpoint import load_file, save_checkpoint
from pipeline.learning.model import Classifier, Regressor
from pipeline.learning.splits import Split, load_split
from pipeline.learning.transforms import FeatureTransform


@dataclasses.dataclass
class FitResult:
    history: list[dict[str, float]]
    epochs_run: int
    train_seconds: float
    samples_seen: int
    tta_seconds: float | None
    autocast: str | None = None  # "bfloat16" when the forward passes ran under bf16 autocast


def apply_tuned(cfg: TrainConfig, tuned: dict[str, Any]) -> TrainConfig:
    """Overlay the tune stage's best values on ``cfg`` (only the tunable keys)."""
    unknown = sorted(set(tuned) - set(TUNABLE))
    if unknown:
        raise MlcycleError(f"tuned params: key {unknown[0]!r} is not tunable; expected {TUNABLE}")
    return overlay(cfg, "train", **tuned)


def make_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


def random_shift(
    x: torch.Tensor, image_shape: tuple[int, int], max_shift: int, gen: torch.Generator
) -> torch.Tensor:
    """Translate each raw image by up to ``max_shift`` pixels, filling with zeros."""
    h, w = image_shape
    n = x.shape[0]
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen).to(x.device)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * shifts[:, 0] / w
    theta[:, 1, 2] = 2.0 * shifts[:, 1] / h
    img = x.reshape(n, 1, h, w)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(
        img, grid, mode="nearest", padding_mode="zeros", align_corners=False
    ).reshape(n, h * w)


def weighted_loss(
    logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    per_row = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=smoothing)
    return (per_row * w).sum() / w.sum()


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a task trains on and scores by (its :attr:`~pipeline.learning.tasks.Task.objective`):
    ``loss(model, outputs, y, w, cfg)`` of a batch, ``evaluate(model, split, device)`` giving
    (loss, score, predictions) on a split, and the history's name for the score."""

    score_key: str
    loss: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor, TrainConfig], torch.Tensor]
    evaluate: Callable[[Any, Split, torch.device], tuple[float, float, np.ndarray]]


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, split: Split, device: torch.device, batch: int = 1024
) -> tuple[float, float, np.ndarray]:
    """(weighted loss, accuracy, probabilities) of ``model`` on ``split``, in eval mode."""
    model.eval()
    logits = torch.cat(
        [
            model(split.X[i : i + batch].to(device)).float().cpu()
            for i in range(0, len(split.y), batch)
        ]
    )
    loss = weighted_loss(logits, split.y, split.w).item()
    acc = (logits.argmax(1) == split.y).float().mean().item()
    return loss, acc, torch.softmax(logits, 1).numpy()


def fingerprint(*parts: Any) -> str:
    """Identity of a training run: a checkpoint from another config or data is not resumed."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            digest.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def run_fingerprint(cfg: TrainConfig, world: int, train: Split, val: Split) -> str:
    return fingerprint(cfg.model_dump(), world, train.X.nan_to_num(), train.y, val.y)


@dataclasses.dataclass(frozen=True)
class Resume:
    """:func:`fit`'s state after an epoch (the train stage's ``--checkpoint``): enough to go on
    as if never stopped. ``fingerprint``: the run it belongs to (:func:`run_fingerprint`);
    ``best``: early stopping's best loss, its weights and the epochs since; ``extra``: what the
    caller keeps with it (the MLflow run's id)."""

    fingerprint: str
    epoch: int
    net: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor
    history: list[dict[str, Any]]
    best: dict[str, Any]
    elapsed: float
    samples: int
    tta: float | None
    extra: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def of_run(cls, path: Path | None, ident: str) -> Resume | None:
        """The state at ``path`` if it belongs to the run ``ident``, else None."""
        if path is None or not path.is_file():
            return None
        saved = load_file(path)
        if saved.get("fingerprint") != ident:
            return None
        return cls(**saved)


def fit(
    model: Classifier | Regressor,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    device: torch.device,
    *,
    objective: Objective,
    image_shape: tuple[int, int] | None = None,
    checkpoint: Path | None = None,
    rank: int = 0,
    world: int = 1,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    extra_state: dict[str, Any] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``model.net`` in place; on return it holds the best-validation-loss weights.

    ``objective``: the task's loss and score (a regressor trains on ``train.regression_loss`` of
    its standardised target and is scored by R²: history ``val_r2``, ``tta_target`` reads R²).

    ``checkpoint``: written every epoch and resumed from when its fingerprint matches.
    ``on_epoch(epoch, row)``: called after each epoch (MLflow logging, Optuna pruning).
    ``extra_state``: small dict saved in the checkpoint and updated from it on resume.
    """
    score_key, evaluate = objective.score_key, objective.evaluate
    torch.manual_seed(cfg.seed)
    model.to(device)
    net: torch.nn.Module = model.net
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    full = Classifier(model.transform, net)

    per_rank_batch = max(1, cfg.batch_size // world)  # the global batch stays cfg.batch_size
    dataset = TensorDataset(train.X, train.y, train.w)
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    # Whole batches are indexed at once (batch_size=None): no per-row collation.
    batches = BatchSampler(sampler, batch_size=per_rank_batch, drop_last=False)
    loader = DataLoader(dataset, sampler=batches, batch_size=None, pin_memory=device.type == "cuda")
    opt = make_optimizer(cfg, net.parameters())
    sched = make_scheduler(cfg, opt, len(loader))
    use_amp = cfg.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    augment = cfg.augment_shift > 0 and image_shape is not None

    ident = run_fingerprint(cfg, world, train, val)
    start, history, best = 0, [], {"loss": math.inf, "state": None, "bad": 0}
    elapsed, samples, tta = 0.0, 0, None
    saved = Resume.of_run(checkpoint, ident)
    if saved is not None:
        model.net.load_state_dict(saved.net)
        opt.load_state_dict(saved.optimizer)
        if sched is not None:
            sched.load_state_dict(saved.scheduler)
        torch.set_rng_state(saved.rng)
        start, history, best = saved.epoch + 1, saved.history, saved.best
        elapsed, samples, tta = saved.elapsed, saved.samples, saved.tta
        if extra_state is not None:
            extra_state.update(saved.extra)
        if rank == 0:
            print(f"train: resuming from {checkpoint} after epoch {start}")
    elif checkpoint is not None and checkpoint.is_file() and rank == 0:
        print(f"train: ignoring {checkpoint}: it belongs to another config or data")

    bar = tqdm(
        range(start, cfg.epochs),
        desc="train: epochs",
        disable=rank != 0 or not progress,
        initial=start,
        total=cfg.epochs,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 101 + rank)
        full.train()
        total, count = 0.0, 0
        for xb, yb, wb in loader:
            if len(yb) < 2:  # a last batch of one row: batch norm cannot train on it
                continue
            xb = xb.to(device, non_blocking=True)
            yb, wb = yb.to(device, non_blocking=True), wb.to(device, non_blocking=True)
            if augment:
                xb = random_shift(xb, image_shape, cfg.augment_shift, aug_gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = full(xb)
            loss = objective.loss(model, logits, yb, wb, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg.schedule == "onecycle":
                sched.step()
            total += loss.item() * len(yb)
            count += len(yb)
        if sched is not None and cfg.schedule != "onecycle":
            sched.step()
        samples += count * world
        val_loss, val_acc, _ = evaluate(model, val, device)
        elapsed += time.perf_counter() - t0
        if tta is None and val_acc >= cfg.tta_target:
            tta = elapsed
        row = {
            "epoch": epoch,
            "train_loss": total / max(count, 1),
            "val_loss": val_loss,
            score_key: val_acc,
            "lr": opt.param_groups[0]["lr"],
        }
        history.append(row)
        if val_loss < best["loss"] - 1e-4:
            best = {"loss": val_loss, "state": copy.deepcopy(model.net.state_dict()), "bad": 0}
        else:
            best["bad"] += 1
        stop = torch.tensor(float(best["bad"] >= cfg.patience))
        if world > 1:  # every rank must agree, or the others wait forever in all-reduce
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if on_epoch is not None:  # before the checkpoint: a kill can repeat a step, not skip one
            on_epoch(epoch, row)
        if checkpoint is not None and rank == 0:
            state = Resume(
                fingerprint=ident,
                epoch=epoch,
                net=model.net.state_dict(),
                optimizer=opt.state_dict(),
                scheduler=sched.state_dict() if sched is not None else {},
                rng=torch.get_rng_state(),
                history=history,
                best=best,
                elapsed=elapsed,
                samples=samples,
                tta=tta,
                extra=extra_state or {},
            )
            with atomic_outputs(checkpoint) as (tmp,):
                save_checkpoint(state.as_dict(), tmp)
        bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.4f}")
        if stop.item():
            break
    if best["state"] is not None:
        model.net.load_state_dict(best["state"])
    return FitResult(history, len(history), elapsed, samples, tta, "bfloat16" if use_amp else None)


def fit_baselines(
    models: dict[str, Any],
    Z_train: np.ndarray,
    y_train: np.ndarray,
    w_train: np.ndarray,
    Z_test: np.ndarray,
    y_test: np.ndarray,
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]],
) -> dict[str, dict[str, float]]:
    """scikit-learn baselines (the task's, by name) fit on the same transformed features and
    scored on test by ``score(y, predictions)``."""
    out = {}
    for kind, model in models.items():
        pred = model.fit(Z_train, y_train, sample_weight=w_train).predict(Z_test)
        out[kind] = score(y_test, pred)
    return out


@dataclasses.dataclass
class Inputs:
    schema: Schema
    transform: FeatureTransform
    image_shape: tuple[int, int] | None
    train: Split
    val: Split
    test: Split


def load_inputs(schema_path: str, features_prefix: str, data_dir: str) -> Inputs:
    schema = Schema.from_dict(load_json(schema_path))
    prefix = Path(features_prefix)
    npz, spec_path = require_file(prefix.with_suffix(".npz")), prefix.with_suffix(".json")
    transform = FeatureTransform.load(npz, require_file(spec_path))
    spec = load_json(prefix.with_suffix(".json"))
    shape = tuple(spec["image_shape"]) if spec.get("image_shape") else None
    data = Path(data_dir)
    return Inputs(
        schema,
        transform,
        shape,
        *(load_split(data / f"{s}.parquet", schema) for s in ("train", "val", "test")),
    )


def init_distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return (dist.get_rank() if world > 1 else 0), world
