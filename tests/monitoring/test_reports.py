"""The drift report and the index page open in a real browser (headless Chromium, Debian's
`chromium`): the report's JavaScript renders the per-column drift table, and the page is not blank.

Checked by reading the DOM Chromium leaves after running the page's scripts (scripts removed, so
the report's embedded JSON data cannot pass for a rendered table) and by a screenshot's pixels.
Slow tier: an Evidently report takes seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from monitoring.monitor import Monitor
from monitoring.shifts import shift_inputs
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
    assert [x["decision"] for x in decisions] == ["ok", "alarm", "alarm"]
    report = tmp_path / "reports/drift" / decisions[1]["figures"]["report"]
    assert "report" not in decisions[2]["figures"]  # one report per drift episode
    assert report.with_suffix(".json").is_file()

    dom = rendered(report)
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", dom, re.S)]
    drifted = decisions[1]["figures"]["drifted_features"][0]
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
