"""The production log when the world fails underneath the service, in the slow tier: PostgreSQL
stopped under load and started again, SQLite locked by another process, a disk that fills and
frees, a row the database refuses, SIGTERM during an outage (spill file, replayed on restart).

Each test counts the rows the service answered against the rows in the log afterwards.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from pipeline.contracts.prodlog import ProductionLog
from tests import postgres
from tests.serving.conftest import Load, Server, digit, post, state_copy

pytestmark = pytest.mark.slow


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def ready(server: Server) -> int:
    try:
        return httpx.get(f"{server.url}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    found = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def answered_ids(load: Load) -> set[str]:
    return {a[2] for a in load.ok()}


def assert_logged_once(url: str, answered: set[str]) -> None:
    """Every answered request is in the log, once; nothing else is."""
    w = ProductionLog(url).window()
    keys = list(zip(w.request_id, w.idx.tolist(), strict=True))
    assert len(keys) == len(set(keys)), "a row was written twice"
    assert set(w.request_id) == answered, (
        f"{len(answered - set(w.request_id))} answered requests missing from the log, "
        f"{len(set(w.request_id) - answered)} logged that were never answered"
    )


def test_postgresql_stopped_under_load_then_started_loses_nothing(
    served_state: Path, tmp_path: Path
) -> None:
    with postgres.postgres_instance(tmp_path / "pg") as pg:
        state = state_copy(served_state, tmp_path, max_queue=1500)
        server = Server(state, pg.url).start()
        try:
            with Load(server.url) as load:
                wait_for(lambda: len(load.ok()) > 200, 20, "answers before the outage")
                pg.stop()
                outage = time.monotonic()
                wait_for(lambda: ready(server) == 503, 15, "readiness says the log is behind")
                assert metric(server, "mlcycle_log_writable") == 0
                wait_for(lambda: bool(load.refusals), 30, "a full queue refuses")
                during = len(load.ok())
                assert metric(server, "mlcycle_log_write_errors_total") >= 1
                pg.start()
                wait_for(lambda: ready(server) == 200, 30, "ready again once the log is back")
                print(f"PostgreSQL away {time.monotonic() - outage:.1f} s")
                wait_for(lambda: len(load.ok()) > during + 200, 20, "answers after the outage")
        finally:
            assert server.stop() == 0, server.output()
        assert not load.errors, load.errors[:3]
        assert {(s, ra) for s, ra, _ in load.refusals} == {(503, "1")}
        assert all("production log is behind" in e for _, _, e in load.refusals)
        answered = answered_ids(load)
        print(f"{len(answered)} answered, {len(load.refusals)} refused with 503")
        assert_logged_once(pg.url, answered)
        out = server.output()
        assert out.count("production log: cannot write") == 1, out  # once per outage
        assert "OperationalError" in out and "writable again" in out


def test_sqlite_locked_longer_than_a_commit_interval(served_state: Path, tmp_path: Path) -> None:
    db = tmp_path / "production.db"
    server = Server(state_copy(served_state, tmp_path), str(db)).start()
    holder = sqlite3.connect(db, timeout=30)
    try:
        with Load(server.url) as load:
            wait_for(lambda: len(load.ok()) > 100, 20, "answers before the lock")
            holder.execute("BEGIN EXCLUSIVE")  # 3 s: 60 commit intervals
            locked = time.monotonic()
            wait_for(lambda: ready(server) == 503, 5, "readiness says the log is behind")
            before = len(load.ok())
            time.sleep(max(0.0, 3 - (time.monotonic() - locked)))
            assert len(load.ok()) > before + 100  # the queue has room: answers go on
            holder.rollback()
            wait_for(lambda: ready(server) == 200, 15, "ready again once the lock is gone")
    finally:
        holder.close()
        assert server.stop() == 0, server.output()
    assert not load.refusals and not load.errors
    assert_logged_once(str(db), answered_ids(load))


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "4m"):  # type: ignore[no-untyped-def]
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_disk_that_fills_then_frees_loses_nothing(served_state: Path, tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        db = disk / "production.db"
        server = Server(state_copy(served_state, tmp_path), str(db)).start()
        try:
            with Load(server.url) as load:
                wait_for(lambda: len(load.ok()) > 100, 20, "answers before the disk fills")
                filler = disk / "filler"
                # The suppress is outermost: the file's close can be what meets the full disk.
                with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
                    while True:  # every block the disk has left
                        f.write(b"\0" * 65536)
                        f.flush()
                wait_for(lambda: ready(server) == 503, 20, "readiness says the log is behind")
                assert metric(server, "mlcycle_log_write_errors_total") >= 1
                filler.unlink()
                wait_for(lambda: ready(server) == 200, 20, "ready again once there is room")
                after = len(load.ok())
                wait_for(lambda: len(load.ok()) > after + 100, 20, "answers after")
        finally:
            assert server.stop() == 0, server.output()
        assert not load.errors
        assert "disk is full" in server.output()
        assert_logged_once(str(db), answered_ids(load))


def test_a_refused_row_is_set_aside_beside_good_ones(served_state: Path, tmp_path: Path) -> None:
    db = tmp_path / "production.db"
    server = Server(state_copy(served_state, tmp_path), str(db)).start()
    try:
        with sqlite3.connect(db) as conn:  # a constraint a database administrator added
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON predictions WHEN NEW.idx = 3 "
                "BEGIN SELECT RAISE(ABORT, 'index 3 refused by policy'); END"
            )
        first = post(f"{server.url}/predict", {"records": [digit(k) for k in range(5)]})
        rest = [post(f"{server.url}/predict", {"records": [digit()] * 2}) for _ in range(20)]
        assert first.status_code == 200 and {r.status_code for r in rest} == {200}
        plog = ProductionLog(str(db))
        wait_for(lambda: plog.count()["predictions"] == 4 + 40, 10, "the good rows written")
        assert plog.count()["rejected"] == 1
        assert metric(server, "mlcycle_log_rows_rejected_total") == 1
        assert ready(server) == 200  # a refused row is not an outage
    finally:
        assert server.stop() == 0, server.output()
    shown = subprocess.run(
        [sys.executable, "-m", "serving.prodlog", "--url", str(db), "--rejected"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert first.json()["request_id"] in shown.stdout
    assert "index 3 refused by policy" in shown.stdout


def test_sigterm_during_an_outage_spills_and_the_restart_replays(
    served_state: Path, tmp_path: Path
) -> None:
    with postgres.postgres_instance(tmp_path / "pg") as pg:
        state = state_copy(served_state, tmp_path, shutdown_timeout_s=3)
        server = Server(state, pg.url).start()
        pg.stop()
        ids = []
        for k in range(100):
            r = post(f"{server.url}/predict", {"records": [digit(k % 16)] * 2})
            assert r.status_code == 200, r.text  # the queue has room: answers go on
            ids.append(r.json()["request_id"])
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=60) == 0, server.output()
        took = time.monotonic() - started
        print(f"SIGTERM during the outage: exited in {took:.1f} s (shutdown_timeout_s 3)")
        assert took < 3 + 10, server.output()  # bounded: not when the database returns
        spilled = list((state / "spill").glob("prodlog-*.jsonl"))
        assert sum(len(p.read_text().splitlines()) for p in spilled) == 200
        pg.start()
        again = Server(state, pg.url).start()
        try:
            plog = ProductionLog(pg.url)
            wait_for(lambda: plog.count()["predictions"] == 200, 20, "the spill replayed")
            assert metric(again, "mlcycle_log_rows_replayed_total") == 200
        finally:
            assert again.stop() == 0, again.output()
        assert not list((state / "spill").iterdir())
        assert_logged_once(pg.url, set(ids))
