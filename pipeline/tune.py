"""Tune stage: Optuna search over the train stage's hyper-parameters, pruned by Hyperband.

    python -m pipeline.tune --params params.yaml --schema data/schema.json \
        --features models/features --data data/prepared --out params/tuned.json \
        --metrics metrics/tune.json

``tune.n_trials: 0`` turns it off: the stage then writes ``{}`` and train uses params.yaml as is.
Each trial trains on the train split and reports validation loss every epoch; Hyperband prunes the
weak ones. The study lives in ``tune.storage`` (a SQLite file, or a database URL that several
machines share); every worker started with the same params and data joins the same study, since
its name carries a hash of the search space, the train section and the data.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.contracts.io import atomic_outputs, dump_json
from pipeline.contracts.params import TrainConfig, TuneConfig, overlay
from pipeline.learning import stage

if TYPE_CHECKING:
    import torch

    from pipeline.learning.training import Inputs


def suggest(trial: Any, space: dict[str, Any], base: TrainConfig) -> dict[str, Any]:
    """Draw one value per key of ``space``; ints where the train config has ints."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif isinstance(getattr(base, key), int):
            values[key] = trial.suggest_int(
                key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
            )
        else:
            values[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
            )
    return values


def storage_url(storage: str) -> str:
    """A bare path becomes an absolute SQLite URL; URLs pass through."""
    return storage if "://" in storage else f"sqlite:///{Path(storage).resolve()}"


def tune(
    cfg: TuneConfig, base: TrainConfig, inputs: Inputs, device: torch.device
) -> tuple[dict[str, Any], dict]:
    """Run (or join) the study; returns the best params and a summary."""
    import optuna
    import torch

    from pipeline.learning.model import build_net
    from pipeline.learning.tasks import task_for
    from pipeline.learning.training import fingerprint, fit

    task = task_for(inputs.schema)

    name = f"{cfg.study}-" + fingerprint(
        cfg.space,
        base.model_dump(),
        cfg.max_epochs,
        inputs.train.X.nan_to_num(),
        inputs.train.y,
    )
    study = optuna.create_study(
        study_name=name,
        storage=storage_url(cfg.storage),
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=optuna.pruners.HyperbandPruner(
            min_resource=cfg.min_epochs, max_resource=cfg.max_epochs
        ),
    )

    def objective(trial: optuna.Trial) -> float:
        tcfg = overlay(base, "train", **suggest(trial, cfg.space, base), epochs=cfg.max_epochs)
        mcfg = task.model_config(tcfg, inputs.transform, inputs.schema, inputs.image_shape)
        torch.manual_seed(tcfg.seed)
        # As train builds it; a regressor's loss is its val MSE (standardised).
        model = task.new_model(inputs.transform.module(), build_net(mcfg), inputs.train, tcfg)

        def report(epoch: int, row: dict[str, float]) -> None:
            trial.report(row["val_loss"], step=epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = fit(
            model,
            inputs.train,
            inputs.val,
            tcfg,
            device,
            objective=task.objective,
            image_shape=inputs.image_shape,
            on_epoch=report,
            progress=False,
        )
        return min(row["val_loss"] for row in result.history)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=cfg.n_trials, show_progress_bar=True)
    states = [t.state.name for t in study.trials]
    summary = {
        "study": name,
        "n_trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "best_val_loss": study.best_value,
        "best_params": study.best_params,
    }
    return study.best_params, summary


FLAGS = ("--schema", "--features", "--data", "--out", "--metrics")


def body(ctx: stage.Context) -> None:
    args = ctx.args
    cfg = ctx.section("tune", TuneConfig)
    base = ctx.section("train", TrainConfig)
    best: dict[str, Any] = {}
    summary: dict[str, Any] = {"n_trials": 0}
    if cfg.n_trials > 0:  # torch is imported only then: off, the stage takes a second
        from pipeline.learning.tasks import task_for
        from pipeline.learning.training import load_inputs

        inputs = load_inputs(args.schema, args.features, args.data)
        task_for(inputs.schema).model_config(  # bad train params fail before any trial
            base, inputs.transform, inputs.schema, inputs.image_shape
        )
        best, summary = tune(cfg, base, inputs, ctx.device())
    with atomic_outputs(args.out, args.metrics) as (out_tmp, metrics_tmp):
        dump_json(best, out_tmp)
        dump_json(summary, metrics_tmp)
    print(f"tune: {summary}")


def main(argv: list[str] | None = None) -> int:
    return stage.run("tune", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
