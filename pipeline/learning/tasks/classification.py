"""Classification as a task (:mod:`pipeline.learning.tasks`): class probabilities and a label.

Cross-entropy on the network's logits, accuracy / macro-F1 / log loss / ECE, logistic and SVM
baselines, hardening against the worst class margin (:mod:`pipeline.learning.adversarial`),
temperature scaling as the calibration head, a graph to ``probabilities`` and ``label``, the
gate's worst-case robust accuracy (PGD, APGD-CE, APGD-DLR, then a black-box Square check on the
shipped graph) and a label-free accuracy estimate for the monitor.

One module (about 560 lines) because it is the task's whole part in every stage, a section per
stage in the order they run (data and model, harden, export, evaluate and the card): a new task
is one such module, not a file per stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.contracts.estimate import AccuracyEstimator
from pipeline.contracts.params import GateConfig, HardenConfig, TrainConfig
from pipeline.contracts.runtime import compute_ms, predict, session
from pipeline.contracts.schema import Schema
from pipeline.learning.adversarial import (
    Selection,
    budget_notes,
    check_budget_on_test,
    gradient_passes,
    harden,
)
from pipeline.learning.attacks import Box, square_attack, worst_case
from pipeline.learning.calibration import calibrate, fit_temperature, logits_of
from pipeline.learning.checkpoint import Checkpoint
from pipeline.learning.metrics import classification_metrics
from pipeline.learning.model import Classifier
from pipeline.learning.plots import plot_confusion, plot_reliability
from pipeline.learning.robustness import evaluate_robustness, evaluation_method
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
from pipeline.learning.training import Objective, evaluate_loss, weighted_loss
from pipeline.release import card
from pipeline.release.decision import Production
from pipeline.release.gate import Figures, GroupGap, Rule, Terms, Verdict, champion_failing

# The figures of the gate's attacks on the test split, which a version's promotion record keeps.
ROBUST_KEYS = ("robust_accuracy", "square", "gradient_masking_suspected")

HINTS = {
    "min_accuracy": "the model is below gate.min_accuracy: more data or train.epochs / "
    "tune.n_trials, or a floor that fits your data",
    "vs_baseline": "the network trails a scikit-learn baseline: raise train.epochs, try "
    "tune.n_trials: 30, or raise gate.max_baseline_gap",
    "clean_budget": "hardening cost more clean accuracy than harden.max_clean_drop",
    "min_robust_accuracy": "robust accuracy is below gate.min_robust_accuracy: raise "
    "harden.epochs, lower harden.eps, or lower the floor",
    "max_ece": "probabilities are miscalibrated: see metrics/robustness.json calibration",
}


def robust_method(cfg: GateConfig) -> str:
    return (
        f"per-row worst case of PGD-{cfg.robust_steps}, APGD-CE and APGD-DLR ({cfg.apgd_iter} "
        f"iterations), {cfg.robust_restarts} restart(s), seed {cfg.seed}, on the PyTorch twin; "
        f"Square ({cfg.square_queries} queries) on the shipped ONNX graph"
    )


class Served(nn.Module):
    """What the ONNX graph computes: raw features -> (calibrated probabilities, label).

    ``temperature`` is harden's temperature scaling (the checkpoint's ``temperature``).
    """

    def __init__(self, model: Classifier, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(features) * self.inv_temperature
        probabilities = torch.softmax(logits, dim=1)  # (batch, classes)
        return probabilities, probabilities.argmax(dim=1)  # (batch,)


def graph_judge(sess: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Which rows the graph in ``sess`` answers right at points ``x`` (the gate's worst case
    on a graph that is not its twin's exact copy: :func:`~pipeline.learning.attacks.worst_case`'s
    ``judge``)."""

    def right(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels = sess.run(None, {"features": x.detach().cpu().numpy().astype(np.float32)})[1]
        return torch.as_tensor(labels == y.cpu().numpy()).to(x.device)

    return right


def torch_predict(
    model: Classifier, X: np.ndarray, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        served = Served(model.cpu().eval(), temperature)
        probs, predicted = served(torch.as_tensor(X, dtype=torch.float32))
    return probs.numpy(), predicted.numpy()


def compare(
    model: Classifier,
    fp32: Path,
    int8: Path | None,
    X: np.ndarray,
    y: np.ndarray,
    atol: float,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Parity of the fp32 graph with PyTorch, and the int8 variant's size and accuracy.

    Deterministic for the same graphs and rows on one CPU. The largest probability difference
    itself depends on onnxruntime's kernels, which follow the CPU (no switch pins them): it is
    returned apart, as ``max_abs_probability_diff``, for the side file; the report keeps only
    what it decides (within ``atol``, labels equal). Latencies are in the export stage.
    """
    t_probs, t_labels = torch_predict(model, X, temperature)
    o_probs, o_labels = predict(session(fp32), X)
    diff = float(np.abs(o_probs - t_probs).max())
    report: dict[str, Any] = {
        "max_abs_probability_diff": diff,  # popped into the side file by the stage
        "parity": {
            "rows": len(X),
            "labels_equal": bool(np.array_equal(o_labels, t_labels)),
            "atol": atol,
            "passed": bool(diff <= atol and np.array_equal(o_labels, t_labels)),
        },
        "fp32": {"accuracy": float((o_labels == y).mean()), "bytes": fp32.stat().st_size},
    }
    if int8 is not None:
        _, q_labels = predict(session(int8), X)
        report["int8"] = {
            "accuracy": float((q_labels == y).mean()),
            "bytes": int8.stat().st_size,
            "accuracy_delta": float((q_labels == y).mean() - (o_labels == y).mean()),
            "size_ratio": int8.stat().st_size / fp32.stat().st_size,
        }
    return report


def square_check(
    sess: Any, X: np.ndarray, y: np.ndarray, box: Box, robust_rows: np.ndarray, cfg: GateConfig
) -> dict[str, Any]:
    """The black-box Square-style attack through onnxruntime on the rows the gradient attacks
    could not break. Any it breaks means the gradients mislead those attacks (gradient masking):
    they count against the robust figure, and the decision says so."""
    rows = np.flatnonzero(robust_rows)
    if len(rows) == 0 or not bool((box.eps > 0).any()):
        return {
            "square": {"queries": cfg.square_queries, "rows_attacked": 0, "fooled": 0},
            "gradient_masking_suspected": False,
        }

    def scores(features: np.ndarray) -> np.ndarray:
        return predict(sess, features)[0]

    fooled = square_attack(
        scores,
        X[rows].astype(np.float64),
        y[rows],
        box.eps.numpy().astype(np.float64),
        box.low.numpy().astype(np.float64),
        box.high.numpy().astype(np.float64),
        cfg.square_queries,
        cfg.seed,
    )
    return {
        "square": {
            "queries": cfg.square_queries,
            "rows_attacked": len(rows),
            "fooled": int(fooled.sum()),
        },
        "gradient_masking_suspected": bool(fooled.any()),
        "robust_accuracy": float((len(rows) - fooled.sum()) / len(y)),
    }


class Classification(Task):
    name: ClassVar[str] = "classification"
    main: ClassVar[str] = "accuracy"
    main_name: ClassVar[str] = "accuracy"
    robust: ClassVar[str] = "robust_accuracy"
    robust_is_error: ClassVar[bool] = False
    int8_delta: ClassVar[str] = "accuracy_delta"
    outputs: ClassVar[tuple[str, ...]] = ("probabilities", "label")
    tag: ClassVar[dict[str, str]] = {}
    parity_line: ClassVar[str] = (
        "- parity with PyTorch on {rows} test rows: every probability within {atol:g}: "
        "{passed}, labels equal {labels_equal}"
    )
    summary_line: ClassVar[str] = (
        "accuracy {accuracy:.4f}, robust {robust_accuracy:.4f}, p99 {p99_latency_ms:.2f} ms"
    )
    limits: ClassVar[tuple[str, ...]] = (
        "- Gradient attacks run on the PyTorch twin of the graph (export proved them "
        "equal); the shipped graph itself, int8 included, is attacked only by the "
        "black-box search.",
    )
    robustness_axes: ClassVar[dict[str, Any]] = {
        "ylabel": "test accuracy under attack",
        "title": "robustness vs eps (worst case: PGD, APGD-CE, APGD-DLR)",
        "ylim": (0, 1.02),
    }

    # ---- data and model ----

    def target(self, df: pd.DataFrame) -> np.ndarray:
        return labels(df)

    def head(self, schema: Schema, cfg: TrainConfig) -> tuple[int, float]:
        return schema.n_classes, cfg.dropout

    def new_model(
        self, transform: nn.Module, net: nn.Module, train: Split, cfg: TrainConfig
    ) -> Any:
        return Classifier(transform, net)

    def warm(self, model: Any, warm: Checkpoint, cfg: TrainConfig) -> tuple[Any, dict]:
        return model, {}

    @property
    def objective(self) -> Objective:
        """Weighted cross-entropy (with ``train.label_smoothing``), scored by accuracy."""
        return Objective(
            "val_accuracy",
            lambda model, logits, y, w, cfg: weighted_loss(logits, y, w, cfg.label_smoothing),
            evaluate_loss,
        )

    def metrics(self, y: np.ndarray, predictions: np.ndarray, schema: Schema) -> dict[str, Any]:
        return classification_metrics(y, predictions, schema.n_classes)

    def baselines(self, cfg: TrainConfig) -> dict[str, Any]:
        """Logistic regression, an RBF SVM and gradient-boosted trees (``hgb``: the one a
        network on a table has to beat), as ``train.baselines`` names them."""
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import SVC

        models = {
            "logreg": lambda: LogisticRegression(max_iter=5000),
            "svm": lambda: SVC(C=10.0, gamma="scale", random_state=cfg.seed),
            "hgb": lambda: HistGradientBoostingClassifier(random_state=cfg.seed),
        }
        return {kind: models[kind]() for kind in cfg.baselines}

    def baseline_score(self, y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import f1_score

        return {
            "test_accuracy": float((predictions == y).mean()),
            "test_macro_f1": float(f1_score(y, predictions, average="macro")),
        }

    def plot_test(self, y: np.ndarray, predictions: np.ndarray, schema: Schema, path: Path) -> None:
        plot_confusion(y, predictions.argmax(1), schema.classes, path)

    def logged_baseline(self, key: str) -> bool:
        return key == "test_accuracy"

    # ---- harden ----

    def warm_overlay(self, cfg: HardenConfig) -> dict[str, Any]:
        return {"ema_decay": cfg.warm_start_ema_decay}

    def harden(self, run: HardenRun) -> Hardened:
        """Adversarial training against the class margin; every ``harden.eval_eps`` by the
        per-row worst case on a first run (the gate's eps alone on a retrain); temperature
        scaling on val."""
        trained, hardened, train, val, test = (
            run.trained,
            run.hardened,
            run.train,
            run.val,
            run.test,
        )
        cfg, schema, device, first_run = run.cfg, run.schema, run.device, run.first_run
        history, seconds, selection = [], 0.0, Selection(kept="trained (harden.method none)")
        if cfg.method != "none":
            history, seconds, selection = harden(
                hardened, train, val, schema, cfg, device, reference=trained
            )
        budget = check_budget_on_test(trained, hardened, test, schema, cfg, selection)
        robustness = evaluate_robustness(
            {"trained": trained, "hardened": hardened}, test, schema, cfg, device, first_run
        )
        temperature, calibration, curves = calibrate(trained, hardened, val, test)
        rows = len(train.y)
        production = train.production
        attacked = (
            rows - int(production.sum())
            if production is not None and cfg.production_weight == 0
            else rows
        )
        metrics = {
            "method": cfg.method,
            "eps": cfg.eps,
            "evaluation": evaluation_method(cfg, first_run),
            **robustness,
            "clean_accuracy_drop": robustness["trained"]["clean_accuracy"]
            - robustness["hardened"]["clean_accuracy"],
            "budget": budget,
            "calibration": calibration,
            "epochs_run": len(history),
            "warm_start": "",  # the stage sets it
            # Deterministic cost: gradient passes relative to training's (wall time: --timing).
            "harden_to_train_passes": gradient_passes(cfg, len(history), rows, attacked)
            / max(run.train_epochs * rows, 1),
        }
        table = pd.DataFrame(
            {
                "eps": [float(e) for e in robustness["trained"]["by_eps"]],
                "trained": list(robustness["trained"]["by_eps"].values()),
                "hardened": list(robustness["hardened"]["by_eps"].values()),
                "trained_pgd": list(robustness["trained"]["pgd_by_eps"].values()),
                "hardened_pgd": list(robustness["hardened"]["pgd_by_eps"].values()),
            }
        )
        h, t = robustness["hardened"], robustness["trained"]
        art = h.get("art_robust_accuracy") or float("nan")
        robust = (
            f"eps={cfg.eps:g} worst-case robust accuracy {t['robust_accuracy']:.4f} -> "
            f"{h['robust_accuracy']:.4f} (ART APGD-CE {art:.4f})"
            if first_run
            else f"eps={cfg.eps:g} worst case: the gate's (a retrain)"
        )
        summary = [
            *budget_notes(budget, cfg),
            f"temperature {temperature:.3f}: test ECE {calibration['test_ece_before']:.4f} "
            f"-> {calibration['test_ece_after']:.4f}",
            f"{robust}, clean {t['clean_accuracy']:.4f} -> {h['clean_accuracy']:.4f}, "
            f"{metrics['harden_to_train_passes']:.1f}x training's gradient passes, {seconds:.1f} s",
        ]
        return Hardened(
            metrics=metrics,
            table=table,
            # export divides the logits by it inside the graph
            checkpoint={"temperature": temperature},
            history=history,
            seconds=seconds,
            figure=lambda path: plot_reliability(curves, path),
            summary=summary,
        )

    def fine_tune(self, run: HardenRun) -> dict[str, Any]:
        if run.cfg.method != "none":
            harden(
                run.hardened, run.train, run.val, run.schema, run.cfg, run.device,
                reference=run.trained,
            )  # fmt: skip
        run.hardened.cpu().eval()
        logits = logits_of(run.hardened, run.val.X)
        return {"temperature": fit_temperature(logits, run.val.y.numpy())}

    # ---- export ----

    def served(self, model: Any, checkpoint: Checkpoint) -> nn.Module:
        return Served(model, float(checkpoint.temperature or 1.0))

    def parity(
        self, exported: Exported, X: np.ndarray, y: np.ndarray, atol: float
    ) -> tuple[dict[str, Any], float]:
        temperature = float(exported.checkpoint.temperature or 1.0)
        report = compare(exported.model, exported.fp32, exported.int8, X, y, atol, temperature)
        diff = report.pop("max_abs_probability_diff")
        return {"temperature": temperature, **report}, diff

    def parity_summary(self, report: dict[str, Any], diff: float) -> str:
        p = report["parity"]
        return (
            f"parity max |dp| = {diff:.2e} on {p['rows']} rows, labels equal: {p['labels_equal']}"
        )

    # ---- evaluate ----

    def measure(
        self, model: Measured, X: np.ndarray, y: np.ndarray, attack: Attack, key: str, known: Any
    ) -> dict[str, Any]:
        schema, eps, cfg = attack.schema, attack.eps, attack.cfg
        sess = session(model.onnx)
        proba, _ = predict(sess, X)
        quality = classification_metrics(y, proba, schema.n_classes)
        base = {
            **{k: v for k, v in quality.items() if k != "per_class_recall"},
            "p99_latency_ms": compute_ms(sess, X)["p99_ms"],
            "gate_key": key,
        }
        if known is not None and known.get("gate_key") == key:
            cached = {k: known[k] for k in ROBUST_KEYS if k in known}
            return {**base, **cached, "robust_cached": True}
        box = Box.from_schema(schema, eps)
        robust = worst_case(
            model.twin,
            torch.as_tensor(X),
            torch.as_tensor(y),
            box,
            n_iter=cfg.apgd_iter,
            restarts=cfg.robust_restarts,
            pgd_steps=cfg.robust_steps,
            seed=cfg.seed,
            judge=graph_judge(sess) if model.judged else None,
        )
        out = {**base, "robust_accuracy": robust["worst_case"], "robust_cached": False}
        if cfg.square_queries:
            out.update(square_check(sess, X, y, box, robust["robust_rows"], cfg))
        return out

    def on_holdout(
        self, model: Measured, X: np.ndarray, y: np.ndarray, attack: Attack
    ) -> dict[str, Any]:
        """Accuracy and robust accuracy (the gate's worst case) on the production holdout. Only
        the worst case is read here, so the attacks cascade (a row one breaks is not attacked
        again)."""
        cfg = attack.cfg
        sess = session(model.onnx)
        proba, _ = predict(sess, X)
        robust = worst_case(
            model.twin,
            torch.as_tensor(X),
            torch.as_tensor(y),
            Box.from_schema(attack.schema, attack.eps),
            n_iter=cfg.apgd_iter,
            restarts=cfg.robust_restarts,
            pgd_steps=cfg.robust_steps,
            seed=cfg.seed,
            cascade=True,
            judge=graph_judge(sess) if model.judged else None,
        )
        return {
            "holdout_accuracy": float((proba.argmax(axis=1) == y).mean()),
            "holdout_robust_accuracy": robust["worst_case"],
            "holdout_rows": len(y),
        }

    def by_group(
        self, graph: Path, X: np.ndarray, y: np.ndarray, groups: np.ndarray, column: str
    ) -> tuple[dict[str, Any], GroupGap | None]:
        """Accuracy, per-class selection rate, TPR and FPR per group; the parity differences;
        the accuracy gap."""
        from pipeline.learning import groups as by

        proba, _ = predict(session(graph), X)
        pred = proba.argmax(axis=1)
        right = pred == y
        gap = by.gap(column, "accuracy", lambda rows: float(right[rows].mean()), groups)
        return by.classes(y, pred, groups, proba.shape[1]), gap

    def production(
        self, champion: Figures | None, cfg: GateConfig, export: dict[str, Any]
    ) -> Production:
        """Failing: its holdout accuracy significantly below its test accuracy (the gate's
        ``champion_failing``)."""
        if champion is None or not champion.get("holdout_rows"):
            return Production(False, "no champion or no labelled production rows")
        rows, acc = champion["holdout_rows"], champion["holdout_accuracy"]
        failing, p = champion_failing(champion["accuracy"], round(acc * rows), rows, cfg)
        why = (
            f"holdout accuracy {acc:.4f} on {rows} rows vs test accuracy "
            f"{champion['accuracy']:.4f} - {cfg.max_accuracy_drop} (binomial p {p:.2g}, "
            f"gate.production_alpha {cfg.production_alpha})"
        )
        return Production(failing, why, p)

    def terms(self, cfg: GateConfig, cand: Figures, export: dict[str, Any], y: np.ndarray) -> Terms:
        def vs_champion_robust(cand: Figures, champ: Figures) -> Rule:
            return Rule(
                "vs_champion_robust_accuracy",
                cand["robust_accuracy"],
                champ["robust_accuracy"] - cfg.max_robust_drop,
                True,
                f"robust accuracy >= champion's {champ['robust_accuracy']:.4f} - "
                f"{cfg.max_robust_drop}",
            )

        def waived_hint(r: Verdict, eps: float, max_clean_drop: float) -> str:
            return (
                f"robust accuracy {r.value:.4f} is below gate.min_robust_accuracy = "
                f"{r.threshold:g}, waived because robustness at harden.eps = {eps:g} costs "
                f"more clean accuracy than harden.max_clean_drop = {max_clean_drop:g}"
            )

        return Terms(
            main="accuracy",
            main_name="accuracy",
            robust="robust_accuracy",
            robust_name="robust",
            robust_format=".4f",
            floors=(
                Rule(
                    "min_accuracy",
                    cand["accuracy"],
                    cfg.min_accuracy,
                    True,
                    "test accuracy >= floor",
                ),
                Rule(
                    "min_robust_accuracy",
                    cand["robust_accuracy"],
                    cfg.min_robust_accuracy,
                    True,
                    "robust accuracy >= floor",
                ),
                Rule("max_ece", cand["ece"], cfg.max_ece, False, "calibration error <= ceiling"),
            ),
            robust_floor="min_robust_accuracy",
            vs_champion_robust=vs_champion_robust,
            hints=HINTS,
            waived_robust_hint=waived_hint,
        )

    def decision_head(self, cfg: GateConfig, export: dict[str, Any], y: np.ndarray) -> dict:
        return {"robust_method": robust_method(cfg)}

    def estimate(self, onnx_path: Path, val: pd.DataFrame, schema: Schema) -> dict | None:
        """ATC, COTT and the nearest-neighbour vote (bench/estimate.py), fit on val through the
        graph that ships."""
        X = val[schema.names].to_numpy(np.float32)
        val_proba, _ = predict(session(onnx_path), X)
        categories = [len(f.categories or ()) for f in schema.features]  # () for a numeric
        estimator = AccuracyEstimator.fit(val_proba, self.target(val), X=X, categories=categories)
        return estimator.to_dict()

    def card_body(self, record: Record) -> list[str]:
        decision, robustness = record.decision, record.robustness
        c, schema, train, ckpt = (
            decision.candidate,
            record.schema,
            record.train,
            record.checkpoint,
        )
        cal = robustness.get("calibration", {})
        by_eps = robustness["hardened"]["by_eps"]
        keys = ["accuracy", "macro_f1", "log_loss", "ece", "robust_accuracy", "p99_latency_ms"]
        if "holdout_accuracy" in c:  # labelled production rows kept out of training
            keys += ["holdout_accuracy", "holdout_robust_accuracy"]
        lines = [
            f"# Model card: {decision.model_name} ({decision.variant})",
            "",
            "## Data",
            card.data_line(schema, f", classes {list(schema.classes)}"),
            "- evaluated on the frozen test split cut once from the source",
            "",
            *card.model_lines(ckpt.model_config, robustness, "probabilities"),
            *card.metrics_table(decision, keys),
            *card.baselines_line(train, self.baseline_key, c["accuracy"], "accuracy"),
            "## Robustness (test split)",
            f"Harden's evaluation: {robustness.get('evaluation', 'PGD')}. Gate's (the "
            f"robust_accuracy above, same for candidate and champion): "
            f"{decision.head.get('robust_method', 'PGD')}.",
            "",
            "| eps | trained | hardened | hardened, PGD only |",
            "| --- | --- | --- | --- |",
        ]
        pgd_by_eps = robustness["hardened"].get("pgd_by_eps", by_eps)
        for eps, acc in by_eps.items():
            lines.append(
                f"| {eps} | {robustness['trained']['by_eps'][eps]:.4f} | {acc:.4f} | "
                f"{pgd_by_eps.get(eps, float('nan')):.4f} |"
            )
        square = c.get("square")
        masking = " - gradient masking suspected" if c.get("gradient_masking_suspected") else ""
        if square:
            lines += [
                "",
                f"Black-box check (Square-style search, {square.get('queries', 0)} queries, on "
                f"the shipped {decision.variant} graph): {square.get('fooled', 0)} of "
                f"{square.get('rows_attacked', 0)} rows the gradient attacks could not break "
                f"were broken{masking}.",
            ]
        lines += [
            "",
            "## Calibration",
            f"- {cal.get('method', 'none')}: temperature {cal.get('temperature', 1.0):.3f}, "
            f"test ECE {cal.get('test_ece_before', float('nan')):.4f} -> "
            f"{cal.get('test_ece_after', float('nan')):.4f} (plots/reliability.png)",
        ]
        return lines
