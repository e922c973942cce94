"""Regression as a task (:mod:`pipeline.learning.tasks`): a prediction and a conformal interval.

The network learns the standardised (for a skewed positive target, logged) target on
``train.regression_loss``; R² / RMSE / MAE against ridge and gradient-boosted trees; hardening
maximises the loss (:mod:`pipeline.learning.regression`); a split conformal interval at
``serving.interval_coverage`` is the calibration head; the graph outputs ``prediction``,
``lower`` and ``upper``; the gate reads R² for accuracy, robust MAE (in test target standard
deviations) for robust accuracy and the interval's coverage for calibration. No label-free
estimate: the monitor waits for labels.

Why about 620 lines in one module: it is a regressor's part in each of the stages, which read
it top to bottom in their order (model and data, hardening, export, the gate, the card), as
the classifier's module does; another task would be one more such module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.contracts.params import (
    DataConfig,
    GateConfig,
    HardenConfig,
    ServingConfig,
    TrainConfig,
)
from pipeline.contracts.runtime import compute_ms, predict_interval, session
from pipeline.contracts.schema import Schema
from pipeline.learning import regression as reg
from pipeline.learning.adversarial import gradient_passes
from pipeline.learning.attacks import Box
from pipeline.learning.checkpoint import Checkpoint
from pipeline.learning.model import Regressor, TargetScaling
from pipeline.learning.plots import plot_regression
from pipeline.learning.splits import Split
from pipeline.learning.task import (
    Attack,
    Exported,
    Hardened,
    HardenRun,
    Measured,
    Record,
    Task,
    labels,
)
from pipeline.learning.training import Objective
from pipeline.release import card
from pipeline.release.decision import Production
from pipeline.release.gate import (
    Figures,
    GroupGap,
    Rule,
    Terms,
    Verdict,
    coverage_failing,
    coverage_ok,
)

HINTS = {
    "min_r2": "the model is below gate.min_accuracy (read as R² for a regressor): more data or "
    "train.epochs / tune.n_trials, or a floor that fits your data",
    "vs_baseline": "the network trails a scikit-learn regressor: raise train.epochs, try "
    "train.regression_loss: mse, or raise gate.max_baseline_gap (in R²)",
    "clean_budget": "hardening cost more R² than harden.max_clean_drop",
    "coverage": "the interval's test coverage is off its nominal level: more validation rows "
    "(preprocess.val_size) calibrate it better; or widen gate.max_coverage_gap",
    "max_robust_mae": "robust MAE is above gate.max_robust_mae target standard deviations: raise "
    "harden.epochs, lower harden.eps, or raise the ceiling",
}


class ServedRegressor(nn.Module):
    """A regressor's graph: raw features -> (prediction, lower, upper) in the target's units.

    ``half_width``: harden's split conformal quantile on the network's scale; ``by_group``
    (with ``data.sensitive`` and ``serving.interval_by_group``): one per group of that feature,
    the rows of other groups keeping ``half_width`` (:func:`~pipeline.learning.regression.
    row_half_widths`)."""

    def __init__(
        self, model: Regressor, half_width: float, by_group: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("half_width", torch.tensor(float(half_width)))
        self.column = -1
        if by_group:
            self.column = int(by_group["column"])
            self.register_buffer("codes", torch.tensor(by_group["codes"], dtype=torch.float32))
            self.register_buffer("widths", torch.tensor(by_group["half_widths"]).float())

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.model.standardized(features)
        to_target = self.model.unstandardize
        half = self.half_width
        if self.column >= 0:  # each row's group's quantile; no group: the pooled one
            hit = (features[:, self.column : self.column + 1] == self.codes).float()
            half = (hit * self.widths).sum(dim=1) + (1.0 - hit.sum(dim=1)) * self.half_width
        return to_target(z), to_target(z - half), to_target(z + half)


def group_intervals(
    run: HardenRun, model: Regressor, calibration: Split, coverage: float, q: float
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """With ``data.sensitive`` (a feature): the group-conditional interval, and each group's
    coverage and width on test under it and under the pooled ``q``, side by side. The first
    is what the graph ships (``serving.interval_by_group``; None: the pooled interval), the
    second what robustness.json reports either way; (None, None) without groups."""
    column = run.section("data", DataConfig).sensitive
    if column is None or column not in run.schema.names:
        return None, None
    j = run.schema.names.index(column)
    widths = reg.fit_group_intervals(model, calibration, coverage, j)
    by_group = {"column": j, "codes": list(widths), "half_widths": list(widths.values())}
    test, feature = run.test, run.schema.features[j]
    names = feature.groups(test.X[:, j].numpy())
    y = test.y.numpy()
    report: dict[str, Any] = {"column": column, "shipped": False, "groups": {}}
    for how, spec in (("pooled", None), ("by_group", by_group)):
        _, lower, upper = reg.predict_interval(model, test.X, q, spec)
        for name in sorted(set(names.tolist())):
            mine = names == name
            figures = reg.interval_metrics(y[mine], lower[mine], upper[mine])
            row = report["groups"].setdefault(str(name), {"rows": int(mine.sum())})
            row.update({f"{how}_{k}": v for k, v in figures.items()})
    for code, width in widths.items():
        report["groups"][str(feature.groups(np.array([code]))[0])]["half_width"] = width
    if not run.section("serving", ServingConfig).interval_by_group or not widths:
        return None, report
    report["shipped"] = True
    return by_group, report


def group_interval_line(report: dict[str, Any]) -> str:
    """Each group's test coverage under the pooled and the group-conditional interval."""
    cells = ", ".join(
        f"{name} {g['pooled_coverage']:.3f} -> {g['by_group_coverage']:.3f}"
        for name, g in report["groups"].items()
    )
    shipped = "shipped" if report["shipped"] else "not shipped (serving.interval_by_group)"
    return f"coverage by {report['column']}, pooled -> per group ({shipped}): {cells}"


def compare(
    model: Regressor,
    interval: dict[str, Any],
    fp32: Path,
    int8: Path | None,
    X: np.ndarray,
    y: np.ndarray,
    atol: float,
    target_range: float,
) -> dict[str, Any]:
    """A regressor's parity (largest |difference| of prediction, lower and upper from PyTorch,
    as a share of the target's range) and the int8 variant's size and R²."""
    with torch.no_grad():
        half_width = interval.get("half_width") or 0.0
        served = ServedRegressor(model.cpu().eval(), half_width, interval.get("by_group"))
        ours = [v.numpy() for v in served(torch.as_tensor(X, dtype=torch.float32))]
    theirs = predict_interval(session(fp32), X)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))
    share = diff / max(target_range, 1e-12)
    report: dict[str, Any] = {
        "max_abs_probability_diff": share,  # popped into the side file by the stage
        "parity": {
            "rows": len(X),
            "measure": "max |prediction, lower, upper difference| / the target's range",
            "atol": atol,
            "passed": bool(share <= atol),
        },
        "fp32": {"r2": reg.r2(y, theirs[0]), "bytes": fp32.stat().st_size},
    }
    if int8 is not None:
        q_pred = predict_interval(session(int8), X)[0]
        report["int8"] = {
            "r2": reg.r2(y, q_pred),
            "bytes": int8.stat().st_size,
            "r2_delta": reg.r2(y, q_pred) - reg.r2(y, theirs[0]),
            "size_ratio": int8.stat().st_size / fp32.stat().st_size,
        }
    return report


def robust_method(cfg: GateConfig) -> str:
    return (
        f"per-row worst absolute error of PGD-{cfg.robust_steps} on the squared error "
        f"({cfg.robust_restarts} random start(s)) and PGD pushing up and down, seed "
        f"{cfg.seed}, on the PyTorch twin"
    )


class Regression(Task):
    name: ClassVar[str] = "regression"
    main: ClassVar[str] = "r2"
    main_name: ClassVar[str] = "R²"
    robust: ClassVar[str] = "robust_mae"
    robust_is_error: ClassVar[bool] = True
    int8_delta: ClassVar[str] = "r2_delta"
    outputs: ClassVar[tuple[str, ...]] = ("prediction", "lower", "upper")
    tag: ClassVar[dict[str, str]] = {"task": "regression"}
    parity_line: ClassVar[str] = (
        "- parity with PyTorch on {rows} test rows ({measure} within {atol:g}): {passed}"
    )
    summary_line: ClassVar[str] = (
        "R² {r2:.4f}, RMSE {rmse:.4g}, coverage {coverage:.3f}, robust MAE {robust_mae:.4g}, "
        "p99 {p99_latency_ms:.2f} ms"
    )
    limits: ClassVar[tuple[str, ...]] = (
        "- The interval's coverage is marginal (on average over rows like the validation "
        "split's), not per row; a shift in the inputs or the target can break it, which "
        "the monitor's coverage per window shows.",
    )
    robustness_axes: ClassVar[dict[str, Any]] = {
        "ylabel": "test MAE under attack (worst case per row)",
        "title": "robustness vs eps (worst case: PGD on the error, PGD up, PGD down)",
    }

    # ---- data and model ----

    def target(self, df: pd.DataFrame) -> np.ndarray:
        return labels(df, np.float64)

    def head(self, schema: Schema, cfg: TrainConfig) -> tuple[int, float]:
        return 1, cfg.regression_dropout

    def new_model(
        self, transform: nn.Module, net: nn.Module, train: Split, cfg: TrainConfig
    ) -> Any:
        scaling = TargetScaling.for_target(train.y.numpy(), cfg.log_target)
        return Regressor(transform, net, scaling)

    def warm(self, model: Any, warm: Checkpoint, cfg: TrainConfig) -> tuple[Any, dict]:
        """The scale the champion's network learnt, and ``train.regression_warm_start_lr``."""
        if warm.target_scaling is not None:
            model = Regressor(model.transform, model.net, TargetScaling(**warm.target_scaling))
        return model, {"lr": cfg.regression_warm_start_lr}

    @property
    def objective(self) -> Objective:
        """``train.regression_loss`` on the standardised target, scored by R²."""

        def loss(model: Any, out: torch.Tensor, y: torch.Tensor, w: torch.Tensor, cfg: Any) -> Any:
            target = model.standardize(y)
            return reg.regression_loss(
                out.squeeze(-1), target, w, cfg.regression_loss, cfg.huber_delta
            )

        return Objective("val_r2", loss, reg.evaluate_regression)

    def metrics(self, y: np.ndarray, predictions: np.ndarray, schema: Schema) -> dict[str, Any]:
        return reg.regression_metrics(y, predictions)

    def baselines(self, cfg: TrainConfig) -> dict[str, Any]:
        """Ridge and gradient-boosted trees."""
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.linear_model import RidgeCV

        models = {
            "ridge": RidgeCV(alphas=np.logspace(-3, 3, 13)),
            "hgb": HistGradientBoostingRegressor(random_state=cfg.seed),
        }
        return {kind: models[kind] for kind in cfg.regression_baselines}

    def baseline_score(self, y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        return {f"test_{k}": v for k, v in reg.regression_metrics(y, predictions).items()}

    def fitted(self, model: Any) -> dict[str, Any]:
        return {"target_scaling": dataclasses.asdict(model.scaling)}

    def plot_test(self, y: np.ndarray, predictions: np.ndarray, schema: Schema, path: Path) -> None:
        plot_regression(y, predictions, schema.target, path)

    def logged_baseline(self, key: str) -> bool:
        return True

    # ---- harden ----

    def warm_overlay(self, cfg: HardenConfig) -> dict[str, Any]:
        return {"ema_decay": 0.0}

    def harden(self, run: HardenRun) -> Hardened:
        """Adversarial training maximising the loss; the robust MAE; the conformal interval at
        ``serving.interval_coverage`` fit on val (on a retrain whose val holds at least 200
        labelled production rows, on those alone)."""
        trained, hardened, train, val, test = (
            run.trained,
            run.hardened,
            run.train,
            run.val,
            run.test,
        )
        cfg, schema, device, first_run = run.cfg, run.schema, run.device, run.first_run
        coverage = run.section("serving", ServingConfig).interval_coverage
        train_cfg = run.section("train", TrainConfig)
        loss = (train_cfg.regression_loss, train_cfg.huber_delta)
        history: list[dict[str, float]] = []
        seconds = 0.0
        selection: dict[str, Any] = {"kept": "trained (harden.method none)", "limited": False}
        within: list[reg.Epoch] = []
        if cfg.method != "none":
            history, seconds, selection, within = reg.harden_regression(
                hardened, train, val, schema, cfg, device, loss, reference=trained
            )
        budget = reg.check_budget_on_test(trained, hardened, test, cfg, selection, within)
        # The sweep over eval_eps is a first run's report; a retrain measures eps (the gate's).
        sweep = sorted({*cfg.eval_eps, cfg.eps}) if first_run else [cfg.eps]
        robustness: dict[str, Any] = {}
        for name, model in (("trained", trained), ("hardened", hardened)):
            model.to(device)
            by_eps = {
                f"{eps:g}": float(
                    reg.worst_case_error(
                        model,
                        test.X,
                        test.y,
                        Box.from_schema(schema, eps),
                        cfg.eval_steps,
                        cfg.eval_restarts,
                        cfg.seed,
                        progress=f"harden: {name} at eps {eps:g}",
                    ).mean()
                )
                for eps in sweep
            }
            model.cpu()
            _, _, pred = reg.evaluate_regression(model, test)
            clean = reg.regression_metrics(test.y.numpy(), pred)
            robustness[name] = {
                **{f"clean_{k}": v for k, v in clean.items()},
                "robust_mae": by_eps[f"{cfg.eps:g}"],
                "by_eps": by_eps,
            }
        calibration, calibrated_on = reg.calibration_rows(val)
        q = reg.fit_interval(hardened, calibration, coverage)
        shipped, per_group = group_intervals(run, hardened, calibration, coverage, q)
        pred, lower, upper = reg.predict_interval(hardened, test.X, q, shipped)
        _, v_lower, v_upper = reg.predict_interval(hardened, calibration.X, q, shipped)
        interval = {
            "method": ("group-conditional (Mondrian) " if shipped else "")
            + "split conformal on the network's scale, fit on the validation split"
            + ("'s production rows" if calibrated_on == "production" else ""),
            "nominal_coverage": coverage,
            "half_width": q,  # on the network's (standardised) scale
            "calibrated_on": calibrated_on,
            "calibration_rows": len(calibration.y),
            "val": reg.interval_metrics(calibration.y.numpy(), v_lower, v_upper),
            "test": reg.interval_metrics(test.y.numpy(), lower, upper),
            **({"by_group": per_group} if per_group else {}),
        }
        metrics = {
            "task": "regression",
            "method": cfg.method,
            "eps": cfg.eps,
            "evaluation": (
                f"per-row worst absolute error of PGD-{cfg.eval_steps} on the squared error "
                f"({cfg.eval_restarts} random start(s)) and PGD pushing the prediction up and "
                "down"
            ),
            **robustness,
            "clean_r2_drop": robustness["trained"]["clean_r2"] - robustness["hardened"]["clean_r2"],
            "budget": budget,
            "interval": interval,
            "epochs_run": len(history),
            "warm_start": "",  # the stage sets it
            "harden_to_train_passes": gradient_passes(cfg, len(history), len(train.y))
            / max(run.train_epochs * len(train.y), 1),
        }
        table = pd.DataFrame(
            {
                "eps": [float(e) for e in robustness["trained"]["by_eps"]],
                "trained": list(robustness["trained"]["by_eps"].values()),
                "hardened": list(robustness["hardened"]["by_eps"].values()),
            }
        )
        t, h = robustness["trained"], robustness["hardened"]
        summary = [
            f"eps={cfg.eps:g} robust MAE {t['robust_mae']:.4g} -> {h['robust_mae']:.4g}, "
            f"clean R² {t['clean_r2']:.4f} -> {h['clean_r2']:.4f} (kept: {budget['kept']}), "
            f"{seconds:.1f} s",
            f"{coverage:.0%} interval: test coverage {interval['test']['coverage']:.3f}, "
            f"mean width {interval['test']['mean_width']:.4g} (fit on {len(calibration.y)} "
            f"{calibrated_on} rows of val)",
        ]
        if per_group:
            summary.append(group_interval_line(per_group))
        y_test = test.y.numpy()
        return Hardened(
            metrics=metrics,
            table=table,
            # export puts it in the graph; the gate checks its coverage where it was calibrated
            checkpoint={
                "interval": {
                    "half_width": q,
                    "coverage": coverage,
                    "calibrated_on": calibrated_on,
                    **({"by_group": shipped} if shipped else {}),
                }
            },
            history=history,
            seconds=seconds,
            figure=lambda path: plot_regression(y_test, pred, schema.target, path, lower, upper),
            summary=summary,
        )

    def fine_tune(self, run: HardenRun) -> dict[str, Any]:
        coverage = run.section("serving", ServingConfig).interval_coverage
        train_cfg = run.section("train", TrainConfig)
        if run.cfg.method != "none":
            reg.harden_regression(
                run.hardened, run.train, run.val, run.schema, run.cfg, run.device,
                (train_cfg.regression_loss, train_cfg.huber_delta), reference=run.trained,
            )  # fmt: skip
        run.hardened.cpu().eval()
        calibration, calibrated_on = reg.calibration_rows(run.val)
        q = reg.fit_interval(run.hardened, calibration, coverage)
        shipped, _ = group_intervals(run, run.hardened, calibration, coverage, q)
        interval = {"half_width": q, "coverage": coverage, "calibrated_on": calibrated_on}
        return {"interval": {**interval, **({"by_group": shipped} if shipped else {})}}

    # ---- export ----

    def served(self, model: Any, checkpoint: Checkpoint) -> nn.Module:
        interval = checkpoint.interval or {}
        return ServedRegressor(model, interval.get("half_width") or 0.0, interval.get("by_group"))

    def parity(
        self, exported: Exported, X: np.ndarray, y: np.ndarray, atol: float
    ) -> tuple[dict[str, Any], float]:
        schema, interval = exported.schema, exported.checkpoint.interval or {}
        span = float(schema.target_max or 0.0) - float(schema.target_min or 0.0)
        graphs = (exported.fp32, exported.int8)
        report = compare(exported.model, interval, *graphs, X, y, atol, span)
        diff = report.pop("max_abs_probability_diff")
        return {"task": "regression", "interval": interval, **report}, diff

    def parity_summary(self, report: dict[str, Any], diff: float) -> str:
        rows = report["parity"]["rows"]
        return f"parity max |difference| / target range = {diff:.2e} on {rows} rows"

    # ---- evaluate ----

    def measure(
        self, model: Measured, X: np.ndarray, y: np.ndarray, attack: Attack, key: str, known: Any
    ) -> dict[str, Any]:
        cfg = attack.cfg
        sess = session(model.onnx)
        pred, lower, upper = predict_interval(sess, X)
        base = {
            **reg.regression_metrics(y, pred),
            **reg.interval_metrics(y, lower, upper),
            "rows": len(y),
            "p99_latency_ms": compute_ms(sess, X)["p99_ms"],
            "gate_key": key,
        }
        if known is not None and known.get("gate_key") == key and "robust_mae" in known:
            return {**base, "robust_mae": known["robust_mae"], "robust_cached": True}
        errors = reg.worst_case_error(
            model.twin,
            torch.as_tensor(X),
            torch.as_tensor(y, dtype=torch.float32),
            Box.from_schema(attack.schema, attack.eps),
            cfg.robust_steps,
            cfg.robust_restarts,
            cfg.seed,
            progress="evaluate: robust MAE",
        )
        return {**base, "robust_mae": float(errors.mean()), "robust_cached": False}

    def on_holdout(
        self, model: Measured, X: np.ndarray, y: np.ndarray, attack: Attack
    ) -> dict[str, Any]:
        """R², MAE and interval coverage on the production holdout."""
        return self.holdout_floors(model.onnx, X, y)

    def holdout_floors(self, graph: Path, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """The graph's figures on the holdout (the coverage rule reads them on a retrain
        calibrated on production rows): the graph alone, no twin."""
        pred, lower, upper = predict_interval(session(graph), X)
        quality = reg.regression_metrics(y, pred)
        return {
            "holdout_r2": quality["r2"],
            "holdout_mae": quality["mae"],
            "holdout_coverage": reg.interval_metrics(y, lower, upper)["coverage"],
            "holdout_rows": len(y),
        }

    def by_group(
        self, graph: Path, X: np.ndarray, y: np.ndarray, groups: np.ndarray, column: str
    ) -> tuple[dict[str, Any], GroupGap | None]:
        """MAE, R², coverage and width per group; the R² gap."""
        from pipeline.learning import groups as by

        pred, lower, upper = predict_interval(session(graph), X)
        truth = np.asarray(y, np.float64)
        gap = by.gap(column, "r2", lambda rows: reg.r2(truth[rows], pred[rows]), groups)
        return by.values(truth, pred, lower, upper, groups), gap

    def production(
        self, champion: Figures | None, cfg: GateConfig, export: dict[str, Any]
    ) -> Production:
        """Failing: its holdout coverage significantly below nominal (the concept moved)."""
        nominal = float(export["interval"]["coverage"])
        failing = champion is not None and coverage_failing(
            champion.get("holdout_coverage", 1.0), champion.get("holdout_rows", 0), nominal, cfg
        )
        return Production(
            bool(failing),
            f"holdout coverage {champion['holdout_coverage']:.3f} on "
            f"{champion['holdout_rows']} rows vs nominal {nominal:.2f} (binomial test at "
            f"gate.production_alpha {cfg.production_alpha})"
            if champion is not None and "holdout_coverage" in champion
            else "no champion or no labelled production rows",
        )

    def terms(self, cfg: GateConfig, cand: Figures, export: dict[str, Any], y: np.ndarray) -> Terms:
        """R² for accuracy (on the same rows an R² margin is an RMSE margin), robust MAE in test
        target standard deviations for robust accuracy, the interval's coverage for
        calibration: on the production holdout when it was calibrated on production rows (a
        retrain on enough of them), the rows like those it will serve, else on test."""
        nominal = float(export["interval"]["coverage"])
        target_std = float(np.std(y)) or 1.0
        ceiling = cfg.max_robust_mae * target_std
        where, covered, rows = "test", cand["coverage"], cand["rows"]
        calibrated_on = export["interval"].get("calibrated_on", "validation")
        if calibrated_on == "production" and cand.get("holdout_rows"):
            where, covered = "production holdout", cand["holdout_coverage"]
            rows = cand["holdout_rows"]
        ok, p = coverage_ok(covered, rows, nominal, cfg)

        def vs_champion_robust(cand: Figures, champ: Figures) -> Rule:
            return Rule(
                "vs_champion_robust_mae",
                cand["robust_mae"],
                champ["robust_mae"] + cfg.max_robust_drop * target_std,
                False,
                f"robust MAE <= champion's {champ['robust_mae']:.4g} + {cfg.max_robust_drop} x "
                "the target's standard deviation",
            )

        def waived_hint(r: Verdict, eps: float, max_clean_drop: float) -> str:
            return (
                f"robust MAE {r.value:.4g} is above the gate.max_robust_mae ceiling "
                f"{r.threshold:.4g}, waived because robustness at harden.eps = {eps:g} costs "
                f"more R² than harden.max_clean_drop = {max_clean_drop:g}"
            )

        def rmse(cand: Figures, champ: Figures | None) -> str:
            theirs = f" vs {champ['rmse']:.4g}" if champ is not None else ""
            return f" (RMSE {cand['rmse']:.4g}{theirs})"

        return Terms(
            main="r2",
            main_name="R²",
            robust="robust_mae",
            robust_name="robust MAE",
            robust_format=".4g",
            floors=(
                Rule(
                    "min_r2",
                    cand["r2"],
                    cfg.min_accuracy,
                    True,
                    "test R² >= floor (gate.min_accuracy)",
                ),
                Rule(
                    "max_robust_mae",
                    cand["robust_mae"],
                    ceiling,
                    False,
                    f"robust MAE <= {cfg.max_robust_mae:g} x the test target's standard "
                    f"deviation {target_std:.4g}",
                ),
                Rule(
                    "coverage",
                    float(ok),
                    1.0,
                    True,
                    f"{where} coverage {covered:.3f} of the {nominal:.0%} interval within "
                    f"{cfg.max_coverage_gap} of nominal, or not significantly off it (binomial "
                    f"p {p:.2g} >= {cfg.production_alpha})",
                ),
            ),
            robust_floor="max_robust_mae",
            vs_champion_robust=vs_champion_robust,
            hints=HINTS,
            waived_robust_hint=waived_hint,
            note=rmse,
        )

    def decision_head(self, cfg: GateConfig, export: dict[str, Any], y: np.ndarray) -> dict:
        return {
            "task": "regression",
            "robust_method": robust_method(cfg),
            "interval_coverage": float(export["interval"]["coverage"]),
            "target_std": float(np.std(y)) or 1.0,
        }

    def card_body(self, record: Record) -> list[str]:
        decision, robustness = record.decision, record.robustness
        c, schema, train, ckpt = (
            decision.candidate,
            record.schema,
            record.train,
            record.checkpoint,
        )
        interval = robustness.get("interval", {})
        logged = " (target learnt as log1p)" if (ckpt.target_scaling or {}).get("log") else ""
        keys = ["r2", "rmse", "mae", "coverage", "mean_width", "robust_mae", "p99_latency_ms"]
        keys += [k for k in ("holdout_r2", "holdout_mae", "holdout_coverage") if k in c]
        lines = [
            f"# Model card: {decision.model_name} ({decision.variant}), regression",
            "",
            "## Data",
            card.data_line(schema, f" in [{schema.target_min:g}, {schema.target_max:g}]"),
            "- evaluated on the frozen test split cut once from the source (stratified on "
            "target quantile bins)",
            "",
            *card.model_lines(
                ckpt.model_config, robustness, "prediction, lower and upper" + logged
            ),
            *card.metrics_table(decision, keys),
            *card.baselines_line(train, self.baseline_key, c["r2"], "R²"),
            "## Interval",
            f"- {interval.get('method', 'split conformal')}, nominal coverage "
            f"{decision.head['interval_coverage']:.0%}, calibrated on "
            f"{interval.get('calibration_rows')} rows; test coverage above",
            "",
            "## Robustness (test split, robust MAE)",
            f"Harden's evaluation: {robustness.get('evaluation')}. Gate's: "
            f"{decision.head.get('robust_method')}.",
            "",
            "| eps | trained | hardened |",
            "| --- | --- | --- |",
        ]
        for eps, mae in robustness["hardened"]["by_eps"].items():
            lines.append(f"| {eps} | {robustness['trained']['by_eps'][eps]:.4g} | {mae:.4g} |")
        return lines
