"""The production log's writer: the service's background group-commit thread, and a CLI.

    python -m serving.prodlog --url production.db     # row counts of a production log

:class:`GroupCommitWriter` takes the rows the service answered and commits them through the
store (:mod:`pipeline.contracts.prodlog`, which the monitor reads) from one background thread,
one transaction per ``serving.commit_interval_ms``. Only the service runs it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.contracts.prodlog import ProductionLog


class GroupCommitWriter:
    """Writes prediction rows from a background thread, one transaction per interval.

    :meth:`put` only appends to a list (no I/O on the request path). Every ``interval_s`` the
    thread takes everything pending and commits it at once; a failed write is retried, never
    dropped. :meth:`close` (the service's SIGTERM path) writes everything before returning, so
    only a hard kill can lose rows, and at most one interval's worth plus the batch in flight.
    """

    def __init__(
        self,
        log: ProductionLog,
        interval_s: float,
        max_queue: int,
        on_commit: Callable[[GroupCommitWriter], None] | None = None,
    ) -> None:
        self.log = log
        self.on_commit = on_commit
        self.interval_s = interval_s
        self.max_queue = max_queue
        self.queued = 0  # rows ever accepted
        self.written = 0  # rows ever committed (commits keep queue order)
        self.errors = 0
        self._pending: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="prodlog-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Rows accepted but not yet committed."""
        return self.queued - self.written

    def put(self, rows: list[tuple[Any, ...]]) -> bool:
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

    def close(self) -> None:
        """Commit everything, then stop the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._stop:  # group an interval's rows; a flush or close wakes us early
                    self._cond.wait(self.interval_s)
                batch, self._pending = self._pending, []
                stop = self._stop
            while batch:
                try:
                    self.log.write_predictions(batch)
                except Exception:  # the database is down or locked: keep the rows, try again
                    self.errors += 1
                    time.sleep(min(self.interval_s * 4, 1.0))
                    continue
                with self._cond:
                    self.written += len(batch)
                    self._cond.notify_all()
                batch = []
                if self.on_commit is not None:
                    self.on_commit(self)
            if stop:
                with self._cond:
                    if not self._pending:
                        return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Row counts of a production log.")
    parser.add_argument("--url", required=True, help="SQLite path or database URL")
    args = parser.parse_args(argv)
    log = ProductionLog(args.url)
    print(json.dumps(log.count()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
