"""Typed, frozen views of ``params.yaml`` sections, validated by pydantic.

``params.yaml`` is the only home of tunable values: the models here have no defaults, forbid
unknown keys, check each value's type strictly (an int is accepted where a float is expected, a
bool never where a number is) and its bounds, so a typo fails loudly instead of silently running
with something else. Every error becomes one :class:`MlcycleError` line that names the key, the
value seen and what was expected. :func:`overlay` re-validates a section with some keys changed,
so no code path builds a config that skipped these checks. Used by every stage, the service and
the monitor; not run on its own.

One module (about 420 lines): one pydantic model per ``params.yaml`` section, side by side with
the cross-key rules, so the whole file's contract reads in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    model_validator,
)

from pipeline.contracts.errors import MlcycleError

T = TypeVar("T", bound="Section")
E = TypeVar("E")


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
    """Build section model ``cls`` from section ``name`` of ``params``."""
    if name not in params:
        raise MlcycleError(f"params.yaml: section {name!r} is missing")
    return validate(cls, params[name], name)


def validate(cls: type[T], raw: Any, where: str) -> T:
    """``cls`` from the mapping ``raw`` (section ``where``), or one line naming what is wrong."""
    if not isinstance(raw, dict):
        raise MlcycleError(f"params.yaml: {where!r} must be a mapping, got {raw!r}")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise MlcycleError(_message(cls, exc, where)) from None


def overlay(cfg: T, where: str, **changes: Any) -> T:
    """``cfg`` with ``changes`` applied, validated again as if read from params.yaml."""
    return validate(type(cfg), {**cfg.model_dump(), **changes}, where)


def _message(cls: type[BaseModel], exc: ValidationError, where: str) -> str:
    """The first error of ``exc`` as one line: key, value seen, what was expected."""
    err = exc.errors(include_url=False)[0]
    kind, ctx = err["type"], err.get("ctx") or {}
    loc = tuple(p for p in err["loc"] if p != "[key]")  # a dict key's error names the key anyway
    path = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    if kind == "extra_forbidden":
        owner = _model_at(cls, loc[:-1])
        return f"params.yaml: unknown key '{path}'; expected one of {sorted(owner.model_fields)}"
    if kind == "missing":
        return f"params.yaml: key '{path}' is missing"
    value = err.get("input")
    bound = ctx.get("error")
    if isinstance(bound, BoundError) and bound.key is not None:  # a rule across keys
        return f"params.yaml: {path}.{bound.key} = {bound.value!r}; expected {bound.expected}"
    if isinstance(bound, BoundError):
        return f"params.yaml: {path} = {value!r}; expected {bound.expected}"
    if kind == "literal_error":
        options = [o.strip().strip("'\"") for o in ctx["expected"].replace(" or ", ", ").split(",")]
        return f"params.yaml: {path} = {value!r}; expected one of {options}"
    if kind in ("tuple_type", "list_type"):
        return f"params.yaml: {path} = {value!r}; expected a list"
    what = err["msg"].removeprefix("Input should be ")
    return f"params.yaml: {path} = {value!r}; expected {what}"


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The (nested) section model that ``loc`` points into."""
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = cls.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            cls = annotation
    return cls


class BoundError(ValueError):
    """A value outside its bounds (pydantic reports it as a ``value_error`` carrying this)."""

    def __init__(self, expected: str, key: str | None = None, value: Any = None) -> None:
        super().__init__(f"expected {expected}")
        self.expected, self.key, self.value = expected, key, value


def rule(ok: Callable[[Any], bool], expected: str) -> AfterValidator:
    """A bound on one value: the error names the key and says ``expected``."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise BoundError(expected)
        return value

    return AfterValidator(check)


def across(ok: bool, key: str, value: Any, expected: str) -> None:
    """A rule across keys of one section (``key`` names them in the message)."""
    if not ok:
        raise BoundError(expected, key, value)


def _as_tuple(value: Any) -> Any:
    """YAML lists become tuples (a frozen config holds no mutable list); anything else is left
    for the strict tuple check to refuse."""
    return tuple(value) if isinstance(value, list) else value


class Section(BaseModel):
    """One params.yaml section: every key required, none unknown, strict types, frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Seq = Annotated[tuple[E, ...], BeforeValidator(_as_tuple)]
Share01 = Annotated[float, rule(lambda v: 0 <= v < 1, "a share in [0, 1)")]
SplitShare = Annotated[float, rule(lambda v: 0 < v < 0.5, "a share in (0, 0.5)")]
Positive = Annotated[int, rule(lambda v: v >= 1, ">= 1")]
PositiveFloat = Annotated[float, rule(lambda v: v > 0, "> 0")]
NonNegative = Annotated[float, rule(lambda v: v >= 0, ">= 0")]
Unit = Annotated[float, rule(lambda v: 0 <= v <= 1, "in [0, 1]")]


class DataConfig(Section):
    """``data``: where the rows come from and what the label is."""

    source: str
    target: str
    task: Literal["auto", "classification", "regression"]
    sensitive: str | None
    categorical: Seq[str] | None
    max_missing_share: Share01
    max_categories: Annotated[int, rule(lambda v: v >= 2, ">= 2")]
    decimal: Literal[".", ","]


class NoiseConfig(Section):
    """``preprocess.noise``: confident-learning label-noise removal."""

    enabled: bool
    model: Literal["logreg", "svm", "knn"]
    folds: Annotated[int, rule(lambda v: v >= 2, ">= 2")]
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning"]
    max_share: Annotated[float, rule(lambda v: 0 <= v < 0.5, "in [0, 0.5)")]
    max_fit_rows: Annotated[int, rule(lambda v: v >= 100, ">= 100, or null for every row")] | None


class PreprocessConfig(Section):
    """``preprocess``: de-duplication, missing values, label noise, bias weights, the split."""

    seed: int
    test_size: SplitShare
    val_size: SplitShare
    missing: Literal["impute", "drop"]
    noise: NoiseConfig
    class_weights: Literal["balanced", "none"]
    feedback_holdout: Share01

    @model_validator(mode="after")
    def check_rows_left(self) -> PreprocessConfig:
        total = self.test_size + self.val_size
        across(total < 0.8, "test_size + val_size", total, "< 0.8, leaving rows to train on")
        return self


class FeaturesConfig(Section):
    """``features``: the transform search, scored by cross-validation on train only."""

    seed: int
    cv_folds: Annotated[int, rule(lambda v: v >= 2, ">= 2")]
    candidates: Annotated[
        Seq[Literal["standardize", "quantile", "log_standardize", "pca"]],
        rule(lambda v: len(v) > 0, "a non-empty list"),
    ]
    pca_components: Seq[Positive]
    quantiles: Annotated[int, rule(lambda v: v >= 10, ">= 10")]
    skew_threshold: float
    tie_tolerance: NonNegative
    search_rows: Positive | None


class ComputeConfig(Section):
    """``compute``: where the stages run, with how many CPU threads and which CPU kernels.

    ``threads`` is fixed rather than left to each library: BLAS and PyTorch split reductions by
    thread count, so a different count gives different floats and different output hashes.
    ``kernels``: the instruction set every library's CPU kernels are pinned to
    (:mod:`pipeline.contracts.kernels`), for the same reason across CPUs.
    """

    device: Literal["auto", "cpu", "cuda"]
    threads: Positive
    kernels: Literal["native", "avx2"]


# The train keys tune may search over.
TUNABLE = ("lr", "hidden", "depth", "channels", "dropout", "weight_decay", "batch_size")
TUNABLE += ("label_smoothing",)


class TrainConfig(Section):
    """``train``: the network, its optimiser and schedule, and the baselines beside it."""

    seed: int
    model: Literal["auto", "mlp", "cnn", "tabm"]
    hidden: Positive
    depth: Positive
    members: Positive
    channels: Positive
    dropout: Share01
    optimizer: Literal["adamw", "sgd"]
    lr: PositiveFloat
    momentum: float
    nesterov: bool
    weight_decay: float
    label_smoothing: Share01
    schedule: Literal["onecycle", "cosine", "step", "none"]
    step_size: Positive
    gamma: float
    epochs: Positive
    batch_size: Positive
    patience: Positive
    augment_shift: Annotated[int, rule(lambda v: v >= 0, ">= 0")]
    tta_target: float
    amp: bool
    baselines: Seq[Literal["logreg", "svm", "hgb"]]
    regression_baselines: Seq[Literal["ridge", "hgb"]]
    regression_dropout: Share01
    regression_loss: Literal["mse", "huber"]
    huber_delta: PositiveFloat
    log_target: Literal["auto", "never"]
    warm_start_epochs: Positive
    regression_warm_start_lr: PositiveFloat


def _space_ok(spec: Any) -> bool:
    if not isinstance(spec, dict):
        return False
    if set(spec) == {"choices"}:
        return isinstance(spec["choices"], list) and bool(spec["choices"])
    return set(spec) in ({"low", "high"}, {"low", "high", "log"}) and spec["low"] < spec["high"]


class TuneConfig(Section):
    """``tune``: Optuna with the Hyperband pruner over ``space`` (n_trials 0: off)."""

    n_trials: Annotated[int, rule(lambda v: v >= 0, ">= 0")]
    seed: int
    max_epochs: Positive
    min_epochs: Positive
    storage: str
    study: str
    space: dict[
        Annotated[str, rule(lambda k: k in TUNABLE, f"one of {list(TUNABLE)}")],
        Annotated[
            dict[str, Any],
            rule(_space_ok, "{low, high[, log]} with low < high, or {choices: [...]}"),
        ],
    ]

    @model_validator(mode="after")
    def check_epochs(self) -> TuneConfig:
        across(
            self.min_epochs <= self.max_epochs,
            "min_epochs",
            self.min_epochs,
            f"in [1, max_epochs = {self.max_epochs}]",
        )
        return self


class HardenConfig(Section):
    """``harden``: adversarial fine-tuning and the robustness evaluation."""

    method: Literal["fgsm_rs", "n_fgsm", "pgd", "trades", "none"]
    eps: Annotated[float, rule(lambda v: 0 < v <= 1, "a fraction of the range in (0, 1]")]
    train_eps_scale: Annotated[float, rule(lambda v: v >= 1, ">= 1")]
    steps: Positive
    trades_beta: float
    epochs: Positive
    lr: PositiveFloat
    weight_decay: float
    batch_size: Positive
    seed: int
    max_clean_drop: float
    catastrophic_drop: float
    ema_decay: Annotated[float, rule(lambda v: 0 <= v < 1, "in [0, 1); 0 = off")]
    eval_eps: Seq[Annotated[float, rule(lambda v: 0 <= v <= 1, "a fraction in [0, 1]")]]
    eval_steps: Positive
    eval_apgd_iter: Positive
    eval_restarts: Positive
    art_check: bool
    warm_start_epochs: Positive
    warm_start_lr: PositiveFloat
    warm_start_ema_decay: Annotated[float, rule(lambda v: 0 <= v < 1, "in [0, 1); 0 = off")]
    production_weight: Unit


class ExportConfig(Section):
    """``export``: the ONNX graph, its parity check and the int8 variant."""

    opset: Annotated[int, rule(lambda v: v >= 17, ">= 17")]
    parity_atol: PositiveFloat
    quantize: bool


class CompressConfig(Section):
    """``compress``: smaller graphs for the deployment targets (the compress stage)."""

    levels: Annotated[
        Seq[float], rule(lambda v: all(0 < x < 1 for x in v), "shares in (0, 1); [] = none")
    ]
    epochs: Positive
    warm_start_epochs: Positive
    quantize: Seq[Literal["static", "dynamic"]]  # int8 kinds made of every graph; [] = none


class Budget(Section):
    """One deployment target's budget: the graph's file size and its p99 single-row time in
    onnxruntime (one thread's CPU time, as the gate measures it); null = no limit."""

    max_bytes: Positive | None
    max_p99_ms: PositiveFloat | None


class DeployConfig(Section):
    """``deploy``: where the model runs. The server's graph is the one the gate judges
    (``gate.variant``); each target gets the best graph within its budget and every floor."""

    server: Budget
    device: Budget
    browser: Budget


class GateConfig(Section):
    """``gate``: what a candidate must show to replace the champion."""

    model_name: str
    variant: Literal["fp32", "int8", "auto"]
    max_int8_accuracy_drop: float
    min_accuracy: Unit
    min_robust_accuracy: Unit
    max_ece: Unit
    max_p99_latency_ms: float
    max_accuracy_drop: float
    max_robust_drop: float
    robust_steps: Positive
    robust_restarts: Positive
    apgd_iter: Positive
    square_queries: Annotated[int, rule(lambda v: v >= 0, ">= 0; 0 = off")]
    seed: int
    max_baseline_gap: float | None
    robust_floor: Literal["budget", "strict"]
    production_alpha: Annotated[float, rule(lambda v: 0 < v < 1, "in (0, 1)")]
    max_coverage_gap: Unit
    max_robust_mae: PositiveFloat
    max_group_gap: Unit | None


class ServingConfig(Section):
    """``serving``: the REST service over the champion, and its production log.

    Read by ``serving/`` (no DVC stage); ``MLCYCLE_REGISTRY`` and ``MLCYCLE_LOG_URL`` override the
    two locations (through :func:`overlay`), so replicas can share one PostgreSQL log.
    """

    registry: str
    log_url: str
    commit_interval_ms: Annotated[float, rule(lambda v: 0 < v <= 1000, "in (0, 1000]")]
    max_queue: Positive
    max_batch: Positive
    max_body_bytes: Positive
    max_in_flight: Positive
    reload_interval_s: PositiveFloat
    feedback_token_env: str
    spill_dir: str
    shutdown_timeout_s: PositiveFloat
    interval_coverage: Annotated[float, rule(lambda v: 0.5 <= v < 1, "in [0.5, 1)")]
    interval_by_group: bool


class MonitorConfig(Section):
    """``monitor``: drift and accuracy checks on production windows, and the retrain trigger.

    Read by ``monitoring/`` (no DVC stage).
    """

    window: Annotated[int, rule(lambda v: v >= 10, ">= 10")]
    alpha: Annotated[float, rule(lambda v: 0 < v < 1, "in (0, 1)")]
    min_labels: Positive
    accuracy_drop: Annotated[float, rule(lambda v: 0 < v < 1, "in (0, 1)")]
    debounce: Positive
    min_feedback: Annotated[int, rule(lambda v: v >= 0, ">= 0")]
    cooldown_s: NonNegative
    dry_run: bool
    interval_s: PositiveFloat
    max_windows: Positive
    reports: str
    report_on_drift: bool
    feedback_path: str
    warm_start_path: str
    retrain_command: Annotated[Seq[str], rule(lambda v: len(v) > 0, "a non-empty list (argv)")]
    retrain_timeout_s: PositiveFloat
    gate_metrics: str


class SimulateConfig(Section):
    """``simulate``: production traffic replayed from held-out rows, optionally shifted."""

    scenario: Literal[
        "none", "intensity", "noise", "translate", "blur", "stuck", "dead", "prior", "concept"
    ]
    rows_from: str
    requests: Positive
    records_per_request: Positive
    max_seconds: PositiveFloat
    seed: int
    intensity: PositiveFloat
    noise_sigma: float
    translate: int
    blur_sigma: float
    columns: Positive
    shift_group: str | None
    prior_classes: Annotated[Seq[int], rule(lambda v: len(v) >= 1, "1+ class indices")]
    concept_shift: int
    concept_scale: float
    concept_offset: float
    feedback_rate: Unit
    feedback_delay_s: NonNegative
