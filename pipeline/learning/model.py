"""Model definitions: an MLP, a small CNN and an efficient ensemble for tables (TabM-mini)
behind the fitted feature transform. No I/O here.

A checkpoint stores :class:`ModelConfig` and the transform's arrays beside the weights, so
:func:`build` rebuilds the whole raw-features-to-logits model without any training code. A
regressor (checkpoint ``task: regression``) is the same network with one output, which
:class:`Regressor` turns from the standardised (and, for a skewed positive target, logged)
scale it learns in back into the target's units; its ``target_scaling`` is in the checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pipeline.learning.checkpoint import Checkpoint
from pipeline.learning.transforms import TransformModule


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: Literal["mlp", "cnn", "tabm"]
    n_in: int  # features after the transform
    n_classes: int
    hidden: int
    depth: int
    dropout: float
    channels: int  # CNN only: width of the first conv layer
    image_shape: tuple[int, int] | None  # CNN only: (height, width) of the transformed input
    members: int = 1  # TabM only: ensemble members (absent from checkpoints before TabM)

    def as_dict(self) -> dict[str, Any]:
        """What a checkpoint's ``model_config`` holds: ``members`` only for a TabM, so the other
        networks' checkpoints are the bytes they were before it existed."""
        out = dataclasses.asdict(self)
        if self.arch != "tabm":
            del out["members"]
        return out


class MLP(nn.Module):
    """(batch, n_in) -> (batch, classes): [Linear, BatchNorm, ReLU, Dropout] x depth, Linear."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = cfg.n_in
        for _ in range(cfg.depth):
            layers += [
                nn.Linear(width, cfg.hidden),
                nn.BatchNorm1d(cfg.hidden),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
            ]
            width = cfg.hidden
        layers.append(nn.Linear(width, cfg.n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class TabM(nn.Module):
    """(batch, n_in) -> (batch, classes): an efficient ensemble for tables, after TabM-mini
    (Gorishniy et al., ICLR 2025). Each of ``members`` copies of a row is scaled feature-wise by
    its member's adapter (initialised to random signs), all pass one shared MLP ([Linear, ReLU,
    Dropout] x depth, no batch norm), and the members' last hidden layers are averaged before one
    linear head, which is the ensemble's mean answer: one graph, trained on that mean.

    The head is shared (TabM's own has one per member, each trained on its own loss) so that
    Torch-Pruning can trace the whole network and the training loop, attacks and export see one
    answer: in a standalone prototype (three seeds of the price table and Friedman #1) the two
    were within 0.01 R² and both above HistGradientBoosting on every seed; docs/your-data.md,
    "Tables", has the pipeline's figures.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.adapter = nn.Parameter(torch.randint(0, 2, (cfg.members, cfg.n_in)) * 2.0 - 1.0)
        layers: list[nn.Module] = []
        width = cfg.n_in
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, cfg.n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        members = self.body(z.unsqueeze(1) * self.adapter)  # (batch, members, hidden)
        return self.head(members.mean(1))


class CNN(nn.Module):
    """(batch, H*W) -> (batch, classes): conv blocks on the (1, H, W) image, then an MLP head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.image_shape is None or int(np.prod(cfg.image_shape)) != cfg.n_in:
            raise ValueError(
                f"a CNN needs image_shape with {cfg.n_in} pixels, got {cfg.image_shape}"
            )
        self.image_shape = tuple(cfg.image_shape)
        c = cfg.channels

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(1, c),
            *block(c, c),
            nn.MaxPool2d(2),  # (batch, c, H/2, W/2)
            *block(c, 2 * c),
            *block(2 * c, 2 * c),
            nn.AdaptiveAvgPool2d(2),  # (batch, 2c, 2, 2)
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(8 * c, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.n_classes),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, w = self.image_shape
        return self.head(self.features(z.reshape(-1, 1, h, w)))


class Classifier(nn.Module):
    """The whole model: raw features (batch, features_in) -> logits (batch, classes).

    The transform has buffers only (nothing to learn), so gradients flow through it to the input,
    which is what the adversarial attacks of the harden stage need.
    """

    def __init__(self, transform: TransformModule, net: nn.Module) -> None:
        super().__init__()
        self.transform = transform
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.transform(x))


@dataclasses.dataclass(frozen=True)
class TargetScaling:
    """How a regressor's network sees the target: ``(log1p(y - shift) if log else y)``, minus
    ``center``, over ``scale``. Fit on the train split's targets."""

    center: float
    scale: float
    log: bool = False
    shift: float = 0.0

    @classmethod
    def for_target(cls, y: np.ndarray, mode: str) -> TargetScaling:
        """``train.log_target``: ``auto`` learns log1p of a positive target skewed above 1."""
        from scipy.stats import skew

        y = np.asarray(y, dtype=np.float64)
        log = mode == "auto" and bool(y.min() > 0) and float(skew(y)) > 1.0
        return cls.fit(y, log)

    @classmethod
    def fit(cls, y: np.ndarray, log: bool) -> TargetScaling:
        y = np.asarray(y, dtype=np.float64)
        shift = float(y.min()) - 1.0 if log else 0.0  # log1p of y - shift >= log1p(1)
        v = np.log1p(y - shift) if log else y
        return cls(float(v.mean()), float(v.std()) or 1.0, log, shift)


class Regressor(nn.Module):
    """The whole regressor: raw features (batch, features_in) -> prediction (batch,) in the
    target's units. :meth:`standardized` is what the network outputs and the loss reads."""

    def __init__(self, transform: TransformModule, net: nn.Module, scaling: TargetScaling) -> None:
        super().__init__()
        self.transform = transform
        self.net = net
        self.scaling = scaling
        self.register_buffer("center", torch.tensor(scaling.center))
        self.register_buffer("scale", torch.tensor(scaling.scale))
        self.register_buffer("shift", torch.tensor(scaling.shift))

    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.transform(x)).squeeze(-1)

    def standardize(self, y: torch.Tensor) -> torch.Tensor:
        """Targets in the target's units -> the scale the network learns in."""
        v = torch.log1p(torch.clamp(y - self.shift, min=0.0)) if self.scaling.log else y
        return (v - self.center) / self.scale

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        v = z * self.scale + self.center
        return torch.expm1(v) + self.shift if self.scaling.log else v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unstandardize(self.standardized(x))


NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "tabm": TabM}


def build_net(cfg: ModelConfig) -> nn.Module:
    return NETS[cfg.arch](cfg)


# How a checkpoint's task (``task``, absent before regression existed: a classifier) wraps its
# transform and network.
MODELS: dict[str, Any] = {
    "classification": lambda transform, net, ckpt: Classifier(transform, net),
    "regression": lambda transform, net, ckpt: Regressor(
        transform, net, TargetScaling(**ckpt.target_scaling)
    ),
}


def build(checkpoint: Checkpoint) -> Any:
    """Rebuild the model saved by the train (or harden) stage, in eval mode: a
    :class:`Classifier`, or a :class:`Regressor` for a checkpoint of task regression."""
    cfg = ModelConfig(**checkpoint.model_config)
    state = {k: v.numpy() for k, v in checkpoint.transform_state.items()}
    head = MODELS[checkpoint.task_name]
    model = head(TransformModule(state), build_net(cfg), checkpoint)
    model.net.load_state_dict(checkpoint.net)
    return model.eval()


def transform_state_tensors(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Transform arrays as tensors, so checkpoints load with ``torch.load(weights_only=True)``."""
    return {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
