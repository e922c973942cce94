"""A regressor's learning library: loss, metrics, baselines, attacks, hardening, intervals.

Used by the train, harden, export and evaluate stages when schema.json's task is regression; the
classifier's code paths do not come through here. Everything works on a
:class:`~pipeline.learning.model.Regressor`, whose network learns the standardised (for a skewed
positive target, logged) target:

- the loss (``train.regression_loss``): MSE or Huber on that scale, weighted per row;
- metrics: RMSE, MAE, R² in the target's units (and an interval's coverage and width);
- baselines: ridge and scikit-learn's ``HistGradientBoostingRegressor`` on the same features;
- attacks in docs/design.md's threat model (L-inf, ``eps`` of each feature's range, clipped to its
  bounds, through transform and network): PGD on the squared error and PGD pushing the
  prediction up and down; the robust figure is the per-row worst-case absolute error over
  them and the clean prediction (robust MAE);
- adversarial training (``harden.method``: pgd, trades, fgsm_rs, n_fgsm) maximising the loss,
  keeping the most robust epoch whose clean val R² stays within ``harden.max_clean_drop``;
- split conformal intervals (Vovk et al.; Lei et al. 2018) on the network's scale, fit on the
  validation split: ``[f(z - q), f(z + q)]`` with ``f`` the monotone map back to the target, so
  a logged target gets intervals that widen with the prediction; with ``data.sensitive``, one
  quantile per group of that feature (Mondrian), which the graph looks up per row.

One module (about 460 lines): a regressor's counterpart of the classifier's several libraries
(metrics, attacks, adversarial, calibration), each part a few dozen lines.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.contracts.params import HardenConfig
from pipeline.contracts.schema import Schema
from pipeline.learning.adversarial import same_shapes
from pipeline.learning.attacks import Box
from pipeline.learning.model import Regressor
from pipeline.learning.splits import Split


def regression_loss(
    z: torch.Tensor, target: torch.Tensor, w: torch.Tensor, kind: str = "mse", delta: float = 1.0
) -> torch.Tensor:
    """Weighted MSE or Huber loss on the standardised scale (``z``, ``target``: (batch,))."""
    z, target = z.float(), target.float()
    if kind == "huber":
        per_row = F.huber_loss(z, target, reduction="none", delta=delta)
    else:
        per_row = (z - target) ** 2
    return (per_row * w).sum() / w.sum()


@torch.no_grad()
def predict_standardized(model: Regressor, X: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat(
        [
            model.standardized(X[i : i + batch].to(device)).float().cpu()
            for i in range(0, len(X), batch)
        ]
    )


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else 0.0


@torch.no_grad()
def evaluate_regression(
    model: Regressor, split: Split, device: torch.device | None = None
) -> tuple[float, float, np.ndarray]:
    """(MSE on the standardised scale, R², predictions in target units) on ``split``."""
    z = predict_standardized(model, split.X)
    dev = next(model.parameters()).device
    target = model.standardize(split.y.float().to(dev)).cpu()
    loss = regression_loss(z, target, split.w).item()
    pred = model.unstandardize(z.to(dev)).cpu().numpy()
    return loss, r2(split.y.numpy(), pred), pred


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² in the target's units."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    err = pred - y
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": r2(y, pred),
    }


def interval_metrics(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> dict[str, float]:
    """The interval's realised coverage and mean width on ``y``."""
    y = np.asarray(y, dtype=np.float64)
    return {
        "coverage": float(np.mean((y >= lower) & (y <= upper))),
        "mean_width": float(np.mean(np.asarray(upper) - np.asarray(lower))),
    }


# ---- intervals ----


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """Split conformal: the ceil((n + 1) coverage)-th smallest of the ``n`` calibration scores
    (infinite when n is too small for that coverage)."""
    n = len(scores)
    k = math.ceil((n + 1) * coverage - 1e-9)  # 20 x 0.9 is 18, not 18.000...04
    if k > n:
        return math.inf
    return float(np.sort(np.asarray(scores, dtype=np.float64))[k - 1])


# A retrain's val with at least this many labelled production rows calibrates on them alone (the
# monitor re-baselines its drift reference on production rows at the same count).
PRODUCTION_CALIBRATION_ROWS = 200


def calibration_rows(val: Split) -> tuple[Split, str]:
    """The rows the interval is calibrated on: val's production rows once there are
    ``PRODUCTION_CALIBRATION_ROWS`` of them (the rows it will serve look like them: a noisy
    sensor, a new population), else all of val (drawn like the test split)."""
    prod = val.production
    if prod is not None and int(prod.sum()) >= PRODUCTION_CALIBRATION_ROWS:
        return Split(val.X[prod], val.y[prod], val.w[prod], prod[prod]), "production"
    return val, "validation"


def fit_interval(model: Regressor, val: Split, coverage: float) -> float:
    """The half-width ``q`` (network scale) of the split conformal interval fit on ``val``."""
    model.cpu()
    z = predict_standardized(model, val.X)
    scores = (model.standardize(val.y.float()) - z).abs().numpy()
    return conformal_quantile(scores, coverage)


def fit_group_intervals(
    model: Regressor, val: Split, coverage: float, column: int
) -> dict[float, float]:
    """Group-conditional (Mondrian) split conformal (Vovk et al. 2003): for each value of raw
    feature ``column`` in ``val`` (a group of ``data.sensitive``; missing is no group), the
    quantile of that group's own scores, so each group's coverage is nominal, not only the
    average's. A group too small for ``coverage`` (fewer than about 1 / (1 - coverage) rows)
    is left out: its rows keep the pooled half-width."""
    model.cpu()
    z = predict_standardized(model, val.X)
    scores = (model.standardize(val.y.float()) - z).abs().numpy()
    values = val.X[:, column].numpy()
    out = {}
    for code in np.unique(values[~np.isnan(values)]):
        q = conformal_quantile(scores[values == code], coverage)
        if math.isfinite(q):
            out[float(code)] = q
    return out


def row_half_widths(X: torch.Tensor, q: float, by_group: dict[str, Any] | None) -> torch.Tensor:
    """(rows,) each row's half-width: its group's (``by_group``: the checkpoint's ``column``,
    ``codes``, ``half_widths``), else the pooled ``q``; the graph computes the same."""
    if not by_group:
        return torch.full((len(X),), float(q))
    codes = torch.tensor(by_group["codes"], dtype=torch.float32)
    widths = torch.tensor(by_group["half_widths"], dtype=torch.float32)
    hit = (X[:, by_group["column"]].unsqueeze(1) == codes).float()
    return (hit * widths).sum(dim=1) + (1.0 - hit.sum(dim=1)) * float(q)


@torch.no_grad()
def predict_interval(
    model: Regressor, X: torch.Tensor, q: float, by_group: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, lower, upper) in target units for raw features ``X`` (``by_group``: one
    half-width per group, :func:`row_half_widths`)."""
    model.cpu()
    z = predict_standardized(model, X)
    half = row_half_widths(X, q, by_group) if by_group else q
    return tuple(model.unstandardize(v).numpy() for v in (z, z - half, z + half))  # type: ignore[return-value]


# ---- attacks ----


def _ascend(
    model: Regressor,
    x: torch.Tensor,
    objective: Any,
    box: Box,
    steps: int,
    step_frac: float,
    start: torch.Tensor,
) -> torch.Tensor:
    x_adv = start
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(model.standardized(x_adv)).sum(), x_adv)
        x_adv = box.project(x_adv + step_frac * box.eps * grad.sign(), x)
    return x_adv.detach()


def pgd_regression(
    model: Regressor,
    x: torch.Tensor,
    target: torch.Tensor,
    box: Box,
    steps: int,
    step_frac: float,
    random_start: bool = True,
    direction: int = 0,
) -> torch.Tensor:
    """PGD on the squared error to ``target`` (the standardised truth); ``direction`` +1 / -1:
    push the prediction up / down instead (the worst case for a row can be either side)."""
    start = box.random_start(x) if random_start else x.clone()
    if direction:
        return _ascend(model, x, lambda z: direction * z, box, steps, step_frac, start)
    return _ascend(model, x, lambda z: (z - target) ** 2, box, steps, step_frac, start)


def worst_case_error(
    model: Regressor,
    X: torch.Tensor,
    y: torch.Tensor,
    box: Box,
    steps: int,
    restarts: int,
    seed: int,
    batch: int = 512,
    progress: str | None = None,
) -> np.ndarray:
    """Per row, the largest absolute error (target units) over the clean prediction, PGD on the
    squared error (``restarts`` random starts) and PGD pushing up and down from the point."""
    model.eval()
    device = next(model.parameters()).device
    box = box.to(device)
    torch.manual_seed(seed)
    out = []
    chunks = range(0, len(y), batch)
    for i in tqdm(chunks, desc=progress, leave=False, disable=progress is None):
        xb, yb = X[i : i + batch].to(device), y[i : i + batch].to(device).float()
        target = model.standardize(yb)
        with torch.no_grad():
            worst = (model(xb) - yb).abs()
        candidates = [
            pgd_regression(model, xb, target, box, steps, 2.5 / steps, random_start=True)
            for _ in range(restarts)
        ]
        candidates += [
            pgd_regression(model, xb, target, box, steps, 2.5 / steps, False, direction=d)
            for d in (1, -1)
        ]
        with torch.no_grad():
            for x_adv in candidates:
                worst = torch.maximum(worst, (model(x_adv) - yb).abs())
        out.append(worst.cpu())
    return torch.cat(out).numpy().astype(np.float64)


# ---- hardening ----


def adversarial_loss(
    model: Regressor,
    xb: torch.Tensor,
    yb: torch.Tensor,
    wb: torch.Tensor,
    cfg: HardenConfig,
    box: Box,
    loss: tuple[str, float],
) -> torch.Tensor:
    """The method's training loss on one batch (adversarial points made in eval mode)."""
    target = model.standardize(yb.float())
    model.eval()
    if cfg.method in ("fgsm_rs", "n_fgsm"):
        x_adv = pgd_regression(model, xb, target, box, 1, 1.25)
    elif cfg.method == "trades":
        with torch.no_grad():
            z_clean = model.standardized(xb)
        x_adv = _ascend(
            model,
            xb,
            lambda z: (z - z_clean) ** 2,
            box,
            cfg.steps,
            2.5 / cfg.steps,
            box.random_start(xb),
        )
    else:
        x_adv = pgd_regression(model, xb, target, box, cfg.steps, 2.5 / cfg.steps)
    model.train()
    kind, delta = loss
    if cfg.method == "trades":
        z = model.standardized(xb)
        smooth = ((model.standardized(x_adv) - z) ** 2 * wb).sum() / wb.sum()
        return regression_loss(z, target, wb, kind, delta) + cfg.trades_beta * smooth
    return regression_loss(model.standardized(x_adv), target, wb, kind, delta)


@dataclasses.dataclass(frozen=True)
class Epoch:
    epoch: int
    robust_mae: float  # val, PGD-10 worst case of the three attacks
    clean_r2: float
    state: dict[str, torch.Tensor] = dataclasses.field(repr=False)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _val_scores(model: Regressor, val: Split, box: Box, seed: int) -> tuple[float, float]:
    """(clean R², robust MAE at eps with PGD-10) on ``val``."""
    device = next(model.parameters()).device
    z = predict_standardized(model, val.X).to(device)
    pred = model.unstandardize(z).cpu().numpy()
    robust = worst_case_error(model, val.X, val.y, box, 10, 1, seed)
    return r2(val.y.numpy(), pred), float(robust.mean())


def harden_regression(
    model: Regressor,
    train: Split,
    val: Split,
    schema: Schema,
    cfg: HardenConfig,
    device: torch.device,
    loss: tuple[str, float],
    reference: Regressor | None = None,
) -> tuple[list[dict[str, float]], float, dict[str, Any], list[Epoch]]:
    """Adversarially fine-tune ``model`` in place (AdamW, one-cycle). Each epoch is scored on
    val: clean R² and robust MAE (PGD-10 at ``eps``). Kept: the most robust epoch whose clean R²
    is within ``max_clean_drop`` of the reference's (the model before hardening), else the
    reference's weights. A reference of another shape (the unpruned model of a pruned one, the
    compress stage's) sets the budget only: the most robust epoch within it is kept, and with
    none the most accurate epoch. Returns the history, the seconds, the selection report
    and the epochs within budget (most robust first) for the check on test."""
    torch.manual_seed(cfg.seed)
    model.to(device)
    reference = (reference or model).to(device)
    fits = same_shapes(reference.net.state_dict(), model.net.state_dict())
    fallback = copy.deepcopy((reference if fits else model).net.state_dict())
    train_box = Box.from_schema(schema, cfg.eps * cfg.train_eps_scale).to(device)
    val_box = Box.from_schema(schema, cfg.eps)
    start_r2, start_robust = _val_scores(reference, val, val_box, cfg.seed)
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(train.y) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
    )
    history: list[dict[str, float]] = []
    within: list[Epoch] = []
    closest: Epoch | None = None  # a pruned model's most accurate epoch
    best_any = start_robust
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"harden ({cfg.method}, regression): epochs")
    for epoch in bar:
        order = torch.randperm(
            len(train.y), generator=torch.Generator().manual_seed(cfg.seed * 1009 + epoch)
        )
        model.train()
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two rows
                continue
            xb, yb, wb = (t[idx].to(device) for t in (train.X, train.y, train.w))
            batch_loss = adversarial_loss(model, xb, yb, wb, cfg, train_box, loss)
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            sched.step()
            total += batch_loss.item() * len(idx)
        clean, robust = _val_scores(model, val, val_box, cfg.seed)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / len(order),
                "val_r2": clean,
                "val_robust_mae": robust,
            }
        )
        bar.set_postfix(val_r2=f"{clean:.3f}", val_robust_mae=f"{robust:.3g}")
        best_any = min(best_any, robust)
        if clean >= start_r2 - cfg.max_clean_drop:
            within.append(Epoch(epoch, robust, clean, _cpu_copy(model.net.state_dict())))
        elif not fits and (closest is None or clean > closest.clean_r2):
            closest = Epoch(epoch, robust, clean, _cpu_copy(model.net.state_dict()))
    within.sort(key=lambda e: (e.robust_mae, -e.clean_r2, e.epoch))
    if within and (within[0].robust_mae < start_robust or not fits):
        model.net.load_state_dict(within[0].state)
        kept = {"kept": "hardened", "kept_epoch": within[0].epoch}
    else:
        model.net.load_state_dict(fallback if closest is None else closest.state)
        within = []
        kept = {"kept": "trained (no epoch within budget more robust)", "kept_epoch": None}
    most_robust_within = within[0].robust_mae if within else start_robust
    report = {
        **kept,
        "val_r2_start": start_r2,
        "val_robust_mae_start": start_robust,
        "val_robust_mae_kept": most_robust_within,
        "best_val_robust_mae_any_epoch": best_any,
        # the budget held robustness back: an epoch over budget was more robust than the kept
        "limited": bool(best_any < most_robust_within - 1e-12),
    }
    return history, time.perf_counter() - start, report, within


def check_budget_on_test(
    trained: Regressor,
    hardened: Regressor,
    test: Split,
    cfg: HardenConfig,
    selection: dict[str, Any],
    within: list[Epoch],
) -> dict[str, Any]:
    """The clean budget (test R² within ``max_clean_drop`` of the trained model's) on test: the
    kept epoch, else the next within budget on val, else the trained weights."""

    def test_r2(model: Regressor) -> float:
        z = predict_standardized(model.cpu(), test.X)
        return r2(test.y.numpy(), model.unstandardize(z).numpy())

    before = test_r2(trained)
    drops: list[float] = []
    fallback = False
    for cand in [None, *within[1:]]:
        if cand is not None:
            hardened.net.load_state_dict(cand.state)
        drops.append(before - test_r2(hardened))
        if drops[-1] <= cfg.max_clean_drop + 1e-12:
            if cand is not None:
                selection = {
                    **selection,
                    "kept_epoch": cand.epoch,
                    "val_robust_mae_kept": cand.robust_mae,
                }
            break
    else:
        fallback = True
        hardened.net.load_state_dict(trained.net.state_dict())
        selection = {
            **selection,
            "kept": "trained (no epoch within budget on test)",
            "kept_epoch": None,
        }
        drops.append(0.0)
    passed_over = len(drops) - 1
    return {
        "max_clean_drop": cfg.max_clean_drop,
        "measure": "R² (test, clean)",
        "test_clean_drop_of_best_val_epoch": drops[0],
        "epochs_over_budget_on_test": passed_over,
        "test_clean_drop_of_kept": drops[-1],
        "fallback_to_trained": fallback,
        **selection,
        "limited": bool(selection["limited"] or passed_over or fallback),
    }
