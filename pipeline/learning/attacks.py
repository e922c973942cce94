"""L-inf attacks in the raw input space a client controls (docs/design.md's threat model).

A perturbation of feature j is bounded by ``eps * (high_j - low_j)``, the feature's observed range
in schema.json, and the perturbed value is clipped to ``[low_j, high_j]``. Attacks run on the whole
:class:`~pipeline.learning.model.Classifier` (feature transform + network), so gradients flow
through the transform. Pure functions on tensors; used by the harden and evaluate stages.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipeline.contracts.schema import Schema


@dataclasses.dataclass(frozen=True)
class Box:
    """Per-feature bounds of the threat model: radius ``eps`` inside ``[low, high]``."""

    eps: torch.Tensor  # (features,)
    low: torch.Tensor  # (features,)
    high: torch.Tensor  # (features,)

    @classmethod
    def from_schema(cls, schema: Schema, eps: float) -> Box:
        """Radius ``eps`` times each numeric feature's range. Categoricals are not perturbed:
        a client can only send a valid category, and swapping one is no L-inf step."""
        low, high = schema.bounds
        numeric = np.array([f.kind == "numeric" for f in schema.features])
        return cls(
            torch.tensor(eps * (high - low) * numeric, dtype=torch.float32),
            torch.tensor(low, dtype=torch.float32),
            torch.tensor(high, dtype=torch.float32),
        )

    def to(self, device: torch.device) -> Box:
        return Box(self.eps.to(device), self.low.to(device), self.high.to(device))

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Back into the eps-ball around ``x`` and the observed bounds."""
        x_adv = torch.minimum(torch.maximum(x_adv, x - self.eps), x + self.eps)
        return torch.minimum(torch.maximum(x_adv, self.low), self.high)

    def random_start(self, x: torch.Tensor) -> torch.Tensor:
        noise = (torch.rand_like(x) * 2 - 1) * self.eps
        return self.project(x + noise, x)


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    box: Box,
    steps: int,
    step_frac: float,
    random_start: bool = True,
) -> torch.Tensor:
    """Projected gradient ascent on cross-entropy (Madry et al.); step = step_frac * eps."""
    x_adv = box.random_start(x) if random_start else x.clone()
    for _ in range(steps):
        x_adv = box.project(x_adv + step_frac * box.eps * _grad(model, x_adv, y).sign(), x)
    return x_adv.detach()


def fgsm_rs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, box: Box, step_frac: float = 1.25
) -> torch.Tensor:
    """FGSM from a random start (Wong et al. 2020, "Fast is better than free")."""
    x0 = box.random_start(x)
    return box.project(x0 + step_frac * box.eps * _grad(model, x0, y).sign(), x).detach()


def n_fgsm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, box: Box, noise: float = 2.0
) -> torch.Tensor:
    """N-FGSM (de Jorge et al. 2022): noise of ``noise`` eps, one eps step, no projection back to
    the eps ball (only to the observed bounds); avoids catastrophic overfitting without an
    extra gradient."""
    x0 = x + (torch.rand_like(x) * 2 - 1) * noise * box.eps
    step = x0 + box.eps * _grad(model, x0, y).sign()
    return torch.minimum(torch.maximum(step, box.low), box.high).detach()


def trades_adv(
    model: nn.Module, x: torch.Tensor, box: Box, steps: int, step_frac: float
) -> torch.Tensor:
    """The TRADES inner maximisation: push KL(p(x) || p(x_adv)) up (Zhang et al. 2019)."""
    with torch.no_grad():
        p_clean = F.softmax(model(x).float(), dim=1)
    x_adv = box.project(x + 0.001 * box.eps * torch.randn_like(x), x)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = box.project(x_adv + step_frac * box.eps * grad.sign(), x)
    return x_adv.detach()


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def robust_accuracy(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    box: Box,
    steps: int,
    restarts: int,
    step_frac: float = 0.1,
    batch: int = 512,
    desc: str | None = None,
    seed: int = 0,
) -> float:
    """Accuracy under PGD with random restarts: a row counts only if every restart fails.

    ``eps = 0`` in every feature gives the clean accuracy. The random starts are drawn from
    ``seed`` (the caller's RNG state is left as it was), so the same model gives the same figure.
    """
    model.eval()
    device = next(model.parameters()).device
    box = box.to(device)
    correct = 0
    chunks = range(0, len(y), batch)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in tqdm(chunks, desc=desc, disable=desc is None, leave=False):
            xb, yb = X[i : i + batch].to(device), y[i : i + batch].to(device)
            alive = _correct(model, xb, yb)
            if box.eps.abs().sum() > 0:
                for _ in range(restarts):
                    if not alive.any():
                        break
                    adv = pgd(model, xb[alive], yb[alive], box, steps, step_frac)
                    still = _correct(model, adv, yb[alive])
                    alive[alive.clone()] = still
            correct += int(alive.sum())
    return correct / len(y)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row difference-of-logits ratio (Croce & Hein 2020): scale-invariant, so a model whose
    logits are merely large (or saturated) cannot hide behind a flat cross-entropy."""
    sorted_logits, order = logits.sort(dim=1, descending=True)
    true = logits.gather(1, y[:, None]).squeeze(1)
    top_is_true = order[:, 0] == y
    other = torch.where(top_is_true, sorted_logits[:, 1], sorted_logits[:, 0])
    third = sorted_logits[:, 2] if logits.shape[1] > 2 else sorted_logits[:, -1]
    return -(true - other) / (sorted_logits[:, 0] - third + 1e-12)


def _apgd_checkpoints(n_iter: int) -> set[int]:
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {int(np.ceil(q * n_iter)) for q in p[1:] if q < 1}


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    box: Box,
    n_iter: int,
    loss: str = "ce",
    rho: float = 0.75,
    alpha: float = 0.75,
) -> torch.Tensor:
    """Auto-PGD (Croce & Hein 2020, Algorithm 1) with per-feature radii: momentum 0.75, step
    2 eps halved at checkpoints when progress stalls, restart from the best point. ``loss``:
    ``ce`` (cross-entropy) or ``dlr`` (difference of logits ratio). Returns the point of highest
    loss found per row (a misclassified one if any was found)."""

    def losses(xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa = xa.detach().requires_grad_(True)
        logits = model(xa).float()
        per_row = (
            F.cross_entropy(logits, y, reduction="none") if loss == "ce" else dlr_loss(logits, y)
        )
        (grad,) = torch.autograd.grad(per_row.sum(), xa)
        return per_row.detach(), grad.detach()

    n = len(y)
    eps = box.eps[None, :]
    step = torch.full((n, 1), 2.0, device=x.device)
    checkpoints = _apgd_checkpoints(n_iter)
    x_k = box.random_start(x)
    f_k, g = losses(x_k)
    x_best, f_best = x_k.clone(), f_k.clone()
    fooled = model(x_k).argmax(1) != y
    x_fooled = torch.where(fooled[:, None], x_k, x_best)
    x_prev = x_k.clone()
    increases = torch.zeros(n, device=x.device)
    last = 0
    f_best_at_last, step_reduced_at_last = f_best.clone(), torch.ones(n, dtype=torch.bool)
    step_reduced_at_last = step_reduced_at_last.to(x.device)
    for k in range(n_iter):
        z = box.project(x_k + step * eps * g.sign(), x)
        a = alpha if k > 0 else 1.0
        x_next = box.project(x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev), x)
        f_next, g_next = losses(x_next)
        with torch.no_grad():
            now_fooled = model(x_next).argmax(1) != y
        x_fooled = torch.where((now_fooled & ~fooled)[:, None], x_next, x_fooled)
        fooled |= now_fooled
        increases += (f_next > f_k).float()
        better = f_next > f_best
        x_best = torch.where(better[:, None], x_next, x_best)
        f_best = torch.where(better, f_next, f_best)
        x_prev, x_k, f_k, g = x_k, x_next, f_next, g_next
        if k + 1 in checkpoints:
            stalled = increases < rho * (k + 1 - last)
            unchanged = ~step_reduced_at_last & (f_best <= f_best_at_last)
            halve = stalled | unchanged
            step = torch.where(halve[:, None], step / 2, step)
            x_k = torch.where(halve[:, None], x_best, x_k)
            if halve.any():
                f_k, g = losses(x_k)
            step_reduced_at_last = halve
            f_best_at_last = f_best.clone()
            increases.zero_()
            last = k + 1
    return torch.where(fooled[:, None], x_fooled, x_best).detach()


WORST_CASE_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr")


def worst_case(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    box: Box,
    n_iter: int,
    restarts: int,
    pgd_steps: int,
    seed: int = 0,
    batch: int = 512,
    desc: str | None = None,
    cascade: bool = False,
    judge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, object]:
    """Robust accuracy per attack and the per-row worst case over all of them.

    A row is robust only if it survives every restart of PGD (cross-entropy, step 0.1 eps),
    APGD-CE and APGD-DLR (DLR needs 3 classes; with 2 it is left out). Seeded: the caller's RNG
    is untouched and the same model gives the same figures. Returns ``{"by_attack": {name:
    accuracy}, "worst_case": accuracy, "robust_rows": bool array}``.

    ``cascade``: each attack only on the rows every earlier one left correct (the same per-row
    worst case, without attacking rows already broken: a model with no robustness on these
    rows costs one PGD instead of all three attacks); ``by_attack`` is then cumulative.

    ``judge``: which rows a shipped graph answers right at given points (clean, and each
    attack's), when it is not the model's exact copy (an int8 graph): the attacks are crafted
    on ``model`` (the graph's PyTorch twin) and each point is judged by the graph. Default:
    ``model`` judges its own points.
    """
    model.eval()
    device = next(model.parameters()).device
    box = box.to(device)
    right = judge if judge is not None else functools.partial(_correct, model)
    n_classes = None
    attacks = [a for a in WORST_CASE_ATTACKS]
    survived = {a: torch.zeros(len(y), dtype=torch.bool) for a in attacks}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in tqdm(range(0, len(y), batch), desc=desc, disable=desc is None, leave=False):
            xb, yb = X[i : i + batch].to(device), y[i : i + batch].to(device)
            clean = right(xb, yb)
            if n_classes is None:
                with torch.no_grad():
                    n_classes = model(xb[:1]).shape[1]
            standing = clean
            for name in attacks:
                alive = (standing if cascade else clean).clone()
                if box.eps.abs().sum() > 0 and not (name == "apgd-dlr" and n_classes < 3):
                    for _ in range(restarts):
                        if not alive.any():
                            break
                        xa, ya = xb[alive], yb[alive]
                        if name == "pgd":
                            adv = pgd(model, xa, ya, box, pgd_steps, 0.1)
                        else:
                            adv = apgd(model, xa, ya, box, n_iter, name.split("-")[1])
                        alive[alive.clone()] = right(adv, ya)
                survived[name][i : i + len(yb)] = alive.cpu()
                standing = alive
    if n_classes is not None and n_classes < 3:
        del survived["apgd-dlr"]
    rows = torch.stack(list(survived.values())).all(dim=0).numpy()
    return {
        "by_attack": {a: float(s.numpy().mean()) for a, s in survived.items()},
        "worst_case": float(rows.mean()),
        "robust_rows": rows,
    }


def _margin(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    true = proba[np.arange(len(y)), y]
    others = proba.copy()
    others[np.arange(len(y)), y] = -np.inf
    return true - others.max(axis=1)  # <= 0: misclassified


def square_attack(
    scores: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    eps: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    queries: int,
    seed: int = 0,
    p_init: float = 0.3,
) -> np.ndarray:
    """Black-box L-inf random search in the manner of the Square attack (Andriushchenko et al.
    2020) for flat feature vectors: start at a random vertex of the eps-box, then per query
    resample the signs of a random subset of features (its share ``p`` shrinks on Square's
    schedule) and keep the change when the margin p_true - max p_other falls. Needs only
    ``scores`` (probabilities), e.g. an onnxruntime session, so it cannot be fooled by masked
    gradients. Returns which rows were misclassified (bool array)."""
    rng = np.random.default_rng(seed)
    n, f = x.shape
    delta = eps * rng.choice([-1.0, 1.0], size=(n, f))
    adv = np.clip(x + delta, low, high)
    margin = _margin(scores(adv.astype(np.float32)), y)
    for i in range(queries):
        active = np.flatnonzero(margin > 0)
        if len(active) == 0:
            break
        frac = i / max(queries, 1)
        p = p_init / 2 ** sum(frac > t for t in (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8))
        mask = rng.random((len(active), f)) < p
        mask[np.arange(len(active)), rng.integers(0, f, len(active))] = True
        trial = np.where(mask, eps * rng.choice([-1.0, 1.0], size=mask.shape), delta[active])
        cand = np.clip(x[active] + trial, low, high)
        m = _margin(scores(cand.astype(np.float32)), y[active])
        better = m < margin[active]
        delta[active[better]] = trial[better]
        margin[active[better]] = m[better]
    return margin <= 0
