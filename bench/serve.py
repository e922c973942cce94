"""The service against a bare Starlette + onnxruntime app on the same graph, side by side.

    python bench/serve.py [--seconds 8] [--rounds 3] [--registry registry]   (after make repro)

Three servers on the same graph: the bare app (bench/bare_app.py), the service (validation and
the production log on, a throwaway SQLite file) and BentoML's adaptive batching
(bench/batched_app.py: a typed batchable API, logging too). Each runs pinned to CPU 0 and wrk
(Debian's `wrk`) to CPU 1, so the load generator is not the bottleneck; every run is bounded in
time and sends only to 127.0.0.1. Cases: 1-record requests at 8 connections (throughput), 1
record at 1 connection (latency), 256-record requests at 8 connections (rows/s); the servers'
runs alternate and the best of ``--rounds`` is kept. Prints requests/s, rows/s, p50 / p99
latency, server CPU per request and the ratio to the bare app, as a Markdown table; then the
service's ``/explain`` against its own ``/predict`` on the same records (1 and 32 a request, 1
connection): latency per record and the ratio.
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


def family(pid: int) -> dict[int, int]:
    """``pid`` and all its descendants (BentoML's workers, in sessions of their own): pid -> CPU
    ticks (user + system)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    members = {pid}
    changed = True
    while changed:
        changed = False
        for child, (parent, _) in stats.items():
            if parent in members and child not in members:
                members.add(child)
                changed = True
    return {member: stats.get(member, (0, 0))[1] for member in members}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its descendants."""
    return sum(family(pid).values()) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it lingers; then any descendant left
    (a BentoML worker runs in a session of its own, out of the group's reach)."""
    descendants = set(family(proc.pid)) - {proc.pid}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:  # a worker that ignores SIGTERM under load
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    for pid in descendants:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


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
    stop(proc)
    raise SystemExit(f"server did not start: {' '.join(cmd)}")


def wrk(url: str, body: str, conns: int, seconds: int, tmp: Path) -> dict[str, float]:
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body}]==]\n"  # a level-2 long string: the body may hold ]]
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
    failed = int(errors.group(1)) if errors else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {
        "requests": requests,
        # Answers only: a refusal (BentoML's batcher answers 503 under load) is no throughput.
        "rps": rps * (requests - failed) / max(requests, 1),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": failed,
    }


def run_case(
    proc: subprocess.Popen, url: str, body: str, rows: int, conns: int, seconds: int, tmp: Path
) -> dict[str, float]:
    cpu0 = cpu_seconds(proc.pid)
    r = wrk(url, body, conns, seconds, tmp)
    r["cpu_ms_per_request"] = (cpu_seconds(proc.pid) - cpu0) * 1e3 / max(r["requests"], 1)
    r["rows_per_s"] = r["rps"] * rows
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; best is kept")
    parser.add_argument("--registry", default="registry")
    args = parser.parse_args()
    champion = (ROOT / args.registry / "champion").resolve()
    if not (champion / "model.onnx").is_file():
        raise SystemExit(f"no champion in {champion}: run `make repro` first")
    schema = json.loads((champion / "schema.json").read_text())
    record = {}
    for f in schema["features"]:
        if f["kind"] == "categorical":
            record[f["name"]] = f["categories"][0]
        else:  # inside the training range: the common case, nothing flagged
            record[f["name"]] = round((f.get("min", 0.0) + f.get("max", 1.0)) / 2, 3)
    records = {n: json.dumps({"records": [record] * n}) for n in (1, 256)}
    row = [float(v) if not isinstance(v, str) else 0.0 for v in record.values()]
    arrays = {n: json.dumps({"features": [row] * n}) for n in (1, 256)}
    bodies = {"bare": records, "service": records, "batched": arrays}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "MLCYCLE_BARE_DIR": str(champion), "OMP_NUM_THREADS": "1"}
        bare_port, service_port, batched_port = free_port(), free_port(), free_port()
        servers = {
            "bare": start(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    "bench",
                    "bare_app:app",
                    "--port",
                    str(bare_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env,
                f"http://127.0.0.1:{bare_port}/",
            ),
            "service": start(
                [sys.executable, "-m", "serving", "--port", str(service_port)],
                {
                    **env,
                    "MLCYCLE_REGISTRY": str(ROOT / args.registry),
                    "MLCYCLE_LOG_URL": str(tmp / "bench.db"),
                    "BENTOML_DO_NOT_TRACK": "true",
                },
                f"http://127.0.0.1:{service_port}/readyz",
            ),
            "batched": start(
                [
                    sys.executable,
                    "-m",
                    "bentoml",
                    "serve",
                    "--working-dir",
                    str(ROOT),
                    "bench.batched_app:Batched",
                    "--port",
                    str(batched_port),
                ],
                {**env, "MLCYCLE_LOG_URL": str(tmp / "batched.db"), "BENTOML_DO_NOT_TRACK": "true"},
                f"http://127.0.0.1:{batched_port}/readyz",
            ),
        }
        urls = {
            name: f"http://127.0.0.1:{port}/predict"
            for name, port in (
                ("bare", bare_port),
                ("service", service_port),
                ("batched", batched_port),
            )
        }
        best: dict[str, dict[str, dict[str, float]]] = {name: {} for name in servers}
        try:
            for label, rows, conns in CASES:
                for name in servers:  # warm up
                    wrk(urls[name], bodies[name][rows], conns, 2, tmp)
                for _ in range(args.rounds):
                    for name, proc in servers.items():
                        body = bodies[name][rows]
                        r = run_case(proc, urls[name], body, rows, conns, args.seconds, tmp)
                        if label not in best[name] or r["rps"] > best[name][label]["rps"]:
                            best[name][label] = r
                for name in servers:
                    r = best[name][label]
                    print(
                        f"{name:8} {label:22} {r['rps']:8.0f} req/s {r['rows_per_s']:8.0f} rows/s"
                        f"  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
                        f"  cpu {r['cpu_ms_per_request']:.3f} ms/req  non-2xx {r['errors']}",
                        flush=True,
                    )
            explain = explain_vs_predict(servers["service"], service_port, records, args, tmp)
        finally:
            for proc in servers.values():
                stop(proc)
    print(f"\nagainst bare (best of {args.rounds} alternating {args.seconds} s runs):")
    print(
        "| case | server | answered/s | rows/s | vs bare | p50 ms | p99 ms | CPU ms/request "
        "| non-2xx |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, _, _ in CASES:
        b = best["bare"][label]
        for name in servers:
            r = best[name][label]
            print(
                f"| {label} | {name} | {r['rps']:.0f} | {r['rows_per_s']:.0f} | "
                f"{r['rps'] / b['rps']:.2f}x | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['cpu_ms_per_request']:.3f} | {r['errors']} |"
            )
    print("\n/explain against /predict on the service (1 connection, best of the rounds):")
    print("| records a request | /predict ms per record | /explain ms per record | ratio |")
    print("| --- | --- | --- | --- |")
    for n, (p, e) in explain.items():
        print(f"| {n} | {p:.3f} | {e:.3f} | {e / p:.1f}x |")
    return 0


def explain_vs_predict(
    proc: subprocess.Popen, port: int, records: dict[int, str], args: argparse.Namespace, tmp: Path
) -> dict[int, tuple[float, float]]:
    """p50 latency per record of the service's /predict and /explain, by records a request."""
    base = f"http://127.0.0.1:{port}"
    records = {**records, 32: json.dumps({"records": json.loads(records[1])["records"] * 32})}
    out = {}
    for n in (1, 32):
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for path in ("predict", "explain"):
                r = run_case(proc, f"{base}/{path}", records[n], n, 1, args.seconds, tmp)
                if r["errors"]:
                    raise SystemExit(f"/{path}: {r['errors']} non-2xx answers")
                best[path] = min(best.get(path, float("inf")), r["p50_ms"] / n)
        out[n] = (best["predict"], best["explain"])
    return out


if __name__ == "__main__":
    sys.exit(main())
