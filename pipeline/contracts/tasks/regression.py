"""Regression served and monitored (:mod:`pipeline.contracts.tasks`): a prediction and its
interval per record; feedback is a finite number; a window's harm is its interval's coverage on
labelled rows significantly below nominal (no label-free estimate: harm needs labels)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import MonitorConfig, SimulateConfig
from pipeline.contracts.prodlog import Window
from pipeline.contracts.schema import Schema
from pipeline.contracts.task import (
    Answer,
    ChampionFigures,
    GroupFigures,
    ServedTask,
    WindowQuality,
)

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER = (int, float)


@dataclasses.dataclass(frozen=True)
class IntervalQuality(WindowQuality):
    """MAE and the realised coverage of the intervals (None without labels); a regressor has
    no label-free estimate (``estimate_dropped`` is False) and its harm from labels is the
    coverage's (``accuracy_dropped`` is ``coverage_dropped``)."""

    mae: float | None
    champion_test_mae: float | None
    coverage: float | None
    nominal_coverage: float
    coverage_dropped: bool
    estimate_dropped: bool
    accuracy_dropped: bool
    coverage_p: float | None = None  # the binomial test's, with at least min_labels labels

    def line(self) -> str:
        if self.coverage is None:
            return ""
        return f", interval coverage {self.coverage:.3f}, MAE {self.mae:.4g}"


class ServedRegression(ServedTask):
    name: ClassVar[str] = "regression"
    outputs: ClassVar[tuple[str, ...]] = ("prediction", "lower", "upper")
    what: ClassVar[str] = "a prediction and its interval (lower, upper) per record"
    explained: ClassVar[str] = "the prediction"
    window_keys: ClassVar[tuple[str, ...]] = ("mean_prediction", "mean_width")
    feedback_column: ClassVar[str] = "value"

    def describe_target(self, schema: Schema) -> str:
        return (
            f"regression target {schema.target!r} in [{schema.target_min:g}, {schema.target_max:g}]"
        )

    def feedback_target(self, values: Any) -> Any:
        import pandas as pd

        return pd.to_numeric(values, errors="coerce")

    def probe_problem(self, outputs: list[np.ndarray], schema: Schema) -> str | None:
        out = np.stack(outputs, axis=1)
        if out.shape != (3, 3) or not np.all(np.isfinite(out)):
            return f"probe answered {out.shape}, not finite (3, 3)"
        if not np.all((out[:, 1] <= out[:, 0]) & (out[:, 0] <= out[:, 2])):
            return "probe intervals do not hold their predictions"
        return None

    def answer(self, outputs: list[np.ndarray], schema: Schema) -> Answer:
        """The log row keeps label 0, no probabilities, and the three numbers in its
        ``prediction``, ``lower`` and ``upper`` columns."""
        out3 = np.stack(outputs, axis=1)  # (records, 3) float32: prediction, lower, upper
        named = [tuple(row) for row in out3.tolist()]
        records = [
            {"index": i, "prediction": p, "lower": lo, "upper": hi}
            for i, (p, lo, hi) in enumerate(named)
        ]
        n = len(out3)
        return Answer([0] * n, np.empty((n, 0), np.float32), named, records, {0: n})

    def explained_figure(self, outputs: list[np.ndarray], block: int) -> np.ndarray:
        return outputs[0].reshape(-1, block)

    def response_head(self, schema: Schema, export: dict[str, Any]) -> dict[str, Any]:
        return {"coverage": export.get("interval", {}).get("coverage")}

    def series(self, schema: Schema) -> tuple[str, ...]:
        return ("prediction",)

    def feedback_label(self, label: Any, schema: Schema) -> Any:
        # type(True) is bool: true is no number; inf / nan cannot arrive as JSON numbers, but a
        # huge one could overflow the float32 the monitor compares in.
        if type(label) not in _NUMBER or not math.isfinite(label) or abs(label) > _FLOAT32_MAX:
            raise ValueError(
                f"is not a finite number (the model is a regressor of {schema.target!r})"
            )
        return float(label)

    def openapi(self, schema: Schema) -> tuple[dict[str, Any], dict[str, Any]]:
        prediction = {
            "type": "object",
            "properties": {
                "index": {"type": "integer"},
                "prediction": {"type": "number"},
                "lower": {"type": "number"},
                "upper": {"type": "number"},
                "out_of_range": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["index", "prediction", "lower", "upper"],
            "additionalProperties": False,
        }
        answer = {
            "type": "object",
            "properties": {
                "request_id": {"type": "string"},
                "model_version": {"type": "string"},
                "coverage": {"type": "number"},
                "predictions": {"type": "array", "items": prediction},
            },
            "required": ["request_id", "model_version", "coverage", "predictions"],
            "additionalProperties": False,
        }
        return {"type": "number"}, answer

    # ---- the monitor ----

    def champion_figures(self, decision: dict[str, Any]) -> ChampionFigures:
        return ChampionFigures(
            test_mae=float(decision["candidate"]["mae"]),
            interval_coverage=float(decision["interval_coverage"]),
            groups=GroupFigures.of(decision, "coverage"),
        )

    group_figure: ClassVar[str] = "interval coverage"

    def hits(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        truth, bounds = window.true_value, window.interval()
        with np.errstate(invalid="ignore"):  # NaN truth: an unlabelled row, not a hit
            held = (truth >= bounds[:, 1]) & (truth <= bounds[:, 2])
        return ~np.isnan(truth), held

    def quality(
        self,
        window: Window,
        champion: ChampionFigures,
        cfg: MonitorConfig,
        estimator: Any,
        drifted: Sequence[int] = (),
    ) -> IntervalQuality:
        """MAE (beside the champion's test MAE) and the realised coverage of the interval,
        with whether that coverage is significantly below ``nominal - accuracy_drop``
        (one-sided binomial test at ``alpha``): the intervals stop holding the truth when the
        concept moves (a scaled or offset target), or the inputs move where the model errs
        more."""
        from scipy import stats  # the monitor's: the service's image has no scipy

        nominal = float(champion.interval_coverage or 0.0)
        labelled, held = self.hits(window)
        n = int(labelled.sum())
        floor = max(nominal - cfg.accuracy_drop, 0.0)
        mae = coverage = p = None
        if n:
            covered = int(held[labelled].sum())
            pred = window.interval()[labelled, 0]
            mae = float(np.abs(window.true_value[labelled] - pred).mean())
            coverage = covered / n
            if n >= cfg.min_labels:
                p = float(stats.binom.cdf(covered, n, floor))
        dropped = bool(p is not None and p < cfg.alpha)
        return IntervalQuality(
            labelled=n,
            mae=mae,
            champion_test_mae=champion.test_mae,
            coverage=coverage,
            nominal_coverage=nominal,
            coverage_dropped=dropped,
            estimate_dropped=False,
            accuracy_dropped=dropped,
            coverage_p=p,
        )

    def mix(self, window: Window, schema: Schema) -> dict[str, Any]:
        values = window.interval()
        return {
            "mean_prediction": float(values[:, 0].mean()) if len(window) else None,
            "mean_width": float((values[:, 2] - values[:, 1]).mean()) if len(window) else None,
        }

    def harm_reason(self, f: IntervalQuality, cfg: MonitorConfig) -> list[str]:
        if not f.coverage_dropped:
            return []
        return [
            f"interval coverage {f.coverage:.3f} on {f.labelled} labels is below nominal "
            f"{f.nominal_coverage:.2f} - {cfg.accuracy_drop} (binomial p {f.coverage_p:.2g}"
            f"; MAE {f.mae:.4g} vs the champion's test MAE {f.champion_test_mae:.4g})"
        ]

    def too_few_labels(self, f: IntervalQuality) -> str:
        return "interval's coverage"

    def not_significant(self, f: IntervalQuality, cfg: MonitorConfig) -> str:
        return (
            f"interval coverage {f.coverage:.3f} on {f.labelled} labels is not "
            f"significantly below nominal {f.nominal_coverage:.2f} - {cfg.accuracy_drop} "
            f"(MAE {f.mae:.4g}, the champion's test MAE {f.champion_test_mae:.4g})"
        )

    def label_cell(self, f: dict[str, Any]) -> str:
        if f.get("coverage") is None:
            return ""
        return f"coverage {f['coverage']:.3f}, MAE {f['mae']:.4g} ({f['labelled']})"

    def true_values(self, window: Window, schema: Schema) -> Any:
        return window.true_value.astype(np.float64)

    def check_prior(self) -> None:
        raise MlcycleError("simulate.scenario = 'prior' needs classes; the model is a regressor")

    def concept(self, y: np.ndarray, cfg: SimulateConfig, schema: Schema) -> np.ndarray:
        """The target scaled by ``simulate.concept_scale`` and offset by ``concept_offset``."""
        return y * cfg.concept_scale + cfg.concept_offset

    def feedback_value(self, truth: Any, schema: Schema) -> Any:
        return truth

    def tally(self, record: dict[str, Any], truth: Any, schema: Schema) -> tuple[float, int]:
        return abs(record["prediction"] - truth), int(record["lower"] <= truth <= record["upper"])

    def summary(self, score: float, rows: int, covered: int) -> dict[str, Any]:
        return {
            "mae": score / rows if rows else None,
            "coverage": covered / rows if rows else None,
        }
