"""The production log's store: every served prediction, labelled feedback, the monitor's decisions.

One small interface over SQLAlchemy Core, so the same code writes an embedded SQLite file (WAL
mode, the default) or a PostgreSQL database that several service replicas share
(``postgresql+psycopg://user@host/db``). The service writes through its group-commit writer
(``serving/prodlog.py``, a background thread over :meth:`ProductionLog.write_predictions`); the
monitor and the retraining export read through :meth:`ProductionLog.window` and friends. Torch-free
(docs/design.md's layers).

Tables:

- ``predictions``: one row per served record: request id and index in the request, time (epoch
  seconds), model version, the raw features as float32 bytes in schema order (categoricals as
  their index in schema.json: what the ONNX graph consumed), the predicted class index, the
  probabilities as float32 bytes, latency, and the names of features outside the training range.
  Indexed by (time, model version) for the monitor's window queries.
  A regressor's answer is in ``prediction``, ``lower`` and ``upper`` (its label 0, its
  probabilities empty); a classifier's rows leave them NULL.
- ``feedback``: (request id, index) -> true class index and time; one label per prediction. A
  regressor's true value is in ``value`` (``label`` 0).

A log created before a nullable column existed (``feedback.value``; ``predictions.prediction``,
``lower``, ``upper``) gets it on open (``ALTER TABLE``). Its regressor rows keep their answer
where the log used to put it, float32 (prediction, lower, upper) in ``probabilities``:
:meth:`Window.interval` reads both, row by row, so a window that spans the upgrade is whole.
- ``decisions``: what the monitor decided for a window, with its figures and reasons (JSON).
- ``rejected``: prediction rows the database refused (a constraint, a value it cannot store),
  set aside by the service's writer with the database's reason and the row as JSON, so they
  block nothing behind them and a person (or ``python -m serving.prodlog --rejected``) can see
  what was refused and why.

Prediction rows are keyed by (request id, index) and inserted with ``ON CONFLICT DO NOTHING``:
writing the same row again (a retried commit whose answer was lost, a spill file replayed after
part of it was written) stores it once.

Nothing here runs on import; ``python -m serving.prodlog --url production.db`` prints counts.

One module (about 500 lines) because it is one interface: the tables, the writes, the reads
and the windows share the engine's dialect handling (SQLite and PostgreSQL), and the service,
the monitor and the feedback export must all see the same schema.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    select,
    tuple_,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("ts", Float, nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("features", LargeBinary, nullable=False),  # float32 (features,)
    Column("label", Integer, nullable=False),  # class index
    Column("probabilities", LargeBinary, nullable=False),  # float32 (classes,)
    Column("latency_ms", Float, nullable=False),
    Column("out_of_range", Text, nullable=False),  # comma-separated feature names, or ""
    Column("prediction", Float, nullable=True),  # a regressor's answer ...
    Column("lower", Float, nullable=True),  # ... and its interval
    Column("upper", Float, nullable=True),
    # One index serves windows by time and by time and version; a second (version, ts) index
    # cost 1.5 us more per logged row, a third of the insert.
    Index("ix_predictions_ts_version", "ts", "model_version"),
)

PREDICTION_COLUMNS = tuple(c.name for c in predictions.columns)
NAMED_ANSWER = ("prediction", "lower", "upper")  # the last columns: a regressor's answer
NO_ANSWER = (None, None, None)  # a classifier row's

feedback = Table(
    "feedback",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("label", Integer, nullable=False),  # true class index (a regressor: 0)
    Column("ts", Float, nullable=False),
    Column("value", Float, nullable=True),  # a regressor's true value
    Index("ix_feedback_ts", "ts"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("window_start", Float),
    Column("window_end", Float),
    Column("rows", Integer, nullable=False),
    Column("decision", String(32), nullable=False),
    Column("figures", Text, nullable=False),  # JSON
    Column("reasons", Text, nullable=False),  # JSON list
)

rejected = Table(
    "rejected",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("ts", Float, nullable=False),  # when it was set aside
    Column("reason", Text, nullable=False),  # the database's error
    Column("row", Text, nullable=False),  # JSON: PREDICTION_COLUMNS -> value (bytes as base64)
)

# Errors that belong to the rows rather than to the database being away: a constraint or a
# value the database cannot store. Retrying cannot help; everything else (connection refused,
# locked, disk full) is an outage and is retried.
REFUSALS = (IntegrityError, DataError)


def database_url(value: str) -> str:
    """A URL as given, or a bare path as an absolute SQLite URL."""
    return value if "://" in value else f"sqlite:///{Path(value).resolve()}"


class FeedbackConflictError(Exception):
    """A prediction already has a different true label."""


class UnknownPredictionsError(Exception):
    """Feedback names predictions the log does not hold."""

    def __init__(self, keys: list[tuple[str, int]]) -> None:
        super().__init__(keys)
        self.keys = keys


@dataclasses.dataclass
class Window:
    """Predictions of a window, oldest first, with their feedback where there is any."""

    request_id: list[str]
    idx: np.ndarray  # (rows,)
    ts: np.ndarray  # (rows,) epoch seconds
    model_version: list[str]
    X: np.ndarray  # (rows, features) float32, schema order
    label: np.ndarray  # (rows,) predicted class index
    probabilities: np.ndarray  # (rows, classes) float32; NaN where a row has none (a regressor's)
    latency_ms: np.ndarray  # (rows,)
    true_label: np.ndarray  # (rows,) class index, -1 where no feedback
    true_value: np.ndarray  # (rows,) a regressor's true value, NaN where none
    prediction: np.ndarray  # (rows,) a regressor's answer, NaN where none ...
    lower: np.ndarray  # (rows,) ... and its interval
    upper: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def interval(self) -> np.ndarray:
        """(rows, 3) float64: a regressor's prediction, lower and upper bound per row.

        From the named columns; a row logged before they existed (NaN there) holds the three in
        its probabilities, and is read from those.
        """
        out = np.stack([self.prediction, self.lower, self.upper], axis=1)
        legacy = np.isnan(out[:, 0])
        if legacy.any() and self.probabilities.shape[1] >= 3:
            out[legacy] = self.probabilities[legacy, :3]
        return out

    def slice(self, start: int, stop: int) -> Window:
        """Rows ``start:stop`` as a window of their own."""
        return Window(
            **{f.name: getattr(self, f.name)[start:stop] for f in dataclasses.fields(self)}
        )


class ProductionLog:
    """Reads and writes the production log at ``url`` (tables created when missing)."""

    def __init__(self, url: str) -> None:
        self.url = database_url(url)
        self.engine: Engine = create_engine(self.url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        self._add_columns()
        mark = {"qmark": "?", "numeric": ":1", "named": ":p"}.get(
            self.engine.dialect.paramstyle, "%s"
        )
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._insert_sql = self._values_sql(1, mark)
        self._multirow = self._values_sql(100) if mark == "?" else None

    def _add_columns(self) -> None:
        """The nullable columns a log written by an earlier version lacks."""
        from sqlalchemy import inspect, text

        for table, names in (("feedback", ("value",)), ("predictions", NAMED_ANSWER)):
            have = {c["name"] for c in inspect(self.engine).get_columns(table)}
            for name in names:
                if name not in have:
                    with self.engine.begin() as conn:
                        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} FLOAT"))

    @staticmethod
    def _values_sql(rows: int, mark: str = "?") -> str:
        one = f"({', '.join([mark] * len(PREDICTION_COLUMNS))})"
        values = ", ".join([one] * rows)
        columns = ", ".join(PREDICTION_COLUMNS)
        return (
            f"INSERT INTO predictions ({columns}) VALUES {values} "
            "ON CONFLICT (request_id, idx) DO NOTHING"
        )

    def close(self) -> None:
        self.engine.dispose()

    def write_predictions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert prediction rows (tuples in :data:`PREDICTION_COLUMNS` order), one transaction.

        A row already stored under its (request id, index) is skipped. Raises one of
        :data:`REFUSALS` if the database refuses a row (nothing of the batch is stored then), or
        another SQLAlchemy error if it cannot be reached.

        Straight to the driver's ``executemany``: SQLAlchemy's per-row parameter processing cost
        more CPU than the inference it logs.
        """
        if not rows:
            return
        with self.engine.begin() as conn:
            if self._multirow is None:
                conn.exec_driver_sql(self._insert_sql, list(rows))
                return
            # SQLite: one statement per 100 rows (a third cheaper than executemany per row).
            for k in range(0, len(rows), 100):
                chunk = rows[k : k + 100]
                sql = self._multirow if len(chunk) == 100 else self._values_sql(len(chunk))
                conn.exec_driver_sql(sql, tuple(itertools.chain.from_iterable(chunk)))

    def set_aside(self, row: tuple[Any, ...], reason: str, now: float) -> None:
        """Keep a refused prediction row in ``rejected`` with the database's reason."""
        record = dict(zip(PREDICTION_COLUMNS, map(encode_value, row), strict=True))
        values = {
            "request_id": str(row[0])[:64],
            "idx": int(row[1]),
            "ts": now,
            "reason": reason,
            "row": json.dumps(record, default=str),
        }
        if self._sqlite:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        with self.engine.begin() as conn:  # set aside once, however often it is refused
            conn.execute(dialect_insert(rejected).values(values).on_conflict_do_nothing())

    def rejected_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(rejected)).scalar_one())

    def rejected_rows(self, last: int = 100) -> list[dict[str, Any]]:
        """The latest rows set aside, oldest first, each with its reason and values."""
        query = select(rejected).order_by(rejected.c.ts.desc()).limit(last)
        with self.engine.connect() as conn:
            out = [dict(row._mapping) for row in conn.execute(query)]
        for row in out:
            row["row"] = json.loads(row["row"])
        return out[::-1]

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[bool]:
        """Hold the log-wide lease ``name`` while the block runs; yields False (nothing waits)
        if another process holds it, on this machine or another sharing the database.

        PostgreSQL: a session advisory lock on a connection kept open for the block (the server
        drops it if the holder dies). SQLite (one machine): an exclusive ``flock`` on
        ``<file>.<name>.lock``.
        """
        if self._sqlite:
            with file_lock(
                Path(self.engine.url.database or "").with_suffix(f".{name}.lock")
            ) as got:
                yield got
            return
        key = int.from_bytes(hashlib.sha256(f"mlcycle:{name}".encode()).digest()[:8], "big") >> 1
        with self.engine.connect() as conn:
            got = bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar())
            conn.commit()
            try:
                yield got
            finally:
                # A connection lost meanwhile took the lock with it: nothing to undo.
                with contextlib.suppress(SQLAlchemyError):
                    if got:
                        conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                        conn.commit()

    def count(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (predictions, feedback, decisions, rejected)
            }

    def add_feedback(
        self, items: Sequence[tuple[str, int, Any]], now: float, column: str = "label"
    ) -> dict[str, int]:
        """Store (request id, index, true label) items, all or none, in the feedback table's
        ``column`` (the task's ``feedback_column``): ``label`` holds a class index, ``value`` a
        regressor's true value (its row's label 0).

        Idempotent: an item already stored with the same label counts as a duplicate. Raises
        :class:`UnknownPredictionsError` if any prediction is not in the log, and
        :class:`FeedbackConflictError` if one already has a different label; nothing is stored then.
        """
        keys = [(r, i) for r, i, _ in items]
        if len(set(keys)) != len(keys):
            raise FeedbackConflictError("the same prediction appears twice in one request")
        with self.engine.begin() as conn:
            known = _existing(conn, predictions, keys)
            missing = [k for k in keys if k not in known]
            if missing:
                raise UnknownPredictionsError(missing)
            stored = {
                (r, i): lab
                for r, i, lab in conn.execute(
                    select(feedback.c.request_id, feedback.c.idx, feedback.c[column]).where(
                        tuple_(feedback.c.request_id, feedback.c.idx).in_(keys)
                    )
                )
            }
            conflicts = [(r, i) for r, i, lab in items if (r, i) in stored and stored[r, i] != lab]
            if conflicts:
                raise FeedbackConflictError(
                    f"prediction {conflicts[0][0]}[{conflicts[0][1]}] already has another label"
                )
            new = [
                {"request_id": r, "idx": i, "ts": now, "label": 0, column: lab}
                for r, i, lab in items
                if (r, i) not in stored
            ]
            if new:
                conn.execute(insert(feedback), new)
        return {"stored": len(new), "duplicates": len(items) - len(new)}

    def window(
        self,
        *,
        last: int | None = None,
        since: float | None = None,
        until: float | None = None,
        model_version: str | None = None,
        labelled_only: bool = False,
    ) -> Window:
        """The last ``last`` predictions, or those with ``since <= ts < until``, oldest first."""
        join = predictions.outerjoin(
            feedback,
            and_(
                feedback.c.request_id == predictions.c.request_id,
                feedback.c.idx == predictions.c.idx,
            ),
        )
        query = select(
            predictions.c.request_id,
            predictions.c.idx,
            predictions.c.ts,
            predictions.c.model_version,
            predictions.c.features,
            predictions.c.label,
            predictions.c.probabilities,
            predictions.c.latency_ms,
            predictions.c.prediction,
            predictions.c.lower,
            predictions.c.upper,
            feedback.c.label.label("true_label"),
            feedback.c.value.label("true_value"),
        ).select_from(join)
        if since is not None:
            query = query.where(predictions.c.ts >= since)
        if until is not None:
            query = query.where(predictions.c.ts < until)
        if model_version is not None:
            query = query.where(predictions.c.model_version == model_version)
        if labelled_only:
            query = query.where(feedback.c.label.is_not(None))
        query = query.order_by(predictions.c.ts.desc(), predictions.c.idx.desc())
        if last is not None:
            query = query.limit(last)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()[::-1]
        return _to_window(rows)

    def feedback_count(self, since: float | None = None) -> int:
        """Labelled rows whose label arrived at or after ``since`` (all of them without it)."""
        query = select(func.count()).select_from(feedback)
        if since is not None:
            query = query.where(feedback.c.ts >= since)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def record_decision(
        self,
        *,
        window_start: float | None,
        window_end: float | None,
        rows: int,
        decision: str,
        figures: dict[str, Any],
        reasons: list[str],
        now: float | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(decisions),
                {
                    "ts": time.time() if now is None else now,
                    "window_start": window_start,
                    "window_end": window_end,
                    "rows": rows,
                    "decision": decision,
                    "figures": json.dumps(figures, default=float),
                    "reasons": json.dumps(reasons),
                },
            )

    def decisions(self, last: int = 100) -> list[dict[str, Any]]:
        query = select(decisions).order_by(decisions.c.id.desc()).limit(last)
        with self.engine.connect() as conn:
            out = [dict(row._mapping) for row in conn.execute(query)]
        for row in out:
            row["figures"], row["reasons"] = json.loads(row["figures"]), json.loads(row["reasons"])
        return out[::-1]


def encode_value(value: Any) -> Any:
    """A row value as JSON can hold it: bytes (features, probabilities) as base64."""
    return {"base64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value


def decode_value(value: Any) -> Any:
    return base64.b64decode(value["base64"]) if isinstance(value, dict) else value


def db_reason(exc: BaseException) -> str:
    """The database driver's own message for ``exc``, on one line."""
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text[:300]}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` while the block runs; yields False if another
    process holds it (nothing waits). The kernel drops it when its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint; fast commits
    cur.execute("PRAGMA busy_timeout=10000")  # several workers share the file
    cur.close()


def _existing(conn: Any, table: Table, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for i in range(0, len(keys), 500):  # bounded IN lists
        chunk = keys[i : i + 500]
        query = select(table.c.request_id, table.c.idx).where(
            tuple_(table.c.request_id, table.c.idx).in_(chunk)
        )
        found.update((r, i) for r, i in conn.execute(query))
    return found


def _floats(values: Iterator[float | None], n: int) -> np.ndarray:
    return np.fromiter((np.nan if v is None else v for v in values), np.float64, n)


def _probabilities(rows: list[Any]) -> np.ndarray:
    """(rows, classes) float32; a row with none (a regressor's) is NaN."""
    n = len(rows)
    width = max((len(r.probabilities) for r in rows), default=0) // 4
    if all(len(r.probabilities) == 4 * width for r in rows):  # the usual case: one join
        return np.frombuffer(b"".join(r.probabilities for r in rows), np.float32).reshape(n, width)
    out = np.full((n, width), np.nan, np.float32)
    for i, r in enumerate(rows):
        if len(r.probabilities) == 4 * width:
            out[i] = np.frombuffer(r.probabilities, np.float32)
    return out


def _to_window(rows: list[Any]) -> Window:
    n = len(rows)
    n_feat = len(rows[0].features) // 4 if n else 0
    return Window(
        request_id=[r.request_id for r in rows],
        idx=np.fromiter((r.idx for r in rows), np.int64, n),
        ts=np.fromiter((r.ts for r in rows), np.float64, n),
        model_version=[r.model_version for r in rows],
        X=np.frombuffer(b"".join(r.features for r in rows), np.float32).reshape(n, n_feat),
        label=np.fromiter((r.label for r in rows), np.int64, n),
        probabilities=_probabilities(rows),
        latency_ms=np.fromiter((r.latency_ms for r in rows), np.float64, n),
        true_label=np.fromiter(
            (-1 if r.true_label is None else r.true_label for r in rows), np.int64, n
        ),
        true_value=_floats((r.true_value for r in rows), n),
        prediction=_floats((r.prediction for r in rows), n),
        lower=_floats((r.lower for r in rows), n),
        upper=_floats((r.upper for r in rows), n),
    )
