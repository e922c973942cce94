"""Label-free accuracy estimates under shift: mean confidence, DoC, ATC, COT, COTT and the vote.

    python bench/estimate.py [--windows 50] [--registry registry] [--data data/prepared]

After `make repro` (or in any project with a classifier champion: ``--registry``, ``--data``):
the champion's graph (``registry/champion/model.onnx``) answers windows of the frozen test
split, shifted by each scenario of ``params.yaml: simulate`` (the simulator's own shifts; the
image ones only where the schema has an image shape); the estimators are fit on the
validation split through the same graph, as the evaluate stage fits the one it ships, and each
window goes through the monitor's drift test (``monitor.alpha``) against the champion's
reference rows, whose flagged columns the vote leaves out. For each scenario and window size
50 / 200, over ``--windows`` seeded windows: the realized accuracy (from the true labels), how
many columns the drift test flagged, and per method the mean |estimate - realized| in points,
for every method of :mod:`pipeline.contracts.estimate`: ``atc_cott`` (the old default: ATC
until ATC drops, then COTT) beside ``atc_knn`` (the new: ``atc_cott`` until the drift test
flags a column, then ``knn``). A concept shift leaves the inputs as they are, so no label-free
estimate can see it: labels catch it (the monitor's binomial test).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitoring.detector import Reference  # noqa: E402
from monitoring.shifts import draw_rows, shift_inputs, true_labels  # noqa: E402
from pipeline.contracts.estimate import METHODS, AccuracyEstimator  # noqa: E402
from pipeline.contracts.params import (  # noqa: E402
    MonitorConfig,
    SimulateConfig,
    overlay,
    read_params,
    section,
)
from pipeline.contracts.runtime import predict, session  # noqa: E402
from pipeline.contracts.schema import LABEL, Schema  # noqa: E402
from pipeline.learning.tasks import task_for  # noqa: E402

SCENARIOS = ("none", "intensity", "noise", "translate", "blur", "stuck", "dead", "prior", "concept")
IMAGE = ("intensity", "translate", "blur")  # need the schema's image shape
SIZES = (50, 200)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=50)
    parser.add_argument("--registry", default=str(ROOT / "registry"))
    parser.add_argument("--data", default=str(ROOT / "data/prepared"))
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args(argv)

    champion = Path(args.registry) / "champion"
    schema = Schema.from_dict(json.loads((champion / "schema.json").read_text()))
    sess = session(champion / "model.onnx")
    val = pd.read_parquet(Path(args.data) / "val.parquet")
    test = pd.read_parquet(Path(args.data) / "test.parquet")
    fitted = task_for(schema).estimate(champion / "model.onnx", val, schema)  # evaluate's fit
    if fitted is None:
        raise SystemExit(f"{champion}: a {schema.task} champion has no label-free estimate")
    estimator = AccuracyEstimator.from_dict(fitted)
    X, y = test[schema.names].to_numpy(np.float64), test[LABEL].to_numpy()
    params = read_params(args.params)
    base = section(params, "simulate", SimulateConfig)
    alpha = section(params, "monitor", MonitorConfig).alpha
    reference = Reference.from_rows(
        pd.read_parquet(champion / "reference.parquet")[schema.names].to_numpy(np.float64), schema
    )
    print(
        f"fit on {estimator.rows} validation rows (accuracy {estimator.accuracy:.4f}, mean "
        f"confidence {estimator.mean_confidence:.4f}); windows from {len(y)} test rows\n"
    )
    print(
        "| scenario | rows | realized | flagged | "
        + " | ".join(f"{m} error" for m in METHODS)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(METHODS))
    for scenario in SCENARIOS:
        if scenario in IMAGE and schema.image_shape is None:
            continue
        cfg = overlay(base, "simulate", scenario=scenario)
        if scenario == "prior":
            cfg = overlay(
                cfg,
                "simulate",
                prior_classes=[c for c in cfg.prior_classes if c < schema.n_classes - 1] or [0],
            )
        for size in SIZES:
            realized, flagged, errors = [], [], {m: [] for m in METHODS}
            for seed in range(args.windows):
                rng = np.random.default_rng(seed)
                rows = draw_rows(y, size, cfg, schema, rng)
                shifted = shift_inputs(X[rows], schema, cfg, rng)
                proba, labels = predict(sess, shifted.astype(np.float32))
                acc = float((labels == true_labels(y[rows], cfg, schema)).mean())
                realized.append(acc)
                drift = reference.test(shifted, alpha)
                drifted = [schema.names.index(n) for n in drift.features]
                flagged.append(len(drifted))
                for method, est in estimator.all(proba, shifted, drifted).items():
                    errors[method].append(abs(est - acc))
            cells = " | ".join(f"{100 * np.mean(errors[m]):.1f}" for m in METHODS)
            print(
                f"| {scenario} | {size} | {np.mean(realized):.3f} | {np.mean(flagged):.0f} | "
                f"{cells} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
