"""Preprocess stage: de-duplicate, handle missing values, remove label noise, weigh, split.

    python -m pipeline.preprocess --params params.yaml --data data/raw.parquet \
        --schema data/schema.json --out data/prepared --noise-report reports/label_noise.csv \
        --metrics metrics/preprocess.json

Order matters: the test split is cut from the de-duplicated source *before* noise removal, so it
is frozen: label-noise settings and later retraining on production feedback never change it.
Labelled production rows (ingest's ``_feedback`` rows) join the train/val pool before the noise
filter, except a share that becomes ``holdout.parquet``, the production holdout the gate reports.
Noise is found by confident learning (cleanlab) on out-of-fold probabilities of the train/val
pool; de-biasing is a sample weight per class (balanced) times, with ``data.sensitive``, the
Kamiran-Calders reweighing P(g) P(c) / P(g, c), all counted on the train split (the test split
is weighted 1: evaluation is unweighted).

A regression target (schema.json's task) is split stratified on its quantile bins (cut on the
source rows, so the test split stays frozen); its label issues are rows whose out-of-fold
residual (the same cheap model kinds, as regressors) is an outlier, ranked by cleanlab's
regression label-quality score and capped at ``noise.max_share``; val is cut before the filter
and never filtered (the interval is calibrated on it, so it is drawn like the test split); with
``data.sensitive`` the reweighing makes group and target bin independent (no class balancing: a
regressor has no classes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.io import atomic_outputs, dump_json, load_json, read_parquet, write_parquet
from pipeline.contracts.params import DataConfig, PreprocessConfig
from pipeline.contracts.schema import FEEDBACK, LABEL, ROW, WEIGHT, Schema
from pipeline.learning import stage
from pipeline.learning.targets import Pool, target_for

SPLITS = ("train", "val", "test", "holdout")


@dataclasses.dataclass
class Prepared:
    """Encoded splits (features in schema order + ``_row``, ``_label``, ``_weight``)."""

    splits: dict[str, pd.DataFrame]
    noise_report: pd.DataFrame
    metrics: dict[str, Any]


def every_class_in(
    src: np.ndarray, dst: np.ndarray, y: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Move one row of each class that ``dst`` lacks (and ``src`` has two of) from src to dst.

    A stratified split of a class with a handful of rows can leave a split without it; this
    fixes exactly those classes, so splits of well-populated data are not changed at all.
    """
    rng = np.random.default_rng(seed)
    for c in np.setdiff1d(np.unique(y[src]), np.unique(y[dst])):
        members = src[y[src] == c]
        if len(members) >= 2:
            move = rng.choice(members)
            src, dst = src[src != move], np.sort(np.append(dst, move))
    return src, dst


def split(
    idx: np.ndarray, y: np.ndarray, share: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split of ``idx`` with every class on both sides; clear error if impossible."""
    try:
        keep, cut = train_test_split(idx, test_size=share, stratify=y[idx], random_state=seed)
    except ValueError as exc:
        raise MlcycleError(
            f"cannot cut the {what} split from {len(idx)} rows of {len(np.unique(y[idx]))} "
            f"classes: {exc}"
        ) from None
    keep, cut = every_class_in(keep, np.sort(cut), y, seed)
    cut, keep = every_class_in(cut, keep, y, seed)
    return np.sort(keep), cut


def bias_weights(
    y_train: np.ndarray,
    groups_train: np.ndarray | None,
    y: np.ndarray,
    groups: np.ndarray | None,
    n_classes: int,
    balanced: bool,
) -> np.ndarray:
    """Per-row weights for ``y`` (and ``groups``) from train-split counts; mean 1 on train."""

    def table(yy: np.ndarray, gg: np.ndarray | None) -> dict[tuple[Any, int], float]:
        keys = list(zip(gg if gg is not None else np.zeros(len(yy)), yy, strict=True))
        n = len(keys)
        p_class = np.bincount(yy, minlength=n_classes) / n
        g_values, g_counts = np.unique([k[0] for k in keys], return_counts=True)
        p_group = dict(zip(g_values.tolist(), (g_counts / n).tolist(), strict=True))
        joint = pd.Series(keys).value_counts() / n
        out = {}
        for (g, c), p_gc in joint.items():
            w = 1.0
            if gg is not None:  # Kamiran & Calders: make group and class independent
                w *= p_group[g] * p_class[c] / p_gc
            if balanced:
                w *= 1.0 / (n_classes * p_class[c]) if p_class[c] > 0 else 1.0
            out[(g, int(c))] = w
        return out

    lookup = table(y_train, groups_train)
    train_w = np.array(
        [
            lookup[k]
            for k in zip(
                groups_train if groups_train is not None else np.zeros(len(y_train)),
                y_train,
                strict=True,
            )
        ]
    )
    scale = train_w.mean()
    keys = zip(groups if groups is not None else np.zeros(len(y)), y, strict=True)
    return np.array([lookup.get((g, int(c)), scale) for g, c in keys]) / scale


def holdout_mask(keys: pd.Series, share: float) -> np.ndarray:
    """Production rows kept out of training, by a hash of their key: stable across retrains."""
    digests = [hashlib.sha256(str(k).encode()).digest()[:8] for k in keys]
    return np.array([int.from_bytes(d, "big") / 2**64 < share for d in digests], dtype=bool)


def preprocess(
    raw: pd.DataFrame,
    schema: Schema,
    cfg: PreprocessConfig,
    sensitive: str | None,
) -> Prepared:
    """Turn validated raw rows into frozen train / val / test splits (+ holdout). Pure: no I/O.

    Source rows (``_feedback`` null) are cleaned and split exactly as without feedback, so the
    test split never changes. Labelled production rows are de-duplicated against everything
    before them; a share (by key) becomes the production holdout, the rest joins the train/val
    pool before the label-noise filter, so it passes the same filter as the source.
    """
    keys = raw[FEEDBACK] if FEEDBACK in raw.columns else pd.Series(pd.NA, index=raw.index)
    from_feedback = keys.notna().to_numpy()
    counts: dict[str, Any] = {"rows_in": int((~from_feedback).sum())}
    labelled = raw[schema.target].notna().to_numpy()
    counts["unlabelled_dropped"] = int((~labelled & ~from_feedback).sum())
    rows = np.flatnonzero(labelled & ~from_feedback)  # positions in raw.parquet
    fb_rows = np.flatnonzero(labelled & from_feedback)
    X = schema.encode(raw.iloc[rows])
    y = schema.encode_labels(raw[schema.target].iloc[rows])

    # Exact duplicates (same features and label) carry no information and would leak across splits.
    frame = pd.DataFrame(X).assign(_y=y)
    keep = ~frame.duplicated().to_numpy()
    counts["duplicates_dropped"] = int((~keep).sum())
    X, y, rows = X[keep], y[keep], rows[keep]

    has_missing = np.isnan(X).any(axis=1)
    counts["rows_with_missing"] = int(has_missing.sum())
    if cfg.missing == "drop":
        X, y, rows = X[~has_missing], y[~has_missing], rows[~has_missing]
    counts["missing_strategy"] = cfg.missing

    target = target_for(schema)
    target.check_counts(y, schema, cfg)

    # The strata of every split: the class, or a regression target's quantile bin.
    y_source = y
    strata = target.strata(y_source, y)
    idx = np.arange(len(y))
    pool, test = split(idx, strata, cfg.test_size, cfg.seed, "test")

    # Production rows: after the source, never in test; duplicates of any earlier row dropped.
    holdout = np.empty(0, dtype=np.int64)
    n_source = len(y)
    counts["feedback_rows_in"] = int(from_feedback.sum())
    if len(fb_rows):
        Xf = schema.encode(raw.iloc[fb_rows])
        yf = schema.encode_labels(raw[schema.target].iloc[fb_rows])
        both = pd.DataFrame(np.vstack([X, Xf])).assign(_y=np.concatenate([y, yf]))
        new = ~both.duplicated().to_numpy()[len(y) :]
        if cfg.missing == "drop":
            new &= ~np.isnan(Xf).any(axis=1)
        counts["feedback_duplicates_dropped"] = int((~new).sum())
        Xf, yf, fb_rows = Xf[new], yf[new], fb_rows[new]
        X, y, rows = np.vstack([X, Xf]), np.concatenate([y, yf]), np.concatenate([rows, fb_rows])
        strata = target.strata(y_source, y)
        in_holdout = holdout_mask(keys.iloc[fb_rows], cfg.feedback_holdout)
        fb_idx = np.arange(n_source, len(y))
        holdout = fb_idx[in_holdout]
        pool = np.concatenate([pool, fb_idx[~in_holdout]])

    noisy = np.empty(0, dtype=np.int64)
    report = pd.DataFrame(columns=[ROW, "given", "suggested", "self_confidence"])
    val_share = cfg.val_size / (1.0 - cfg.test_size)
    val = None
    if target.val_before_noise:  # val is cut first and never filtered (a regressor's)
        pool, val = split(pool, strata, val_share, cfg.seed, "validation")
    if cfg.noise.enabled:
        found, table = target.find_noisy(
            Pool(X[pool], y[pool], strata[pool]), schema, cfg.noise, cfg.seed
        )
        noisy = pool[found]
        report = table.assign(**{ROW: rows[noisy]})[[ROW, *table.columns]]
    counts["noise_dropped"] = len(noisy)
    counts["noise_fit_rows_per_fold"] = (
        min(cfg.noise.max_fit_rows or len(pool), len(pool)) if cfg.noise.enabled else 0
    )
    if len(fb_rows):
        counts["feedback_noise_dropped"] = int((noisy >= n_source).sum())
    pool = np.setdiff1d(pool, noisy)

    if val is None:
        train, val = split(pool, strata, val_share, cfg.seed, "validation")
    else:
        train = pool
    parts = {"train": np.sort(train), "val": np.sort(val), "test": test, "holdout": holdout}

    groups = None
    if sensitive is not None:
        groups = np.array([str(g) for g in raw[sensitive].to_numpy()[rows]])
    g_train = groups[parts["train"]] if groups is not None else None

    splits = {}
    for name, part in parts.items():
        df = pd.DataFrame(X[part], columns=schema.names)
        df.insert(0, ROW, rows[part])
        # The production row's key (null for source rows): harden budgets each slice apart.
        df[FEEDBACK] = pd.array(keys.to_numpy()[rows[part]], dtype="string")
        df[LABEL] = y[part]
        # Evaluation is unweighted; a test file depending on train counts would not be frozen.
        # The reweighing is over (group, stratum): a regressor's target bin, and no balancing.
        df[WEIGHT] = (
            1.0
            if name in ("test", "holdout")
            else bias_weights(
                strata[parts["train"]],
                g_train,
                strata[part],
                groups[part] if groups is not None else None,
                target.n_strata(strata, schema),
                cfg.class_weights == "balanced" and target.balances,
            )
        )
        splits[name] = df
        counts[f"{name}_rows"] = len(part)
    return Prepared(splits, report, counts)


def body(ctx: stage.Context) -> None:
    args = ctx.args
    cfg = ctx.section("preprocess", PreprocessConfig)
    sensitive = ctx.section("data", DataConfig).sensitive
    schema = Schema.from_dict(load_json(args.schema))
    result = preprocess(read_parquet(args.data), schema, cfg, sensitive)
    out = Path(args.out)
    paths = [out / f"{name}.parquet" for name in SPLITS]
    with atomic_outputs(*paths, args.noise_report, args.metrics) as tmps:
        for name, tmp in zip(SPLITS, tmps, strict=False):
            write_parquet(result.splits[name], tmp)
        result.noise_report.to_csv(tmps[len(SPLITS)], index=False)
        dump_json(result.metrics, tmps[len(SPLITS) + 1])
    print("preprocess: " + ", ".join(f"{k}={v}" for k, v in result.metrics.items()))


FLAGS = ("--data", "--schema", "--out", "--noise-report", "--metrics")


def main(argv: list[str] | None = None) -> int:
    return stage.run("preprocess", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
