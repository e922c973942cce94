"""The drift report and the index page open in a real browser (headless Chromium, Debian's
`chromium`): the report's JavaScript renders the per-column drift table, and the page is not blank.

Checked by reading the DOM Chromium leaves after running the page's scripts (scripts removed, so
the report's embedded JSON data cannot pass for a rendered table) and by a screenshot's pixels.
Slow tier: an Evidently report takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

from monitoring.monitor import Monitor
from monitoring.reports import REPORT_FEATURES, drift_report
from monitoring.shifts import shift_inputs
from pipeline.contracts.champion import Champion
from pipeline.contracts.prodlog import Window
from pipeline.contracts.schema import Schema
from pipeline.contracts.tasks import ChampionFigures
from tests.conftest import ROOT
from tests.monitoring.conftest import Traffic, make_champion, monitor_config, simulate_config

pytestmark = pytest.mark.slow


def chromium(*args: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is needed: apt-get install chromium (the CI script does)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
    out = subprocess.run(
        [exe, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout


def rendered(page: Path) -> str:
    dom = chromium("--dump-dom", page.as_uri())
    return re.sub(r"<script.*?</script>", "", dom, flags=re.S)


def screenshot(page: Path, png: Path) -> np.ndarray:
    chromium(f"--screenshot={png}", "--window-size=1200,1600", page.as_uri())
    return matplotlib.image.imread(png)


def test_the_drift_report_and_the_index_render_in_chromium(
    tmp_path: Path, traffic: Traffic
) -> None:
    d = traffic.d
    make_champion(tmp_path / "registry", d)
    cfg = monitor_config(report_on_drift=True, min_feedback=10**6)
    monitor = Monitor(cfg, traffic.log, tmp_path / "registry", tmp_path)
    rng = np.random.default_rng(0)
    traffic.serve(d.X_held[100:150], d.y_held[100:150])
    blurred = shift_inputs(d.X_held[150:250], d.schema, simulate_config(scenario="blur"), rng)
    traffic.serve(blurred, d.y_held[150:250])
    decisions = monitor.step()
    assert [x.decision for x in decisions] == ["ok", "alarm", "alarm"]
    report = tmp_path / "reports/drift" / decisions[1].figures.report
    assert decisions[2].figures.report is None  # one report per drift episode
    assert report.with_suffix(".json").is_file()

    dom = rendered(report)
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", dom, re.S)]
    drifted = decisions[1].figures.drift.features[0]
    assert drifted in cells and "Detected" in cells, cells[:20]
    assert "Dataset Drift is detected" in dom
    image = screenshot(report, tmp_path / "report.png")
    assert image.shape[0] > 500 and image[..., :3].std() > 0.05  # not a blank page

    index = tmp_path / "reports/drift/index.html"
    dom = rendered(index)
    assert dom.count("<tr>") == 1 + 3 and "alarm" in dom
    assert f'href="{report.name}"' in dom
    image = screenshot(index, tmp_path / "index.png")
    assert image[..., :3].std() > 0.05


def test_check_report_writes_an_evidently_report_for_a_calm_window(
    tmp_path: Path, traffic: Traffic
) -> None:
    """`python -m monitoring check --report`, as a person runs it: a report even without drift,
    named in the decision and linked from the index page."""
    d = traffic.d
    make_champion(tmp_path / "registry", d)
    traffic.serve(d.X_held[100:150], d.y_held[100:150])  # a window that does not drift
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["serving"]["log_url"] = str(tmp_path / "production.db")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLCYCLE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "monitoring", "--params", "params.yaml", "check", "--report"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "50 rows: ok" in proc.stdout
    (html,) = set((tmp_path / "reports/drift").glob("*.html")) - {
        tmp_path / "reports/drift/index.html"
    }
    assert html.with_suffix(".json").is_file() and html.stat().st_size > 10_000
    index = (tmp_path / "reports/drift/index.html").read_text()
    assert f'href="{html.name}"' in index


def test_the_report_judges_each_column_by_its_kind_in_schema_json(tmp_path: Path) -> None:
    """A categorical column (20 categories, stored as their indices) gets a categorical test
    and is shown by its category names; a numeric one gets Kolmogorov-Smirnov."""
    cats = [f"plan_{k}" for k in range(20)]
    schema = Schema.from_dict(
        {
            "features": [
                {"name": "x", "kind": "numeric", "dtype": "float64", "min": 0.0, "max": 1.0},
                {"name": "plan", "kind": "categorical", "dtype": "object", "categories": cats},
            ],
            "target": {"name": "y", "classes": [0, 1]},
        }
    )
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"x": rng.uniform(0, 1, 500), "plan": rng.integers(0, 20, 500)})
    reference.astype(np.float32).to_parquet(tmp_path / "reference.parquet", index=False)
    n = 100
    X = np.stack([rng.uniform(0, 1, n), np.full(n, 3.0)], axis=1).astype(np.float32)
    window = Window(
        [f"r{i}" for i in range(n)], np.zeros(n, np.int64), 1e6 + np.arange(n), ["1"] * n, X,
        np.zeros(n, np.int64), np.full((n, 2), 0.5, np.float32), np.ones(n), -np.ones(n, np.int64),
        *[np.full(n, np.nan)] * 4,
    )  # fmt: skip
    name = drift_report(
        window,
        Champion("1", tmp_path, schema, ChampionFigures(test_accuracy=0.9)),
        tmp_path / "out",
    )
    report = json.loads((tmp_path / "out" / name).with_suffix(".json").read_text())
    methods = {
        m["config"]["column"]: (m["config"]["method"], m["value"])
        for m in report["metrics"]
        if m["config"]["type"].endswith("ValueDrift")
    }
    assert methods["x"][0].startswith("K-S") and methods["x"][1] > 0.05
    assert methods["plan"][0].startswith("chi-square") and methods["plan"][1] < 1e-6
    assert "plan_3" in (tmp_path / "out" / name).read_text()  # categories by name


def test_dead_columns_are_named_by_the_decision_and_the_report(
    tmp_path: Path, traffic: Traffic
) -> None:
    """Twelve pixels sent as null (a dead sensor; the graph imputes them): the decision says
    their missing share moved, and the Evidently report counts their missing values, window
    against reference, instead of skipping them."""
    d = traffic.d
    make_champion(tmp_path / "registry", d)
    cfg = monitor_config(report_on_drift=True, min_feedback=10**6)
    monitor = Monitor(cfg, traffic.log, tmp_path / "registry", tmp_path)
    spread = np.argsort(-d.X_ref.std(axis=0))[:12]  # pixels that vary in training
    dead = sorted(d.schema.names[j] for j in spread)
    X = d.X_held[:50].copy()
    X[:, spread] = np.nan
    traffic.serve(X, d.y_held[:50], feedback=0.0)
    (decision,) = monitor.step()
    assert set(decision.figures.drift.missing) == set(dead)
    assert all(v == (1.0, 0.0) for v in decision.figures.drift.missing.values())
    said = next(r for r in decision.reasons if r.startswith("missing values changed in"))
    assert sum(name in said for name in dead) == 5 and "and 7 more" in said
    row = traffic.log.decisions()[-1]["figures"]
    assert set(row["missing_drifted"]) == set(dead)
    report = json.loads(
        (tmp_path / "reports/drift" / decision.figures.report).with_suffix(".json").read_text()
    )
    counted = {
        m["config"]["column"]: m["value"]
        for m in report["metrics"]
        if m["config"]["type"].endswith("MissingValueCount")
    }
    assert len(counted) == REPORT_FEATURES and set(counted) <= set(dead)
    assert all(v == {"count": 50.0, "share": 1.0} for v in counted.values())


def test_a_report_shows_the_most_drifted_features(tmp_path: Path) -> None:
    """Given the detector's drifted features, the report's per-feature tests cover those (at
    most REPORT_FEATURES of them), not every column of a wide table."""
    width = REPORT_FEATURES + 5
    schema = Schema.from_dict(
        {
            "features": [
                {"name": f"f{j}", "kind": "numeric", "dtype": "float64", "min": 0.0, "max": 1.0}
                for j in range(width)
            ],
            "target": {"name": "y", "classes": [0, 1]},
        }
    )
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.uniform(0, 1, (300, width)), columns=schema.names).astype(
        np.float32
    ).to_parquet(tmp_path / "reference.parquet", index=False)
    n = 60
    X = rng.uniform(0, 1, (n, width)).astype(np.float32)
    window = Window(
        [f"r{i}" for i in range(n)], np.zeros(n, np.int64), 1e6 + np.arange(n), ["1"] * n, X,
        np.zeros(n, np.int64), np.full((n, 2), 0.5, np.float32), np.ones(n), -np.ones(n, np.int64),
        *[np.full(n, np.nan)] * 4,
    )  # fmt: skip
    champ = Champion("1", tmp_path, schema, ChampionFigures(test_accuracy=0.9))

    def columns(name: str) -> set[str]:
        report = json.loads((tmp_path / "out" / name).with_suffix(".json").read_text())
        return {
            m["config"]["column"]
            for m in report["metrics"]
            if m["config"]["type"].endswith("ValueDrift")
        }

    drifted = [f"f{j}" for j in reversed(range(width))]  # most significant first
    assert columns(drift_report(window, champ, tmp_path / "out", drifted)) == set(
        drifted[:REPORT_FEATURES]
    )
    assert columns(drift_report(window, champ, tmp_path / "out", ["f3"])) == {"f3"}
    assert columns(drift_report(window, champ, tmp_path / "out", [])) == set(schema.names)
