"""The task type's base: what every task gives the stages, and the records they hand it.

docs/design.md, "The task is a type": every stage has one body and asks its task what differs
(the network's outputs and loss, the quality figures and baselines, the hardening objective and
the calibration head, the export head and its parity check, the gate's terms, the model card's
sections). A new task subclasses :class:`Task` in a module of :mod:`pipeline.learning.tasks`
(and :class:`~pipeline.contracts.task.ServedTask` on the contracts side) and is registered in
that package's ``TASKS``; no stage changes.

    from pipeline.learning.tasks import task_for
    task = task_for(schema)      # Classification() or Regression()
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import GateConfig, HardenConfig, TrainConfig
from pipeline.contracts.schema import LABEL, Schema
from pipeline.learning.checkpoint import Checkpoint
from pipeline.learning.model import ModelConfig
from pipeline.learning.splits import Split
from pipeline.learning.training import Objective, fit_baselines
from pipeline.learning.transforms import FeatureTransform
from pipeline.release import card
from pipeline.release.decision import Decision, Production
from pipeline.release.gate import Figures, GateContext, GroupGap, Terms, Verdict, hints, judge


@dataclasses.dataclass(frozen=True)
class Quality:
    """What the train stage reports of a trained model: its metrics (metrics/train.json) and
    its test predictions (probabilities, or a regressor's values) for the test figure."""

    metrics: dict[str, Any]
    test_predictions: np.ndarray


@dataclasses.dataclass(frozen=True)
class Hardened:
    """What a task's hardening hands back to the harden stage to write.

    ``metrics``: metrics/robustness.json; ``table``: plots/robustness.csv; ``checkpoint``: the
    :class:`Checkpoint` fields the hardened one adds (the calibration head export puts in the
    graph: ``temperature``, ``interval``); ``figure``
    writes the reliability figure's file (``--reliability``); ``summary``: the lines printed.
    """

    metrics: dict[str, Any]
    table: pd.DataFrame
    checkpoint: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float
    figure: Any  # Callable[[Path], None]
    summary: list[str]


@dataclasses.dataclass(frozen=True)
class HardenRun:
    """What the harden stage hands its task: both models (``hardened`` is fine-tuned in place;
    ``trained`` stays the clean reference), the splits, and the settings."""

    trained: Any
    hardened: Any
    train: Split
    val: Split
    test: Split
    schema: Schema
    cfg: HardenConfig
    device: torch.device
    first_run: bool  # no champion to start from: the full evaluation sweep
    train_epochs: int  # the train stage's, for the cost ratio
    section: Any  # Callable[[str, type[T]], T]: another params.yaml section the task reads


@dataclasses.dataclass(frozen=True)
class Exported:
    """A model and the graphs exported from it, for the parity check."""

    model: Any
    checkpoint: Checkpoint
    fp32: Path
    int8: Path | None
    schema: Schema


@dataclasses.dataclass(frozen=True)
class Measured:
    """A model as the gate measures it: its shipped graph and its PyTorch twin (the gradient
    attacks run on the twin, which export proved equal to the graph; ``judged``: a graph that is
    not the twin's exact copy, an int8 one, judges the twin's adversarial points itself)."""

    onnx: Path
    twin: Any
    judged: bool = False


@dataclasses.dataclass(frozen=True)
class Attack:
    """How the gate attacks: the box (schema.json's bounds, ``eps`` of each feature's range) and
    the attacks' settings (``gate``)."""

    schema: Schema
    eps: float
    cfg: GateConfig


@dataclasses.dataclass(frozen=True)
class Record:
    """What the model card reads: the schema, the gate's decision and the earlier stages'
    metrics (metrics/train.json, robustness.json, export.json) and the checkpoint."""

    schema: Schema
    decision: Decision
    train: dict[str, Any]
    robustness: dict[str, Any]
    export: dict[str, Any]
    checkpoint: Checkpoint
    # /explain's attributions on (a sample of) the test split, and each row's answered class
    # (None for a regressor): the card's "what the answers rest on".
    explained: tuple[np.ndarray, np.ndarray | None] | None = None


class Task(abc.ABC):
    """What differs between tasks, for the stages; see the module docstring."""

    name: ClassVar[str]
    main: ClassVar[str]  # the main figure: accuracy, r2
    main_name: ClassVar[str]  # how texts name it: accuracy, R²
    robust: ClassVar[str]  # the gate's robust figure: robust_accuracy, robust_mae
    robust_is_error: ClassVar[bool]  # lower is better (robust MAE)
    int8_delta: ClassVar[str]  # metrics/export.json's int8-minus-fp32 figure
    outputs: ClassVar[tuple[str, ...]]  # the ONNX graph's outputs
    robustness_axes: ClassVar[dict[str, Any]]  # plots/robustness.png's labels
    # What the stages' records say of the task (a classifier's records predate the key: none).
    tag: ClassVar[dict[str, str]]

    @property
    def baseline_key(self) -> str:
        return f"test_{self.main}"

    @property
    def clean_key(self) -> str:
        return f"clean_{self.main}"

    # ---- data and model ----

    @abc.abstractmethod
    def target(self, df: pd.DataFrame) -> np.ndarray:
        """The prepared split's labels as the gate compares them."""

    @abc.abstractmethod
    def head(self, schema: Schema, cfg: TrainConfig) -> tuple[int, float]:
        """(outputs, dropout) of the network."""

    def model_config(
        self,
        cfg: TrainConfig,
        transform: FeatureTransform,
        schema: Schema,
        image_shape: tuple[int, int] | None,
    ) -> ModelConfig:
        """The network's config: ``train.model`` (``auto``: a CNN for image-shaped features, a
        TabM ensemble otherwise) with this task's head."""
        arch = cfg.model if cfg.model != "auto" else ("cnn" if image_shape else "tabm")
        if arch == "cnn" and image_shape is None:
            raise MlcycleError(
                "train.model = 'cnn' needs image-shaped features: an image source (such as "
                "digits) and a transform that keeps the layout (no PCA, no one-hot); use "
                "train.model = 'tabm' or 'mlp'"
            )
        outputs, dropout = self.head(schema, cfg)
        return ModelConfig(
            arch=arch,
            n_in=transform.n_features_out_,
            n_classes=outputs,
            hidden=cfg.hidden,
            depth=cfg.depth,
            dropout=dropout,
            channels=cfg.channels,
            image_shape=image_shape,
            members=cfg.members if arch == "tabm" else 1,
        )

    @abc.abstractmethod
    def new_model(
        self, transform: nn.Module, net: nn.Module, train: Split, cfg: TrainConfig
    ) -> Any:
        """The model to train around ``net``."""

    @abc.abstractmethod
    def warm(self, model: Any, warm: Checkpoint, cfg: TrainConfig) -> tuple[Any, dict]:
        """A retrain: the model on the champion's terms and the train keys it fine-tunes with."""

    @property
    @abc.abstractmethod
    def objective(self) -> Objective:
        """The training loop's loss and score (:func:`pipeline.learning.training.fit`)."""

    @abc.abstractmethod
    def metrics(self, y: np.ndarray, predictions: np.ndarray, schema: Schema) -> dict[str, Any]:
        """The task's quality figures of ``predictions`` against ``y``."""

    @abc.abstractmethod
    def baselines(self, cfg: TrainConfig) -> dict[str, Any]:
        """The scikit-learn baselines ``train`` names, unfitted, by name."""

    @abc.abstractmethod
    def baseline_score(self, y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        """A baseline's test figures (``test_<main>`` among them)."""

    def fitted(self, model: Any) -> dict[str, Any]:
        """What metrics/train.json says of the trained model beyond its figures."""
        return {}

    def quality(self, model: Any, inputs: Any, cfg: TrainConfig) -> Quality:
        """Test and val figures and the baselines' on the same transformed features (train
        stage; deterministic, no timings)."""
        model.cpu()
        cpu = torch.device("cpu")
        _, _, val_pred = self.objective.evaluate(model, inputs.val, cpu)
        _, _, test_pred = self.objective.evaluate(model, inputs.test, cpu)
        tf, train, test_split = inputs.transform, inputs.train, inputs.test
        baselines = fit_baselines(
            self.baselines(cfg),
            tf.transform(train.X.numpy()),
            train.y.numpy(),
            train.w.numpy(),
            tf.transform(test_split.X.numpy()),
            test_split.y.numpy(),
            self.baseline_score,
        )
        test = self.metrics(test_split.y.numpy(), test_pred, inputs.schema)
        key = self.baseline_key
        best = max(baselines.items(), key=lambda kv: kv[1][key], default=None)
        metrics = {
            **self.tag,
            "test": test,
            "val": self.metrics(inputs.val.y.numpy(), val_pred, inputs.schema),
            **self.fitted(model),
            "baselines": baselines,
            "best_baseline": best[0] if best else None,
            "beat_baseline": bool(best is None or test[self.main] > best[1][key]),
        }
        return Quality(metrics, test_pred)

    def saved(self, model: Any) -> dict[str, Any]:
        """What a checkpoint carries for this task beyond the shared keys (build() reads it)."""
        return {**self.tag, **self.fitted(model)}

    @abc.abstractmethod
    def plot_test(self, y: np.ndarray, predictions: np.ndarray, schema: Schema, path: Path) -> None:
        """The train stage's test figure (``--confusion``)."""

    @abc.abstractmethod
    def logged_baseline(self, key: str) -> bool:
        """Whether a baseline's figure goes to MLflow."""

    # ---- harden ----

    @abc.abstractmethod
    def warm_overlay(self, cfg: HardenConfig) -> dict[str, Any]:
        """The harden keys a retrain changes beyond its epochs and learning rate."""

    @abc.abstractmethod
    def harden(self, run: HardenRun) -> Hardened:
        """Adversarial fine-tuning of ``run.hardened`` in place, its evaluation and its
        calibration head."""

    @abc.abstractmethod
    def fine_tune(self, run: HardenRun) -> dict[str, Any]:
        """The compress stage's: a pruned ``run.hardened`` fine-tuned in place by the harden
        loop (``run.cfg``) against ``run.trained``'s clean budget (the unpruned model), then its
        own calibration head; returns the checkpoint fields (as :attr:`Hardened.checkpoint`).
        No evaluation: the stage measures each graph as the gate does."""

    # ---- export ----

    @abc.abstractmethod
    def served(self, model: Any, checkpoint: Checkpoint) -> nn.Module:
        """The module the ONNX graph computes: raw features to this task's outputs."""

    @abc.abstractmethod
    def parity(
        self, exported: Exported, X: np.ndarray, y: np.ndarray, atol: float
    ) -> tuple[dict[str, Any], float]:
        """(metrics/export.json's figures, the largest difference for the side file)."""

    @abc.abstractmethod
    def parity_summary(self, report: dict[str, Any], diff: float) -> str:
        """The parity check in words."""

    def export_summary(self, report: dict[str, Any], diff: float) -> str:
        """The export stage's closing line: parity, and the int8 graph's cost."""
        q = report.get("int8")
        int8 = (
            f"; int8 {self.main_name} delta {q[self.int8_delta]:+.4f}, size x{q['size_ratio']:.2f}"
            if q
            else ""
        )
        return self.parity_summary(report, diff) + int8

    # ---- evaluate ----

    @abc.abstractmethod
    def measure(
        self, model: Measured, X: np.ndarray, y: np.ndarray, attack: Attack, key: str, known: Any
    ) -> dict[str, Any]:
        """Quality, robustness and latency of one model on the test rows; ``known``: the
        figures of its promotion record (or None), whose robust ones are reused when its
        ``gate_key`` equals ``key``."""

    @abc.abstractmethod
    def on_holdout(
        self, model: Measured, X: np.ndarray, y: np.ndarray, attack: Attack
    ) -> dict[str, Any]:
        """The figures on the production holdout (``holdout_*``)."""

    def holdout_floors(self, graph: Path, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """The holdout figures the gate's floors read of a graph judged as a candidate of its
        own (a deploy variant, no champion): a regressor's interval coverage; none for a
        classifier, whose holdout rules compare with a champion."""
        return {}

    @abc.abstractmethod
    def by_group(
        self, graph: Path, X: np.ndarray, y: np.ndarray, groups: np.ndarray, column: str
    ) -> tuple[dict[str, Any], GroupGap | None]:
        """Per-group figures of the graph's answers (:mod:`pipeline.learning.groups`), and the
        largest gap of the main figure between two groups of ``column``."""

    @abc.abstractmethod
    def production(
        self, champion: Figures | None, cfg: GateConfig, export: dict[str, Any]
    ) -> Production:
        """Whether the champion fails in production, and why."""

    @abc.abstractmethod
    def terms(self, cfg: GateConfig, cand: Figures, export: dict[str, Any], y: np.ndarray) -> Terms:
        """The gate's terms for this candidate (its floors read its figures)."""

    def gate(
        self,
        cfg: GateConfig,
        cand: Figures,
        champ: Figures | None,
        parity_passed: bool,
        ctx: GateContext | None,
        export: dict[str, Any],
        y: np.ndarray,
    ) -> tuple[list[Verdict], Terms]:
        terms = self.terms(cfg, cand, export, y)
        return judge(cfg, terms, cand, champ, parity_passed, ctx), terms

    def hints(
        self, terms: Terms, rules: list[Verdict], eps: float, max_clean_drop: float
    ) -> list[str]:
        return hints(terms, rules, eps, max_clean_drop)

    @abc.abstractmethod
    def decision_head(self, cfg: GateConfig, export: dict[str, Any], y: np.ndarray) -> dict:
        """The decision's task-specific keys (how robustness was measured, the interval)."""

    def estimate(self, onnx_path: Path, val: pd.DataFrame, schema: Schema) -> dict | None:
        """The monitor's label-free estimate of the main figure, fit on val (or None)."""
        return None

    limits: ClassVar[tuple[str, ...]]  # the model card's limits of this task's models

    @abc.abstractmethod
    def card_body(self, record: Record) -> list[str]:
        """The model card's sections up to the export (data, model, metrics, robustness and
        the calibration head), as Markdown lines."""

    # The card's line on metrics/export.json's parity check, and the evaluate stage's closing
    # figures: formats over the parity report and the candidate's figures.
    parity_line: ClassVar[str]
    summary_line: ClassVar[str]

    def card(self, record: Record) -> str:
        """The model card (Markdown): the task's sections, then the export, the gate and the
        limits."""
        export = self.parity_line.format(**record.export["parity"])
        closing = card.closing(
            export, record.decision, list(self.limits), record.schema, record.explained
        )
        return card.join([*self.card_body(record), *closing])

    def summary(self, candidate: Figures) -> str:
        """The candidate's figures in the stage's closing line."""
        return self.summary_line.format(**candidate)


def labels(df: pd.DataFrame, dtype: Any = None) -> np.ndarray:
    return df[LABEL].to_numpy(dtype)
