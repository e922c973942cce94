"""The whole loop under several shifts, with the repo's params: accuracies, decisions, seconds.

    python bench/loop.py [--scenarios blur intensity prior concept] [--requests 1500]
                         [--from PROJECT]

One `dvc repro` of a fresh copy of the project gives version 1 (or ``--from``: a copy of a
project that has already run it, e.g. the test tier's default run); then, for each scenario, a copy
of that state serves (`python -m serving` on loopback), receives `--requests` rows of the
train and validation splits (each once per shuffled pass) shifted by the simulator's scenario,
each with its true label, and
`python -m monitoring watch` runs until it decides to retrain and the gate has decided (or, with
no harm, until `--quiet-windows` windows are judged). Reported per scenario: accuracy of the
model answering before and after on shifted rows of the frozen test split (never fed back) and
on the clean test split (the gate's figure), the gate's worst-case robust accuracy at
``harden.eps`` on the clean test split, the decisions, and the seconds of each phase: traffic,
watch until the retrain starts, the retrain (`dvc repro`), and from the first shifted request
until the service answers with the new version (``GET /model``, polled every 0.2 s).
Only ``monitor.interval_s`` (1 s) and the simulator's settings differ from params.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.contracts import kernels  # noqa: E402
from pipeline.contracts.params import ComputeConfig, read_params, section  # noqa: E402
from pipeline.contracts.prodlog import ProductionLog  # noqa: E402

TOKEN = "bench-loop-token"
SETTINGS = {  # the simulator's settings per scenario: strong and mild, covariate, prior, concept
    "blur": {"blur_sigma": 1.2},
    "intensity": {"intensity": 0.6},
    "translate": {"translate": 1},
    "prior": {"prior_classes": [0, 1, 2]},
    "concept": {"concept_shift": 1},
}


def env(project: Path) -> dict[str, str]:
    """As `make repro` runs: compute.kernels' environment set before dvc starts the stages."""
    level = section(read_params(project / "params.yaml"), "compute", ComputeConfig).kernels
    return {
        **os.environ,
        **kernels.environment(level),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(project),
        "MLCYCLE_FEEDBACK_TOKEN": TOKEN,
    }


def set_params(project: Path, section: str, values: dict[str, Any]) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params))


def fresh_project(dest: Path) -> Path:
    shutil.copytree(
        ROOT / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("dvc.yaml", "params.yaml", "data/feedback.parquet", "data/warm_start.pt"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, dest / name)
    run(dest, [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"])
    set_params(dest, "monitor", {"interval_s": 1})
    return dest


def run(project: Path, cmd: list[str], timeout: float = 3600) -> str:
    done = subprocess.run(
        cmd, cwd=project, env=env(project), capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(project: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--port", str(port)],
        cwd=ROOT,
        env={
            **env(project),
            "MLCYCLE_PARAMS": str(project / "params.yaml"),
            "MLCYCLE_REGISTRY": str(project / "registry"),
            "MLCYCLE_LOG_URL": str(project / "production.db"),
            "BENTOML_HOME": str(project / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
        },
        stdout=(project / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def simulate(project: Path, url: str, scenario: str, rows: str, n: int, feedback: float) -> dict:
    set_params(
        project,
        "simulate",
        {"rows_from": rows, "feedback_rate": feedback, "seed": 0, **SETTINGS[scenario]},
    )
    out = run(
        project,
        [
            sys.executable,
            "-m",
            "monitoring",
            "--params",
            str(project / "params.yaml"),
            "simulate",
            "--url",
            url,
            "--scenario",
            scenario,
            "--requests",
            str(n),
        ],
        timeout=600,
    )
    return json.loads(out.strip().splitlines()[-1])


def gate(project: Path, version: str) -> dict[str, Any]:
    return json.loads((project / f"registry/versions/{version}/evaluate.json").read_text())


def scenario_run(v1: Path, work: Path, scenario: str, requests: int, quiet: int) -> dict:
    project = work / scenario
    shutil.copytree(v1, project, symlinks=True)  # registry/champion is a relative link
    splits = [pd.read_parquet(project / f"data/prepared/{s}.parquet") for s in ("train", "val")]
    pd.concat(splits).to_parquet(project / "traffic.parquet")  # each row sent once, then again
    shutil.copy(project / "data/prepared/test.parquet", project / "heldout.parquet")
    row: dict[str, Any] = {"scenario": scenario}
    with serving(project) as url:
        before = simulate(project, url, scenario, "heldout.parquet", 360, 0.0)
        t0, wall0 = time.monotonic(), time.time()
        simulate(project, url, scenario, "traffic.parquet", requests, 1.0)
        row["traffic_s"] = time.monotonic() - t0
        watch = subprocess.Popen(
            [sys.executable, "-m", "monitoring", "--params", str(project / "params.yaml"), "watch"],
            cwd=project,
            env=env(project),
            stdout=(project / "watch.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        t1 = time.time()
        log = ProductionLog(str(project / "production.db"))
        client = httpx.Client(base_url=url, timeout=5)  # one connection: a poll costs ~nothing
        try:
            decided: list[dict] = []
            deadline = time.monotonic() + 900
            answering_new = None  # when GET /model first names a later version (polled here)
            while time.monotonic() < deadline:
                if answering_new is None and client.get("/model").json()["version"] != "1":
                    answering_new = time.time()
                decided = log.decisions(1000)
                retrained = [d for d in decided if d["decision"].startswith("retrain")]
                if retrained and (retrained[0]["decision"] != "retrain_promoted" or answering_new):
                    break
                if not retrained and len(decided) >= quiet:
                    break
                time.sleep(0.2)
            retrain = next((d for d in decided if d["decision"].startswith("retrain")), None)
            started = sorted((project / "reports/drift/retrain").glob("*.log"))
            if retrain is not None and started:  # the log is named by the retrain's start
                begun = time.mktime(time.strptime(started[0].stem, "%Y%m%dT%H%M%S"))
                row["watch_s"] = begun - t1
                row["retrain_s"] = retrain["ts"] - begun
            if answering_new is not None:
                row["total_s"] = answering_new - wall0
            after = simulate(project, url, scenario, "heldout.parquet", 360, 0.0)
        finally:
            client.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(watch.pid, signal.SIGTERM)
            watch.wait(60)
            log.close()
    answering = max(after["by_version"], key=after["by_version"].get)
    g1, g2 = gate(project, "1")["candidate"], gate(project, answering)["candidate"]
    row.update(
        shifted_before=before["accuracy"],
        shifted_after=after["accuracy"],
        clean_before=g1["accuracy"],
        clean_after=g2["accuracy"],
        robust_before=g1["robust_accuracy"],
        robust_after=g2["robust_accuracy"],
        version_after=answering,
        decisions=summarize([d["decision"] for d in decided]),
        retrain=(retrain or {}).get("decision", "none"),
        why=(retrain or {}).get("reasons", [""])[-1][:160],
    )
    return row


def summarize(decisions: list[str]) -> str:
    out: list[list[Any]] = []
    for d in decisions:
        if out and out[-1][0] == d:
            out[-1][1] += 1
        else:
            out.append([d, 1])
    return " ".join(f"{d}x{n}" if n > 1 else d for d, n in out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["blur", "intensity", "prior", "concept"])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--quiet-windows", type=int, default=15)
    parser.add_argument("--keep", help="work here and keep it (default: a temporary directory)")
    parser.add_argument(
        "--from",
        dest="origin",
        type=Path,
        help="version 1: a copy of this project after its "
        "`dvc repro` (default: a fresh copy of this repo's, run here)",
    )
    args = parser.parse_args(argv)
    bad = sorted(set(args.scenarios) - set(SETTINGS))
    if bad:
        parser.error(f"unknown scenario {bad[0]!r}; expected some of {sorted(SETTINGS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        t0 = time.monotonic()
        if args.origin:
            if not (args.origin / "registry/champion").exists():
                parser.error(f"--from {args.origin}: no registry/champion (run `dvc repro` there)")
            v1 = work / "v1"
            shutil.copytree(args.origin, v1, symlinks=True)  # registry/champion: a relative link
            set_params(v1, "monitor", {"interval_s": 1})
            print(f"version 1: a copy of {args.origin}", flush=True)
        else:
            v1 = fresh_project(work / "v1")
            run(v1, [sys.executable, "-m", "dvc", "repro"])
            print(
                f"version 1: `dvc repro` of a fresh copy in {time.monotonic() - t0:.0f} s",
                flush=True,
            )
        rows = []
        for scenario in args.scenarios:
            rows.append(scenario_run(v1, work, scenario, args.requests, args.quiet_windows))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        "| shift | answering v1 -> after | shifted test | clean test | robust (eps) | decision | "
        "traffic / watch / retrain s; traffic -> new version answering s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        secs = " / ".join(
            f"{r[k]:.0f}" if k in r else "-" for k in ("traffic_s", "watch_s", "retrain_s")
        ) + (f"; {r['total_s']:.0f}" if "total_s" in r else "")
        print(
            f"| {r['scenario']} | v1 -> v{r['version_after']} | {r['shifted_before']:.3f} -> "
            f"{r['shifted_after']:.3f} | {r['clean_before']:.4f} -> {r['clean_after']:.4f} | "
            f"{r['robust_before']:.4f} -> {r['robust_after']:.4f} | {r['retrain']} | {secs} |"
        )
    for r in rows:
        print(f"{r['scenario']}: {r['decisions']}; {r['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
