"""The drift test: is a window of production rows drawn from the training distribution?

    python -m monitoring check        # runs it on the newest window of the production log

One two-sample Kolmogorov-Smirnov test per numeric feature, a chi-squared test per categorical
feature and, for features that were constant in training, a binomial test on how often a window
shows any other value; the window drifts when the smallest p-value, Bonferroni-corrected over the
features tested, is below ``monitor.alpha``.

Missing values are a test of their own: where the reference or the window has any in a column,
Fisher's exact test compares the two missing shares (a dead sensor sending nulls, a form field
that stopped being filled in, or one that started), and the column's p-value is the smaller of
its two tests, doubled (Bonferroni within the column), so the window's false-alarm budget stays
``alpha``; a column with no missing value on either side is tested exactly as before. A column
entirely null in a window has nothing for its value test and is judged by its missing share
alone, never skipped. So the false-alarm rate of a window is at most
``alpha`` whatever the window size (Evidently's default switches to a distance score with a fixed
threshold above 1,000 reference rows, whose false alarms depend on the window size: see
``bench/drift.py``). Ties (integer pixels) make KS conservative, never liberal.

:class:`Reference` holds what the test needs from the training rows (each numeric column sorted,
category frequencies, constant values), computed once per model version and cached on disk, so a
check costs O(window x log reference) and never touches the reference rows again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from pipeline.contracts.schema import Schema

KS, CONSTANT, CATEGORICAL = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class DriftResult:
    """One window's verdict; ``p_values`` are Bonferroni-adjusted, one per feature tested."""

    drifted: bool
    p_min: float  # smallest adjusted p-value
    share: float  # share of tested features whose adjusted p-value is below alpha
    features: list[str]  # drifted features, most significant first
    p_values: dict[str, float]
    rows: int
    # Drifted features whose missing share moved (its test the smaller p): name ->
    # (window share, reference share), most significant first.
    missing: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "p_min": self.p_min,
            "drift_share": self.share,
            "drifted_features": self.features[:10],
            "n_drifted_features": len(self.features),
            **({"missing_drifted": self.missing} if self.missing else {}),
        }


class Reference:
    """The reference side of every test, precomputed from the training rows."""

    def __init__(
        self,
        names: list[str],
        kinds: np.ndarray,
        values: np.ndarray,
        offsets: np.ndarray,
        n: np.ndarray,
        rows: int,
    ) -> None:
        self.names = names
        self.kinds = kinds  # (features,) KS | CONSTANT | CATEGORICAL
        self.values = values  # concatenated: sorted column (KS), [value] (CONSTANT), probs (CAT)
        self.offsets = offsets  # (features + 1,) slices of ``values``
        self.n = n  # (features,) finite reference values per column
        self.rows = rows  # reference rows: rows - n are a column's missing ones

    def column(self, j: int) -> np.ndarray:
        return self.values[self.offsets[j] : self.offsets[j + 1]]

    @classmethod
    def from_rows(cls, X: np.ndarray, schema: Schema) -> Reference:
        """``X``: training rows, encoded (schema order, categoricals as indices)."""
        kinds, parts, counts = [], [], []
        for j, feat in enumerate(schema.features):
            col = X[:, j].astype(np.float64)
            col = col[np.isfinite(col)]
            counts.append(len(col))
            if feat.kind == "categorical":
                k = len(feat.categories or ())
                freq = np.bincount(col.astype(np.int64), minlength=k)[:k].astype(np.float64)
                parts.append((freq + 0.5) / (freq.sum() + 0.5 * k))  # smoothed: no zero cells
                kinds.append(CATEGORICAL)
            elif len(col) and col.min() == col.max():
                parts.append(col[:1])
                kinds.append(CONSTANT)
            else:
                parts.append(np.sort(col))
                kinds.append(KS)
        offsets = np.cumsum([0] + [len(p) for p in parts])
        values = np.concatenate(parts) if parts else np.empty(0)
        return cls(schema.names, np.array(kinds), values, offsets, np.array(counts), len(X))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            names=np.array(self.names),
            kinds=self.kinds,
            values=self.values,
            offsets=self.offsets,
            n=self.n,
            rows=self.rows,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path) as z:
            return cls(
                [str(n) for n in z["names"]],
                z["kinds"],
                z["values"],
                z["offsets"],
                z["n"],
                int(z["rows"]),
            )

    def test(self, X: np.ndarray, alpha: float) -> DriftResult:
        """Test window ``X`` (rows, features), encoded like the reference."""
        names, raw_p = [], []
        ks_cols, ks_stats, ks_en = [], [], []
        missing: dict[str, tuple[float, float, float]] = {}  # name -> (p, window, reference)
        for j, kind in enumerate(self.kinds):
            col = X[:, j].astype(np.float64)
            col = col[np.isfinite(col)]
            m, ref = len(col), self.column(j)
            gone, ref_gone = len(X) - m, self.rows - int(self.n[j])
            if gone or ref_gone:
                table = [[gone, m], [ref_gone, int(self.n[j])]]
                missing[self.names[j]] = (
                    float(stats.fisher_exact(table).pvalue),
                    gone / max(len(X), 1),
                    ref_gone / max(self.rows, 1),
                )
            if m == 0 or self.n[j] == 0:
                continue
            if kind == KS:
                ks_cols.append(j)
                ks_stats.append(ks_statistic(ref, np.sort(col)))
                ks_en.append(round(m * self.n[j] / (m + self.n[j])))
                continue
            if kind == CONSTANT:
                # Never seen in training: how surprising are k other values in m rows?
                k = int(np.count_nonzero(col != ref[0]))
                p0 = 1.0 / (self.n[j] + 2)
                p = float(stats.binom.sf(k - 1, m, p0)) if k else 1.0
            else:
                observed = np.bincount(
                    np.clip(col.astype(np.int64), 0, len(ref) - 1), minlength=len(ref)
                )
                p = float(stats.chisquare(observed, ref * m).pvalue)
            names.append(self.names[j])
            raw_p.append(p)
        if ks_cols:
            # Kolmogorov's limit with Stephens' small-sample correction (Numerical Recipes
            # 14.3): scipy's exact kstwo.sf cost 15 ms a window, this 0.1 ms.
            en = np.sqrt(np.array(ks_en, dtype=np.float64))
            p_ks = stats.kstwobign.sf((en + 0.12 + 0.11 / en) * np.array(ks_stats))
            names += [self.names[j] for j in ks_cols]
            raw_p += p_ks.tolist()
        raw_p, names, moved = _with_missing(names, raw_p, missing)
        p = np.minimum(np.array(raw_p, dtype=np.float64) * max(len(raw_p), 1), 1.0)
        order = np.argsort(p, kind="stable")
        drifted = [names[i] for i in order if p[i] < alpha]
        return DriftResult(
            drifted=bool(drifted),
            p_min=float(p.min()) if len(p) else 1.0,
            share=len(drifted) / max(len(p), 1),
            features=drifted,
            p_values={names[i]: float(p[i]) for i in order},
            rows=len(X),
            missing={n: moved[n] for n in drifted if n in moved},
        )


def _with_missing(
    names: list[str], raw_p: list[float], missing: dict[str, tuple[float, float, float]]
) -> tuple[list[float], list[str], dict[str, tuple[float, float]]]:
    """Each column's p-value with its missing-share test folded in: twice the smaller of the
    two (or the missing test's alone, for a column with no value to test). Returns the
    p-values, their names, and the columns whose missing test is the smaller p."""
    out_p, out_names, moved = [], [], {}
    seen = set()
    for name, p in zip(names, raw_p, strict=True):
        seen.add(name)
        if name in missing:
            p_miss, win, ref = missing[name]
            if p_miss <= p:
                moved[name] = (win, ref)
            p = min(1.0, 2.0 * min(p, p_miss))
        out_p.append(p)
        out_names.append(name)
    for name, (p_miss, win, ref) in missing.items():
        if name not in seen:  # nothing to compare but the missing share (a column gone null)
            out_p.append(p_miss)
            out_names.append(name)
            moved[name] = (win, ref)
    return out_p, out_names, moved


def ks_statistic(ref: np.ndarray, win: np.ndarray) -> float:
    """sup |F_ref - F_win| for sorted samples, in O(len(win) log len(ref)), ties handled.

    Between two consecutive window values F_win is flat and F_ref monotone, so the supremum is
    reached at a window value: on its right (both ECDFs including it) or just left of it.
    """
    n, m = len(ref), len(win)
    ref_right = np.searchsorted(ref, win, side="right") / n
    ref_left = np.searchsorted(ref, win, side="left") / n
    win_right = np.searchsorted(win, win, side="right") / m
    win_left = np.searchsorted(win, win, side="left") / m
    return float(max(np.abs(ref_right - win_right).max(), np.abs(ref_left - win_left).max()))


def cached_reference(rows: Path, schema: Schema, cache_dir: Path, version: str) -> Reference:
    """The reference of model ``version`` (its ``reference.parquet``), computed once."""
    import pandas as pd

    stat = rows.stat()
    # "-m": the layout with the reference's row count (missing shares); older caches are ignored.
    path = cache_dir / f"reference-v{version}-{stat.st_size}-{int(stat.st_mtime)}-m.npz"
    if path.is_file():
        return Reference.load(path)
    X = pd.read_parquet(rows)[schema.names].to_numpy(np.float64)
    reference = Reference.from_rows(X, schema)
    reference.save(path)
    return reference
