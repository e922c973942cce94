"""Classification served and monitored (:mod:`pipeline.contracts.tasks`): a label and class
probabilities per record; feedback is one of the schema's classes; a window's harm is its
feedback accuracy significantly below the champion's test accuracy, or the label-free estimate
below it."""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from pipeline.contracts.params import MonitorConfig, SimulateConfig
from pipeline.contracts.prodlog import NO_ANSWER, Window
from pipeline.contracts.schema import Schema
from pipeline.contracts.task import (
    Answer,
    ChampionFigures,
    GroupFigures,
    ServedTask,
    WindowQuality,
)


@functools.lru_cache(maxsize=8)
def _lookup(classes: tuple[Any, ...]) -> dict[Any, int]:
    return {c: i for i, c in enumerate(classes)}


@dataclasses.dataclass(frozen=True)
class ClassQuality(WindowQuality):
    """Feedback accuracy (None without labels) and the label-free estimate."""

    estimated_accuracy: float | None
    estimate_method: str
    mean_confidence: float | None
    estimate_dropped: bool
    accuracy: float | None
    accuracy_dropped: bool
    champion_test_accuracy: float | None
    accuracy_p: float | None = None  # the binomial test's, with at least min_labels labels

    def line(self) -> str:
        return "" if self.accuracy is None else f", feedback accuracy {self.accuracy:.3f}"


class ServedClassification(ServedTask):
    name: ClassVar[str] = "classification"
    outputs: ClassVar[tuple[str, ...]] = ("probabilities", "label")
    what: ClassVar[str] = "a label and class probabilities per record"
    explained: ClassVar[str] = "the answered class's log-odds against the runner-up (nats)"
    window_keys: ClassVar[tuple[str, ...]] = ("class_mix",)
    feedback_column: ClassVar[str] = "label"

    def describe_target(self, schema: Schema) -> str:
        return f"{schema.n_classes} classes"

    def probe_problem(self, outputs: list[np.ndarray], schema: Schema) -> str | None:
        probs, labels = outputs
        n = schema.n_classes
        if probs.shape != (3, n) or not np.all(np.isfinite(probs)):
            return (
                f"probe answered probabilities of shape {probs.shape}, expected (3, {n}) finite "
                "values"
            )
        if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) or labels.max() >= n:
            return "probe answers are not class probabilities"
        return None

    def answer(self, outputs: list[np.ndarray], schema: Schema) -> Answer:
        probs, labels = outputs
        label_list = labels.tolist()
        classes = schema.classes
        records = [
            {"index": i, "label": classes[lab], "probabilities": p}
            for i, (lab, p) in enumerate(zip(label_list, probs.tolist(), strict=True))
        ]
        named = [NO_ANSWER] * len(label_list)
        return Answer(label_list, probs, named, records, collections.Counter(label_list))

    def answered_class(self, outputs: list[np.ndarray]) -> np.ndarray | None:
        return outputs[1]

    def explained_figure(self, outputs: list[np.ndarray], block: int) -> np.ndarray:
        """The answered class's log-odds against the strongest other class: unlike its
        probability it does not saturate near 1, so a confident answer's features still rank
        (bench/explain.py: deletion area 0.15 against the probability's 0.28, random 0.59)."""
        k = outputs[0].shape[1]
        logp = np.log(np.clip(outputs[0].astype(np.float64), 1e-30, 1.0)).reshape(-1, block, k)
        served = logp[:, 0].argmax(axis=1)[:, None, None]  # the record's own answer
        own = np.take_along_axis(logp, served, axis=2)[:, :, 0]
        np.put_along_axis(logp, np.broadcast_to(served, (len(logp), block, 1)), -np.inf, axis=2)
        return own - logp.max(axis=2)

    def response_head(self, schema: Schema, export: dict[str, Any]) -> dict[str, Any]:
        return {"classes": schema.classes}

    def series(self, schema: Schema) -> tuple[str, ...]:
        return tuple(str(c) for c in schema.classes)

    def feedback_label(self, label: Any, schema: Schema) -> Any:
        lookup = _lookup(tuple(schema.classes))
        # type(True) is bool, not int: True must not pass for class 1.
        if type(label) not in (str, int, float) or label not in lookup:
            raise ValueError(f"is not one of the schema's classes {list(schema.classes)[:20]}")
        return lookup[label]

    def openapi(self, schema: Schema) -> tuple[dict[str, Any], dict[str, Any]]:
        class_type = (
            {"type": "integer"}
            if all(isinstance(c, int) for c in schema.classes)
            else {"type": "string"}
        )
        return {**class_type, "enum": list(schema.classes)}, {"type": "object"}

    # ---- the monitor ----

    def champion_figures(self, decision: dict[str, Any]) -> ChampionFigures:
        return ChampionFigures(
            test_accuracy=float(decision["candidate"]["accuracy"]),
            groups=GroupFigures.of(decision, "accuracy"),
        )

    group_figure: ClassVar[str] = "feedback accuracy"

    def hits(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        return window.true_label >= 0, window.label == window.true_label

    def quality(
        self,
        window: Window,
        champion: ChampionFigures,
        cfg: MonitorConfig,
        estimator: Any,
        drifted: Sequence[int] = (),
    ) -> ClassQuality:
        """Feedback accuracy of a window and whether it is significantly below ``expected -
        drop``; the label-free estimate (the champion's ``estimator``, else mean confidence)
        and whether it is below ``expected - drop`` too (only with an estimator: mean
        confidence is no evidence). ``drifted``: the columns the drift test flagged (the
        estimator's hand-over to its nearest-neighbour vote)."""
        from scipy import stats  # the monitor's: the service's image has no scipy

        expected = float(champion.test_accuracy or 0.0)
        labelled, right = self.hits(window)
        n = int(labelled.sum())
        confidence = float(window.probabilities.max(axis=1).mean()) if len(window) else None
        estimate = None
        if estimator and len(window):
            estimate = estimator.estimate(window.probabilities, window.X, drifted)
        floor = max(expected - cfg.accuracy_drop, 0.0)
        accuracy = p = None
        if n:
            correct = int(right[labelled].sum())
            accuracy = correct / n
            if n >= cfg.min_labels:
                p = float(stats.binom.cdf(correct, n, floor))  # P(this few correct | at floor)
        return ClassQuality(
            labelled=n,
            estimated_accuracy=confidence if estimate is None else estimate,
            estimate_method="confidence" if estimate is None else estimator.method,
            mean_confidence=confidence,
            estimate_dropped=bool(estimate is not None and estimate < floor),
            accuracy=accuracy,
            accuracy_dropped=bool(p is not None and p < cfg.alpha),
            champion_test_accuracy=champion.test_accuracy,
            accuracy_p=p,
        )

    def mix(self, window: Window, schema: Schema) -> dict[str, Any]:
        mix = np.bincount(window.label, minlength=schema.n_classes) / max(len(window), 1)
        return {"class_mix": mix.round(4).tolist()}

    def harm_reason(self, f: ClassQuality, cfg: MonitorConfig) -> list[str]:
        out = []
        if f.estimate_dropped:
            out.append(
                f"estimated accuracy {f.estimated_accuracy:.3f} ({f.estimate_method}, no "
                f"labels) is below the champion's test accuracy "
                f"{f.champion_test_accuracy:.3f} - {cfg.accuracy_drop}"
            )
        if f.accuracy_dropped:
            out.append(
                f"feedback accuracy {f.accuracy:.3f} on {f.labelled} labels is below the "
                f"champion's test accuracy {f.champion_test_accuracy:.3f} - "
                f"{cfg.accuracy_drop} (binomial p {f.accuracy_p:.2g})"
            )
        return out

    def too_few_labels(self, f: ClassQuality) -> str:
        return f"accuracy; estimated accuracy {f.estimated_accuracy:.3f} ({f.estimate_method})"

    def not_significant(self, f: ClassQuality, cfg: MonitorConfig) -> str:
        return (
            f"feedback accuracy {f.accuracy:.3f} on {f.labelled} labels is not "
            f"significantly below the champion's test accuracy {f.champion_test_accuracy:.3f} "
            f"- {cfg.accuracy_drop}"
        )

    def label_cell(self, f: dict[str, Any]) -> str:
        return "" if f.get("accuracy") is None else f"{f['accuracy']:.3f} ({f['labelled']})"

    def true_values(self, window: Window, schema: Schema) -> Any:
        return [schema.classes[c] for c in window.true_label]

    def concept(self, y: np.ndarray, cfg: SimulateConfig, schema: Schema) -> np.ndarray:
        """Every class read as the one ``simulate.concept_shift`` places on."""
        return (y + cfg.concept_shift) % schema.n_classes

    def feedback_value(self, truth: Any, schema: Schema) -> Any:
        return schema.classes[truth]

    def tally(self, record: dict[str, Any], truth: Any, schema: Schema) -> tuple[float, int]:
        return int(_lookup(tuple(schema.classes))[record["label"]] == truth), 0

    def summary(self, score: float, rows: int, covered: int) -> dict[str, Any]:
        return {"accuracy": score / rows if rows else None}
