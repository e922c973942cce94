"""The browser page's weight and speed: what a visit transfers, and the graph in the browser
against the same graph in the service's onnxruntime.

    python bench/page.py [--registry registry] [--data data/prepared]   (after make repro)

Starts `python -m serving` on loopback over the registry's champion and opens its page (``/``)
in headless Chromium (Debian's, driven by Playwright) twice in one browser profile: the bytes
each visit moved over the wire (resource timing's ``transferSize``), per file on the first. Then,
on the frozen test split's rows, in one run: the page's graph (onnxruntime-web, wasm, one
thread) against onnxruntime in Python (one thread, the service's setting) on the same graph, per
record (median of 200) and at batch 256 (rows/s, best of 20), as ratios; and the page's round
trip to ``POST /predict`` for one record. The graph is the champion's browser graph
(``deploy.browser``'s choice); the probabilities must agree within 1e-5 for an fp32 graph, and
an int8 one must give the same labels (the two runtimes round int8 arithmetic differently).
``--screenshot PATH``: the page after a seven drawn with the mouse and the server asked too
(the README's picture).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.contracts.champion import target_graph  # noqa: E402
from pipeline.contracts.runtime import session  # noqa: E402
from pipeline.learning.assess import quantized  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(registry: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "MLCYCLE_REGISTRY": str(registry.resolve()),
        "MLCYCLE_LOG_URL": str(work / "production.db"),
        "MLCYCLE_SPILL_DIR": str(work / "spill"),
        "BENTOML_HOME": str(work / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    command = [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port)]
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the service did not start:\n{(work / 'server.log').read_text()}")
        time.sleep(0.3)


TRANSFERS = """() => performance.getEntriesByType('navigation')
    .concat(performance.getEntriesByType('resource'))
    .map(e => [new URL(e.name).pathname, e.transferSize, e.decodedBodySize])"""

TIMED = """async ([rows, repeats]) => {
    const times = [];
    let got = null;
    for (let r = 0; r < repeats; r += 1) {
        const start = performance.now();
        got = await window.mlcycle.run(rows);
        times.push(performance.now() - start);
    }
    return {times, got};
}"""

ROUND_TRIP = """async ([record, repeats]) => {
    const times = [];
    for (let r = 0; r < repeats; r += 1) {
        const start = performance.now();
        const res = await fetch('/predict', {method: 'POST',
            headers: {'content-type': 'application/json'},
            body: JSON.stringify({records: [record]})});
        await res.json();
        times.push(performance.now() - start);
    }
    return times;
}"""


def draw(page, points: list[tuple[float, float]], steps: int = 15) -> None:
    """A stroke through ``points`` (fractions of the canvas) with mouse events."""
    box = page.locator("#canvas").bounding_box()

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    page.mouse.move(*at(*points[0]))
    page.mouse.down()
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        for k in range(1, steps + 1):
            page.mouse.move(*at(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps))
    page.mouse.up()


def python_times(sess, X: np.ndarray, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, {"features": X})
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=ROOT / "registry")
    ap.add_argument("--data", type=Path, default=ROOT / "data/prepared")
    ap.add_argument("--screenshot", type=Path, help="write a picture of the page here (PNG)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    champion = args.registry / "champion"
    schema = json.loads((champion / "schema.json").read_text())
    names = [f["name"] for f in schema["features"]]
    X = pd.read_parquet(args.data / "test.parquet")[names].to_numpy(np.float32)
    graph = target_graph(champion, "browser")
    int8 = quantized(graph)
    sess = session(graph, 1)
    work = Path(tempfile.mkdtemp(prefix="bench-page-"))
    proc, url = serve(args.registry, work)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("headless Chromium is needed: apt-get install chromium")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium,
                args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
            )
            context = browser.new_context()
            visits = []
            for _ in range(2):
                page = context.new_page()
                page.goto(url + "/")
                page.evaluate("() => window.mlcycle.ready")
                visits.append(page.evaluate(TRANSFERS))
            print(f"champion version {champion.resolve().name}: {url}/")
            print(f"{'file (first visit)':52} {'transferred':>12} {'decoded':>12}")
            for path, sent, size in visits[0]:
                print(f"{path:52} {sent:12,d} {size:12,d}")
            first, second = (sum(e[1] for e in v) for v in visits)
            print(f"page transfer: first visit {first:,d} bytes, second visit {second:,d} bytes")

            one = X[:1].tolist()
            browser_one = page.evaluate(TIMED, [one, 200])["times"]
            batch = X[:256].tolist()
            got = page.evaluate(TIMED, [X.tolist(), 1])
            browser_batch = page.evaluate(TIMED, [batch, 20])["times"]
            record = dict(zip(names, X[0].tolist(), strict=True))
            trip = page.evaluate(ROUND_TRIP, [record, 100])
            if args.screenshot:
                draw(page, [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])  # a seven
                page.locator("#browser-answer .label").wait_for()
                page.click("#ask")
                page.locator("#server-answer .label").wait_for()
                page.screenshot(path=str(args.screenshot), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    want = sess.run(None, {"features": X})[0]  # probabilities; a regressor's prediction
    key = "prediction" if schema["task"] == "regression" else "probabilities"
    gap = float(np.abs(np.array(got["got"][key]).reshape(want.shape) - want).max())
    py_one = python_times(sess, X[:1], 200)
    py_batch = python_times(sess, X[:256], 20)
    b1, p1 = float(np.median(browser_one)), float(np.median(py_one))
    rb, rp = 256e3 / min(browser_batch), 256e3 / min(py_batch)
    print(f"\n{'':34} {'browser (wasm)':>15} {'python ort':>12} {'ratio':>7}")
    print(f"{'one record, ms (median)':34} {b1:15.3f} {p1:12.3f} {b1 / p1:7.2f}")
    print(f"{'batch 256, rows/s (best)':34} {rb:15,.0f} {rp:12,.0f} {rb / rp:7.2f}")
    print(f"page -> POST /predict, one record: {float(np.median(trip)):.2f} ms (median of 100)")
    print(f"browser graph: {graph.name} ({graph.stat().st_size:,} bytes, int8: {int8})")
    print(f"{key}, browser vs python on {len(X)} test rows: max |diff| {gap:.2e}")
    if key == "probabilities" and int8:
        same = (
            np.array(got["got"]["labels"])
            == np.array(schema["target"]["classes"])[want.argmax(axis=1)]
        )
        print(f"labels, browser vs python: {int(same.sum())} of {len(X)} the same")
        if not same.all():
            raise SystemExit("the browser's labels differ from onnxruntime's in Python")
    elif gap > 1e-5:
        raise SystemExit(f"the browser's {key} differ from onnxruntime's in Python")


if __name__ == "__main__":
    main()
