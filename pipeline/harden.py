"""Harden stage: adversarial fine-tuning of the trained model, and its robustness evaluation.

    python -m pipeline.harden --params params.yaml --schema data/schema.json \
        --data data/prepared --model models/model.pt --train-metrics metrics/train.json \
        --out models/hardened.pt --metrics metrics/robustness.json \
        --plot plots/robustness.csv --figure plots/robustness.png \
        --reliability plots/reliability.png --timing metrics/harden_time.json \
        --tracking-db mlflow.db

Methods (``harden.method``): ``fgsm_rs`` (Wong et al. 2020, with the catastrophic-overfitting
stop), ``n_fgsm`` (de Jorge et al. 2022: large noise, no projection), ``pgd`` (Madry et al.,
k steps) and ``trades`` (Zhang et al. 2019). The threat model is
DESIGN.md's: L-inf in raw feature space, ``eps`` times each feature's range, clipped to its
observed bounds, attacked through the feature transform and the network together. Both the trained
and the hardened model are evaluated on the test split for every ``harden.eval_eps`` by the
per-row worst case over PGD, APGD-CE and APGD-DLR (Croce & Hein 2020), and cross-checked at
``harden.eps`` by the Adversarial Robustness Toolbox's AutoProjectedGradientDescent.

The clean-accuracy budget (``max_clean_drop``) picks the epochs on val and is checked on test as
the gate checks it (the most robust epoch that holds it there ships, else the trained weights).
Then temperature scaling is fit on val (``temperature`` in the checkpoint; export puts it in the
graph) and a reliability diagram shows the test split before and after.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from pipeline import stage
from pipeline.attacks import Box, fgsm_rs, n_fgsm, pgd, robust_accuracy, trades_adv, worst_case
from pipeline.config import HardenConfig
from pipeline.io import atomic_outputs, dump_json, load_checkpoint, load_json, save_checkpoint
from pipeline.model import Classifier, build
from pipeline.plots import plot_reliability, plot_robustness
from pipeline.schema import Schema
from pipeline.training import Split, load_split


def adversarial_loss(
    model: Classifier,
    xb: torch.Tensor,
    yb: torch.Tensor,
    wb: torch.Tensor,
    cfg: HardenConfig,
    box: Box,
) -> torch.Tensor:
    """The method's training loss on one batch; adversarial points are made in eval mode."""
    model.eval()  # batch-norm statistics are not polluted by the attack's forward passes
    if cfg.method == "fgsm_rs":
        x_adv = fgsm_rs(model, xb, yb, box)
    elif cfg.method == "n_fgsm":
        x_adv = n_fgsm(model, xb, yb, box)
    elif cfg.method == "pgd":
        x_adv = pgd(model, xb, yb, box, cfg.steps, step_frac=2.5 / cfg.steps)
    else:
        x_adv = trades_adv(model, xb, box, cfg.steps, step_frac=2.5 / cfg.steps)
    model.train()
    if cfg.method == "trades":
        logits = model(xb).float()
        kl = F.kl_div(
            F.log_softmax(model(x_adv).float(), 1), F.softmax(logits, 1), reduction="none"
        ).sum(1)
        per_row = F.cross_entropy(logits, yb, reduction="none") + cfg.trades_beta * kl
    else:
        per_row = F.cross_entropy(model(x_adv).float(), yb, reduction="none")
    return (per_row * wb).sum() / wb.sum()


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` in host memory (``load_state_dict`` copies it back to the device)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def harden(
    model: Classifier,
    train: Split,
    val: Split,
    schema: Schema,
    cfg: HardenConfig,
    device: torch.device,
) -> tuple[list[dict[str, float]], float, dict[str, Any]]:
    """Adversarially fine-tune ``model`` in place; returns the history, the seconds spent and
    how the kept weights were chosen.

    Each epoch is scored on the validation split (clean, and PGD-10 at ``cfg.eps``). The weights
    kept are the most robust ones whose clean accuracy stays within ``max_clean_drop`` of the
    starting model, or the starting weights if no epoch stays within it. With ``ema_decay``
    the weights scored and kept are the moving average's. fgsm_rs stops when
    robust accuracy collapses (catastrophic overfitting). ``limited`` says the budget held
    robustness back: an epoch over budget was more robust than the one kept.
    """
    torch.manual_seed(cfg.seed)
    model.to(device)
    start_state = copy.deepcopy(model.net.state_dict())
    train_box = Box.from_schema(schema, cfg.eps * cfg.train_eps_scale).to(device)
    val_box = Box.from_schema(schema, cfg.eps)
    clean_box = Box.from_schema(schema, 0.0)
    start_clean = robust_accuracy(model, val.X, val.y, clean_box, 1, 1)
    start_robust = robust_accuracy(model, val.X, val.y, val_box, 10, 1)
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(train.y) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
    )
    # Weight averaging (an exponential moving average of the weights, batch-norm buffers
    # included): the averaged weights are the ones scored each epoch and kept.
    ema = (
        AveragedModel(model.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay > 0
        else None
    )
    history: list[dict[str, float]] = []
    # The epochs within the budget on val, with their weights (in host memory: up to one copy
    # per epoch, which on a GPU would otherwise hold ``epochs`` copies of the model there).
    within: list[dict[str, Any]] = []
    peak = 0.0
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"harden ({cfg.method}): epochs")
    for epoch in bar:
        order = torch.randperm(
            len(train.y), generator=torch.Generator().manual_seed(cfg.seed * 1009 + epoch)
        )
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb, yb, wb = (t[idx].to(device) for t in (train.X, train.y, train.w))
            loss = adversarial_loss(model, xb, yb, wb, cfg, train_box)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model.net)
            total += loss.item() * len(idx)
        live = copy.deepcopy(model.net.state_dict()) if ema is not None else None
        if ema is not None:
            model.net.load_state_dict(ema.module.state_dict())
        clean = robust_accuracy(model, val.X, val.y, clean_box, 1, 1)
        robust = robust_accuracy(model, val.X, val.y, val_box, 10, 1)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / len(order),
                "val_clean": clean,
                "val_robust": robust,
            }
        )
        bar.set_postfix(val_clean=f"{clean:.3f}", val_robust=f"{robust:.3f}")
        if clean >= start_clean - cfg.max_clean_drop:
            within.append(
                {"epoch": epoch, "robust": robust, "state": cpu_copy(model.net.state_dict())}
            )
        if live is not None:
            model.net.load_state_dict(live)  # training goes on from the live weights
        peak = max(peak, robust)
        if cfg.method in ("fgsm_rs", "n_fgsm") and robust < peak - cfg.catastrophic_drop:
            print(
                f"harden: catastrophic overfitting at epoch {epoch} "
                f"(val robust {robust:.3f} after {peak:.3f}); stopping"
            )
            break
    within.sort(key=lambda c: (-c["robust"], c["epoch"]))  # most robust first, then earliest
    model.net.load_state_dict(within[0]["state"] if within else start_state)
    kept = max(within[0]["robust"], start_robust) if within else start_robust
    selection = {
        "val_clean_start": start_clean,
        "val_robust_start": start_robust,
        "val_robust_kept": kept,
        "kept": "hardened" if within else "trained (no epoch within budget)",
        "kept_epoch": within[0]["epoch"] if within else None,
        "best_val_robust_any_epoch": peak,
        "limited": bool(peak > kept + 1e-9),
        "candidates": within,  # for check_budget_on_test; not written to the metrics
    }
    return history, time.perf_counter() - start, selection


def art_apgd_accuracy(
    model: Classifier,
    X: np.ndarray,
    y: np.ndarray,
    box: Box,
    n_classes: int,
    n_iter: int,
    restarts: int,
    seed: int,
) -> float | None:
    """Robust accuracy under ART's AutoProjectedGradientDescent (cross-entropy): an independent
    implementation of a different, step-size-free attack. ART takes one scalar eps, so the
    problem is solved in normalised coordinates u = (x - low) / range, where the threat model's
    per-feature radius eps * range becomes the scalar eps and the bounds become [0, 1]. That is
    exact for numeric features; with categorical ones (never perturbed) it returns None."""
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    if not bool((box.eps > 0).any()):
        return None
    model = model.cpu().eval()
    low, span = box.low, box.high - box.low
    eps = float((box.eps / torch.where(span > 0, span, torch.ones_like(span))).max())
    if not torch.allclose(box.eps, eps * span):  # categoricals (eps 0 but a range)
        return None

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, u: torch.Tensor) -> torch.Tensor:
            return self.model(low + u * span)

    U = ((torch.as_tensor(X) - low) / torch.where(span > 0, span, torch.ones_like(span))).numpy()
    clf = PyTorchClassifier(
        model=Normalised(),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(X.shape[1],),
        nb_classes=n_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    attack = AutoProjectedGradientDescent(
        clf,
        norm=np.inf,
        eps=eps,
        eps_step=2 * eps,
        max_iter=n_iter,
        nb_random_init=restarts,
        batch_size=512,
        loss_type="cross_entropy",
        verbose=False,
    )
    np.random.seed(seed)  # ART draws its random starts from numpy's global RNG
    x_adv = attack.generate(x=U.astype(np.float32), y=y)
    return float((clf.predict(x_adv).argmax(1) == y).mean())


def evaluate_robustness(
    models: dict[str, Classifier],
    test: Split,
    schema: Schema,
    cfg: HardenConfig,
    device: torch.device,
) -> dict[str, Any]:
    """For every eps in the sweep: the per-row worst case over PGD, APGD-CE and APGD-DLR (the
    headline ``robust_accuracy`` at ``cfg.eps``), each attack's own figure, and ART's APGD-CE
    at ``cfg.eps`` as the independent check."""
    out: dict[str, Any] = {}
    for name, model in models.items():
        model.to(device)
        sweep, pgd_sweep, by_attack = {}, {}, {}
        for eps in sorted({0.0, *cfg.eval_eps, cfg.eps}):
            result = worst_case(
                model,
                test.X,
                test.y,
                Box.from_schema(schema, eps),
                n_iter=cfg.eval_apgd_iter,
                restarts=cfg.eval_restarts,
                pgd_steps=cfg.eval_steps,
                seed=cfg.seed,
                desc=f"worst case {name} eps={eps:g}",
            )
            sweep[f"{eps:g}"] = result["worst_case"]
            pgd_sweep[f"{eps:g}"] = result["by_attack"]["pgd"]
            if eps == cfg.eps:
                by_attack = result["by_attack"]
        out[name] = {
            "clean_accuracy": sweep["0"],
            "robust_accuracy": sweep[f"{cfg.eps:g}"],
            "by_attack": by_attack,
            "by_eps": sweep,
            "pgd_by_eps": pgd_sweep,
        }
        if cfg.art_check:
            out[name]["art_robust_accuracy"] = art_apgd_accuracy(
                model,
                test.X.numpy(),
                test.y.numpy(),
                Box.from_schema(schema, cfg.eps),
                schema.n_classes,
                cfg.eval_apgd_iter,
                cfg.eval_restarts,
                cfg.seed,
            )
            model.to(device)
    return out


def evaluation_method(cfg: HardenConfig) -> str:
    return (
        f"per-row worst case of PGD-{cfg.eval_steps}, APGD-CE and APGD-DLR "
        f"({cfg.eval_apgd_iter} iterations), {cfg.eval_restarts} restart(s) each, seed {cfg.seed}"
    )


def check_budget_on_test(
    trained: Classifier,
    hardened: Classifier,
    test: Split,
    schema: Schema,
    cfg: HardenConfig,
    selection: dict[str, Any],
) -> dict[str, Any]:
    """The clean-accuracy budget, checked on the test split as the gate checks it.

    The epochs were scored on the (often small) validation split, so the most robust epoch
    within the budget there may lose a row or two more on test. The epochs within the budget on
    val are tried most robust first, and the first that also holds it on test is kept (test
    decides only whether the budget holds, never which epoch is more robust); if none does, the
    trained weights ship (``fallback_to_trained``), so the default gate never has to reject
    hardening's output on clean accuracy.
    """
    selection = dict(selection)
    candidates = selection.pop("candidates", [])
    clean_box = Box.from_schema(schema, 0.0)
    before = robust_accuracy(trained, test.X, test.y, clean_box, 1, 1)
    # First the weights harden kept (the most robust epoch on val, or the trained weights when
    # none was within budget), then the other epochs within budget on val, in harden's order.
    drops: list[float] = []
    fallback = False
    for cand in [None, *candidates[1:]]:
        if cand is not None:
            hardened.net.load_state_dict(cand["state"])
        drops.append(before - robust_accuracy(hardened, test.X, test.y, clean_box, 1, 1))
        if drops[-1] <= cfg.max_clean_drop + 1e-12:
            if cand is not None:
                selection.update(kept_epoch=cand["epoch"], val_robust_kept=cand["robust"])
            break
    else:
        fallback = True
        hardened.net.load_state_dict(trained.net.state_dict())
        selection.update(kept="trained (no epoch within budget on test)", kept_epoch=None)
        drops.append(0.0)
    passed_over = len(drops) - 1
    # Robustness at eps costs more clean accuracy than the budget allows.
    selection["limited"] = bool(selection.get("limited", False) or passed_over or fallback)
    return {
        "max_clean_drop": cfg.max_clean_drop,
        "test_clean_drop_of_best_val_epoch": drops[0],
        "epochs_over_budget_on_test": passed_over,
        "test_clean_drop_of_kept": drops[-1],
        "fallback_to_trained": bool(fallback),
        **selection,
    }


def budget_notes(budget: dict[str, Any], cfg: HardenConfig) -> list[str]:
    notes = []
    if budget.get("epochs_over_budget_on_test"):
        notes.append(
            f"the most robust epoch on val lost {budget['test_clean_drop_of_best_val_epoch']:.4f} "
            f"clean accuracy on test, over harden.max_clean_drop = {cfg.max_clean_drop}: "
            + (
                "no epoch held the budget on test, the trained weights ship"
                if budget.get("fallback_to_trained")
                else f"epoch {budget['kept_epoch']} ships, the most robust one that held it "
                f"({budget['epochs_over_budget_on_test']} passed over)"
            )
        )
    if budget.get("limited"):
        notes.append(
            f"robustness at harden.eps = {cfg.eps:g} costs more clean accuracy than "
            f"harden.max_clean_drop = {cfg.max_clean_drop} allows (best val robust accuracy "
            f"{budget['best_val_robust_any_epoch']:.3f} over budget vs "
            f"{budget['val_robust_kept']:.3f} kept); raise harden.max_clean_drop to trade "
            "accuracy for robustness, or lower harden.eps"
        )
    return notes


def calibrate(
    trained: Classifier, hardened: Classifier, val: Split, test: Split
) -> tuple[float, dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Temperature scaling of the hardened model on val; ECE before and after on val and test,
    and the reliability curves (test) of the trained, hardened and calibrated models."""
    from pipeline.calibration import fit_temperature, logits_of, softmax
    from pipeline.metrics import expected_calibration_error as ece

    val_logits, test_logits = logits_of(hardened, val.X), logits_of(hardened, test.X)
    yv, yt = val.y.numpy(), test.y.numpy()
    temperature = fit_temperature(val_logits, yv)
    report = {
        "method": "temperature scaling, fit on the validation split",
        "temperature": temperature,
        "val_ece_before": ece(yv, softmax(val_logits)),
        "val_ece_after": ece(yv, softmax(val_logits, temperature)),
        "test_ece_before": ece(yt, softmax(test_logits)),
        "test_ece_after": ece(yt, softmax(test_logits, temperature)),
    }
    curves = {
        "trained": (yt, softmax(logits_of(trained, test.X))),
        "hardened": (yt, softmax(test_logits)),
        f"hardened, T = {temperature:.2f}": (yt, softmax(test_logits, temperature)),
    }
    return temperature, report, curves


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
    "--tracking-db",
)


def gradient_passes(cfg: HardenConfig, epochs: int, rows: int) -> int:
    """Forward-backward passes of hardening: the attack's steps plus the update, per row."""
    per_row = {"pgd": cfg.steps + 1, "trades": cfg.steps + 1, "fgsm_rs": 2, "n_fgsm": 2, "none": 0}
    return per_row[cfg.method] * epochs * rows


def body(ctx: stage.Context) -> None:
    args = ctx.args
    cfg = ctx.section("harden", HardenConfig)
    schema = Schema.from_dict(load_json(args.schema))
    data = Path(args.data)
    train, val, test = (load_split(data / f"{s}.parquet", schema) for s in ("train", "val", "test"))
    checkpoint = load_checkpoint(args.model)
    train_epochs = load_json(args.train_metrics)["epochs_run"]
    device = ctx.device()
    trained, hardened = build(checkpoint), build(checkpoint)
    history, seconds, selection = [], 0.0, {"kept": "trained (harden.method none)"}
    if cfg.method != "none":
        history, seconds, selection = harden(hardened, train, val, schema, cfg, device)
    budget = check_budget_on_test(trained, hardened, test, schema, cfg, selection)
    robustness = evaluate_robustness(
        {"trained": trained, "hardened": hardened}, test, schema, cfg, device
    )
    temperature, calibration, curves = calibrate(trained, hardened, val, test)
    rows = len(train.y)
    metrics = {
        "method": cfg.method,
        "eps": cfg.eps,
        "evaluation": evaluation_method(cfg),
        **robustness,
        "clean_accuracy_drop": robustness["trained"]["clean_accuracy"]
        - robustness["hardened"]["clean_accuracy"],
        "budget": budget,
        "calibration": calibration,
        "epochs_run": len(history),
        # Deterministic cost: gradient passes relative to training's (wall time: --timing).
        "harden_to_train_passes": gradient_passes(cfg, len(history), rows)
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
        "harden_config": dataclasses.asdict(cfg),
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
    for line in budget_notes(budget, cfg):
        print(f"harden: {line}")
    print(
        f"harden: temperature {temperature:.3f}: test ECE {calibration['test_ece_before']:.4f} "
        f"-> {calibration['test_ece_after']:.4f}"
    )
    print(
        f"harden: eps={cfg.eps:g} worst-case robust accuracy {t['robust_accuracy']:.4f} -> "
        f"{h['robust_accuracy']:.4f} (ART APGD-CE {art:.4f}), "
        f"clean {t['clean_accuracy']:.4f} -> {h['clean_accuracy']:.4f}, "
        f"{metrics['harden_to_train_passes']:.1f}x training's gradient passes, {seconds:.1f} s"
    )


def log_to_mlflow(
    args: argparse.Namespace,
    cfg: HardenConfig,
    metrics: dict[str, Any],
    history: list[dict[str, float]],
    seconds: float,
) -> None:
    from pipeline.tracking import Tracker

    tracker = Tracker(args.tracking_db)
    digest = hashlib.sha256(Path(args.model).read_bytes()).hexdigest()
    train_run = tracker.find_run("model_sha256", digest) or ""
    with tracker.run("harden", tags={"train_run_id": train_run}) as run:
        run.log_params({f"harden_{k}": v for k, v in dataclasses.asdict(cfg).items()})
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
