"""Benchmark: the shipped split conformal interval against conformalized quantile regression.

    python bench/intervals.py [--inputs DIR] [--seeds 42 0 1]

``--inputs`` is a project after ``dvc repro`` on a regression source (``data.source: diabetes``
or a table of yours; default: this repo, which must then be set to one). Per training seed, in
one run, on the same train / val / test splits and transformed features:

- **split** (what the pipeline ships): the train stage's network and loop, then split conformal
  on val at ``serving.interval_coverage`` (``pipeline.learning.regression.fit_interval``);
- **cqr-mlp**: conformalized quantile regression (Romano et al. 2019) with the same network and
  three outputs (the point on ``train.regression_loss``; the a/2 and 1 - a/2 quantiles, a being
  1 - coverage, on the pinball loss), the same optimiser, schedule, epochs and early stopping;
  the quantiles are widened by the conformal quantile of ``max(lo - y, y - hi)`` on val (all on
  the network's scale);
- **cqr-hgb**: the same with scikit-learn's ``HistGradientBoostingRegressor(loss="quantile")``
  on the transformed features (the seed does not change it).

It prints test coverage and mean width per method and seed, and each width as a ratio of split's.
CQR is worth shipping only where it is narrower at the same coverage.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.contracts.params import (  # noqa: E402
    ServingConfig,
    TrainConfig,
    overlay,
    read_params,
    section,
)
from pipeline.learning import regression as reg  # noqa: E402
from pipeline.learning.model import ModelConfig, Regressor, TargetScaling, build_net  # noqa: E402
from pipeline.learning.tasks import task_for  # noqa: E402
from pipeline.learning.training import Inputs, fit, load_inputs  # noqa: E402


def pinball(pred: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    diff = target - pred
    return torch.maximum(tau * diff, (tau - 1.0) * diff)


def cqr_loss(
    out: torch.Tensor, z: torch.Tensor, w: torch.Tensor, cfg: TrainConfig, alpha: float
) -> torch.Tensor:
    """Point loss as the stage's plus the two pinball losses, weighted per row."""
    point = reg.regression_loss(out[:, 0], z, w, cfg.regression_loss, cfg.huber_delta)
    q = pinball(out[:, 1], z, alpha / 2) + pinball(out[:, 2], z, 1 - alpha / 2)
    return point + (q * w).sum() / w.sum()


def split_conformal(inputs: Inputs, cfg: TrainConfig, mcfg: ModelConfig, coverage: float) -> dict:
    """The pipeline's own: the stage's network and loop, split conformal on val."""
    scaling = TargetScaling.for_target(inputs.train.y.numpy(), cfg.log_target)
    torch.manual_seed(cfg.seed)
    model = Regressor(inputs.transform.module(), build_net(mcfg), scaling)
    objective = task_for(inputs.schema).objective
    fit(
        model,
        inputs.train,
        inputs.val,
        cfg,
        torch.device("cpu"),
        objective=objective,
        progress=False,
    )
    q = reg.fit_interval(model, inputs.val, coverage)
    pred, lower, upper = reg.predict_interval(model, inputs.test.X, q)
    return {
        **reg.interval_metrics(inputs.test.y.numpy(), lower, upper),
        "r2": reg.r2(inputs.test.y.numpy(), pred),
    }


def cqr_mlp(inputs: Inputs, cfg: TrainConfig, mcfg: ModelConfig, coverage: float) -> dict:
    """The same network with three outputs, trained on the point and pinball losses."""
    alpha = 1 - coverage
    scaling = TargetScaling.for_target(inputs.train.y.numpy(), cfg.log_target)
    torch.manual_seed(cfg.seed)
    mcfg3 = ModelConfig(**{**mcfg.__dict__, "n_classes": 3})
    model = Regressor(inputs.transform.module(), build_net(mcfg3), scaling)
    train, val = inputs.train, inputs.val
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(train.y) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps)
    z_train, z_val = model.standardize(train.y.float()), model.standardize(val.y.float())
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, since = math.inf, None, 0
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train.y), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two rows
                continue
            loss = cqr_loss(
                model.net(model.transform(train.X[idx])), z_train[idx], train.w[idx], cfg, alpha
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(cqr_loss(model.net(model.transform(val.X)), z_val, val.w, cfg, alpha))
        if val_loss < best:
            best, since = val_loss, 0
            best_state = {k: v.clone() for k, v in model.net.state_dict().items()}
        else:
            since += 1
            if since >= cfg.patience:
                break
    assert best_state is not None
    model.net.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        out_val = model.net(model.transform(val.X))
        out_test = model.net(model.transform(inputs.test.X))
    return conformalized(model, out_val, z_val, out_test, inputs.test.y.numpy(), coverage)


def conformalized(
    model: Regressor,
    out_val: torch.Tensor,
    z_val: torch.Tensor,
    out_test: torch.Tensor,
    y_test: np.ndarray,
    coverage: float,
) -> dict:
    """CQR from (rows, 3) outputs [point, lower quantile, upper quantile] on the network's
    scale: the quantile band (its two columns sorted: no crossing) widened by the conformal
    quantile of ``max(lo - z, z - hi)`` on val, clamped to hold the point; test metrics."""
    lo, hi = out_val[:, 1:].sort(dim=1).values.unbind(dim=1)
    q = reg.conformal_quantile(torch.maximum(lo - z_val, z_val - hi).numpy(), coverage)
    point = out_test[:, 0]
    lo, hi = out_test[:, 1:].sort(dim=1).values.unbind(dim=1)
    lower, upper = torch.minimum(lo - q, point), torch.maximum(hi + q, point)
    with torch.no_grad():
        pred, low, high = (model.unstandardize(v).numpy() for v in (point, lower, upper))
    return {**reg.interval_metrics(y_test, low, high), "r2": reg.r2(y_test, pred)}


def cqr_hgb(inputs: Inputs, coverage: float, log_target: str) -> dict:
    """HistGradientBoosting quantile models on the transformed features, conformalized on val."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    alpha = 1 - coverage
    scaling = TargetScaling.for_target(inputs.train.y.numpy(), log_target)
    holder = Regressor(inputs.transform.module(), torch.nn.Identity(), scaling)
    Z = {
        s: inputs.transform.transform(getattr(inputs, s).X.numpy())
        for s in ("train", "val", "test")
    }
    z_train = holder.standardize(inputs.train.y.float()).numpy()

    def model(loss: str, quantile: float | None = None) -> HistGradientBoostingRegressor:
        kw = {"quantile": quantile} if quantile is not None else {}
        m = HistGradientBoostingRegressor(loss=loss, random_state=0, **kw)  # type: ignore[arg-type]
        return m.fit(Z["train"], z_train, sample_weight=inputs.train.w.numpy())

    models = [
        model("squared_error"),
        model("quantile", alpha / 2),
        model("quantile", 1 - alpha / 2),
    ]
    val_out, test_out = (
        torch.tensor(np.stack([m.predict(Z[split]) for m in models], axis=1))
        for split in ("val", "test")
    )
    z_val = holder.standardize(inputs.val.y.float()).double()
    return conformalized(holder, val_out, z_val, test_out, inputs.test.y.numpy(), coverage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=Path, default=ROOT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    args = parser.parse_args()
    root = args.inputs
    params = read_params(root / "params.yaml")
    cfg = section(params, "train", TrainConfig)
    coverage = section(params, "serving", ServingConfig).interval_coverage
    inputs = load_inputs(
        str(root / "data/schema.json"), str(root / "models/features"), str(root / "data/prepared")
    )
    if not inputs.schema.regression:
        sys.exit(f"{root}: schema.json's task is classification; run it on a regression project")
    torch.set_num_threads(2)
    mcfg = task_for(inputs.schema).model_config(
        cfg, inputs.transform, inputs.schema, inputs.image_shape
    )
    rows: list[tuple[str, int | str, dict]] = []
    for seed in args.seeds:
        seeded = overlay(cfg, "train", seed=seed)
        split = split_conformal(inputs, seeded, mcfg, coverage)
        rows.append(("split", seed, split))
        rows.append(("cqr-mlp", seed, cqr_mlp(inputs, seeded, mcfg, coverage)))
        print(f"seed {seed} done", file=sys.stderr)
    rows.append(("cqr-hgb", "-", cqr_hgb(inputs, coverage, cfg.log_target)))
    split_widths = {s: r["mean_width"] for m, s, r in rows if m == "split"}
    mean_split = float(np.mean(list(split_widths.values())))
    print(
        f"{root.name}: test rows {len(inputs.test.y)}, val rows {len(inputs.val.y)}, "
        f"nominal coverage {coverage}"
    )
    print(f"{'method':<8} {'seed':>4} {'R²':>6} {'coverage':>8} {'width':>9} {'÷ split':>8}")
    for method, seed, r in rows:
        base = split_widths.get(seed, mean_split) if isinstance(seed, int) else mean_split
        print(
            f"{method:<8} {seed!s:>4} {r['r2']:6.3f} {r['coverage']:8.3f} "
            f"{r['mean_width']:9.2f} {r['mean_width'] / base:8.3f}"
        )


if __name__ == "__main__":
    main()
