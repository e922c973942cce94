"""Temperature scaling (Guo et al. 2017): one scalar T so that softmax(logits / T) is calibrated.

Fit by the harden stage on the validation split after hardening (adversarial training leaves
a model under-confident or over-confident); export puts the division inside the ONNX graph, so
the probabilities the service returns are the calibrated ones. T does not change any argmax, so
accuracy and robust accuracy are untouched. Not run on its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from pipeline.learning.metrics import expected_calibration_error as ece
from pipeline.learning.model import Classifier
from pipeline.learning.splits import Split

LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]


def logits_of(model: Classifier, X: torch.Tensor, batch: int = 4096) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        parts = [model(X[i : i + batch].to(device)).float().cpu() for i in range(0, len(X), batch)]
    return torch.cat(parts).numpy().astype(np.float64)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the validation negative log-likelihood of softmax(logits / T)."""
    result = minimize_scalar(
        lambda log_t: nll(logits, y, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(logits / temperature, axis=1))


def calibrate(
    trained: Classifier, hardened: Classifier, val: Split, test: Split
) -> tuple[float, dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Temperature scaling of the hardened model on val; ECE before and after on val and test,
    and the reliability curves (test) of the trained, hardened and calibrated models."""
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
