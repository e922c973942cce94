"""Data stages at scale: ingest, preprocess and features on a generated table, per stage.

    python bench/prep.py [--rows 100000] [--columns 20] [--baseline]

A ``make_classification`` table (``--columns`` numeric columns, two of them turned into
categories, 2 % missing values, 1 % duplicated rows, 3 classes as strings) is written to CSV; then
each stage runs as ``dvc repro`` would run it (``python -m pipeline.<stage>``, repo params with
``data.*`` pointed at the table) and its wall time is printed. ``--baseline`` runs the same stages
a second time with sampling switched off (``preprocess.noise.max_fit_rows`` and
``features.search_rows`` null: every row in every fit), in the same run, and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.datasets import make_classification

ROOT = Path(__file__).resolve().parents[1]
STAGES = {
    "ingest": "--feedback {fb} --data {d}/raw.parquet --schema {d}/schema.json",
    "preprocess": "--data {d}/raw.parquet --schema {d}/schema.json --out {d}/prepared "
    "--noise-report {d}/noise.csv --metrics {d}/preprocess.json",
    "features": "--schema {d}/schema.json --train {d}/prepared/train.parquet "
    "--out-arrays {d}/features.npz --out-spec {d}/features.json --metrics {d}/features.json "
    "--plot {d}/features.csv --warm-start {ws}",
}


def table(rows: int, columns: int, seed: int = 0) -> pd.DataFrame:
    X, y = make_classification(
        n_samples=rows,
        n_features=columns,
        n_informative=columns // 2,
        n_classes=3,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(columns)])
    for name in ("x0", "x1"):
        df[name] = pd.cut(df[name], 6, labels=[f"c{i}" for i in range(6)]).astype(str)
    df = df.mask(rng.random(df.shape) < 0.02)
    df["label"] = np.array(["low", "mid", "high"])[y]
    dupes = df.sample(frac=0.01, random_state=seed)
    return pd.concat([df, dupes], ignore_index=True)


def run_stages(work: Path, csv: Path, overrides: dict) -> dict[str, float]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source=str(csv), target="label")
    params["compute"]["device"] = "cpu"
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    seconds = {}
    for stage, flags in STAGES.items():
        args = flags.format(
            fb=ROOT / "data/feedback.parquet", ws=ROOT / "data/warm_start.pt", d=work
        ).split()
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                f"pipeline.{stage}",
                "--params",
                str(work / "params.yaml"),
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        seconds[stage] = time.perf_counter() - start
        if proc.returncode:
            sys.exit(f"{stage} failed:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv = work / "table.csv"
        table(args.rows, args.columns).to_csv(csv, index=False)
        (work / "mlcycle").mkdir()
        runs = {"mlcycle": run_stages(work / "mlcycle", csv, {})}
        prep = json.loads((work / "mlcycle/preprocess.json").read_text())
        feats = json.loads((work / "mlcycle/features.json").read_text())
        if args.baseline:
            (work / "exact").mkdir()
            runs["every row"] = run_stages(
                work / "exact",
                csv,
                {"preprocess.noise.max_fit_rows": None, "features.search_rows": None},
            )
    print(f"{args.rows:,} rows x {args.columns} columns (+ label), seconds per stage:")
    print(f"{'':>12} " + " ".join(f"{s:>11}" for s in [*STAGES, "total"]))
    for name, sec in runs.items():
        cells = [*sec.values(), sum(sec.values())]
        print(f"{name:>12} " + " ".join(f"{v:11.1f}" for v in cells))
    if args.baseline:
        a, b = runs["mlcycle"], runs["every row"]
        ratios = [a[s] / b[s] for s in STAGES] + [sum(a.values()) / sum(b.values())]
        print(f"{'ratio':>12} " + " ".join(f"{r:11.2f}" for r in ratios))
    print(
        f"preprocess: noise model fit on {prep['noise_fit_rows_per_fold']} rows per fold, "
        f"{prep['noise_dropped']} noisy rows dropped; features: search on "
        f"{feats['search_rows']} rows, chosen {feats['chosen']}"
    )


if __name__ == "__main__":
    main()
