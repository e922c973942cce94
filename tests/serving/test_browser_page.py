"""The model in the browser (serving/page.py, serving/web/): the page's files as the service sends
them, and, in the slow tier, the page driven in headless Chromium (Debian's `chromium`, by
Playwright for Python) against a real `bentoml serve` on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from serving import page
from serving.page import Asset, Assets, RuntimeMissingError
from tests.serving.conftest import Server, promotable_copy, promote

WEB = Path(page.__file__).parent / "web"


def sent(scope_headers: dict[bytes, bytes], asset: Asset, method: str = "GET") -> dict[str, Any]:
    """What :func:`page.send_asset` sends for a request with ``scope_headers``."""
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"method": method, "headers": list(scope_headers.items())}
    asyncio.run(page.send_asset(scope, send, asset))
    start, body = messages
    return {"status": start["status"], "headers": dict(start["headers"]), "body": body["body"]}


def test_an_asset_is_gzipped_where_accepted_and_revalidated_by_etag() -> None:
    body = b"x" * 5000
    asset = Asset.of(body, b"text/plain", page.REVALIDATE)
    plain = sent({}, asset)
    assert plain["status"] == 200 and plain["body"] == body
    assert b"content-encoding" not in plain["headers"]
    zipped = sent({b"accept-encoding": b"gzip, deflate, br"}, asset)
    assert zipped["headers"][b"content-encoding"] == b"gzip"
    assert gzip.decompress(zipped["body"]) == body and len(zipped["body"]) < len(body) // 10
    assert zipped["headers"][b"content-length"] == str(len(zipped["body"])).encode()
    etag = zipped["headers"][b"etag"]
    again = sent({b"if-none-match": b'"other", ' + etag}, asset)
    assert again["status"] == 304 and again["body"] == b""
    changed = Asset.of(body + b"!", b"text/plain", page.REVALIDATE)
    assert sent({b"if-none-match": etag}, changed)["status"] == 200
    head = sent({b"accept-encoding": b"gzip"}, asset, "HEAD")
    assert (
        head["body"] == b""
        and head["headers"][b"content-length"] == zipped["headers"][b"content-length"]
    )


def test_the_runtime_is_the_pinned_wasm_build_cached_for_a_year(tmp_path: Path) -> None:
    """The page names the versioned runtime path; only the listed runtime files are served
    (immutable); a missing vendor/ is a clear error naming the command that installs it."""
    lock = json.loads((WEB / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/onnxruntime-web"]["version"]
    assert json.loads((WEB / "package.json").read_text())["dependencies"] == {
        "onnxruntime-web": pinned
    }
    assets = Assets()
    runtime = assets.runtime()  # make setup installed it
    assert runtime["onnxruntime-web"] == pinned
    html = assets.file("/").body.decode()
    prefix = f"/web/ort-{pinned}/"
    assert f'content="{prefix}"' in html and "__ORT__" not in html
    wasm = assets.file(prefix + "ort-wasm-simd-threaded.wasm")
    assert wasm.cache == page.IMMUTABLE and wasm.kind == b"application/wasm"
    assert wasm.gzipped is not None and len(wasm.gzipped) < len(wasm.body) / 3
    assert not [f for f in runtime["files"] if "webgpu" in f or "jsep" in f or "webgl" in f]
    assert assets.file(prefix + "../../app.js") is None
    assert assets.file("/web/ort-0.0.0/ort-wasm-simd-threaded.wasm") is None
    assert assets.file("/web/app.js").cache == page.REVALIDATE
    bare = tmp_path / "web"
    shutil.copytree(WEB, bare, ignore=shutil.ignore_patterns("vendor", "node_modules"))
    with pytest.raises(RuntimeMissingError, match="make setup"):
        Assets(bare).file("/")


# ---------------------------------------------------------------------------------------------
# The page in headless Chromium (slow tier).


def chromium_path() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is needed: apt-get install chromium (the CI script does)"
    return exe


def launch(pw: Any) -> Any:
    """Debian's Chromium, headless, driven by Playwright (its own browser download is not used)."""
    return pw.chromium.launch(
        executable_path=chromium_path(),
        args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
    )


class Visit:
    """A Chromium page on the service: console errors, failed requests and every URL asked."""

    def __init__(self, context: Any, url: str) -> None:
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on(
            "requestfailed", lambda r: self.errors.append(f"{r.method} {r.url}: {r.failure}")
        )
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.goto(url + "/")
        self.page.evaluate("() => window.mlcycle.ready")

    def transferred(self) -> int:
        """Bytes over the wire for this visit (the resource timing of the page and its loads)."""
        return int(
            self.page.evaluate(
                """() => performance.getEntriesByType('navigation')
                    .concat(performance.getEntriesByType('resource'))
                    .reduce((n, e) => n + e.transferSize, 0)"""
            )
        )


def draw_a_one(page: Any) -> None:
    box = page.locator("#canvas").bounding_box()
    x, top = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.15
    page.mouse.move(x, top)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(x, top + box["height"] * 0.7 * step / 20)
    page.mouse.up()


@pytest.mark.slow
def test_the_page_answers_as_the_service_in_chromium_and_follows_a_promotion(
    served_state: Path,
    tmp_path: Path,
    stage_inputs: Path,
    trained: Path,
    second_candidate: Path,
) -> None:
    """The page loads with no console error and no request leaving 127.0.0.1; the browser's
    probabilities equal onnxruntime-in-Python's on the test split within 1e-5; a digit drawn
    with mouse events gets an answer, and the server's answer for the same record sits beside
    it; a second visit moves a small fraction of the first's bytes; after a promotion the page
    answers with the new version."""
    from playwright.sync_api import sync_playwright

    state = promotable_copy(served_state, tmp_path, reload_interval_s=0.2)
    server = Server(state, str(tmp_path / "production.db")).start()
    assert server.url.startswith("http://127.0.0.1:")
    test = pd.read_parquet(stage_inputs / "data/prepared/test.parquet")
    schema = json.loads((state / "registry/champion/schema.json").read_text())
    names = [f["name"] for f in schema["features"]]
    X = test[names].to_numpy(np.float32)
    champion = state / "registry/champion"
    # The browser target's graph: the tiny champion's fits the budget, so it is the server's
    # (fp32) and the two answers can be compared within 1e-5 below.
    assert (champion / "browser.onnx").read_bytes() == (champion / "model.onnx").read_bytes()
    python = ort.InferenceSession(str(champion / "browser.onnx"))
    want, labels = python.run(None, {"features": X})
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            context = browser.new_context()
            visit = Visit(context, server.url)
            first = visit.transferred()
            got = visit.page.evaluate("rows => window.mlcycle.run(rows)", X.tolist())
            assert got["version"] == "1"
            np.testing.assert_allclose(np.array(got["probabilities"]), want, rtol=0, atol=1e-5)
            assert got["labels"] == [schema["target"]["classes"][i] for i in labels]

            draw_a_one(visit.page)
            answer = visit.page.locator("#browser-answer")
            answer.locator(".label").wait_for()
            assert answer.get_attribute("data-version") == "1"
            here = json.loads(answer.get_attribute("data-answer"))
            assert abs(sum(here["probabilities"]) - 1) < 1e-4
            visit.page.click("#ask")
            server_answer = visit.page.locator("#server-answer")
            server_answer.locator(".label").wait_for()
            there = json.loads(server_answer.get_attribute("data-answer"))
            assert there["label"] == here["label"]
            np.testing.assert_allclose(there["probabilities"], here["probabilities"], atol=1e-5)
            visit.page.screenshot(path=str(tmp_path / "page.png"))

            again = Visit(context, server.url)  # a second visit: the runtime from the cache
            second = again.transferred()
            print(f"page transfer: first visit {first} bytes, second {second} bytes")
            assert second < first / 20, (first, second)

            decision = promote(stage_inputs, second_candidate, trained / "model.pt", trained, state)
            assert decision["promoted"] and decision["version"] == "2"
            deadline = time.monotonic() + 30
            while again.page.evaluate("() => window.mlcycle.version()") != "2":
                assert time.monotonic() < deadline, "the page did not load version 2"
                time.sleep(0.2)
            draw_a_one(again.page)
            again.page.wait_for_function(
                "() => document.querySelector('#browser-answer').dataset.version === '2'"
            )
            for v in (visit, again):
                assert not v.errors, v.errors
                foreign = [u for u in v.urls if not u.startswith(server.url)]
                assert not foreign, foreign
            browser.close()
    finally:
        server.stop()


def test_the_fast_path_serves_the_page_and_leaves_the_rest_to_bentoml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from serving import routes
    from serving.asgi import respond

    passed: list[str] = []

    async def bentoml_app(scope: dict, receive: Any, send: Any) -> None:
        passed.append(f"{scope['method']} {scope['path']}")
        await respond(send, 200, b"{}")

    (tmp_path / "model.onnx").write_bytes(b"graph bytes " * 200)
    served = SimpleNamespace(version="7", directory=tmp_path)
    state = SimpleNamespace(assets=Assets(), watcher=SimpleNamespace(current=served))
    monkeypatch.setattr(routes, "_current", [state])
    app = routes.FastPath(bentoml_app)

    def call(method: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
        messages: list[dict] = []

        async def send(message: dict) -> None:
            messages.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": method, "path": path, "headers": []}
        asyncio.run(app(scope, receive, send))
        return messages[0]["status"], dict(messages[0]["headers"]), messages[1]["body"]

    status, head, body = call("GET", "/")
    assert status == 200 and head[b"content-type"].startswith(b"text/html")
    assert b'src="/web/app.js"' in body
    status, head, body = call("GET", "/model/browser.onnx")
    assert (status, head[b"x-model-version"], body) == (200, b"7", b"graph bytes " * 200)
    status, _, body = call("GET", "/web/missing.js")
    assert status == 404 and b"/web/missing.js" in body
    assert not passed
    call("GET", "/model")
    call("POST", "/")
    call("GET", "/readyz")
    assert passed == ["GET /model", "POST /", "GET /readyz"]
