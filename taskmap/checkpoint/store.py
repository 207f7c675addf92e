"""The store: :class:`CheckpointStore` (opening and checking the file,
restore, recording, queries), :func:`open_checkpoint`, :func:`as_store` and
:class:`StoredEntry`."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from taskmap.checkpoint.file_check import HINT, check_file
from taskmap.checkpoint.fingerprints import TaskFingerprints
from taskmap.checkpoint.hold import RunHold
from taskmap.checkpoint.log import log
from taskmap.checkpoint.recorder import CheckpointObserver, Writer
from taskmap.checkpoint.restore import RestoreReport, plan_restore, plan_statuses
from taskmap.checkpoint.schema import (
    ADDED_COLUMNS,
    CHUNK_SIZES,
    COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    encode_key,
    insert_sql,
)
from taskmap.errors import CheckpointError
from taskmap.observe.observers import FAILED, Observer

# sqlite3, the codec (msgpack, cloudpickle) and hashlib load with the first
# store, not with ``import taskmap``: every worker process imports the
# package, and a run without a store should not pay ~20 ms for them.
if TYPE_CHECKING:
    import sqlite3

_SYNCHRONOUS = ("normal", "full")


def open_checkpoint(
    path: str | os.PathLike, *, synchronous: str = "normal", take_over: bool = False
) -> CheckpointStore:
    """Open (or create) the checkpoint store at ``path``.

    ``synchronous``: ``"normal"`` (default; a committed outcome survives the
    death of the process, not a power cut) or ``"full"`` (also a power cut;
    every commit waits for the disk).  Raises :class:`taskmap.CheckpointError`
    naming the file if it is not a taskmap store, is truncated or damaged, or
    was written by a newer taskmap; the file is then not modified.

    One run at a time per store: a run holds it from its start to its end,
    and a run started meanwhile (in any process of this host) fails before
    any task with a :class:`taskmap.CheckpointError` naming the holder (pid,
    host, since when).  A hold left by a run that died is taken over (logged
    as a warning); one left by a run on another host (a shared filesystem) is
    taken over only with ``take_over=True``.  Reading the store needs no hold.
    """
    return CheckpointStore(path, synchronous=synchronous, take_over=take_over)


def as_store(checkpoint: Any) -> CheckpointStore:
    """A store from what ``create_graph(checkpoint=...)`` accepts: a path
    (``str`` or ``os.PathLike``) or an open :class:`CheckpointStore`."""
    if isinstance(checkpoint, CheckpointStore):
        return checkpoint
    if isinstance(checkpoint, (str, os.PathLike)):
        return open_checkpoint(checkpoint)
    raise TypeError(
        "checkpoint must be a path (str or os.PathLike) or a store from "
        f"taskmap.open_checkpoint, not {type(checkpoint).__name__}"
    )


class StoredEntry(NamedTuple):
    """What the store holds for one task (the value itself is not decoded)."""

    task: Any
    status: str  # "done", "failed" or "not_stored"
    fingerprint: str  # hex
    finished: float  # time.time() when recorded
    attempts: int
    error: str | None  # a failure's traceback text, or why a result was not stored
    has_payload: bool
    output: str | None = None  # a failed task's output tail (None: it wrote nothing)


class CheckpointStore:
    """A durable record of task outcomes (see the package docstring).

    Attach one to a graph with ``create_graph(..., checkpoint=store_or_path)``
    or ``graph.checkpoint = store``; every runner then restores from it first
    and records each outcome as it happens.  A context manager; :meth:`close`
    when done.  Pickles as its path (the copy opens the same file).

    ``path``, ``synchronous``: as opened.  ``last_restore``: the
    :class:`RestoreReport` of the last run.  ``max_payload``: the largest
    encoded result stored (SQLite's limit for one value, about 1 GB); a bigger
    one is recorded as not stored, like a result the codec cannot encode.
    """

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "normal", take_over: bool = False) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        self.path = Path(os.fspath(path))
        self.synchronous = synchronous
        self.take_over = take_over
        # a run holds the store from its restore to its end (taskmap.checkpoint.hold)
        self._hold = RunHold(self.path)
        self._running = False
        self.last_restore: RestoreReport | None = None
        self._lock = threading.Lock()  # one user of the connection at a time
        self._fingerprints: TaskFingerprints | None = None
        self._writer: Writer | None = None
        self._chunk_sizes: tuple[int, ...] = CHUNK_SIZES
        self.max_payload = 0
        self._lacking: list[str] = []  # ADDED_COLUMNS this file does not have yet
        self._conn: sqlite3.Connection | None = None
        self._conn = self._connect()

    # -- opening -------------------------------------------------------------

    def _error(self, problem: str) -> CheckpointError:
        return CheckpointError(str(self.path), problem)

    def _connect(self) -> sqlite3.Connection:
        import sqlite3

        check_file(self.path)
        try:
            # isolation_level=None: transactions are ours (BEGIN ... COMMIT);
            # check_same_thread=False: the writer thread commits, under _lock;
            # cached_statements: an INSERT per batch size, 1-256 rows
            conn = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                check_same_thread=False,
                timeout=30.0,
                cached_statements=512,
            )
        except sqlite3.Error as exc:
            raise self._error(f"cannot open: {exc}") from exc
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        # a statement may hold only so many parameters (999 before SQLite 3.32)
        most = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(COLUMNS)
        self._chunk_sizes = tuple(n for n in CHUNK_SIZES if n <= most)
        # the largest value a row can hold (1e9 bytes unless SQLite was built
        # otherwise), less room for the rest of the row
        self.max_payload = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH) - 4096
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check an existing store (reading only) or create a new one."""
        import sqlite3

        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise self._error(f"not a readable SQLite database ({exc}); {HINT}") from exc
        if not tables:
            self._create(conn)
        elif not {"meta", "tasks"} <= tables:
            raise self._error(
                f"an SQLite database but not a taskmap checkpoint store (its tables: "
                f"{', '.join(sorted(tables))}); refusing to write into it"
            )
        else:
            self._check_schema(conn)
        try:
            # (after the checks, and only when needed: switching a file to WAL
            # writes its header, and a store that turns out damaged is not written)
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL: a commit is written to the WAL but not fsynced: WAL keeps
            # the file consistent, and the commit survives the death of the
            # process (it is in the OS cache), not a power cut.  FULL: each
            # commit also fsyncs the WAL, so it survives a power cut.
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        except sqlite3.DatabaseError as exc:
            raise self._error(f"cannot set up the database ({exc}); {HINT}") from exc

    def _create(self, conn: sqlite3.Connection) -> None:
        import sqlite3

        from taskmap import __version__

        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("created_by", f"taskmap {__version__}")],
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._error(f"cannot create the store: {exc}") from exc

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        import sqlite3

        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            columns = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
        except sqlite3.DatabaseError as exc:
            raise self._error(f"damaged: cannot read its schema ({exc}); {HINT}") from exc
        try:
            version = int(row[0]) if row is not None else None
        except (TypeError, ValueError):
            version = None
        if version is None:
            raise self._error(f"damaged: no valid schema version in its meta table; {HINT}")
        if version > SCHEMA_VERSION:
            raise self._error(
                f"written by a newer taskmap (schema version {version}; this one reads "
                f"up to {SCHEMA_VERSION}); upgrade taskmap or use another file"
            )
        missing = [c for c in COLUMNS if c not in columns and c not in ADDED_COLUMNS]
        if missing:
            raise self._error(f"damaged: its tasks table lacks the columns {missing}; {HINT}")
        self._lacking = [c for c in ADDED_COLUMNS if c not in columns]

    def _add_columns(self, conn: sqlite3.Connection) -> None:
        """Give a store written by an earlier taskmap the columns added since
        (the run holds the store; the caller holds ``_lock``)."""
        import sqlite3

        try:
            for column in self._lacking:
                conn.execute(f"ALTER TABLE tasks ADD COLUMN {column} {ADDED_COLUMNS[column]}")
        except sqlite3.DatabaseError as exc:
            raise self._error(f"cannot add the column {column} to its tasks table ({exc}); {HINT}") from exc
        self._lacking = []

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self._error("the store is closed")
        return self._conn

    # -- restore ---------------------------------------------------------------

    def restore(self, graph: Any) -> RestoreReport:
        """Bring ``graph`` up to date with the store (see the package
        docstring): put kept results into ``graph.results``/``graph.done``,
        take tasks to rerun out of them, delete the rerun tasks' rows.

        Called by every runner before it builds its scheduling state; the run
        holds the store from here to its end.  Raises
        :class:`taskmap.CheckpointError` if another run holds the store (see
        :func:`open_checkpoint`) or it cannot be read; the graph and the file
        are then left as they were.
        """
        conn = self._db()
        if self._running:
            raise self._error("a run of this process is using this store; one run at a time per store")
        # the hold comes first: a run refused must not have touched the store
        self._hold.acquire(graph.name, self.take_over)
        try:
            return self._restore(conn, graph)
        except BaseException:
            self._hold.release()
            raise

    def _restore(self, conn: sqlite3.Connection, graph: Any) -> RestoreReport:
        import sqlite3

        fingerprints = TaskFingerprints(graph)
        with self._lock:
            # everything is read before anything is written: a store found
            # damaged is left as it was
            if self._lacking:
                self._add_columns(conn)
            try:
                owner = conn.execute("SELECT value FROM meta WHERE name = 'graph_name'").fetchone()
                rows = conn.execute("SELECT key, fingerprint, status, payload, checksum FROM tasks").fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(f"damaged: cannot read its rows ({exc}); {HINT}") from exc
            plan = plan_restore(graph, rows, fingerprints)
            # (the name is for people: rows match by task name and fingerprint,
            # so a store serves any graph; the same pipeline may be run as a
            # script and through the command line under two names)
            renamed = owner is None or owner[0] != str(graph.name)
            if renamed or plan.delete:
                self._update(conn, str(graph.name) if renamed else None, plan.delete)
        if owner is not None and owner[0] != str(graph.name):
            log(
                graph.name,
                logging.INFO,
                "checkpoint %s: last used by graph %r, now by graph %r",
                self.path,
                owner[0],
                graph.name,
            )
        done, results = graph.done, graph.results
        if plan.report.rerun:
            done.remove_many(set(plan.report.rerun))
            for task in plan.report.rerun:
                results.pop(task, None)
        for task, value in plan.values:
            results[task] = value
            done.append(task)
        for task, values, flags in plan.elements:
            # an expanded task's finished elements (taskmap.expand): a run
            # reruns only the others
            results[task] = values
            graph.elements[task] = flags
        self._fingerprints = fingerprints
        self.last_restore = plan.report
        log(
            graph.name,
            logging.INFO,
            "checkpoint %s: %d results restored, %d tasks to rerun",
            self.path,
            len(plan.report.restored),
            len(plan.report.rerun),
        )
        if plan.report.damaged:
            log(
                graph.name,
                logging.WARNING,
                "checkpoint %s: unusable rows, rerunning these tasks: %s",
                self.path,
                plan.report.damaged,
            )
        return plan.report

    def _update(self, conn: sqlite3.Connection, owner: str | None, delete: list[bytes]) -> None:
        """One transaction: record the name of the graph using the store (if
        ``owner``), delete the rows of tasks to rerun."""
        import sqlite3

        try:
            conn.execute("BEGIN IMMEDIATE")
            if owner is not None:
                conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('graph_name', ?)", (owner,))
            conn.executemany("DELETE FROM tasks WHERE key = ?", ((k,) for k in delete))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._error(f"cannot update the store: {exc}") from exc

    # -- recording -------------------------------------------------------------

    def observer(self) -> Observer:
        """The observer that records a run's outcomes (used by the runners)."""
        return CheckpointObserver(self)

    def _start_writer(self, graph: Any) -> tuple[Writer, TaskFingerprints]:
        """A writer thread for a run of ``graph``, and the graph's fingerprints
        (those made by the restore that started the run)."""
        fingerprints = self._fingerprints
        if fingerprints is None or fingerprints.graph is not graph:
            fingerprints = self._fingerprints = TaskFingerprints(graph)
        if self._writer is not None:  # a run that ended without run_finished
            self._writer.close()
        self._writer = Writer(self, graph.name)
        self._running = True
        return self._writer, fingerprints

    def _write(self, rows: list[tuple]) -> None:
        """Commit ``rows`` (tuples in COLUMNS order) as one transaction; the
        caller holds ``_lock``.

        Rows go in as multi-row INSERTs of up to 256 rows, not one statement
        per row: sqlite3 releases the GIL for each statement, and the writer,
        contending with a busy coordinator, would wait for it back every time.
        A batch that fits one statement is that statement alone (a statement
        outside a transaction is one); more go in one BEGIN ... COMMIT.
        """
        conn = self._db()
        n = len(rows)
        if n <= self._chunk_sizes[0]:
            # one statement, which SQLite commits atomically by itself: the
            # common case (a few rows per interval) costs one call, not three
            conn.execute(insert_sql(n), list(chain.from_iterable(rows)))
            return
        try:
            conn.execute("BEGIN")
            i = 0
            for size in self._chunk_sizes:
                sql = insert_sql(size)
                while n - i >= size:
                    conn.execute(sql, list(chain.from_iterable(rows[i : i + size])))
                    i += size
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def flush(self) -> None:
        """Wait until every outcome handed to the store is committed (the
        runners do this when a run ends)."""
        writer = self._writer
        if writer is not None:
            self._writer = None
            writer.close()
            if writer.error is not None:
                raise self._error(f"recording outcomes failed: {writer.error}") from writer.error

    def end_run(self) -> None:
        """Commit what is pending and let go of the store (at a run's end)."""
        try:
            self.flush()
        finally:
            self._running = False
            self._hold.release()

    # -- maintenance and queries ---------------------------------------------------

    def clear(self, tasks: Iterable[Any]) -> None:
        """Delete the rows of ``tasks`` (their next run recomputes them);
        :func:`taskmap.reset_tasks` calls this with the reset tasks and their
        descendants."""
        keys = [encode_key(t) for t in tasks]
        if keys:
            with self._lock:
                self._update(self._db(), None, keys)

    def failed_tasks(self) -> list:
        """Names of the tasks whose last recorded outcome is a failure, in the
        order they failed."""
        from taskmap.runtime import codec

        rows = self._query("SELECT key FROM tasks WHERE status = ? ORDER BY finished", (FAILED,))
        names = []
        for (key,) in rows:
            try:
                names.append(codec.decode(key))
            except codec.DecodeError:
                continue  # a damaged key names no task
        return names

    def statuses(self, graph: Any) -> dict:
        """What the store says of each task of ``graph``, without changing
        the graph or the store: task -> ``"done"`` (a stored result a run
        would keep), ``"failed"``, ``"skipped"`` (below a failure, never run)
        or ``"not run"`` (no row, or a row a run would not keep: its function
        or a parent changed, or a parent will rerun).  For pictures of a
        pipeline's state (``taskmap graph --checkpoint``)."""
        rows = self._query("SELECT key, fingerprint, status FROM tasks")
        return plan_statuses(graph, rows, TaskFingerprints(graph))

    def entry(self, task: Any) -> StoredEntry | None:
        """What the store holds for ``task``, or None."""
        output = "NULL" if "output" in self._lacking else "output"
        rows = self._query(
            "SELECT status, fingerprint, finished, attempts, error, payload IS NOT NULL, "
            f"{output} FROM tasks WHERE key = ?",
            (encode_key(task),),
        )
        if not rows:
            return None
        status, fp, finished, attempts, error, has_payload, output_tail = rows[0]
        return StoredEntry(task, status, bytes(fp).hex(), finished, attempts, error, bool(has_payload), output_tail)

    def _query(self, sql: str, params: tuple = ()) -> list:
        import sqlite3

        with self._lock:
            try:
                return self._db().execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(f"cannot read ({exc}); {HINT}") from exc

    def close(self) -> None:
        """Commit what is pending and close the file (idempotent)."""
        if self._conn is None:
            return
        try:
            self.end_run()
        finally:
            with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __reduce__(self):
        return (_reopen, (str(self.path), self.synchronous, self.take_over))

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<taskmap CheckpointStore {str(self.path)!r} ({state})>"


def _reopen(path: str, synchronous: str, take_over: bool = False) -> CheckpointStore:
    return CheckpointStore(path, synchronous=synchronous, take_over=take_over)
