"""Typed, frozen views of ``params.yaml`` sections.

``params.yaml`` is the only home of tunable values: the dataclasses here have no defaults, reject
unknown keys and check each value's type, so a typo fails loudly instead of silently running with
something else. Used by every stage; not run on its own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from pipeline.errors import MlcycleError

T = TypeVar("T")


def read_params(path: str | Path) -> dict[str, Any]:
    """Read the whole params file as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise MlcycleError(f"params file {str(path)!r} not found")
    with path.open() as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise MlcycleError(f"params file {str(path)!r}: expected a mapping of sections")
    return params


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build config dataclass ``cls`` from section ``name`` of ``params``."""
    if name not in params:
        raise MlcycleError(f"params.yaml: section {name!r} is missing")
    return _build(cls, params[name], name)


def _build(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise MlcycleError(f"params.yaml: {where!r} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise MlcycleError(
            f"params.yaml: unknown key '{where}.{unknown[0]}'; expected one of {sorted(fields)}"
        )
    missing = sorted(set(fields) - set(raw))
    if missing:
        raise MlcycleError(f"params.yaml: key '{where}.{missing[0]}' is missing")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(hints[k], raw[k], f"{where}.{k}") for k in fields}
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(option, value, where)
            except MlcycleError as exc:
                errors.append(exc)
        raise MlcycleError(f"params.yaml: {where} = {value!r} is not a valid {_name(hint)}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise MlcycleError(
                f"params.yaml: {where} = {value!r}; expected one of {list(typing.get_args(hint))}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise MlcycleError(f"params.yaml: {where} = {value!r}; expected a list")
        (inner, *_) = typing.get_args(hint) or (Any,)
        return tuple(_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise MlcycleError(f"params.yaml: {where} = {value!r}; expected a mapping")
        return dict(value)
    if hint is type(None):
        if value is not None:
            raise MlcycleError(f"params.yaml: {where} = {value!r}; expected null")
        return None
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise MlcycleError(f"params.yaml: {where} = {value!r}; expected a {hint.__name__}")
    if not isinstance(value, hint):
        raise MlcycleError(f"params.yaml: {where} = {value!r}; expected a {_name(hint)}")
    return value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def require(ok: bool, where: str, value: Any, expected: str) -> None:
    """Raise the standard params error unless ``ok``."""
    if not ok:
        raise MlcycleError(f"params.yaml: {where} = {value!r}; expected {expected}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data``: where the rows come from and what the label is."""

    source: str
    target: str
    sensitive: str | None
    categorical: tuple[str, ...] | None
    max_missing_share: float
    max_categories: int
    decimal: Literal[".", ","]

    def check(self, where: str) -> None:
        require(
            0.0 <= self.max_missing_share < 1.0,
            f"{where}.max_missing_share",
            self.max_missing_share,
            "a share in [0, 1)",
        )
        require(self.max_categories >= 2, f"{where}.max_categories", self.max_categories, ">= 2")


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """``preprocess.noise``: confident-learning label-noise removal."""

    enabled: bool
    model: Literal["logreg", "svm", "knn"]
    folds: int
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning"]
    max_share: float
    max_fit_rows: int | None

    def check(self, where: str) -> None:
        require(self.folds >= 2, f"{where}.folds", self.folds, ">= 2")
        require(
            self.max_fit_rows is None or self.max_fit_rows >= 100,
            f"{where}.max_fit_rows",
            self.max_fit_rows,
            ">= 100, or null for every row",
        )
        require(0.0 <= self.max_share < 0.5, f"{where}.max_share", self.max_share, "in [0, 0.5)")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """``preprocess``: de-duplication, missing values, label noise, bias weights, the split."""

    seed: int
    test_size: float
    val_size: float
    missing: Literal["impute", "drop"]
    noise: NoiseConfig
    class_weights: Literal["balanced", "none"]
    feedback_holdout: float

    def check(self, where: str) -> None:
        require(
            0.0 <= self.feedback_holdout < 1.0,
            f"{where}.feedback_holdout",
            self.feedback_holdout,
            "a share in [0, 1)",
        )
        for key in ("test_size", "val_size"):
            value = getattr(self, key)
            require(0.0 < value < 0.5, f"{where}.{key}", value, "a share in (0, 0.5)")
        require(
            self.test_size + self.val_size < 0.8,
            f"{where}.test_size + val_size",
            self.test_size + self.val_size,
            "< 0.8, leaving rows to train on",
        )


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    """``features``: the transform search, scored by cross-validation on train only."""

    seed: int
    cv_folds: int
    candidates: tuple[Literal["standardize", "quantile", "log_standardize", "pca"], ...]
    pca_components: tuple[int, ...]
    quantiles: int
    skew_threshold: float
    tie_tolerance: float
    search_rows: int | None

    def check(self, where: str) -> None:
        require(self.cv_folds >= 2, f"{where}.cv_folds", self.cv_folds, ">= 2")
        require(
            len(self.candidates) > 0, f"{where}.candidates", self.candidates, "a non-empty list"
        )
        require(
            all(k >= 1 for k in self.pca_components),
            f"{where}.pca_components",
            self.pca_components,
            "positive integers",
        )
        require(self.quantiles >= 10, f"{where}.quantiles", self.quantiles, ">= 10")
        require(self.tie_tolerance >= 0, f"{where}.tie_tolerance", self.tie_tolerance, ">= 0")


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """``compute``: where the stages run and with how many CPU threads.

    ``threads`` is fixed rather than left to each library: BLAS and PyTorch split reductions by
    thread count, so a different count gives different floats and different output hashes.
    """

    device: Literal["auto", "cpu", "cuda"]
    threads: int

    def check(self, where: str) -> None:
        require(self.threads >= 1, f"{where}.threads", self.threads, ">= 1")


TUNABLE = (
    "lr",
    "hidden",
    "depth",
    "channels",
    "dropout",
    "weight_decay",
    "batch_size",
    "label_smoothing",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``train`` in params.yaml."""

    seed: int
    model: Literal["auto", "mlp", "cnn"]
    hidden: int
    depth: int
    channels: int
    dropout: float
    optimizer: Literal["adamw", "sgd"]
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    label_smoothing: float
    schedule: Literal["onecycle", "cosine", "step", "none"]
    step_size: int
    gamma: float
    epochs: int
    batch_size: int
    patience: int
    augment_shift: int
    tta_target: float
    amp: bool
    baselines: tuple[Literal["logreg", "svm"], ...]

    def check(self, where: str) -> None:
        for key in ("hidden", "depth", "channels", "epochs", "batch_size", "patience", "step_size"):
            require(getattr(self, key) >= 1, f"{where}.{key}", getattr(self, key), ">= 1")
        require(self.lr > 0, f"{where}.lr", self.lr, "> 0")
        require(0 <= self.dropout < 1, f"{where}.dropout", self.dropout, "in [0, 1)")
        require(
            0 <= self.label_smoothing < 1,
            f"{where}.label_smoothing",
            self.label_smoothing,
            "in [0, 1)",
        )
        require(self.augment_shift >= 0, f"{where}.augment_shift", self.augment_shift, ">= 0")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """``tune`` in params.yaml."""

    n_trials: int
    seed: int
    max_epochs: int
    min_epochs: int
    storage: str
    study: str
    space: dict[str, Any]

    def check(self, where: str) -> None:
        require(self.n_trials >= 0, f"{where}.n_trials", self.n_trials, ">= 0")
        require(
            1 <= self.min_epochs <= self.max_epochs,
            f"{where}.min_epochs",
            self.min_epochs,
            f"in [1, max_epochs = {self.max_epochs}]",
        )
        for key, spec in self.space.items():
            require(key in TUNABLE, f"{where}.space.{key}", key, f"one of {list(TUNABLE)}")
            ok = isinstance(spec, dict) and (
                (set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"])
                or (
                    set(spec) in ({"low", "high"}, {"low", "high", "log"})
                    and spec["low"] < spec["high"]
                )
            )
            require(
                bool(ok),
                f"{where}.space.{key}",
                spec,
                "{low, high[, log]} with low < high, or {choices: [...]}",
            )


@dataclasses.dataclass(frozen=True)
class HardenConfig:
    """``harden`` in params.yaml."""

    method: Literal["fgsm_rs", "n_fgsm", "pgd", "trades", "none"]
    eps: float
    train_eps_scale: float
    steps: int
    trades_beta: float
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int
    max_clean_drop: float
    catastrophic_drop: float
    ema_decay: float
    eval_eps: tuple[float, ...]
    eval_steps: int
    eval_apgd_iter: int
    eval_restarts: int
    art_check: bool

    def check(self, where: str) -> None:
        require(0 < self.eps <= 1, f"{where}.eps", self.eps, "a fraction of the range in (0, 1]")
        require(self.train_eps_scale >= 1, f"{where}.train_eps_scale", self.train_eps_scale, ">= 1")
        require(0 <= self.ema_decay < 1, f"{where}.ema_decay", self.ema_decay, "in [0, 1); 0 = off")
        for key in (
            "steps",
            "epochs",
            "batch_size",
            "eval_steps",
            "eval_apgd_iter",
            "eval_restarts",
        ):
            require(getattr(self, key) >= 1, f"{where}.{key}", getattr(self, key), ">= 1")
        require(
            all(0 <= e <= 1 for e in self.eval_eps),
            f"{where}.eval_eps",
            self.eval_eps,
            "fractions in [0, 1]",
        )


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """``export`` in params.yaml."""

    opset: int
    parity_atol: float
    quantize: bool

    def check(self, where: str) -> None:
        require(self.opset >= 17, f"{where}.opset", self.opset, ">= 17")
        require(self.parity_atol > 0, f"{where}.parity_atol", self.parity_atol, "> 0")


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """``gate`` in params.yaml: what a candidate must show to replace the champion."""

    model_name: str
    variant: Literal["fp32", "int8", "auto"]
    max_int8_accuracy_drop: float
    min_accuracy: float
    min_robust_accuracy: float
    max_ece: float
    max_p99_latency_ms: float
    max_accuracy_drop: float
    max_robust_drop: float
    robust_steps: int
    robust_restarts: int
    apgd_iter: int
    square_queries: int
    seed: int
    max_baseline_gap: float | None
    robust_floor: Literal["budget", "strict"]

    def check(self, where: str) -> None:
        for key in ("min_accuracy", "min_robust_accuracy", "max_ece"):
            require(0 <= getattr(self, key) <= 1, f"{where}.{key}", getattr(self, key), "in [0, 1]")
        require(self.robust_steps >= 1, f"{where}.robust_steps", self.robust_steps, ">= 1")


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """``serving``: the REST service over the champion, and its production log.

    Read by ``serving/`` (no DVC stage); ``MLCYCLE_REGISTRY`` and ``MLCYCLE_LOG_URL`` override the
    two locations, so replicas can share one PostgreSQL log.
    """

    registry: str
    log_url: str
    commit_interval_ms: float
    max_queue: int
    max_batch: int
    max_body_bytes: int
    max_in_flight: int
    reload_interval_s: float
    feedback_token_env: str

    def check(self, where: str) -> None:
        require(
            0 < self.commit_interval_ms <= 1000,
            f"{where}.commit_interval_ms",
            self.commit_interval_ms,
            "in (0, 1000]",
        )
        for key in ("max_queue", "max_batch", "max_body_bytes", "max_in_flight"):
            require(getattr(self, key) >= 1, f"{where}.{key}", getattr(self, key), ">= 1")
        require(
            self.reload_interval_s > 0, f"{where}.reload_interval_s", self.reload_interval_s, "> 0"
        )


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """``monitor``: drift and accuracy checks on production windows, and the retrain trigger.

    Read by ``monitoring/`` (no DVC stage).
    """

    window: int
    alpha: float
    min_labels: int
    accuracy_drop: float
    debounce: int
    min_feedback: int
    cooldown_s: float
    dry_run: bool
    interval_s: float
    max_windows: int
    reports: str
    report_on_drift: bool
    feedback_path: str
    retrain_command: tuple[str, ...]
    retrain_timeout_s: float
    gate_metrics: str

    def check(self, where: str) -> None:
        require(self.window >= 10, f"{where}.window", self.window, ">= 10")
        require(0 < self.alpha < 1, f"{where}.alpha", self.alpha, "in (0, 1)")
        require(
            0 < self.accuracy_drop < 1, f"{where}.accuracy_drop", self.accuracy_drop, "in (0, 1)"
        )
        for key in ("min_labels", "debounce", "max_windows"):
            require(getattr(self, key) >= 1, f"{where}.{key}", getattr(self, key), ">= 1")
        for key in ("min_feedback", "cooldown_s"):
            require(getattr(self, key) >= 0, f"{where}.{key}", getattr(self, key), ">= 0")
        for key in ("interval_s", "retrain_timeout_s"):
            require(getattr(self, key) > 0, f"{where}.{key}", getattr(self, key), "> 0")
        require(
            len(self.retrain_command) > 0,
            f"{where}.retrain_command",
            self.retrain_command,
            "a non-empty list (argv)",
        )


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """``simulate``: production traffic replayed from held-out rows, optionally shifted."""

    scenario: Literal["none", "intensity", "noise", "translate", "blur", "prior", "concept"]
    rows_from: str
    requests: int
    records_per_request: int
    max_seconds: float
    seed: int
    intensity: float
    noise_sigma: float
    translate: int
    blur_sigma: float
    prior_classes: tuple[int, ...]
    concept_shift: int
    feedback_rate: float
    feedback_delay_s: float

    def check(self, where: str) -> None:
        for key in ("requests", "records_per_request"):
            require(getattr(self, key) >= 1, f"{where}.{key}", getattr(self, key), ">= 1")
        require(self.max_seconds > 0, f"{where}.max_seconds", self.max_seconds, "> 0")
        require(
            0 <= self.feedback_rate <= 1, f"{where}.feedback_rate", self.feedback_rate, "in [0, 1]"
        )
        require(
            self.feedback_delay_s >= 0, f"{where}.feedback_delay_s", self.feedback_delay_s, ">= 0"
        )
        require(self.intensity > 0, f"{where}.intensity", self.intensity, "> 0")
        require(len(self.prior_classes) >= 1, f"{where}.prior_classes", self.prior_classes, "1+")
