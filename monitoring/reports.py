"""Drift reports for people: Evidently per window, and an index page over time.

    python -m monitoring check --report     # writes reports/drift/<time>.html and .json

:func:`drift_report` runs Evidently 0.7's ``DataDriftPreset`` (current window first, reference
second), with a ``DataDefinition`` built from schema.json (numeric and categorical columns, the
latter by their category names), and saves its HTML and JSON under ``monitor.reports``. The
decision itself is the project's detector (calibrated, 1 ms); Evidently's per-column tests and
charts are what a person reads to see *how* the window moved: of the features the detector found
drifted, the ``REPORT_FEATURES`` most significant (every feature when none drifted or the table
has no more), which also keeps a report of a wide table to seconds (all 64 pixels of the digits
took 21 s; it runs while the monitor decides). The reference is sampled to at most 5,000 rows
there.

:func:`write_index` writes ``index.html``: drift (Bonferroni p and share of drifted features),
the predicted class mix, feedback and estimated accuracy and response-time p50 / p99 per window,
as plots, then a table of every decision with its reasons and a link to its report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.contracts.io import atomic_outputs

if TYPE_CHECKING:
    from pipeline.contracts.champion import Champion
    from pipeline.contracts.prodlog import Window
    from pipeline.contracts.schema import Schema
    from pipeline.contracts.tasks import ServedTask

REFERENCE_ROWS = 5000
REPORT_FEATURES = 10  # per-feature panels in a report: the most drifted ones


def drift_report(
    window: Window,
    champ: Champion,
    out_dir: Path,
    drifted: list[str] | None = None,
    missing: list[str] | None = None,
) -> str:
    """Evidently's data-drift report of ``window`` against the champion's reference, over the
    ``drifted`` features (most significant first; at most ``REPORT_FEATURES``) or, without
    any, every feature; with the missing-value count and share, window against reference, of
    each feature whose missing share moved (``missing``). A feature with no value in the
    window has its missing count only (there is no distribution to compare)."""
    import warnings

    from evidently import Dataset, Report
    from evidently.metrics import MissingValueCount
    from evidently.presets import DataDriftPreset

    schema = champ.schema
    top = set((drifted or [])[:REPORT_FEATURES])
    gone = set((missing or [])[:REPORT_FEATURES])
    frame = pd.DataFrame(window.X, columns=schema.names)
    alive = set(frame.columns[frame.notna().any()])
    values = [n for n in schema.names if n in alive and (n in top or not drifted)]
    names = [n for n in schema.names if n in set(values) | gone]
    current = readable(frame, schema)[names]
    reference = readable(pd.read_parquet(champ.reference)[schema.names], schema)[names]
    if len(reference) > REFERENCE_ROWS:
        reference = reference.sample(REFERENCE_ROWS, random_state=0)
    definition = data_definition(schema, names)
    stamp = report_name(window).removesuffix(".html")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: list[Any] = [DataDriftPreset(columns=values)] if values else []
    metrics += [MissingValueCount(column=n) for n in names if n in gone]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant columns: 0/0 in its stats
        snapshot = Report(metrics).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    html_path, json_path = out_dir / f"{stamp}.html", out_dir / f"{stamp}.json"
    with atomic_outputs(html_path, json_path) as (tmp_html, tmp_json):
        snapshot.save_html(str(tmp_html))
        snapshot.save_json(str(tmp_json))
    return html_path.name


def report_name(window: Window) -> str:
    """The file name :func:`drift_report` gives ``window``'s report (by its last row's time)."""
    return (
        dt.datetime.fromtimestamp(float(window.ts[-1]), dt.UTC).strftime("%Y%m%dT%H%M%S.%f")
        + ".html"
    )


def data_definition(schema: Schema, names: list[str] | None = None):  # -> DataDefinition
    """What each column (of ``names``; default all) is, from schema.json: Evidently then picks
    its tests per kind (e.g. chi-squared or Jensen-Shannon for a categorical column) instead of
    judging category indices as numbers."""
    from evidently import DataDefinition

    keep = set(schema.names if names is None else names)
    features = [f for f in schema.features if f.name in keep]
    return DataDefinition(
        numerical_columns=[f.name for f in features if f.kind != "categorical"],
        categorical_columns=[f.name for f in features if f.kind == "categorical"],
    )


def readable(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Encoded rows (categoricals as their index in schema.json) as a person reads them:
    numbers as floats, categoricals as their category names (missing or unknown: NaN)."""
    out = {}
    for feat in schema.features:
        col = frame[feat.name].to_numpy(np.float64)
        out[feat.name] = pd.Series(feat.decode(col)) if feat.kind == "categorical" else col
    return pd.DataFrame(out, columns=schema.names)


def _figure(decisions: list[dict[str, Any]], task: str) -> str:
    """The four panels as a base64 PNG (the middle two are the task's: :data:`PANELS`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [dt.datetime.fromtimestamp(d["window_end"] or d["ts"]) for d in decisions]
    f = [d["figures"] for d in decisions]
    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    ax = axes[0]
    ax.plot(
        t, [x.get("drift_share", 0.0) for x in f], marker=".", label="share of features drifted"
    )
    ax.plot(t, [x.get("p_min", 1.0) for x in f], marker=".", label="min Bonferroni p")
    alarms = [i for i, x in enumerate(f) if x.get("alarm")]
    ax.scatter([t[i] for i in alarms], [1.02] * len(alarms), color="red", marker="v", label="alarm")
    retrains = [i for i, d in enumerate(decisions) if d["decision"].startswith("retrain")]
    for i in retrains:
        for a in axes:
            a.axvline(t[i], color="purple", linestyle="--", linewidth=1)
    ax.set_ylim(-0.02, 1.08)
    ax.set_title("Input drift per window (dashed: retrain)")
    ax.legend(loc="center left", fontsize=8)
    PANELS[task](axes[1], axes[2], t, f)
    ax = axes[3]
    for key in ("p50_ms", "p99_ms"):
        ax.plot(t, [np.nan if x.get(key) is None else x[key] for x in f], marker=".", label=key)
    ax.set_title("Response time (ms, in the service)")
    ax.legend(loc="upper left", fontsize=8)
    # Fixed margins: tight_layout measured every label first, 0.9 s of the 1.4 s a figure took,
    # paid on every decision `watch` records.
    fig.autofmt_xdate(bottom=0.06)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.97, hspace=0.22)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _none_nan(values: list[Any]) -> list[float]:
    return [np.nan if v is None else v for v in values]


def _group_lines(ax: Any, t: list[Any], f: list[dict[str, Any]]) -> None:
    """Each group's figure from labels (``data.sensitive``), dashed, where windows have them."""
    names = sorted({g for x in f for g in (x.get("groups") or {}).get("by_group", {})})
    column = next((x["groups"]["column"] for x in f if x.get("groups")), "")
    for name in names:
        values = [
            ((x.get("groups") or {}).get("by_group", {}).get(name) or {}).get("figure") for x in f
        ]
        ax.plot(t, _none_nan(values), linestyle="--", marker=".", label=f"{column} = {name}")


def _regression_panels(ax_mae: Any, ax_cov: Any, t: list[Any], f: list[dict[str, Any]]) -> None:
    """A regressor's: feedback MAE beside the champion's test MAE; the interval's realised
    coverage beside its nominal level (the concept-shift alarm)."""
    ax_mae.plot(t, _none_nan([x.get("mae") for x in f]), marker="o", label="feedback MAE")
    ax_mae.plot(
        t,
        _none_nan([x.get("champion_test_mae") for x in f]),
        linestyle=":",
        label="champion on test",
    )
    ax_mae.set_title("Mean absolute error")
    ax_mae.legend(loc="upper left", fontsize=8)
    ax_cov.plot(t, _none_nan([x.get("coverage") for x in f]), marker="o", label="realised coverage")
    ax_cov.plot(
        t, _none_nan([x.get("nominal_coverage") for x in f]), linestyle=":", label="nominal"
    )
    _group_lines(ax_cov, t, f)
    ax_cov.set_ylim(0, 1.02)
    ax_cov.set_title("Prediction interval coverage (from labels)")
    ax_cov.legend(loc="lower left", fontsize=8)


def _class_panels(ax_mix: Any, ax: Any, t: list[Any], f: list[dict[str, Any]]) -> None:
    """A classifier's: the predicted class mix; feedback accuracy beside the label-free
    estimate and the champion's test accuracy."""
    mix = np.array([x.get("class_mix", []) for x in f if x.get("class_mix")])
    if len(mix) == len(t) and mix.ndim == 2:
        ax_mix.stackplot(t, mix.T, labels=[str(k) for k in range(mix.shape[1])])
        ax_mix.legend(loc="center left", fontsize=7, ncol=2, title="class")
    ax_mix.set_ylim(0, 1)
    ax_mix.set_title("Predicted class mix")
    acc = [x.get("accuracy") for x in f]
    ax.plot(t, [np.nan if a is None else a for a in acc], marker="o", label="feedback accuracy")
    est = [x.get("estimated_accuracy") for x in f]
    methods = sorted({x.get("estimate_method", "confidence") for x in f})
    ax.plot(
        t,
        [np.nan if a is None else a for a in est],
        marker=".",
        label=f"estimated without labels ({', '.join(methods)})",
    )
    ref = [x.get("champion_test_accuracy") for x in f]
    ax.plot(t, [np.nan if a is None else a for a in ref], linestyle=":", label="champion on test")
    _group_lines(ax, t, f)
    ax.set_ylim(0, 1.02)
    ax.set_title("Accuracy")
    ax.legend(loc="lower left", fontsize=8)


# The index page's two middle panels, by the champion's task (schema.json's).
PANELS = {"classification": _class_panels, "regression": _regression_panels}


def write_index(decisions: list[dict[str, Any]], out_dir: Path, task: ServedTask) -> Path:
    """``index.html`` over every recorded decision (plots, then a table, newest first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for d in reversed(decisions[-500:]):
        f = d["figures"]
        report = f.get("report")
        link = f'<a href="{html.escape(report)}">report</a>' if report else ""
        acc = task.label_cell(f)
        rows.append(
            "<tr>"
            f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d['ts']))}</td>"
            f"<td>{d['rows']}</td><td class='{html.escape(d['decision'])}'>"
            f"{html.escape(d['decision'])}</td>"
            f"<td>{f.get('p_min', 1.0):.3g}</td><td>{f.get('n_drifted_features', 0)}</td>"
            f"<td>{acc}</td><td>{html.escape('; '.join(d['reasons']))}</td><td>{link}</td>"
            "</tr>"
        )
    image = _figure(decisions, task.name) if decisions else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mlcycle: production monitoring</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}} .ok{{color:green}}
.alarm,.waiting_for_labels,.cooldown{{color:#b60}} .retrain_promoted{{color:purple}}
.superseded{{color:#888}} .retrain_rejected,.retrain_failed{{color:red}}</style></head><body>
<h1>Production monitoring</h1>
<p>{len(decisions)} windows checked; the drift test is per-feature KS with a Bonferroni
correction (python -m monitoring). Newest first below.</p>
{f'<img alt="monitoring over time" src="data:image/png;base64,{image}">' if image else ""}
<table id="decisions"><tr><th>time</th><th>rows</th><th>decision</th><th>min p</th>
<th>drifted features</th><th>feedback accuracy or coverage, MAE (labels)</th><th>reasons</th>
<th>report</th></tr>
{"".join(rows)}
</table></body></html>
"""
    path = out_dir / "index.html"
    with atomic_outputs(path) as (tmp,):
        tmp.write_text(page)
    return path
