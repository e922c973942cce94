"""The robustness evaluation: per-row worst case of several attacks over a sweep of radii.

For every ``harden.eval_eps`` the per-row worst case over PGD, APGD-CE and APGD-DLR (Croce &
Hein 2020) on the test split, cross-checked at ``harden.eps`` by the Adversarial Robustness
Toolbox's AutoProjectedGradientDescent. Away from ``harden.eps`` the attacks cascade (the
APGDs only on the rows PGD left: a per-row worst case that does not attack rows already
broken; on the digits the sweep took 77 s, most of a first run's evaluation). Used by the
harden stage; the gate's cheaper settings call :func:`pipeline.learning.attacks.worst_case`
directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.contracts.params import HardenConfig
from pipeline.contracts.schema import Schema
from pipeline.learning.attacks import Box, worst_case
from pipeline.learning.model import Classifier
from pipeline.learning.splits import Split


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
    attack: bool = True,
) -> dict[str, Any]:
    """For every eps in the sweep: the per-row worst case over PGD, APGD-CE and APGD-DLR (the
    headline ``robust_accuracy`` at ``cfg.eps``) and PGD's figure; at ``cfg.eps`` each attack's
    own figure too, and ART's APGD-CE as the independent check. ``attack=False``: clean
    accuracy only (``robust_accuracy`` None), for a retrain, whose worst case at eps the gate
    measures."""
    out: dict[str, Any] = {}
    for name, model in models.items():
        model.to(device)
        sweep, pgd_sweep, by_attack = {}, {}, {}
        for eps in sorted({0.0, *cfg.eval_eps, cfg.eps}) if attack else [0.0]:
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
                # Each attack's own figure is reported at eps alone; elsewhere the sweep reads
                # the worst case and PGD's (the first attack, on every row), so the APGDs
                # attack only the rows PGD left (an unhardened model's rows mostly fall to PGD).
                cascade=eps != cfg.eps,
            )
            sweep[f"{eps:g}"] = result["worst_case"]
            pgd_sweep[f"{eps:g}"] = result["by_attack"]["pgd"]
            if eps == cfg.eps:
                by_attack = result["by_attack"]
        out[name] = {
            "clean_accuracy": sweep["0"],
            "robust_accuracy": sweep.get(f"{cfg.eps:g}"),
            "by_attack": by_attack,
            "by_eps": sweep,
            "pgd_by_eps": pgd_sweep,
        }
        if cfg.art_check and attack:
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


def evaluation_method(cfg: HardenConfig, attack: bool = True) -> str:
    if not attack:
        return (
            "clean accuracy only: a retrain's worst case at eps is the gate's, on both models "
            "(metrics/evaluate.json)"
        )
    return (
        f"per-row worst case of PGD-{cfg.eval_steps}, APGD-CE and APGD-DLR "
        f"({cfg.eval_apgd_iter} iterations), {cfg.eval_restarts} restart(s) each, seed {cfg.seed}"
    )
