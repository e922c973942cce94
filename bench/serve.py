"""The service against a bare Starlette + onnxruntime app on the same graph, side by side.

    python bench/serve.py [--seconds 10] [--registry registry]   (after `make repro`)

Each server runs pinned to CPU 0 and wrk (Debian's `wrk`) to CPU 1, so the load generator is
not the bottleneck; both are bounded in time and send only to 127.0.0.1. Cases: 1-record
requests at 8 connections (throughput), 1 record at 1 connection (latency), 256-record requests
at 8 connections (rows/s). The service runs with validation and the production log on (a
throwaway SQLite file). Prints requests/s, rows/s, p50 / p99 latency and server CPU per request,
and the service / bare ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CASES = (("1 record, 8 conns", 1, 8), ("1 record, 1 conn", 1, 1), ("256 records, 8 conns", 256, 8))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants (the server's process group)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pid or int(stat.parent.name) == pid:  # pgrp == server's pid
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def start(cmd: list[str], env: dict[str, str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *cmd],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1)
            return proc
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"server did not start: {' '.join(cmd)}")


def wrk(url: str, body: str, conns: int, seconds: int, tmp: Path) -> dict[str, float]:
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{body}]]\n"
    )
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def latency(pct: str) -> float:
        value, suffix = re.search(rf"{pct}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * unit[suffix]

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": int(errors.group(1)) if errors else 0,
    }


def measure(
    name: str, proc: subprocess.Popen, url: str, bodies: dict[int, str], seconds: int, tmp: Path
) -> dict[str, dict[str, float]]:
    results = {}
    for label, rows, conns in CASES:
        wrk(url, bodies[rows], conns, 2, tmp)  # warm up
        cpu0 = cpu_seconds(proc.pid)
        r = wrk(url, bodies[rows], conns, seconds, tmp)
        r["cpu_ms_per_request"] = (cpu_seconds(proc.pid) - cpu0) * 1e3 / max(r["requests"], 1)
        r["rows_per_s"] = r["rps"] * rows
        results[label] = r
        print(
            f"{name:8} {label:22} {r['rps']:9.0f} req/s {r['rows_per_s']:10.0f} rows/s "
            f"p50 {r['p50_ms']:6.2f} ms p99 {r['p99_ms']:6.2f} ms "
            f"cpu {r['cpu_ms_per_request']:.3f} ms/req errors {r['errors']}"
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--registry", default="registry")
    args = parser.parse_args()
    champion = (ROOT / args.registry / "champion").resolve()
    if not (champion / "model.onnx").is_file():
        raise SystemExit(f"no champion in {champion}: run `make repro` first")
    schema = json.loads((champion / "schema.json").read_text())
    record = {}
    for f in schema["features"]:
        low, high = f.get("min", 0.0), f.get("max", 1.0)
        record[f["name"]] = (
            f["categories"][0] if f["kind"] == "categorical" else round((low + high) / 2, 3)
        )
    bodies = {n: json.dumps({"records": [record] * n}) for n in (1, 256)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "MLCYCLE_BARE_DIR": str(champion), "OMP_NUM_THREADS": "1"}
        port = free_port()
        bare = start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                "bench",
                "bare_app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env,
            f"http://127.0.0.1:{port}/",
        )
        try:
            results["bare"] = measure(
                "bare", bare, f"http://127.0.0.1:{port}/predict", bodies, args.seconds, tmp
            )
        finally:
            os.killpg(bare.pid, signal.SIGTERM)
            bare.wait(30)
        port = free_port()
        env = {
            **env,
            "MLCYCLE_REGISTRY": str(ROOT / args.registry),
            "MLCYCLE_LOG_URL": str(tmp / "bench.db"),
            "BENTOML_DO_NOT_TRACK": "true",
        }
        service = start(
            [sys.executable, "-m", "serving", "--port", str(port)],
            env,
            f"http://127.0.0.1:{port}/readyz",
        )
        try:
            results["service"] = measure(
                "service", service, f"http://127.0.0.1:{port}/predict", bodies, args.seconds, tmp
            )
        finally:
            os.killpg(service.pid, signal.SIGTERM)
            service.wait(60)
    print("\nservice / bare:")
    for label, _rows, _ in CASES:
        s, b = results["service"][label], results["bare"][label]
        print(
            f"  {label:22} throughput {s['rps'] / b['rps']:.2f}x, "
            f"p99 {s['p99_ms']:.2f} vs {b['p99_ms']:.2f} ms, "
            f"cpu/request {s['cpu_ms_per_request']:.3f} vs {b['cpu_ms_per_request']:.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
