"""The model in the browser: the page at ``/`` and what it loads, served by the service itself.

    make serve        # then open http://127.0.0.1:3000/

The page (``serving/web/index.html``, ``app.js``) fetches the champion's browser graph
(``GET /model/browser.onnx``; its version in the ``x-model-version`` header) and schema
(``GET /model``), runs the graph with onnxruntime-web (wasm) on the visitor's machine, and asks
``POST /predict`` for the same record on request, showing both answers and both latencies.
onnxruntime-web is pinned in ``serving/web/package.json`` and shipped with the service from
``serving/web/vendor/`` (``make setup``: ``npm ci`` and ``node serving/web/vendor.mjs``), never a
CDN: the page works offline and on loopback.

What a visit costs is the runtime's bytes more than the model's: the wasm-only build (no WebGPU
or WebGL bundle) is sent gzip-compressed to browsers that accept it, under a versioned path
cached for a year (``immutable``); the page, its script and the graph are revalidated on each
visit by ETag (a second visit moves a few hundred bytes unless a promotion changed the graph).
Files are read and compressed on first request, not at import. No torch, no training code.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from serving.asgi import Send, headers

WEB = Path(__file__).parent / "web"
PAGE_FILES = {"/web/app.js": "app.js", "/web/style.css": "style.css"}
TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".wasm": b"application/wasm",
    ".onnx": b"application/octet-stream",
}
REVALIDATE = b"no-cache"  # use the cached copy only after the server says it is current
IMMUTABLE = b"public, max-age=31536000, immutable"  # versioned paths never change


class RuntimeMissingError(Exception):
    """serving/web/vendor/ is absent: onnxruntime-web was not installed."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """One file as the service sends it: its bytes, their gzip, type, ETag and caching."""

    body: bytes
    gzipped: bytes | None
    kind: bytes
    etag: bytes
    cache: bytes

    @classmethod
    def of(cls, body: bytes, kind: bytes, cache: bytes, gzipped: bytes | None = None) -> Asset:
        if gzipped is None and len(body) > 1024:
            gzipped = gzip.compress(body, compresslevel=9, mtime=0)
        return cls(body, gzipped, kind, etag(body), cache)


def etag(body: bytes) -> bytes:
    """The strong ETag of ``body``: a prefix of its sha256, quoted."""
    return f'"{hashlib.sha256(body).hexdigest()[:20]}"'.encode()


def current(if_none_match: bytes | None, tag: bytes) -> bool:
    """Whether a request's If-None-Match names ``tag`` (the client's copy is current: 304)."""
    return if_none_match is not None and tag in [m.strip() for m in if_none_match.split(b",")]


class Assets:
    """The page's files, read on first use; the runtime's from ``serving/web/vendor``."""

    def __init__(self, web: Path = WEB) -> None:
        self.web = web
        self._lock = threading.Lock()
        self._files: dict[str, Asset] = {}
        self._graphs: dict[str, Asset] = {}  # model version -> its browser graph

    def runtime(self) -> dict[str, Any]:
        """vendor/runtime.json: the onnxruntime-web version and its files."""
        path = self.web / "vendor" / "runtime.json"
        if not path.is_file():
            raise RuntimeMissingError(
                f"{path.parent} is missing: the browser page needs onnxruntime-web; run "
                "`make setup` (npm ci --prefix serving/web --ignore-scripts && node "
                "serving/web/vendor.mjs)"
            )
        return json.loads(path.read_text())

    def file(self, path: str) -> Asset | None:
        """The asset at URL ``path``, or None if there is none."""
        with self._lock:
            if path not in self._files:
                found = self._load(path)
                if found is None:
                    return None
                self._files[path] = found
            return self._files[path]

    def _load(self, path: str) -> Asset | None:
        if path == "/":
            prefix = runtime_prefix(self.runtime())
            html = (self.web / "index.html").read_text().replace("__ORT__", prefix)
            return Asset.of(html.encode(), TYPES[".html"], REVALIDATE)
        if path in PAGE_FILES:
            name = PAGE_FILES[path]
            return Asset.of((self.web / name).read_bytes(), TYPES[Path(name).suffix], REVALIDATE)
        runtime = self.runtime()
        prefix = runtime_prefix(runtime)
        name = path.removeprefix(prefix)
        if not path.startswith(prefix) or name not in runtime["files"]:
            return None
        folder = self.web / "vendor" / prefix.removeprefix("/web/").rstrip("/")
        gz = folder / f"{name}.gz"
        return Asset.of(
            (folder / name).read_bytes(),
            TYPES[Path(name).suffix],
            IMMUTABLE,
            gz.read_bytes() if gz.is_file() else None,
        )

    def graph(self, version: str, onnx: Path) -> Asset:
        """The browser graph of model ``version`` (one per version: a version never changes)."""
        with self._lock:
            if version not in self._graphs:
                self._graphs = {version: Asset.of(onnx.read_bytes(), TYPES[".onnx"], REVALIDATE)}
            return self._graphs[version]


def runtime_prefix(runtime: dict[str, Any]) -> str:
    """The URL folder of the runtime ``vendor/runtime.json`` describes (its version in it)."""
    return f"/web/ort-{runtime['onnxruntime-web']}/"


async def send_asset(
    scope: dict[str, Any], send: Send, asset: Asset, extra: list[tuple[bytes, bytes]] = ()
) -> None:
    """200 with the asset (gzip where accepted), or 304 when the client's copy is current;
    a HEAD request gets the headers alone."""
    match, accept = headers(scope, b"if-none-match", b"accept-encoding")
    head = [
        (b"etag", asset.etag),
        (b"cache-control", asset.cache),
        (b"x-content-type-options", b"nosniff"),
        *extra,
    ]
    if current(match, asset.etag):
        await send({"type": "http.response.start", "status": 304, "headers": head})
        await send({"type": "http.response.body", "body": b""})
        return
    body = asset.body
    if asset.gzipped is not None:
        head.append((b"vary", b"accept-encoding"))
        if accept is not None and b"gzip" in accept:
            body = asset.gzipped
            head.append((b"content-encoding", b"gzip"))
    head += [(b"content-type", asset.kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def send_text(send: Send, status: int, text: str) -> None:
    body = text.encode()
    head = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
