"""Drift detection: the project's detector beside Evidently's DataDriftPreset, same windows.

    python bench/drift.py [--windows 100] [--evidently-windows 5] [--scale-rows 100000]

Digits: a 1,163-row reference (the size of the training split) and held-out rows; windows drawn
without replacement (repeated rows would inflate false alarms), seeded. For each scenario of
``params.yaml: simulate`` and window size 25/50/100/200/500 (windows over 634 held-out rows;
the prior scenario draws from its classes only, so its windows are capped at that pool), the
share of windows flagged (false alarms for ``none``, detection otherwise) and the check time
per window. Evidently's preset (its dataset-drift verdict: drifted share >= 0.5) is slower,
so it runs on the first ``--evidently-windows`` of the same windows, at sizes 50 and 200.
Then the monitor's own path on a large log window: ``--scale-rows`` rows written to a SQLite
production log and checked (read + test), with its time and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitoring.detector import Reference  # noqa: E402
from monitoring.shifts import shift_inputs  # noqa: E402
from pipeline.contracts.params import SimulateConfig, overlay, read_params, section  # noqa: E402
from pipeline.ingest import load_source  # noqa: E402
from pipeline.learning.infer_schema import infer_schema  # noqa: E402

SCENARIOS = ("none", "intensity", "noise", "translate", "blur", "prior")
SIZES = (25, 50, 100, 200, 500)
EVIDENTLY_SIZES = (50, 200)  # a preset report costs seconds: two sizes show the trend


def evidently_drifted(current: pd.DataFrame, reference: pd.DataFrame) -> bool:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = Report([DataDriftPreset()]).run(current, reference)
    metric = next(m for m in snap.dict()["metrics"] if "DriftedColumnsCount" in m["metric_name"])
    return metric["value"]["share"] >= 0.5


def scale(rows: int, ref: Reference, schema: object, X: np.ndarray) -> None:
    from pipeline.contracts.prodlog import NO_ANSWER, ProductionLog

    with tempfile.TemporaryDirectory() as tmp:
        log = ProductionLog(f"{tmp}/production.db")
        rng = np.random.default_rng(0)
        probs = np.full(10, 0.1, np.float32).tobytes()
        for start in range(0, rows, 10_000):
            batch = [
                (
                    f"r{i}",
                    0,
                    float(i),
                    "1",
                    X[rng.integers(len(X))].astype(np.float32).tobytes(),
                    0,
                    probs,
                    1.0,
                    "",
                    *NO_ANSWER,  # a classifier's row: no regressor answer
                )
                for i in range(start, min(start + 10_000, rows))
            ]
            log.write_predictions(batch)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        window = log.window(last=rows)
        t1 = time.perf_counter()
        result = ref.test(window.X, 0.05)
        t2 = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        log.close()
    print(
        f"\n{rows:,}-row log window: read {t1 - t0:.2f} s, test {(t2 - t1) * 1e3:.0f} ms, "
        f"peak RSS {peak / 1024:.0f} MiB (+{(peak - before) / 1024:.0f} MiB while reading), "
        f"drifted={result.drifted}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--evidently-windows", type=int, default=5)
    parser.add_argument("--scale-rows", type=int, default=100_000)
    args = parser.parse_args()

    src = load_source("digits")
    df, schema = infer_schema(src.frame, "target", None, 0.3, 50, src.image_shape)
    X, y = schema.encode(df), schema.encode_labels(df[schema.target])
    X_ref, X_held, _, y_held = train_test_split(X, y, train_size=1163, stratify=y, random_state=0)
    t0 = time.perf_counter()
    ref = Reference.from_rows(X_ref, schema)
    print(
        f"reference statistics: {(time.perf_counter() - t0) * 1e3:.1f} ms, once per model version"
    )
    reference = pd.DataFrame(X_ref, columns=schema.names)
    base = section(read_params(ROOT / "params.yaml"), "simulate", SimulateConfig)

    print(
        f"\n{'scenario':<10} {'window':>6} | {'mlcycle flagged':>15} {'ms/check':>9} | "
        f"{'Evidently flagged':>17} {'ms/check':>9}"
    )
    for scenario in SCENARIOS:
        cfg = overlay(base, "simulate", scenario=scenario)
        pool = np.arange(len(y_held))
        if scenario == "prior":
            pool = pool[np.isin(y_held, cfg.prior_classes)]
        for size in SIZES:
            if size > len(pool):
                continue
            ours = theirs = 0
            t_ours = t_theirs = 0.0
            for seed in range(args.windows):
                rng = np.random.default_rng(seed)
                Xw = shift_inputs(X_held[rng.choice(pool, size, replace=False)], schema, cfg, rng)
                t = time.perf_counter()
                ours += ref.test(Xw, 0.05).drifted
                t_ours += time.perf_counter() - t
                if seed < args.evidently_windows and size in EVIDENTLY_SIZES:
                    t = time.perf_counter()
                    theirs += evidently_drifted(pd.DataFrame(Xw, columns=schema.names), reference)
                    t_theirs += time.perf_counter() - t
            n_ev = min(args.windows, args.evidently_windows) if size in EVIDENTLY_SIZES else 0
            print(
                f"{scenario:<10} {size:>6} | {ours / args.windows:>14.0%} "
                f"{t_ours / args.windows * 1e3:>9.2f} | "
                + (f"{theirs / n_ev:>16.0%} {t_theirs / n_ev * 1e3:>9.0f}" if n_ev else "")
            )
    print(
        f"\n({args.windows} windows per mlcycle cell; Evidently: the first "
        f"{args.evidently_windows} of them at window sizes {EVIDENTLY_SIZES})"
    )
    if args.scale_rows:
        scale(args.scale_rows, ref, schema, X_held)


if __name__ == "__main__":
    main()
