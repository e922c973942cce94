"""Features stage: search candidate transforms by cross-validation on train, fit the best.

    python -m pipeline.features --params params.yaml --schema data/schema.json \
        --train data/prepared/train.parquet --out-arrays models/features.npz \
        --out-spec models/features.json --metrics metrics/features.json --plot plots/features.csv

Each candidate (standardize, quantile, log_standardize, standardize + PCA-k; categoricals always
one-hot) is scored by stratified k-fold accuracy of a cheap model (logistic regression) on the
train split alone. Candidates within ``features.tie_tolerance`` of the best count as tied and the
cheapest (fewest output features, then list order) wins. Nothing is fit on val or test. On a
large train split the search scores a stratified sample of ``features.search_rows`` rows (the
metrics say how many); the chosen transform is then fit on every train row. Any single column
that alone predicts the label almost perfectly is reported as a likely target leak. A regression
target (schema.json's task) is scored by cross-validated R² of a ridge model instead, on folds
stratified by its quantile bins (``cv_r2`` in the metrics).

A retrain (``--warm-start`` holds the champion's checkpoint, which the monitor copies there;
empty in git: a first run) keeps the champion's kind of transform, refit on the new train split,
and skips the search: the network the retrain starts from reads that transform's outputs, so
another kind would hand it inputs it was never trained on (and the search is a first run's cost
the loop does not need). A transform that is no longer among ``features.candidates`` is searched.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.io import atomic_outputs, dump_json, load_json, read_parquet
from pipeline.contracts.params import FeaturesConfig
from pipeline.contracts.schema import LABEL, WEIGHT, Schema
from pipeline.learning import stage
from pipeline.learning.checkpoint import warm_start_transform
from pipeline.learning.sampling import stratified_sample
from pipeline.learning.targets import target_for
from pipeline.learning.transforms import FeatureTransform


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    kind: str
    n_components: int | None


def candidates(cfg: FeaturesConfig, n_features: int) -> list[Candidate]:
    out = []
    for name in cfg.candidates:
        if name == "pca":
            out += [
                Candidate(f"pca{k}", "standardize", k) for k in cfg.pca_components if k < n_features
            ]
        else:
            out.append(Candidate(name, name, None))
    return out


def make_transform(c: Candidate, schema: Schema, cfg: FeaturesConfig) -> FeatureTransform:
    sizes = tuple(
        len(f.categories or ()) if f.kind == "categorical" else 0 for f in schema.features
    )
    return FeatureTransform(
        kind=c.kind,
        n_categories=sizes,
        n_components=c.n_components,
        n_quantiles=cfg.quantiles,
        skew_threshold=cfg.skew_threshold,
        seed=cfg.seed,
    )


def score(
    c: Candidate, X: np.ndarray, y: np.ndarray, w: np.ndarray, schema: Schema, cfg: FeaturesConfig
) -> dict[str, Any]:
    """Cross-validated score of the target's cheap model on the candidate's output (train only):
    logistic regression's accuracy, or ridge's R² on folds stratified by the target's quantile
    bins."""
    target = target_for(schema)
    strata = target.strata(y, y)
    smallest = int(np.bincount(strata)[np.bincount(strata) > 0].min())
    splitter = StratifiedKFold(
        n_splits=max(2, min(cfg.cv_folds, smallest)), shuffle=True, random_state=cfg.seed
    )
    scores, n_out = [], 0
    for fit_idx, held_idx in splitter.split(X, strata):
        tf = make_transform(c, schema, cfg).fit(X[fit_idx])
        Z_fit, Z_held = tf.transform(X[fit_idx]), tf.transform(X[held_idx])
        model = target.cv_model().fit(Z_fit, y[fit_idx], sample_weight=w[fit_idx])
        scores.append(target.cv_score(y[held_idx], model.predict(Z_held)))
        n_out = tf.n_features_out_
    return {
        "name": c.name,
        target.cv_key: float(np.mean(scores)),
        "cv_std": float(np.std(scores)),
        "n_features_out": n_out,
    }


def choose(
    table: list[dict[str, Any]], tolerance: float, key: str = "cv_accuracy"
) -> dict[str, Any]:
    """Best CV score (``key``); among those within ``tolerance`` of it, fewest output features."""
    best = max(r[key] for r in table)
    tied = [r for r in table if r[key] >= best - tolerance]
    return min(tied, key=lambda r: r["n_features_out"])  # min keeps list order on equal cost


LEAK_ACCURACY = 0.98  # a single feature predicting the label this well is reported
LEAK_ROWS = 5000  # rows the leak check looks at (a stratified sample of train)


def likely_leaks(X: np.ndarray, y: np.ndarray, schema: Schema, seed: int) -> list[dict[str, Any]]:
    """Features that alone predict the label almost perfectly (3-fold CV of a depth-4 tree on
    that one column, missing values as their own bin): an id sorted by label, a column derived
    from the target. Reported, not dropped: sometimes a feature really is that good. A class
    label: accuracy at least ``LEAK_ACCURACY`` and clearly above the majority class's share; a
    number: a regression tree's R² at least ``LEAK_ACCURACY``."""
    target = target_for(schema)
    strata = target.strata(y, y)
    idx = stratified_sample(np.arange(len(y)), strata, LEAK_ROWS, seed)
    Xs, ys, ss = X[idx], y[idx], strata[idx]
    if int(np.bincount(ss)[np.bincount(ss) > 0].min()) < 3:
        return []
    floor = target.leak_floor(ys, LEAK_ACCURACY)
    # The folds depend on the labels only: cut once, and the trees fit directly (cross_val_score
    # per column spent half its time setting up: digits' 64 columns 1.2 s -> 0.64 s, same scores).
    splits = list(StratifiedKFold(n_splits=3, shuffle=True, random_state=seed).split(Xs, ss))
    out = []
    for j, name in enumerate(schema.names):
        col = np.nan_to_num(Xs[:, j : j + 1], nan=np.nanmin(Xs[:, j], initial=0.0) - 1.0)
        alone = float(
            np.mean(
                [
                    target.leak_tree(seed).fit(col[fit], ys[fit]).score(col[held], ys[held])
                    for fit, held in splits
                ]
            )
        )
        if alone >= floor:
            out.append({"feature": name, target.leak_key: alone})
    return out


def kept(
    identity: dict[str, Any] | None, train: pd.DataFrame, schema: Schema, cfg: FeaturesConfig
) -> tuple[FeatureTransform, list[dict[str, Any]], dict[str, Any]] | None:
    """The champion's transform (``identity``: its kind and components) refit on the whole
    train split, when it is still a candidate; else None (search)."""
    X_all = train[schema.names].to_numpy(dtype=np.float64)
    for cand in candidates(cfg, X_all.shape[1]) if identity else ():
        if (cand.kind, cand.n_components) == (identity["kind"], identity["n_components"]):
            transform = make_transform(cand, schema, cfg).fit(X_all)
            chosen = {
                "name": cand.name,
                target_for(schema).cv_key: None,
                "n_features_out": transform.n_features_out_,
                "search_rows": 0,
            }
            return transform, [], chosen
    return None


def search(
    train: pd.DataFrame, schema: Schema, cfg: FeaturesConfig
) -> tuple[FeatureTransform, list[dict[str, Any]], dict[str, Any]]:
    """Score every candidate on train (a stratified sample of at most ``search_rows``), then
    fit the chosen one on the whole train split."""
    X_all = train[schema.names].to_numpy(dtype=np.float64)  # prepared splits: already encoded
    y_all = train[LABEL].to_numpy()
    strata = target_for(schema).strata(y_all, y_all)
    rows = stratified_sample(np.arange(len(y_all)), strata, cfg.search_rows, cfg.seed)
    X, y, w = X_all[rows], y_all[rows], train[WEIGHT].to_numpy()[rows]
    cands = candidates(cfg, X.shape[1])
    if not cands:
        raise MlcycleError(
            f"features.candidates = {list(cfg.candidates)} leaves nothing to search with "
            f"{X.shape[1]} features (pca_components must be below the feature count)"
        )
    table = [
        score(c, X, y, w, schema, cfg)
        for c in tqdm(cands, desc="features: candidates", leave=False)
    ]
    chosen = choose(table, cfg.tie_tolerance, target_for(schema).cv_key)
    cand = next(c for c in cands if c.name == chosen["name"])
    return make_transform(cand, schema, cfg).fit(X_all), table, {**chosen, "search_rows": len(y)}


FLAGS = (
    "--schema",
    "--train",
    "--out-arrays",
    "--out-spec",
    "--metrics",
    "--plot",
    "--warm-start",  # the champion's checkpoint on a retrain (its transform is kept); empty: search
)


def body(ctx: stage.Context) -> None:
    args = ctx.args
    cfg = ctx.section("features", FeaturesConfig)
    schema = Schema.from_dict(load_json(args.schema))
    train = read_parquet(args.train)
    identity, note = warm_start_transform(args.warm_start)
    found = kept(identity, train, schema, cfg)
    transform, table, chosen = found or search(train, schema, cfg)
    search_note = (
        f"skipped: a retrain keeps the champion's {chosen['name']} ({note})"
        if found
        else f"{len(table)} candidates on {chosen['search_rows']} rows"
    )
    # A leak is a property of the source's columns, which a retrain's rows share: the first run
    # reported it (2.6 s on the digits' 64 columns, saved on a retrain).
    leaks = (
        []
        if found
        else likely_leaks(
            train[schema.names].to_numpy(dtype=np.float64),
            train[LABEL].to_numpy(),
            schema,
            cfg.seed,
        )
    )
    target = target_for(schema)
    key = target.cv_key
    for leak in leaks:
        alone = target.leak_text(leak)
        print(
            f"features: warning: column {leak['feature']!r} alone predicts the label with "
            f"{alone}: a likely target leak (an id sorted by "
            "label, a column computed from the target?); drop it from the source if so",
            file=sys.stderr,
        )
    # The layout survives (and a CNN can see the image) when nothing mixes or adds columns.
    keeps_layout = transform.n_components is None and not any(transform.n_categories)
    extra = {
        "chosen": chosen["name"],
        "feature_names": schema.names,
        "image_shape": list(schema.image_shape) if schema.image_shape and keeps_layout else None,
    }
    with atomic_outputs(args.out_arrays, args.out_spec, args.metrics, args.plot) as tmps:
        transform.save(tmps[0], tmps[1], extra)
        dump_json(
            {
                "chosen": chosen["name"],
                f"chosen_{key}": chosen[key],
                "n_features_out": transform.n_features_out_,
                "search_rows": chosen["search_rows"],
                "train_rows": len(train),
                "search_sampled": bool(table) and chosen["search_rows"] < len(train),
                "search_note": search_note,
                "likely_leaks": leaks,
                "leak_check": "skipped: a retrain (the first run checked these columns)"
                if found
                else f"{len(schema.names)} columns",
                "search": table,
            },
            tmps[2],
        )
        pd.DataFrame(table, columns=["name", key, "cv_std", "n_features_out"]).to_csv(
            tmps[3], index=False
        )
    print(f"features: search {search_note}")
    for row in table:
        mark = "*" if row["name"] == chosen["name"] else " "
        print(
            f"features: {mark} {row['name']:<16} {key}={row[key]:.4f} out={row['n_features_out']}"
        )


def main(argv: list[str] | None = None) -> int:
    return stage.run("features", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
