"""The pipeline's network on tables, against HistGradientBoosting and a linear model.

    python bench/tabular.py [--seeds 0 1 2] [--tables diabetes breast_cancer wine friedman
                            prices rare]

For each table and seed, in one run: a fresh copy of the project with the repo's params, only
``data.*`` set and the seeds (``preprocess``, ``features``, ``train``, ``harden``) moved to the
run's, goes through `dvc repro`; the shipped graph's test figures come from the gate
(``metrics/evaluate.json``: accuracy and ECE for a classifier, R² and the interval's coverage
for a regressor). On the same frozen split (train and validation rows to fit, the test rows to
score) the bench fits scikit-learn's ``HistGradientBoosting{Classifier,Regressor}`` with its
defaults (categorical columns declared, missing values native) and a linear model (logistic
regression or ridge, after median imputation, scaling and one-hot categoricals).

Tables: scikit-learn's bundled diabetes (regression), breast cancer and wine (classification);
generated ones with known structure: Friedman #1 (2,000 rows, regression), a skewed price table
with categoricals, missing cells and duplicates (``tests.conftest.friedman_table``, 3,000 rows)
and an imbalanced three-class table with a 3 % class (4,000 rows, 3 % missing cells). The
generated tables are drawn anew per seed.

Prints each run's figures, the network minus HistGradientBoosting, and seconds (the whole
`dvc repro`, the HGB fit); then per table the means over seeds with the standard error of the
difference, and how many tables the network is at or above HGB on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loop import fresh_project, run, set_params  # noqa: E402

from pipeline.contracts.schema import LABEL, Schema  # noqa: E402
from tests.conftest import friedman_table  # noqa: E402

TABLES = ("diabetes", "breast_cancer", "wine", "friedman", "prices", "rare")


def table(name: str, seed: int) -> tuple[str | pd.DataFrame, str]:
    """(the source: a bundled name or a frame to write as CSV, the target column)."""
    from sklearn.datasets import load_breast_cancer, load_wine, make_classification, make_friedman1

    if name == "diabetes":
        return "diabetes", "target"
    if name == "breast_cancer":
        return load_breast_cancer(as_frame=True).frame, "target"
    if name == "wine":
        return load_wine(as_frame=True).frame, "target"
    if name == "friedman":
        X, y = make_friedman1(n_samples=2000, n_features=8, noise=1.0, random_state=seed)
        frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)])
        return frame.assign(y=y), "y"
    if name == "prices":
        return friedman_table(3000, seed), "price"
    if name == "rare":
        X, y = make_classification(
            n_samples=4000,
            n_features=12,
            n_informative=6,
            n_classes=3,
            weights=[0.87, 0.10, 0.03],
            random_state=seed,
        )
        rng = np.random.default_rng(seed)
        frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(12)])
        frame = frame.mask(rng.random(frame.shape) < 0.03)
        return frame.assign(kind=np.array(["common", "frequent", "rare"])[y]), "kind"
    raise SystemExit(f"unknown table {name!r}; expected one of {', '.join(TABLES)}")


def baselines(project: Path, schema: Schema) -> dict[str, Any]:
    """HistGradientBoosting and a linear model fit on train + val, scored on test."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prepared = project / "data/prepared"
    fit = pd.concat([pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "val")])
    test = pd.read_parquet(prepared / "test.parquet")
    names = schema.names
    categorical = [f.kind == "categorical" for f in schema.features]
    cats = [n for n, c in zip(names, categorical, strict=True) if c]
    nums = [n for n, c in zip(names, categorical, strict=True) if not c]
    regression = schema.task == "regression"
    score = r2_score if regression else accuracy_score
    hgb_cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
    hgb = hgb_cls(categorical_features=np.array(categorical) if any(categorical) else None)
    linear = make_pipeline(
        ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), nums),
                *(
                    [
                        (
                            "cat",
                            make_pipeline(
                                SimpleImputer(strategy="most_frequent"),
                                OneHotEncoder(handle_unknown="ignore"),
                            ),
                            cats,
                        )
                    ]
                    if cats
                    else []
                ),
            ]
        ),
        Ridge(alpha=1.0) if regression else LogisticRegression(max_iter=5000),
    )
    out = {}
    for name, model in (("hgb", hgb), ("linear", linear)):
        start = time.monotonic()
        model.fit(fit[names], fit[LABEL])
        out[name] = float(score(test[LABEL], model.predict(test[names])))
        out[f"{name}_seconds"] = time.monotonic() - start
    out["test_rows"] = len(test)
    return out


def one(name: str, seed: int, tmp: Path) -> dict[str, Any]:
    project = fresh_project(tmp / f"{name}-{seed}")
    source, target = table(name, seed)
    if isinstance(source, pd.DataFrame):
        source.to_csv(project / "data/table.csv", index=False)
        source = "data/table.csv"
    set_params(project, "data", {"source": source, "target": target})
    for section in ("preprocess", "features", "train", "harden"):
        set_params(project, section, {"seed": seed})
    start = time.monotonic()
    run(project, [sys.executable, "-m", "dvc", "repro"])
    seconds = time.monotonic() - start
    schema = Schema.from_dict(json.loads((project / "data/schema.json").read_text()))
    cand = json.loads((project / "metrics/evaluate.json").read_text())["candidate"]
    regression = schema.task == "regression"
    network = cand["r2"] if regression else cand["accuracy"]
    calibration = cand["coverage"] if regression else cand["ece"]
    return {
        "table": name,
        "seed": seed,
        "task": schema.task,
        "network": network,
        "calibration": calibration,
        "seconds": seconds,
        **baselines(project, schema),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    print("| table | seed | figure | network | HGB | linear | network - HGB | ECE / coverage "
          "| test rows | repro s | HGB s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tables:
            for seed in args.seeds:
                r = one(name, seed, Path(tmp))
                rows.append(r)
                figure = "R²" if r["task"] == "regression" else "accuracy"
                print(
                    f"| {name} | {seed} | {figure} | {r['network']:.4f} | {r['hgb']:.4f} | "
                    f"{r['linear']:.4f} | {r['network'] - r['hgb']:+.4f} | "
                    f"{r['calibration']:.3f} | {r['test_rows']} | {r['seconds']:.0f} | "
                    f"{r['hgb_seconds']:.1f} |",
                    flush=True,
                )
    print("\nmeans over seeds (network - HGB, its standard error):")
    at_or_above = 0
    for name in args.tables:
        mine = [r for r in rows if r["table"] == name]
        net, hgb = (np.array([r[k] for r in mine]) for k in ("network", "hgb"))
        diff = net - hgb
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
        at_or_above += int(diff.mean() >= 0)
        linear = np.mean([r["linear"] for r in mine])
        print(
            f"- {name}: network {net.mean():.4f}, HGB {hgb.mean():.4f}, linear {linear:.4f}; "
            f"difference {diff.mean():+.4f} (se {se:.4f}); ratio {net.mean() / hgb.mean():.3f}"
        )
    tables = len(args.tables)
    print(f"\nnetwork at or above HistGradientBoosting on {at_or_above} of {tables} tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
