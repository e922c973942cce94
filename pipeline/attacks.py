"""L-inf attacks in the raw input space a client controls (DESIGN.md's threat model).

A perturbation of feature j is bounded by ``eps * (high_j - low_j)``, the feature's observed range
in schema.json, and the perturbed value is clipped to ``[low_j, high_j]``. Attacks run on the whole
:class:`~pipeline.model.Classifier` (feature transform + network), so gradients flow through the
transform. Pure functions on tensors; used by the harden and evaluate stages.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipeline.schema import Schema


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
