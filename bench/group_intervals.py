"""One interval for everyone, or one per group: group-conditional (Mondrian) conformal.

    python bench/group_intervals.py [--seeds 0 1 2] [--rows 4000]

For each seed, a regression table with a known group effect (tests.conftest.group_price_table:
group "b", 30 % of rows, has three times the target noise) runs through a fresh copy of the
project with the repo's params, only ``data.*`` set (``data.sensitive: group``). The harden
stage fits both intervals on the same validation rows at ``serving.interval_coverage`` and
reports each group's test coverage and mean width under each (``metrics/robustness.json``,
``interval.by_group``); the graph ships the group-conditional one when
``serving.interval_by_group`` is true (the default). Prints per seed and group: rows, coverage
and width pooled and per group, the width ratio; then the means over seeds.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loop import fresh_project, run, set_params  # noqa: E402

from tests.conftest import group_price_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    print("| seed | group | test rows | coverage: pooled | per group | width: pooled | per group "
          "| width ratio | seconds |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            project = fresh_project(Path(tmp) / str(seed))
            group_price_table(args.rows, seed).to_csv(project / "data/table.csv", index=False)
            set_params(
                project,
                "data",
                {"source": "data/table.csv", "target": "price", "sensitive": "group"},
            )
            start = time.monotonic()
            run(project, [sys.executable, "-m", "dvc", "repro"])
            seconds = time.monotonic() - start
            robustness = json.loads((project / "metrics/robustness.json").read_text())
            report = robustness["interval"]["by_group"]
            for name, g in report["groups"].items():
                ratio = g["by_group_mean_width"] / g["pooled_mean_width"]
                rows.append({"group": name, **g, "ratio": ratio})
                print(
                    f"| {seed} | {name} | {g['rows']} | {g['pooled_coverage']:.3f} | "
                    f"{g['by_group_coverage']:.3f} | {g['pooled_mean_width']:.1f} | "
                    f"{g['by_group_mean_width']:.1f} | {ratio:.2f} | {seconds:.0f} |",
                    flush=True,
                )
    print("\nmeans over seeds:")
    for name in sorted({r["group"] for r in rows}):
        mine = [r for r in rows if r["group"] == name]
        pooled = np.mean([r["pooled_coverage"] for r in mine])
        grouped = np.mean([r["by_group_coverage"] for r in mine])
        ratio = np.mean([r["ratio"] for r in mine])
        print(f"- {name}: coverage pooled {pooled:.3f}, per group {grouped:.3f}; "
              f"width x{ratio:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
