"""The production log's writer: the service's background group-commit thread, and a CLI.

    python -m serving.prodlog --url production.db              # row counts of a production log
    python -m serving.prodlog --url production.db --rejected   # the rows the database refused

:class:`GroupCommitWriter` takes the rows the service answered and commits them through the
store (:mod:`pipeline.contracts.prodlog`, which the monitor reads) from one background thread,
one transaction per ``serving.commit_interval_ms``. Only the service runs it.

When the database goes away (refused connections, a lock held elsewhere, a full disk) the writer
keeps the rows, logs the outage once with its cause, retries, and logs once more when the rows
are in. A row the database refuses (a constraint, a value it cannot store) is set aside in the
log's ``rejected`` table with the reason, so it blocks nothing behind it. On shutdown the writer
waits at most ``serving.shutdown_timeout_s`` for the database, then writes what it could not
commit to a spill file in ``serving.spill_dir``, which the next start replays.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.contracts.prodlog import (
    NO_ANSWER,
    PREDICTION_COLUMNS,
    REFUSALS,
    ProductionLog,
    db_reason,
    decode_value,
    encode_value,
)

log = logging.getLogger("mlcycle.serving.prodlog")
Row = tuple[Any, ...]
SPILL_GLOB = "prodlog-*.jsonl"
# A commit waiting this long means the log is behind (SQLite's busy timeout alone is 10 s).
STALL_S = 1.0


class GroupCommitWriter:
    """Writes prediction rows from a background thread, one transaction per interval.

    :meth:`put` only appends to a list (no I/O on the request path). Every ``interval_s`` the
    thread takes everything pending and commits it at once; a failed write is retried, never
    dropped. :meth:`close` (the service's SIGTERM path) commits everything it can within its
    timeout and spills the rest to ``spill_dir``; only a hard kill can lose rows, and at most one
    interval's worth plus the batch in flight.

    Callbacks (from the writer's thread): ``on_commit(writer)`` after each commit,
    ``on_error(writer, exc)`` after each failed attempt, ``on_reject(writer, rows)`` when rows
    are set aside.
    """

    def __init__(
        self,
        log: ProductionLog,
        interval_s: float,
        max_queue: int,
        *,
        spill_dir: Path | None = None,
        on_commit: Callable[[GroupCommitWriter], None] | None = None,
        on_error: Callable[[GroupCommitWriter, Exception], None] | None = None,
        on_reject: Callable[[GroupCommitWriter, int], None] | None = None,
    ) -> None:
        self.log = log
        self.interval_s = interval_s
        self.max_queue = max_queue
        self.spill_dir = spill_dir
        self.on_commit = on_commit
        self.on_error = on_error
        self.on_reject = on_reject
        self.queued = 0  # rows ever accepted (replayed ones included)
        self.written = 0  # rows ever committed or set aside (commits keep queue order)
        self.errors = 0  # failed write attempts
        self.rejected = 0  # rows the database refused, set aside
        self.replayed = 0  # rows read back from spill files at start
        self.spilled = 0  # rows written to a spill file at close
        self.failing_since: float | None = None  # start of the current outage, if any
        self.last_error = ""
        self._attempt_since: float | None = None  # monotonic start of the commit in progress
        self._pending: list[Row] = []
        self._chunks: list[list[Row]] = []  # the rows the thread is writing now, in order
        self._cond = threading.Condition()
        self._stop = False
        self._abandoned = False
        self._claimed: list[Path] = []  # spill files being replayed
        self._claimed_upto = 0  # `written` at which they are all in the log
        if spill_dir is not None:
            self._claim_spills(spill_dir)
        self._thread = threading.Thread(target=self._run, name="prodlog-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Rows accepted but not yet committed."""
        return self.queued - self.written

    @property
    def healthy(self) -> bool:
        """False while the database refuses the writer's commits (an outage), or one commit
        has waited longer than :data:`STALL_S` (a lock held elsewhere, a server not answering)."""
        started = self._attempt_since
        stalled = started is not None and time.monotonic() - started > STALL_S
        return self.failing_since is None and not stalled

    def put(self, rows: list[Row]) -> bool:
        """Queue rows for the next commit; False (nothing queued) if the queue is full."""
        with self._cond:
            if self.queued - self.written + len(rows) > self.max_queue:
                return False
            self._pending.extend(rows)
            self.queued += len(rows)
        return True

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every row queued before the call is committed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self.queued
            self._cond.notify_all()
            while self.written < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise TimeoutError("the production log did not commit in time")
                self._cond.wait(min(left, self.interval_s))

    def close(self, timeout: float | None = None) -> int:
        """Commit everything, waiting at most ``timeout`` seconds; spill the rest.

        Returns the rows spilled (0 when the database took everything). Without a spill folder
        nothing can be kept, so it waits for the database however long that takes.
        """
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(None if self.spill_dir is None else timeout)
        if not self._thread.is_alive():
            return 0
        with self._cond:  # the database is still away: take the rows from the thread
            self._abandoned = True
            rows = [row for chunk in self._chunks for row in chunk] + self._pending
            self._pending = []
            self._cond.notify_all()
        assert self.spill_dir is not None
        path = write_spill(self.spill_dir, rows)
        for claimed in self._claimed:  # their rows are in the new file, or already logged
            claimed.unlink(missing_ok=True)
        self.spilled = len(rows)
        log.error(
            "production log: %d rows not committed within %.1f s (%s); kept in %s, replayed "
            "on the next start",
            len(rows),
            timeout,
            self.last_error or "no answer",
            path,
        )
        return len(rows)

    def _claim_spills(self, folder: Path) -> None:
        """Take the spill files of earlier runs (one worker each) and queue their rows first."""
        for path, rows in claim_spills(folder):
            self._claimed.append(path)
            self._pending.extend(rows)
            self.queued += len(rows)
            self.replayed += len(rows)
        self._claimed_upto = self.queued
        if self._claimed:
            log.warning(
                "production log: replaying %d rows from %d spill files",
                self.replayed,
                len(self._claimed),
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._stop:
                    self._cond.wait(
                        self.interval_s
                    )  # group an interval's rows; flush/close wake us
                if self._abandoned:
                    return
                batch, self._pending = self._pending, []
                self._chunks = [batch] if batch else []
                stop = self._stop
            if self._chunks and not self._commit():
                return  # abandoned by close()
            with self._cond:
                if self._claimed and self.written >= self._claimed_upto:
                    for path in self._claimed:
                        path.unlink(missing_ok=True)
                    self._claimed = []
                if stop and not self._pending:
                    return

    def _commit(self) -> bool:
        """Write ``self._chunks`` in order, through outages; False if close() gave up on them.

        A chunk the database refuses is halved until the refused rows are alone, and those are
        set aside; an outage retries the same chunk, so nothing is counted twice.
        """
        while self._chunks:
            chunk = self._chunks[0]
            self._attempt_since = time.monotonic()
            try:
                try:
                    self.log.write_predictions(chunk)
                except REFUSALS as exc:
                    if len(chunk) > 1:
                        mid = len(chunk) // 2
                        with self._cond:
                            self._chunks[0:1] = [chunk[:mid], chunk[mid:]]
                        continue
                    self._set_aside(chunk[0], db_reason(exc))
            except Exception as exc:  # the database is away: keep the rows, try again
                self._attempt_since = None
                self._failed(exc)
                with self._cond:
                    if not self._abandoned:
                        self._cond.wait(min(self.interval_s * 4, 1.0))
                    if self._abandoned:
                        return False
                continue
            self._attempt_since = None
            with self._cond:
                self._chunks.pop(0)
                self.written += len(chunk)
                self._cond.notify_all()
            if self.failing_since is not None:
                log.warning(
                    "production log: writable again after %.1f s (%d failed attempts so far); "
                    "%d rows waiting",
                    time.time() - self.failing_since,
                    self.errors,
                    self.depth,
                )
                self.failing_since = None
            if self.on_commit is not None:
                self.on_commit(self)
        return True

    def _set_aside(self, row: Row, reason: str) -> None:
        """Keep a refused row in the log's ``rejected`` table (or, if even that is refused, in
        ``rejected.jsonl`` beside the spill files)."""
        try:
            self.log.set_aside(row, reason, time.time())
        except REFUSALS as exc:
            if self.spill_dir is None:
                raise
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            record = {
                "reason": reason,
                "set_aside_error": db_reason(exc),
                "row": [encode_value(v) for v in row],
            }
            with (self.spill_dir / "rejected.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.rejected += 1
        log.error("production log: row %s[%s] refused and set aside: %s", row[0], row[1], reason)
        if self.on_reject is not None:
            self.on_reject(self, 1)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = db_reason(exc)
        if self.failing_since is None:  # once per outage, with its cause
            self.failing_since = time.time()
            log.error(
                "production log: cannot write (%s); %d rows kept in memory, retrying",
                self.last_error,
                self.depth,
            )
        if self.on_error is not None:
            self.on_error(self, exc)


def write_spill(folder: Path, rows: list[Row]) -> Path:
    """Rows to a new spill file (JSON lines, bytes as base64), written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"prodlog-{time.time_ns()}-{os.getpid()}.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps([encode_value(v) for v in row]) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    return path


def claim_spills(folder: Path) -> Iterator[tuple[Path, list[Row]]]:
    """Spill files in ``folder``, each renamed to this process's claim first (so two workers
    starting together never replay one file twice), with their rows."""
    if not folder.is_dir():
        return
    mine = f".replaying-{os.getpid()}"
    stale = [p for p in folder.glob(f"{SPILL_GLOB}.replaying-*") if not _alive(p.suffix[11:])]
    for path in sorted(folder.glob(SPILL_GLOB)) + stale:
        claimed = path.with_name(path.name.split(".replaying-")[0] + mine)
        try:
            path.rename(claimed)
        except FileNotFoundError:  # another worker took it
            continue
        with claimed.open() as f:
            rows = [tuple(decode_value(v) for v in json.loads(line)) for line in f if line.strip()]
        # A spill file of a version before the named answer columns: its rows end before them.
        legacy = len(PREDICTION_COLUMNS) - len(NO_ANSWER)
        rows = [r + NO_ANSWER if len(r) == legacy else r for r in rows]
        if any(len(r) != len(PREDICTION_COLUMNS) for r in rows):
            raise ValueError(f"{claimed}: not a spill file of this version's prediction rows")
        yield claimed, rows


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Row counts of a production log.")
    parser.add_argument("--url", required=True, help="SQLite path or database URL")
    parser.add_argument("--rejected", action="store_true", help="the rows the database refused")
    args = parser.parse_args(argv)
    plog = ProductionLog(args.url)
    if args.rejected:
        for row in plog.rejected_rows():
            print(json.dumps(row))
    else:
        print(json.dumps(plog.count()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
