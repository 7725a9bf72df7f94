"""SQLite store of training/quality runs and speed points, every row carrying its provenance.

One file (default ``./longseq-results/results.db``, or ``$LONGSEQ_RESULTS``), WAL mode, one committed
transaction per write: a result recorded before a crash is never lost. Published figures travel as JSONL
(``export_jsonl`` / ``import_jsonl``); importing the same file twice adds nothing.

**Concurrent writers** (two benchmark processes, a Ray driver beside a CLI run) share the file safely:

- WAL mode: readers never block the writer nor the writer them; ``synchronous=FULL``: a commit is on disk before
  the write returns.
- Each write is one ``BEGIN IMMEDIATE ... COMMIT`` transaction: it takes the write lock up front, so two writers
  queue instead of deadlocking halfway, and a write is all or nothing.
- A busy timeout (``busy_timeout_s``, 30 s): SQLite itself waits for another writer's lock.
- What the busy timeout does not cover (SQLite answers "database is locked" at once while another connection
  recovers the WAL of a killed writer or changes the journal mode; a lock held past the timeout) is retried: the
  whole transaction, or read, again after ``RETRY_DELAYS_S`` (jittered, bounded: about 6 s in all beyond the
  timeouts), then a ``ResultsStoreError`` naming the store.
- A writer killed mid-transaction (SIGKILL, power loss) leaves its uncommitted frames in the WAL without a commit
  record: the next connection ignores them, and every committed row is there.

SQLite's locking needs a local filesystem (not NFS): put the store where every writer sees the same disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)

from longseq.results.provenance import utc_now_iso
from longseq.userinput import short_repr

SCHEMA_VERSION = 2  # 2: speed mode "fwd_train" (a store at version 1 is migrated when opened)

RunKind = Literal["train", "quality"]
RunStatus = Literal["running", "completed", "failed", "interrupted"]
SpeedMode = Literal["fwd", "fwdbwd", "fwd_train", "prefill", "decode"]
SpeedStatus = Literal["ok", "skipped", "oom", "crashed", "killed", "timeout"]

RUN_KINDS: tuple[str, ...] = get_args(RunKind)
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
FINISHED_RUN_STATUSES: tuple[str, ...] = tuple(s for s in RUN_STATUSES if s != "running")
SPEED_MODES: tuple[str, ...] = get_args(SpeedMode)
SPEED_STATUSES: tuple[str, ...] = get_args(SpeedStatus)
TABLES = ("runs", "speed")

# Copied out of the provenance JSON into their own columns so that plain SQL can filter and group on them.
PROVENANCE_COLUMNS = ("git_commit", "git_dirty", "torch_version", "cpu_model", "threads", "command")
_JSON_COLUMNS = ("config", "metrics", "provenance", "hypers")
# Columns the store computes itself; an imported row's copies of them are dropped and recomputed.
_DERIVED_COLUMNS = ("id", "row_key", *PROVENANCE_COLUMNS)

_Record = TypeVar("_Record", bound=BaseModel)
_T = TypeVar("_T")

BUSY_TIMEOUT_S = 30.0
"""Default of how long SQLite waits for another connection's lock before answering "database is locked"."""
RETRY_DELAYS_S = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
"""Pauses before each retry of an operation that found the database locked or busy anyway (each stretched by up to
half at random, so that two waiting writers do not retry in step)."""


class ResultsStoreError(ValueError):
    """A results store that cannot be opened, or a row or request that the store refuses."""


class RunRecord(BaseModel):
    """One row of the ``runs`` table (training or quality run), without the derived provenance columns."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1)
    created_at: str
    finished_at: str | None = None
    status: RunStatus
    kind: RunKind
    task: str
    mixer: str
    suite: str | None = None
    cell_key: str | None = None
    config: dict[str, Any]
    n_params: NonNegativeInt
    state_floats: NonNegativeInt | None = None
    metrics: dict[str, Any] | None = None
    wall_time_s: NonNegativeFloat | None = None
    tokens_per_s: NonNegativeFloat | None = None
    steps: NonNegativeInt | None = None
    provenance: dict[str, Any]


class SpeedPoint(BaseModel):
    """One row of the ``speed`` table: one (label, pattern, mode, length) measurement of one bench run.

    For ``mode="decode"`` ``seq_len`` is the context length and ``median_s`` the time per generated token.
    """

    model_config = ConfigDict(extra="forbid")

    bench_id: str = Field(min_length=1)
    created_at: str = Field(default_factory=utc_now_iso)
    label: str
    mixer: str
    hypers: dict[str, Any] = Field(default_factory=dict)
    pattern: str
    mode: SpeedMode
    seq_len: PositiveInt
    batch: PositiveInt
    d_model: PositiveInt
    dtype: str
    device: str
    status: SpeedStatus
    median_s: NonNegativeFloat | None = None
    iqr_s: NonNegativeFloat | None = None
    repeats: NonNegativeInt | None = None
    tokens_per_s: NonNegativeFloat | None = None
    peak_mem_bytes: NonNegativeInt | None = None
    state_floats: NonNegativeInt | None = None
    error: str | None = None
    provenance: dict[str, Any]

    @model_validator(mode="after")
    def _ok_point_has_a_time(self) -> SpeedPoint:
        if self.status == "ok" and self.median_s is None:
            raise ValueError("a point with status 'ok' needs median_s")
        return self


def default_store_path() -> Path:
    """``$LONGSEQ_RESULTS`` when set and non-empty, else ``longseq-results/results.db`` under the cwd."""
    override = os.environ.get("LONGSEQ_RESULTS", "").strip()
    return Path(override).expanduser() if override else Path("longseq-results") / "results.db"


def _validated(model: type[_Record], fields: dict[str, Any], what: str) -> _Record:
    """``model(**fields)``, with pydantic's errors rewritten as one line naming keys, values and allowed."""
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        problems = []
        for error in err.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key {where!r}")
            elif error["type"] == "missing":
                problems.append(f"missing key {where!r}")
            elif where:
                problems.append(f"{where}={short_repr(error['input'])}: {error['msg']}")
            else:
                problems.append(error["msg"].removeprefix("Value error, "))
        message = f"invalid {what}: " + "; ".join(problems)
        if any(error["type"] == "extra_forbidden" for error in err.errors()):
            message += f" (allowed keys: {', '.join(model.model_fields)})"
        raise ResultsStoreError(message) from None


def _json_default(value: object) -> object:
    # numpy and torch scalars (hyperparameters, metrics) carry .item(); anything else is a caller's bug.
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _to_json(column: str, value: object) -> str:
    try:
        # sort_keys makes the text canonical: the speed table's row_key hashes it.
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as err:
        raise ResultsStoreError(f"{column} must be JSON-serializable: {err}") from None


def _column_values(record: BaseModel) -> dict[str, Any]:
    """The SQL column values of a validated record: JSON columns encoded, provenance columns copied out."""
    values = record.model_dump()
    for column in _JSON_COLUMNS:
        if values.get(column) is not None:
            values[column] = _to_json(column, values[column])
    provenance: dict[str, Any] = record.provenance  # type: ignore[attr-defined]
    for column in PROVENANCE_COLUMNS:
        value = provenance.get(column)
        if value is None:
            values[column] = None
        elif column == "git_dirty":
            values[column] = int(bool(value))
        elif column == "threads":
            values[column] = int(value)
        else:
            values[column] = str(value)
    return values


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out.pop("row_key", None)
    for column in _JSON_COLUMNS:
        if out.get(column) is not None:
            out[column] = json.loads(out[column])
    if out.get("git_dirty") is not None:
        out["git_dirty"] = bool(out["git_dirty"])
    return out


def _sql_in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"


_PROVENANCE_SQL = (
    "git_commit TEXT, git_dirty INTEGER, torch_version TEXT, cpu_model TEXT, threads INTEGER, command TEXT"
)
def _speed_table(name: str) -> str:
    return f"""CREATE TABLE {name} (
        id INTEGER PRIMARY KEY AUTOINCREMENT, row_key TEXT NOT NULL UNIQUE,
        bench_id TEXT NOT NULL, created_at TEXT NOT NULL, label TEXT NOT NULL, mixer TEXT NOT NULL,
        hypers TEXT NOT NULL, pattern TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN {_sql_in(SPEED_MODES)}),
        seq_len INTEGER NOT NULL, batch INTEGER NOT NULL, d_model INTEGER NOT NULL,
        dtype TEXT NOT NULL, device TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN {_sql_in(SPEED_STATUSES)}),
        median_s REAL, iqr_s REAL, repeats INTEGER, tokens_per_s REAL, peak_mem_bytes INTEGER,
        state_floats INTEGER, error TEXT, provenance TEXT NOT NULL, {_PROVENANCE_SQL})"""


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Version 2 allows speed mode "fwd_train". SQLite cannot alter a CHECK constraint: the speed table is rebuilt
    with the new one and every row copied over (ids kept)."""
    conn.execute(_speed_table("speed_v2"))
    conn.execute("INSERT INTO speed_v2 SELECT * FROM speed")
    conn.execute("DROP TABLE speed")
    conn.execute("ALTER TABLE speed_v2 RENAME TO speed")
    conn.execute("CREATE INDEX speed_bench_id ON speed (bench_id)")


# from-version -> the step to the next version, run in the opening transaction
_MIGRATIONS = {1: _migrate_1_to_2}


_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, finished_at TEXT,
        status TEXT NOT NULL CHECK (status IN {_sql_in(RUN_STATUSES)}),
        kind TEXT NOT NULL CHECK (kind IN {_sql_in(RUN_KINDS)}),
        task TEXT NOT NULL, mixer TEXT NOT NULL, suite TEXT, cell_key TEXT,
        config TEXT NOT NULL, n_params INTEGER NOT NULL, state_floats INTEGER,
        metrics TEXT, wall_time_s REAL, tokens_per_s REAL, steps INTEGER,
        provenance TEXT NOT NULL, {_PROVENANCE_SQL})""",
    "CREATE INDEX runs_cell_key ON runs (cell_key)",
    _speed_table("speed"),
    "CREATE INDEX speed_bench_id ON speed (bench_id)",
)


class ResultsStore:
    """The results database: ``runs`` (training and quality runs) and ``speed`` (speed/memory points).

    Use as a context manager, or call ``close()``. Every write is its own committed transaction; several processes
    may hold stores on the same file at once (module docstring). ``busy_timeout_s``: how long SQLite waits for
    another connection's lock before the store's own retries (``RETRY_DELAYS_S``) start.
    """

    def __init__(self, path: str | Path | None = None, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        if not busy_timeout_s >= 0:
            raise ResultsStoreError(f"busy_timeout_s={busy_timeout_s!r}; allowed: a number of seconds >= 0")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), schema included.
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise ResultsStoreError(f"cannot open results store {self.path}: {err}") from err
        self._conn.row_factory = sqlite3.Row
        try:
            # Switching to WAL needs a moment alone with the file: another process opening it may be in the way.
            self._retrying("open", lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
            self._conn.execute("PRAGMA synchronous=FULL")
            self._write("open", self._check_or_create_schema)
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise ResultsStoreError(f"cannot use {self.path} as a results store: {err}") from err
        except ResultsStoreError:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(self, what: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """``body(conn)`` in a transaction of its own, committed, or rolled back on any exception; the whole
        transaction is retried while the database is locked (``_retrying``), so ``body`` must have no effect
        outside the database (it may run again)."""

        def transaction() -> _T:
            # IMMEDIATE takes the write lock up front, so two writers queue instead of failing mid-transaction.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(self._conn)
                self._conn.execute("COMMIT")  # inside the try: a COMMIT that fails leaves nothing open
            except BaseException:
                # SQLite rolls some failures back by itself; a second ROLLBACK would mask the real error.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return result

        return self._retrying(what, transaction)

    def _read(self, sql: str, parameters: tuple = ()) -> list[sqlite3.Row]:
        """The rows of one query, retried like a write while the database is locked."""
        return self._retrying("read", lambda: self._conn.execute(sql, parameters).fetchall())

    def _retrying(self, what: str, operation: Callable[[], _T]) -> _T:
        """``operation()``, again after each of ``RETRY_DELAYS_S`` while SQLite answers busy or locked (after its
        own busy timeout, or at once where it does not wait); a ``ResultsStoreError`` once they are spent."""
        started = time.monotonic()
        delays = iter(RETRY_DELAYS_S)
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as err:
                if not _is_busy(err):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise ResultsStoreError(
                        f"{what} of results store {self.path}: still locked after {len(RETRY_DELAYS_S) + 1} attempts "
                        f"over {time.monotonic() - started:.1f} s ({err}); another process holds its write lock"
                    ) from err
            time.sleep(delay * (1 + random.random() / 2))

    def _check_or_create_schema(self, conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables.discard("sqlite_sequence")
        if not tables:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        if "meta" not in tables:
            raise ResultsStoreError(
                f"{self.path} is an SQLite database but not a longseq results store "
                f"(tables {sorted(tables)}, no 'meta' table)"
            )
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        found = None if row is None else row[0]
        while found is not None and found.isdigit() and int(found) in _MIGRATIONS:
            _MIGRATIONS[int(found)](conn)
            found = str(int(found) + 1)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (found,))
        if found != str(SCHEMA_VERSION):
            raise ResultsStoreError(
                f"results store {self.path} has schema_version={found!r}; this longseq reads "
                f"schema_version {SCHEMA_VERSION} only"
            )

    # ----- runs -----

    def start_run(
        self,
        *,
        kind: str,
        task: str,
        mixer: str,
        config: dict,
        n_params: int,
        provenance: dict,
        state_floats: int | None = None,
        suite: str | None = None,
        cell_key: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Record a run as ``running`` and return its run_id (a new uuid4 hex unless given).

        Starting an existing run_id again (a resumed run) resets it to ``running``; a completed run refuses.
        """
        record = _validated(
            RunRecord,
            {
                "run_id": run_id if run_id is not None else uuid.uuid4().hex,
                "created_at": utc_now_iso(),
                "status": "running",
                "kind": kind,
                "task": task,
                "mixer": mixer,
                "suite": suite,
                "cell_key": cell_key,
                "config": config,
                "n_params": n_params,
                "state_floats": state_floats,
                "provenance": provenance,
            },
            "run",
        )
        values = _column_values(record)
        restarted = ", ".join(f"{column} = excluded.{column}" for column in values if column != "created_at")

        def upsert(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))}) "
                f"ON CONFLICT (run_id) DO UPDATE SET {restarted} WHERE runs.status != 'completed'",
                tuple(values.values()),
            )
            if cursor.rowcount == 0:
                raise ResultsStoreError(f"run_id={record.run_id!r} is already completed in {self.path}")

        self._write("start_run", upsert)
        return record.run_id

    def finish_run(
        self, run_id: str, *, status: str, metrics: dict, wall_time_s: float, tokens_per_s: float, steps: int
    ) -> None:
        """Close a ``running`` run with its final status and results."""
        if status not in FINISHED_RUN_STATUSES:
            raise ResultsStoreError(f"finish_run status={status!r}; allowed: {', '.join(FINISHED_RUN_STATUSES)}")

        def finish(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise ResultsStoreError(f"finish_run: no run with run_id={run_id!r} in {self.path}")
            if row["status"] != "running":
                raise ResultsStoreError(f"finish_run: run_id={run_id!r} is already {row['status']!r}")
            stored = {k: v for k, v in _decoded(row).items() if k not in _DERIVED_COLUMNS}
            stored.update(
                status=status,
                finished_at=utc_now_iso(),
                metrics=metrics,
                wall_time_s=wall_time_s,
                tokens_per_s=tokens_per_s,
                steps=steps,
            )
            values = _column_values(_validated(RunRecord, stored, "run"))
            changed = ("status", "finished_at", "metrics", "wall_time_s", "tokens_per_s", "steps")
            conn.execute(
                f"UPDATE runs SET {', '.join(f'{c} = ?' for c in changed)} WHERE run_id = ?",
                (*(values[c] for c in changed), run_id),
            )

        self._write("finish_run", finish)

    def get_run(self, run_id: str) -> dict:
        """The run with this run_id (JSON columns decoded)."""
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise ResultsStoreError(f"no run with run_id={run_id!r} in {self.path}")
        return _decoded(rows[0])

    def runs(
        self,
        *,
        kind: str | None = None,
        task: str | None = None,
        mixer: str | None = None,
        status: str | None = None,
        suite: str | None = None,
    ) -> list[dict]:
        """Runs matching every given filter, oldest first, JSON columns decoded."""
        _check_filter("kind", kind, RUN_KINDS)
        _check_filter("status", status, RUN_STATUSES)
        filters = {"kind": kind, "task": task, "mixer": mixer, "status": status, "suite": suite}
        return self._select("runs", filters, order="created_at, rowid")

    def finished_cell(self, cell_key: str) -> dict | None:
        """The latest *completed* run of this grid cell, or None (so failed or interrupted cells run again)."""
        rows = self._read(
            "SELECT * FROM runs WHERE cell_key = ? AND status = 'completed' ORDER BY finished_at DESC LIMIT 1",
            (cell_key,),
        )
        return _decoded(rows[0]) if rows else None

    # ----- speed -----

    def add_speed_point(self, row: dict) -> int:
        """Store one speed point (keys: the fields of ``SpeedPoint``) and return its id."""
        values = self._speed_values(row)

        def insert(conn: sqlite3.Connection) -> int:
            try:
                return int(conn.execute(_insert_sql("speed", values), tuple(values.values())).lastrowid)
            except sqlite3.IntegrityError as err:
                raise ResultsStoreError(f"this speed point is already stored in {self.path}") from err

        return self._write("add_speed_point", insert)

    def speed_points(
        self,
        *,
        bench_id: str | None = None,
        label: str | None = None,
        mode: str | None = None,
        status: str | None = None,
    ) -> list[dict]:
        """Speed points matching every given filter, in insertion order, JSON columns decoded."""
        _check_filter("mode", mode, SPEED_MODES)
        _check_filter("status", status, SPEED_STATUSES)
        filters = {"bench_id": bench_id, "label": label, "mode": mode, "status": status}
        return self._select("speed", filters, order="id")

    def latest_bench_id(self) -> str | None:
        """The bench_id of the most recently created speed point, None when there is none."""
        rows = self._read("SELECT bench_id FROM speed ORDER BY created_at DESC, id DESC LIMIT 1")
        return rows[0][0] if rows else None

    # ----- JSONL -----

    def export_jsonl(self, path: str | Path, table: str, *, bench_id: str | None = None) -> int:
        """Write every row of ``table`` (only ``bench_id``'s points, if given) as JSONL; return the count.

        Each line carries ``"table": <table>``, so files of both tables can be imported alike.
        """
        if table not in TABLES:
            raise ResultsStoreError(f"table={table!r}; allowed: {', '.join(TABLES)}")
        if bench_id is not None and table != "speed":
            raise ResultsStoreError("bench_id selects speed points; it needs table='speed'")
        rows = self.runs() if table == "runs" else self.speed_points(bench_id=bench_id)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps({"table": table, **row}, default=_json_default) + "\n")
        partial.replace(path)  # atomic: a reader never sees half a file
        return len(rows)

    def import_jsonl(self, path: str | Path) -> int:
        """Add the rows of a JSONL file written by ``export_jsonl``; return how many were new.

        Runs are keyed by run_id (the first copy wins); speed points by a hash of their content. The whole
        file is one transaction: a bad line imports nothing and the error names its line number.
        """
        path = Path(path)

        def import_all(conn: sqlite3.Connection) -> int:
            added = 0
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        added += self._import_line(conn, line)
                    except (ResultsStoreError, json.JSONDecodeError) as err:
                        raise ResultsStoreError(f"{path}:{number}: {err}") from None
            return added

        return self._write("import_jsonl", import_all)

    def _import_line(self, conn: sqlite3.Connection, line: str) -> int:
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ResultsStoreError(f"expected a JSON object, got {type(row).__name__}")
        table = row.pop("table", None)
        if table not in TABLES:
            raise ResultsStoreError(f"table={table!r}; allowed: {', '.join(TABLES)}")
        row = {key: value for key, value in row.items() if key not in _DERIVED_COLUMNS}
        values = _column_values(_validated(RunRecord, row, "run")) if table == "runs" else self._speed_values(row)
        cursor = conn.execute(_insert_sql(table, values, skip_existing=True), tuple(values.values()))
        return cursor.rowcount

    # ----- helpers -----

    @staticmethod
    def _speed_values(row: dict) -> dict[str, Any]:
        if not isinstance(row, dict):
            raise ResultsStoreError(f"a speed point must be a dict, got {type(row).__name__}")
        values = _column_values(_validated(SpeedPoint, row, "speed point"))
        # The content hash is the natural key that makes re-importing a file a no-op.
        canonical = json.dumps(values, sort_keys=True)
        return {"row_key": hashlib.sha256(canonical.encode()).hexdigest(), **values}

    def _select(self, table: str, filters: dict[str, str | None], *, order: str) -> list[dict]:
        given = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in given)
        sql = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "") + f" ORDER BY {order}"
        return [_decoded(row) for row in self._read(sql, tuple(given.values()))]


def _insert_sql(table: str, values: dict[str, Any], *, skip_existing: bool = False) -> str:
    # ON CONFLICT DO NOTHING skips only key clashes; INSERT OR IGNORE would also hide CHECK violations.
    sql = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"
    return sql + " ON CONFLICT DO NOTHING" if skip_existing else sql


def _is_busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds (SQLITE_BUSY, SQLITE_LOCKED and their extended
    codes, such as SQLITE_BUSY_RECOVERY), which waiting can cure."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # raised by the sqlite3 module itself, without a code
        return "locked" in str(error) or "busy" in str(error)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _check_filter(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ResultsStoreError(f"{name}={value!r}; allowed: {', '.join(allowed)}")
