"""The monitoring command line.

    python -m monitoring check  [--last N | --since T --until T] [--report] [--dry-run]
    python -m monitoring watch  [--max-seconds S] [--dry-run]      # stops on SIGTERM / Ctrl-C
    python -m monitoring simulate --url http://127.0.0.1:3000 [--scenario S] [--requests N]

Settings: ``monitor`` and ``simulate`` in params.yaml; the production log and the registry are
the service's (``serving.log_url``, ``serving.registry``, or ``MLCYCLE_LOG_URL`` /
``MLCYCLE_REGISTRY``), relative to the params file's folder, where ``dvc repro`` runs. Bad
params or a missing champion: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import (
    MonitorConfig,
    ServingConfig,
    SimulateConfig,
    overlay,
    read_params,
    section,
)
from pipeline.contracts.prodlog import db_reason

if TYPE_CHECKING:
    from monitoring.monitor import Monitor
    from monitoring.policy import WindowDecision


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--params", default="params.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check one window and apply the trigger policy")
    check.add_argument("--last", type=int, help="the newest N rows (default monitor.window)")
    check.add_argument("--since", type=float, help="epoch seconds, inclusive")
    check.add_argument("--until", type=float, help="epoch seconds, exclusive")
    check.add_argument("--report", action="store_true", help="write the Evidently report")
    check.add_argument("--dry-run", action="store_true", help="record, never retrain")
    watch = sub.add_parser("watch", help="check every new window until stopped")
    watch.add_argument("--max-seconds", type=float, help="stop after this long")
    watch.add_argument("--dry-run", action="store_true", help="record, never retrain")
    sim = sub.add_parser("simulate", help="send traffic (and feedback) to the running service")
    sim.add_argument("--url", default="http://127.0.0.1:3000")
    sim.add_argument("--scenario", help="overrides simulate.scenario")
    sim.add_argument("--requests", type=int, help="overrides simulate.requests")
    sim.add_argument("--seed", type=int, help="overrides simulate.seed")
    return parser


def _located(project: Path, value: str) -> str:
    return value if "://" in value or os.path.isabs(value) else str(project / value)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except MlcycleError as exc:
        print(f"monitoring: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from monitoring.monitor import Monitor, project_dir
    from pipeline.contracts.prodlog import ProductionLog

    params = read_params(args.params)
    project = project_dir(Path(args.params))
    serving = section(params, "serving", ServingConfig)
    log_url = _located(project, os.environ.get("MLCYCLE_LOG_URL") or serving.log_url)
    registry = Path(_located(project, os.environ.get("MLCYCLE_REGISTRY") or serving.registry))

    if args.command == "simulate":
        from monitoring.simulate import simulate
        from pipeline.contracts import champion

        cfg = section(params, "simulate", SimulateConfig)
        overrides = {
            k: v
            for k, v in (
                ("scenario", args.scenario),
                ("requests", args.requests),
                ("seed", args.seed),
            )
            if v is not None
        }
        cfg = overlay(cfg, "simulate", **overrides)
        schema = champion.read(registry).schema
        token = os.environ.get(serving.feedback_token_env)
        result = simulate(cfg, args.url, token, schema, project / cfg.rows_from)
        print(json.dumps(result))
        return 0

    cfg = section(params, "monitor", MonitorConfig)
    log = ProductionLog(log_url)
    monitor = Monitor(cfg, log, registry, project, background_reports=args.command == "watch")
    try:
        if args.command == "check":
            if args.last is not None and (args.since is not None or args.until is not None):
                raise MlcycleError("check: give --last or --since/--until, not both")
            if args.since is not None or args.until is not None:
                window = log.window(since=args.since, until=args.until)
            else:
                window = log.window(last=args.last or cfg.window)
            decision = monitor.decide(window, report=args.report, dry_run=args.dry_run)
            _show(decision)
            return 0
        return _watch(monitor, args.max_seconds, args.dry_run)
    finally:
        monitor.close()
        log.close()


def _show(decision: WindowDecision) -> None:
    f = decision.figures
    acc = f.quality.line()
    if f.log_rejected_rows:
        acc += (
            f"; {f.log_rejected_rows} log rows refused by the database, set aside "
            "(python -m serving.prodlog --rejected)"
        )
    print(
        f"monitor: {decision.rows} rows: {decision.decision} (min p {f.drift.p_min:.3g}, "
        f"{len(f.drift.features)} drifted features{acc})"
        + "".join(f"\n  - {r}" for r in decision.reasons)
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _watch(monitor: Monitor, max_seconds: float | None, dry_run: bool) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    end = None if max_seconds is None else time.monotonic() + max_seconds
    interval = monitor.cfg.interval_s
    print(f"monitor: watching every {interval} s (SIGTERM or Ctrl-C stops)", flush=True)
    away_since = None  # the production log's database unreachable since
    while not stop.is_set():
        try:
            for decision in monitor.step(dry_run=dry_run, stop=stop.is_set):
                _show(decision)
                sys.stdout.flush()
        except SQLAlchemyError as exc:  # the log's database went away: wait, then resume
            if away_since is None:
                away_since = time.monotonic()
                _say(f"monitor: the production log is unreachable ({db_reason(exc)}); retrying")
        else:
            if away_since is not None:
                away = time.monotonic() - away_since
                _say(f"monitor: the production log is back after {away:.0f} s")
                away_since = None
        if end is not None and time.monotonic() >= end:
            break
        stop.wait(interval if end is None else max(0.0, min(interval, end - time.monotonic())))
    print("monitor: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
