"""What ``data.sensitive`` reweighing buys: per-group figures with it and without, same split.

    python bench/fairness.py [--seeds 0 1 2] [--rows 8000]

For each seed, a table with a known group effect (tests.conftest.group_table: group "b", 30 % of
rows, measured with three times the noise and with a lower label base rate) runs through a fresh
copy of the project twice with the repo's params, only ``data.*`` set: once with
``data.sensitive: group`` (the preprocess stage's Kamiran-Calders reweighing per group x class),
once without (``null``). The frozen test split is the same both times (it is cut before any
weight, by class); each run's shipped graph is measured on it by group
(:mod:`pipeline.learning.groups`). Prints per run: overall accuracy, each group's accuracy and
its rate of "yes" answers, the demographic parity and equalized odds differences, and the
accuracy gap; then the means over seeds and the change reweighing makes.
"""

from __future__ import annotations

import argparse
import json
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

from pipeline.contracts.runtime import predict, session  # noqa: E402
from pipeline.contracts.schema import LABEL, ROW, Schema  # noqa: E402
from pipeline.learning import groups as by  # noqa: E402
from tests.conftest import group_table  # noqa: E402


def measure(project: Path) -> dict[str, Any]:
    """The shipped graph's figures by group on the project's frozen test split."""
    schema = Schema.from_dict(json.loads((project / "data/schema.json").read_text()))
    test = pd.read_parquet(project / "data/prepared/test.parquet")
    X, y = test[schema.names].to_numpy(np.float32), test[LABEL].to_numpy()
    proba, _ = predict(session(project / "models/model.onnx"), X)
    pred = proba.argmax(axis=1)
    groups = by.labels(test, schema, "group")
    figures = by.classes(y, pred, groups, proba.shape[1])
    yes = list(schema.classes).index("yes")
    return {
        "accuracy": float((pred == y).mean()),
        "by_group": {
            g: {"accuracy": v["accuracy"], "yes_rate": v["selection_rate"][yes]}
            for g, v in figures["by_group"].items()
        },
        "dp": figures["demographic_parity_difference"],
        "eo": figures["equalized_odds_difference"],
        "gap": figures["by_group"]["a"]["accuracy"] - figures["by_group"]["b"]["accuracy"],
        "test_rows": tuple(test[ROW].tolist()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=8000)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {"reweighed": [], "not reweighed": []}
    print("| seed | data.sensitive | accuracy | a: accuracy, yes | b: accuracy, yes | DP diff "
          "| EO diff | gap | seconds |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, sensitive in (("reweighed", "group"), ("not reweighed", None)):
                project = fresh_project(Path(tmp) / f"{seed}-{sensitive}")
                group_table(args.rows, seed).to_csv(project / "data/table.csv", index=False)
                set_params(
                    project,
                    "data",
                    {"source": "data/table.csv", "target": "approved", "sensitive": sensitive},
                )
                start = time.monotonic()
                run(project, [sys.executable, "-m", "dvc", "repro"])
                r = {**measure(project), "seconds": time.monotonic() - start}
                results[name].append(r)
                if (
                    name == "not reweighed"
                    and r["test_rows"] != results["reweighed"][-1]["test_rows"]
                ):
                    raise SystemExit(f"seed {seed}: the two runs cut different test splits")
                a, b = r["by_group"]["a"], r["by_group"]["b"]
                print(
                    f"| {seed} | {sensitive or 'null'} | {r['accuracy']:.3f} | "
                    f"{a['accuracy']:.3f}, {a['yes_rate']:.3f} | {b['accuracy']:.3f}, "
                    f"{b['yes_rate']:.3f} | {r['dp']:.3f} | {r['eo']:.3f} | {r['gap']:.3f} | "
                    f"{r['seconds']:.0f} |",
                    flush=True,
                )
    print("\nmeans over seeds:")
    for key in ("accuracy", "dp", "eo", "gap"):
        on = np.mean([r[key] for r in results["reweighed"]])
        off = np.mean([r[key] for r in results["not reweighed"]])
        print(f"- {key}: reweighed {on:.3f}, not reweighed {off:.3f} (change {on - off:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
