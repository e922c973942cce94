"""The production log: rows, windows, feedback rules and the group-commit writer's guarantees.

Each test runs against embedded SQLite and, in the slow tier, a real PostgreSQL server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.contracts.prodlog import (
    NO_ANSWER,
    FeedbackConflictError,
    ProductionLog,
    UnknownPredictionsError,
)
from serving.prodlog import GroupCommitWriter
from tests import postgres


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with postgres.postgres_server(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProductionLog]:
    if request.param == "sqlite":
        url = str(tmp_path / "log.db")
    else:
        url = request.getfixturevalue("pg_url")
    plog = ProductionLog(url)
    if request.param == "postgresql":  # one server for the module: start each test empty
        with plog.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE predictions, feedback, decisions, rejected")
    yield plog
    plog.close()


def rows(request_id: str, n: int, ts: float, version: str = "1", features: int = 3) -> list:
    X = np.arange(n * features, dtype=np.float32).reshape(n, features)
    P = np.full((n, 2), 0.5, np.float32)
    return [
        (request_id, i, ts, version, X[i].tobytes(), i % 2, P[i].tobytes(), 0.2, "", *NO_ANSWER)
        for i in range(n)
    ]


def test_windows_return_rows_oldest_first_with_their_feedback(log: ProductionLog) -> None:
    log.write_predictions(rows("a", 3, 100.0) + rows("b", 2, 200.0, "2"))
    log.add_feedback([("a", 1, 0), ("b", 0, 1)], now=300.0)
    w = log.window(last=4)
    assert w.request_id == ["a", "a", "b", "b"] and list(w.idx) == [1, 2, 0, 1]
    assert w.X.shape == (4, 3) and w.X[0].tolist() == [3.0, 4.0, 5.0]
    assert list(w.true_label) == [0, -1, 1, -1]
    assert w.probabilities.shape == (4, 2)
    assert len(log.window(since=150.0)) == 2 and len(log.window(until=150.0)) == 3
    assert log.window(model_version="2").request_id == ["b", "b"]
    assert log.window(labelled_only=True).request_id == ["a", "b"]
    assert log.count() == {"predictions": 5, "feedback": 2, "decisions": 0, "rejected": 0}


def test_feedback_is_idempotent_and_all_or_nothing(log: ProductionLog) -> None:
    log.write_predictions(rows("a", 2, 1.0))
    assert log.add_feedback([("a", 0, 1)], now=2.0) == {"stored": 1, "duplicates": 0}
    assert log.add_feedback([("a", 0, 1), ("a", 1, 0)], now=3.0) == {"stored": 1, "duplicates": 1}
    with pytest.raises(UnknownPredictionsError) as info:
        log.add_feedback([("a", 1, 0), ("zzz", 0, 1)], now=4.0)
    assert info.value.keys == [("zzz", 0)]
    with pytest.raises(FeedbackConflictError, match="already has another label"):
        log.add_feedback([("a", 0, 0)], now=5.0)
    assert log.count()["feedback"] == 2  # nothing from the refused calls


def test_decisions_round_trip(log: ProductionLog) -> None:
    log.record_decision(
        window_start=1.0, window_end=2.0, rows=50, decision="retrain",
        figures={"drift_share": 0.3}, reasons=["drift in 3 windows"], now=3.0,
    )  # fmt: skip
    (d,) = log.decisions()
    assert d["decision"] == "retrain" and d["figures"] == {"drift_share": 0.3}
    assert d["reasons"] == ["drift in 3 windows"] and d["rows"] == 50


def test_writer_commits_in_groups_and_close_loses_nothing(log: ProductionLog) -> None:
    writer = GroupCommitWriter(log, interval_s=0.05, max_queue=10_000)
    for k in range(200):
        assert writer.put(rows(f"r{k}", 3, time.time()))
    writer.flush()
    assert log.count()["predictions"] == 600 and writer.depth == 0
    for k in range(200, 300):
        writer.put(rows(f"r{k}", 1, time.time()))
    writer.close()  # SIGTERM's path: everything accepted is committed
    assert log.count()["predictions"] == 700 and writer.written == 700


def test_a_full_queue_refuses_instead_of_dropping(tmp_path: Path) -> None:
    log = ProductionLog(str(tmp_path / "log.db"))
    writer = GroupCommitWriter(log, interval_s=10.0, max_queue=5)  # never wakes on its own
    assert writer.put(rows("a", 4, 1.0))
    assert not writer.put(rows("b", 2, 1.0))  # would pass the cap: refused whole
    assert writer.depth == 4
    writer.close()
    assert log.count()["predictions"] == 4


class FlakyLog:
    """Fails its first two writes, as a database that is briefly down."""

    def __init__(self, inner: ProductionLog) -> None:
        self.inner, self.failures = inner, 2

    def write_predictions(self, batch: list) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("database is locked")
        self.inner.write_predictions(batch)


def test_a_failed_write_is_retried_not_dropped(tmp_path: Path) -> None:
    log = ProductionLog(str(tmp_path / "log.db"))
    writer = GroupCommitWriter(FlakyLog(log), interval_s=0.01, max_queue=100)  # type: ignore[arg-type]
    writer.put(rows("a", 5, 1.0))
    writer.flush(timeout=10)
    writer.close()
    assert writer.errors == 2 and log.count()["predictions"] == 5


def refuse_index(log: ProductionLog, idx: int) -> None:
    """A constraint the database enforces: rows with index ``idx`` are refused."""
    with log.engine.begin() as conn:
        if log.engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse BEFORE INSERT ON predictions WHEN NEW.idx = {idx} "
                "BEGIN SELECT RAISE(ABORT, 'index refused by policy'); END"
            )
        else:
            conn.exec_driver_sql(
                f"ALTER TABLE predictions ADD CONSTRAINT refuse CHECK (idx <> {idx}) NOT VALID"
            )


def test_writing_a_row_twice_stores_it_once(log: ProductionLog) -> None:
    log.write_predictions(rows("a", 3, 1.0))
    log.write_predictions(rows("a", 5, 1.0))  # a retried commit, a replayed spill file
    assert log.count()["predictions"] == 5


def test_a_refused_row_is_set_aside_and_blocks_nothing(log: ProductionLog) -> None:
    refuse_index(log, 3)
    try:
        writer = GroupCommitWriter(log, interval_s=0.01, max_queue=10_000)
        for k in range(40):
            writer.put(rows(f"r{k}", 2 if k % 10 else 5, 1.0))  # r0, r10, r20, r30 have idx 3
        writer.flush(timeout=20)
        writer.close()
        assert writer.rejected == 4 and writer.depth == 0 and writer.errors == 0
        counts = log.count()
        assert counts["predictions"] == 36 * 2 + 4 * 4 and counts["rejected"] == 4
        refused = log.rejected_rows()
        assert sorted(r["request_id"] for r in refused) == ["r0", "r10", "r20", "r30"]
        assert all(r["idx"] == 3 for r in refused)
        assert "refuse" in refused[0]["reason"]  # the database's own words
        assert refused[0]["row"]["features"]["base64"]  # the values, to repair and re-insert
    finally:
        with log.engine.begin() as conn:
            if log.engine.dialect.name == "postgresql":
                conn.exec_driver_sql("ALTER TABLE predictions DROP CONSTRAINT refuse")


class DownLog:
    """A database that is away until ``up`` is set, then the real one."""

    def __init__(self, inner: ProductionLog) -> None:
        self.inner, self.up, self.attempts = inner, False, 0

    def write_predictions(self, batch: list) -> None:
        self.attempts += 1
        if not self.up:
            raise OSError("connection refused")
        self.inner.write_predictions(batch)

    def set_aside(self, *args: object) -> None:
        raise AssertionError("nothing is refused here")


def test_an_outage_is_logged_once_then_every_row_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = ProductionLog(str(tmp_path / "log.db"))
    down = DownLog(log)
    writer = GroupCommitWriter(down, interval_s=0.01, max_queue=1000)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="mlcycle.serving.prodlog"):
        for k in range(20):
            writer.put(rows(f"r{k}", 2, 1.0))
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while down.attempts < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not writer.healthy and writer.errors >= 3 and writer.depth == 40
        assert "connection refused" in writer.last_error
        down.up = True
        writer.flush(timeout=10)
    writer.close()
    assert writer.healthy and log.count()["predictions"] == 40
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot write" in m for m in messages) == 1, messages  # once per outage
    assert sum("writable again" in m for m in messages) == 1, messages


def test_close_during_an_outage_spills_and_the_next_start_replays(tmp_path: Path) -> None:
    log = ProductionLog(str(tmp_path / "log.db"))
    spill = tmp_path / "spill"
    down = DownLog(log)
    writer = GroupCommitWriter(down, interval_s=0.01, max_queue=1000, spill_dir=spill)  # type: ignore[arg-type]
    for k in range(30):
        writer.put(rows(f"r{k}", 3, 1.0))
    log.write_predictions(rows("r0", 3, 1.0))  # committed, though its answer never came back
    # close() returns while the outage lasts (bounded: it never waits for the database) ...
    assert writer.close(timeout=0.5) == 90
    (path,) = spill.glob("prodlog-*.jsonl")
    assert len(path.read_text().splitlines()) == 90
    again = GroupCommitWriter(log, interval_s=0.01, max_queue=10, spill_dir=spill)
    assert again.replayed == 90  # queued first, beyond max_queue: nothing answered is dropped
    again.flush(timeout=10)
    again.close()
    assert log.count()["predictions"] == 90 and not list(spill.iterdir())
    w = log.window()
    assert len(set(zip(w.request_id, w.idx.tolist(), strict=True))) == 90
    assert w.X.shape == (90, 3) and w.X[w.idx == 1][0].tolist() == [3.0, 4.0, 5.0]  # bytes intact


def test_a_spill_file_of_the_version_before_the_named_columns_is_replayed(
    tmp_path: Path, log: ProductionLog
) -> None:
    """Rows spilled by a service from before ``prediction``/``lower``/``upper`` (nine cells)
    come back whole at the next start, the new cells NULL."""
    from serving.prodlog import claim_spills, write_spill

    spill = tmp_path / "spill"
    write_spill(spill, [r[: -len(NO_ANSWER)] for r in rows("old", 3, 1.0)])
    ((_, replayed),) = list(claim_spills(spill))
    log.write_predictions(replayed)
    w = log.window()
    assert len(w) == 3 and np.isnan(w.prediction).all() and w.probabilities.shape == (3, 2)


def test_two_workers_never_replay_one_spill_file(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    from serving.prodlog import claim_spills, write_spill

    write_spill(spill, rows("a", 2, 1.0))
    write_spill(spill, rows("b", 2, 1.0))
    first = list(claim_spills(spill))
    assert sorted(r[0][0] for _, r in first) == ["a", "b"]
    assert list(claim_spills(spill)) == []  # claimed by a live process: not taken again


def test_one_lease_holder_at_a_time_across_connections(log: ProductionLog) -> None:
    """The retrain lease: a second process (here a second engine, as another machine would
    have) is refused while the first holds it, and gets it once it is released."""
    other = ProductionLog(log.url)
    try:
        with log.lease("retrain") as first:
            with other.lease("retrain") as second:
                assert first and not second
            with other.lease("another") as unrelated:
                assert unrelated
        with other.lease("retrain") as after:
            assert after
    finally:
        other.close()
