"""Checkpoint and resume: a durable store of task outcomes in one SQLite file.

    graph = taskmap.create_graph(funcs, dependencies, checkpoint="run.db")
    taskmap.run_parallel_async(graph)   # killed half-way?  Run the same again:
    # finished tasks are not run again, their results feed their children

Nothing to install or start: the store is an SQLite database (standard
library ``sqlite3``) in WAL mode.  Values are stored with the runtime's codec
(:mod:`taskmap.codec`), so what comes back equals, with the same type, what
the task returned.

Schema (version :data:`SCHEMA_VERSION`)::

    meta(name TEXT PRIMARY KEY, value TEXT)     schema_version, created_by, graph_name
                                                (the graph that used it last)
    tasks(key BLOB UNIQUE,        the task name, encoded (see encode_key)
          fingerprint BLOB,       the task's function and dependency list (taskmap.fingerprint)
          status TEXT,            'done', 'failed' or 'not_stored' (a result the codec refused)
          payload BLOB,           the encoded result, or the encoded exception, or NULL
          checksum INTEGER,       CRC-32 of key, fingerprint, status and payload
          error TEXT,             traceback text of a failure, or why a result was not stored
          finished REAL,          time.time() when the outcome was recorded
          attempts INTEGER)       how often the task was started in that run

Commit policy.  The run's observer turns each outcome into a row on the
coordinator's thread (a DONE result from a worker is stored as the very bytes
the worker sent) and hands it to a writer thread, which commits every row
waiting as one transaction, at most once per 5 ms: a group commit, so under
load batches grow and commits do not.  Under a flood of tiny tasks, when 500
rows wait, the coordinator commits them itself.  A crash therefore loses the
outcomes of the last few milliseconds (under a flood, those waiting plus
those being committed: about a thousand at most; measured by
``benchmarks/bench_checkpoint.py``), never a committed one, and never a
half-written one (a transaction is atomic; every row also carries a
checksum).

Durability, decided for the failure that kills runs in practice: the process
dying (SIGKILL, the OOM killer, a segfault, a closed terminal).
``synchronous="normal"`` (the default) writes each commit to the write-ahead
log without waiting for the disk: a commit is in the operating system's
cache when it returns, so it survives the death of the process.  A power cut
or kernel crash may lose the commits since SQLite last synced the log (at its
checkpoints, every few MB), never corrupts the file, and the tasks lost rerun.
``synchronous="full"`` also fsyncs the log at every commit, so commits
survive a power cut too; the price is the disk's flush time on every commit
(the run does not wait for it, but outcomes queue behind it, which widens
what a killed process loses to that flush time: a median of 14 ms and a worst
case of 250 ms on the development VM under load, against 2 ms and 17 ms).

Restore (every run calls :meth:`CheckpointStore.restore` first).  In
dependency order, a task is *kept* when its row says done, its fingerprint is
today's, its checksum holds, its value decodes, and every parent is kept; its
value goes into ``graph.results`` and its name into ``graph.done``.  A task
with a row that is not kept (failed, changed, damaged, or a parent will run)
is *rerun*, and so is every descendant of a rerun task: they leave
``graph.done``/``graph.results`` and their rows are deleted before anything
runs, so the store only ever holds results computed from its parents' current
results.  A task without a row keeps whatever ``graph.done`` says (results the
caller gave, or finished in this process) unless an ancestor is rerun.  A
result the codec cannot encode (a lock, an open file...) does not stop the
run: its row says ``not_stored``, so the task is kept while this process
still holds the value and reruns, with its descendants, in a new process.

Damage.  A file that is not SQLite, is truncated, or whose tables cannot be
read raises :class:`taskmap.CheckpointError` naming the file and the problem,
before any task runs; the file is left exactly as it was.  A row whose
checksum fails or whose value does not decode is reported in
:attr:`CheckpointStore.last_restore` and logged, and only that task (with its
descendants) reruns.

One run at a time per store.  Task names are encoded with the codec: ``str``,
``int``, ``bytes`` and tuples of those are found again in every process;
other hashable names work if their pickle is the same in every process.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import CheckpointError
from .observers import DONE, FAILED, Observer, RunInfo, TaskEvent
from .state import topological_order

# sqlite3, the codec (msgpack, cloudpickle) and hashlib load with the first
# store, not with ``import taskmap``: every worker process imports the
# package, and a run without a store should not pay ~20 ms for them.
if TYPE_CHECKING:
    import sqlite3

__all__ = [
    "NOT_STORED",
    "SCHEMA_VERSION",
    "CheckpointStore",
    "RestoreReport",
    "StoredEntry",
    "encode_key",
    "open_checkpoint",
]

SCHEMA_VERSION = 1
NOT_STORED = "not_stored"
_STATUSES = (DONE, FAILED, NOT_STORED)
_SYNCHRONOUS = ("normal", "full")

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_HINT = "the file was left as it is; move it away (or delete it) to start afresh"

# The writer commits at most once per interval: a crash loses the outcomes of
# about this long, plus one commit's duration.
_COMMIT_INTERVAL = 0.005
# One transaction takes at most this much, so that one commit stays short even
# when thousands of outcomes arrived while the previous one was written.
_MAX_BATCH_ROWS = 5000
_MAX_BATCH_BYTES = 64 << 20
# Rows waiting past which the coordinator commits a batch itself (a flood of
# tiny tasks, with which the writer thread cannot keep up).
_HELP_ROWS = 500

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tasks (
        key         BLOB NOT NULL UNIQUE,
        fingerprint BLOB NOT NULL,
        status      TEXT NOT NULL,
        payload     BLOB,
        checksum    INTEGER NOT NULL,
        error       TEXT,
        finished    REAL NOT NULL,
        attempts    INTEGER NOT NULL
    )""",
)
_COLUMNS = ("key", "fingerprint", "status", "payload", "checksum", "error", "finished", "attempts")
_ROW_PLACES = f"({', '.join('?' * len(_COLUMNS))})"
_CHUNK_SIZES = (256, 64, 16, 4, 1)  # rows per INSERT statement, largest first


@functools.lru_cache(maxsize=512)
def _insert_sql(rows: int) -> str:
    """An INSERT of ``rows`` rows (a task's new outcome replaces its old one)."""
    return f"INSERT OR REPLACE INTO tasks ({', '.join(_COLUMNS)}) VALUES " + ", ".join([_ROW_PLACES] * rows)


# -- public API ------------------------------------------------------------------


def open_checkpoint(path: str | os.PathLike, *, synchronous: str = "normal") -> CheckpointStore:
    """Open (or create) the checkpoint store at ``path``.

    ``synchronous``: ``"normal"`` (default; a committed outcome survives the
    death of the process, not a power cut) or ``"full"`` (also a power cut;
    every commit waits for the disk).  Raises :class:`taskmap.CheckpointError`
    naming the file if it is not a taskmap store, is truncated or damaged, or
    was written by a newer taskmap; the file is then not modified.
    """
    return CheckpointStore(path, synchronous=synchronous)


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


def encode_key(task: Any) -> bytes:
    """The bytes a task name is stored under.

    msgpack for ``str``/``int``/``bytes``/``float``/``bool``/``None`` (the
    codec's own encoding); anything else is pickled without the memo (so
    ``('a', 'a')`` gives the same bytes whether or not its two strings are one
    object) inside the codec's pickle extension, so :func:`taskmap.codec.decode`
    reads every key back.
    """
    import pickle

    import msgpack

    from . import codec

    if type(task) in _NATIVE_KEYS:
        return codec.encode(task)
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=codec.PICKLE_PROTOCOL)
    pickler.fast = True  # no memo: equal names, equal bytes
    pickler.dump(task)
    return msgpack.packb(msgpack.ExtType(codec.EXT_PICKLE, buffer.getvalue()))


_NATIVE_KEYS = frozenset({str, int, bytes, float, bool, type(None)})


class StoredEntry(NamedTuple):
    """What the store holds for one task (the value itself is not decoded)."""

    task: Any
    status: str  # "done", "failed" or "not_stored"
    fingerprint: str  # hex
    finished: float  # time.time() when recorded
    attempts: int
    error: str | None  # a failure's traceback text, or why a result was not stored
    has_payload: bool


class RestoreReport:
    """What :meth:`CheckpointStore.restore` did to a graph.

    ``restored``: tasks done by the store's word: their stored result was
    put into the graph (or was there already, from a run in this process);
    ``rerun``: tasks taken out of ``graph.done`` (or never in it) because they
    or an ancestor failed, changed or were damaged, and whose rows were
    deleted; ``damaged``: task -> why its row could not be used (a subset of
    ``rerun``).
    """

    __slots__ = ("restored", "rerun", "damaged")

    def __init__(self) -> None:
        self.restored: list = []
        self.rerun: list = []
        self.damaged: dict = {}

    def __repr__(self) -> str:
        return (
            f"RestoreReport(restored={len(self.restored)} tasks, rerun={len(self.rerun)} tasks, "
            f"damaged={self.damaged!r})"
        )


class CheckpointStore:
    """A durable record of task outcomes (see the module docstring).

    Attach one to a graph with ``create_graph(..., checkpoint=store_or_path)``
    or ``graph.checkpoint = store``; every runner then restores from it first
    and records each outcome as it happens.  A context manager; :meth:`close`
    when done.  Pickles as its path (the copy opens the same file).

    ``path``, ``synchronous``: as opened.  ``last_restore``: the
    :class:`RestoreReport` of the last run.  ``max_payload``: the largest
    encoded result stored (SQLite's limit for one value, about 1 GB); a bigger
    one is recorded as not stored, like a result the codec cannot encode.
    """

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "normal") -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        self.path = Path(os.fspath(path))
        self.synchronous = synchronous
        self.last_restore: RestoreReport | None = None
        self._lock = threading.Lock()  # one user of the connection at a time
        self._fingerprints: _TaskFingerprints | None = None
        self._writer: _Writer | None = None
        self._chunk_sizes = _CHUNK_SIZES
        self.max_payload = 0
        self._conn: sqlite3.Connection | None = None
        self._conn = self._connect()

    # -- opening -------------------------------------------------------------

    def _error(self, problem: str) -> CheckpointError:
        return CheckpointError(str(self.path), problem)

    def _connect(self) -> sqlite3.Connection:
        import sqlite3

        _check_file(self.path)
        try:
            # isolation_level=None: transactions are ours (BEGIN ... COMMIT);
            # check_same_thread=False: the writer thread commits, under _lock;
            # cached_statements: an INSERT per batch size, 1-256 rows
            conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0,
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
        most = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(_COLUMNS)
        self._chunk_sizes = tuple(n for n in _CHUNK_SIZES if n <= most)
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
            raise self._error(f"not a readable SQLite database ({exc}); {_HINT}") from exc
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
            raise self._error(f"cannot set up the database ({exc}); {_HINT}") from exc

    def _create(self, conn: sqlite3.Connection) -> None:
        import sqlite3

        from . import __version__

        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
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
            raise self._error(f"damaged: cannot read its schema ({exc}); {_HINT}") from exc
        try:
            version = int(row[0]) if row is not None else None
        except (TypeError, ValueError):
            version = None
        if version is None:
            raise self._error(f"damaged: no valid schema version in its meta table; {_HINT}")
        if version > SCHEMA_VERSION:
            raise self._error(
                f"written by a newer taskmap (schema version {version}; this one reads "
                f"up to {SCHEMA_VERSION}); upgrade taskmap or use another file"
            )
        missing = [c for c in _COLUMNS if c not in columns]
        if missing:
            raise self._error(f"damaged: its tasks table lacks the columns {missing}; {_HINT}")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self._error("the store is closed")
        return self._conn

    # -- restore ---------------------------------------------------------------

    def restore(self, graph: Any) -> RestoreReport:
        """Bring ``graph`` up to date with the store (see the module
        docstring): put kept results into ``graph.results``/``graph.done``,
        take tasks to rerun out of them, delete the rerun tasks' rows.

        Called by every runner before it builds its scheduling state.  Raises
        :class:`taskmap.CheckpointError` if the store cannot be read; the
        graph and the file are then left as they were.
        """
        import sqlite3

        conn = self._db()
        fingerprints = _TaskFingerprints(graph)
        with self._lock:
            # everything is read before anything is written: a store found
            # damaged is left as it was
            try:
                owner = conn.execute("SELECT value FROM meta WHERE name = 'graph_name'").fetchone()
                rows = conn.execute(
                    "SELECT key, fingerprint, status, payload, checksum FROM tasks"
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(f"damaged: cannot read its rows ({exc}); {_HINT}") from exc
            plan = _plan_restore(graph, rows, fingerprints)
            # (the name is for people: rows match by task name and fingerprint,
            # so a store serves any graph; the same pipeline may be run as a
            # script and through the command line under two names)
            renamed = owner is None or owner[0] != str(graph.name)
            if renamed or plan.delete:
                self._update(conn, str(graph.name) if renamed else None, plan.delete)
        if owner is not None and owner[0] != str(graph.name):
            _log(graph.name, logging.INFO,
                 "checkpoint %s: last used by graph %r, now by graph %r", self.path, owner[0], graph.name)
        done, results = graph.done, graph.results
        if plan.report.rerun:
            done.remove_many(set(plan.report.rerun))
            for task in plan.report.rerun:
                results.pop(task, None)
        for task, value in plan.values:
            results[task] = value
            done.append(task)
        self._fingerprints = fingerprints
        self.last_restore = plan.report
        _log(graph.name, logging.INFO,
             "checkpoint %s: %d results restored, %d tasks to rerun",
             self.path, len(plan.report.restored), len(plan.report.rerun))
        if plan.report.damaged:
            _log(graph.name, logging.WARNING,
                 "checkpoint %s: unusable rows, rerunning these tasks: %s",
                 self.path, plan.report.damaged)
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
        return _CheckpointObserver(self)

    def _start_writer(self, graph: Any) -> tuple[_Writer, _TaskFingerprints]:
        """A writer thread for a run of ``graph``, and the graph's fingerprints
        (those made by the restore that started the run)."""
        fingerprints = self._fingerprints
        if fingerprints is None or fingerprints.graph is not graph:
            fingerprints = self._fingerprints = _TaskFingerprints(graph)
        if self._writer is not None:  # a run that ended without run_finished
            self._writer.close()
        self._writer = _Writer(self, graph.name)
        return self._writer, fingerprints

    def _write(self, rows: list[tuple]) -> None:
        """Commit ``rows`` (tuples in _COLUMNS order) as one transaction; the
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
            conn.execute(_insert_sql(n), list(chain.from_iterable(rows)))
            return
        try:
            conn.execute("BEGIN")
            i = 0
            for size in self._chunk_sizes:
                sql = _insert_sql(size)
                while n - i >= size:
                    conn.execute(sql, list(chain.from_iterable(rows[i:i + size])))
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
        from . import codec

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
        from .status import DONE as S_DONE
        from .status import FAILED as S_FAILED
        from .status import NOT_RUN, SKIPPED

        fingerprints = _TaskFingerprints(graph)
        rows = {
            bytes(key): (bytes(fp), status)
            for key, fp, status in self._query("SELECT key, fingerprint, status FROM tasks")
        }
        deps = graph.dependencies
        out: dict = {}
        for task in _topological(deps):
            parents = [out[p] for p in deps[task]]
            key, fingerprint = fingerprints.entry(task)
            row = rows.get(key)
            if any(p in (S_FAILED, SKIPPED) for p in parents):
                out[task] = SKIPPED
            elif row is None or row[0] != fingerprint or any(p != S_DONE for p in parents):
                out[task] = NOT_RUN
            else:
                out[task] = S_FAILED if row[1] == FAILED else S_DONE if row[1] == DONE else NOT_RUN
        return out

    def entry(self, task: Any) -> StoredEntry | None:
        """What the store holds for ``task``, or None."""
        rows = self._query(
            "SELECT status, fingerprint, finished, attempts, error, payload IS NOT NULL "
            "FROM tasks WHERE key = ?",
            (encode_key(task),),
        )
        if not rows:
            return None
        status, fp, finished, attempts, error, has_payload = rows[0]
        return StoredEntry(task, status, bytes(fp).hex(), finished, attempts, error, bool(has_payload))

    def _query(self, sql: str, params: tuple = ()) -> list:
        import sqlite3

        with self._lock:
            try:
                return self._db().execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(f"cannot read ({exc}); {_HINT}") from exc

    def close(self) -> None:
        """Commit what is pending and close the file (idempotent)."""
        if self._conn is None:
            return
        try:
            self.flush()
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
        return (_reopen, (str(self.path), self.synchronous))

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<taskmap CheckpointStore {str(self.path)!r} ({state})>"


def _reopen(path: str, synchronous: str) -> CheckpointStore:
    return CheckpointStore(path, synchronous=synchronous)


# -- the file before SQLite sees it ------------------------------------------------


def _check_file(path: Path) -> None:
    """Catch a file that is not SQLite, or is truncated, before SQLite opens
    it: SQLite itself would only notice when it reads a missing page."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return  # a new store
    except OSError as exc:
        raise CheckpointError(str(path), f"cannot read: {exc}") from exc
    if path.is_dir():
        raise CheckpointError(str(path), "is a directory")
    wal = path.with_name(path.name + "-wal")
    try:
        wal_has_frames = wal.stat().st_size > 0
    except OSError:
        wal_has_frames = False
    if size == 0:
        if wal_has_frames:
            raise CheckpointError(
                str(path), f"truncated: the file is empty but its write-ahead log {wal.name} is not; {_HINT}"
            )
        return  # an empty file is an empty database to SQLite: a new store
    try:
        with open(path, "rb") as f:
            header = f.read(_HEADER_SIZE)
    except OSError as exc:
        raise CheckpointError(str(path), f"cannot read: {exc}") from exc
    if not header.startswith(_SQLITE_MAGIC) and not _SQLITE_MAGIC.startswith(header):
        raise CheckpointError(
            str(path), f"not an SQLite database (it starts with {header[:16]!r}); {_HINT}"
        )
    if len(header) < _HEADER_SIZE:
        raise CheckpointError(
            str(path), f"truncated: {size} bytes, shorter than an SQLite header ({_HEADER_SIZE}); {_HINT}"
        )
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise CheckpointError(str(path), f"damaged header (page size {page_size}); {_HINT}")
    if wal_has_frames:
        # a process died with commits still in the log (or in the middle of
        # copying them into the file, which may leave the file short for a
        # moment): SQLite completes that itself, so sizes prove nothing here
        return
    pages = int.from_bytes(header[28:32], "big")
    # the page count in the header is valid when its "valid for" number
    # equals the change counter (SQLite >= 3.7.0 always writes both)
    if header[24:28] == header[92:96] and size < pages * page_size:
        raise CheckpointError(
            str(path),
            f"truncated: its header says {pages} pages of {page_size} bytes "
            f"({pages * page_size} bytes) but the file has {size} bytes; {_HINT}",
        )
    if size % page_size:
        raise CheckpointError(
            str(path), f"truncated or damaged: {size} bytes is not a whole number of {page_size}-byte pages; {_HINT}"
        )


# -- restore: deciding what stays --------------------------------------------------


class _Plan(NamedTuple):
    report: RestoreReport
    values: list  # (task, decoded value), parents first
    delete: list  # keys of rows to delete


def _plan_restore(graph: Any, rows: list, fingerprints: _TaskFingerprints) -> _Plan:
    from . import codec

    if not rows:  # a new store: nothing to restore, nothing to take back
        return _Plan(RestoreReport(), [], [])
    deps = graph.dependencies
    done, results = graph.done, graph.results
    by_task: dict = {}
    for row in rows:
        try:
            task = codec.decode(row[0])
            if task in deps:
                by_task[task] = row
        except (codec.DecodeError, TypeError):
            continue  # a damaged or unhashable key: no task to give it to
    report = RestoreReport()
    values: list = []
    delete: list = []
    kept: set = set()
    rerun: set = set()
    for task in _topological(deps):
        parents = deps[task]
        row = by_task.get(task)
        if row is None:
            if any(p in rerun for p in parents):
                rerun.add(task)
            elif task in done:
                kept.add(task)  # given by the caller, or finished before the store knew
            continue
        key, stored_fp, status, payload, checksum = row
        ok = all(p in kept for p in parents) and bytes(stored_fp) == fingerprints.entry(task)[1]
        if ok and _checksum(key, stored_fp, status, payload) != checksum:
            ok = False
            report.damaged[task] = "checksum mismatch"
        if ok and status == DONE and payload is not None:
            if task in done and task in results:
                kept.add(task)  # already here from a run in this process
                report.restored.append(task)
                continue
            try:
                value = codec.decode(payload)
            except codec.DecodeError as exc:
                report.damaged[task] = f"its value does not decode: {exc}"
            else:
                kept.add(task)
                values.append((task, value))
                report.restored.append(task)
                continue
        elif ok and status == NOT_STORED and task in done and task in results:
            kept.add(task)  # the codec refused it, but this process still has it
            continue
        rerun.add(task)
        delete.append(key)
    # tasks without rows below a rerun task were added to ``rerun`` above;
    # report them all, in graph order
    report.rerun = [t for t in deps if t in rerun]
    return _Plan(report, values, delete)


def _topological(deps: Mapping) -> list:
    """Tasks ordered so each comes after its dependencies."""
    names = list(deps)
    index = {task: i for i, task in enumerate(names)}
    parents = [[index[p] for p in deps[task]] for task in names]
    children: list[list[int]] = [[] for _ in names]
    for i, ps in enumerate(parents):
        for p in ps:
            children[p].append(i)
    return [names[i] for i in topological_order(parents, children)]


def _checksum(key: bytes, fingerprint: bytes, status: str, payload: bytes | None) -> int:
    """CRC-32 of a row's key, fingerprint, status and payload: a bit flipped
    in any of them (or a row moved to another key) is noticed at restore."""
    crc = zlib.crc32(key + fingerprint + _STATUS_BYTES.get(status, b"?"))
    return crc if payload is None else zlib.crc32(payload, crc)


_STATUS_BYTES = {s: s.encode("ascii") for s in _STATUSES}


# -- fingerprints of one graph's tasks ----------------------------------------------


class _TaskFingerprints:
    """Keys and fingerprints of a graph's tasks, all made when this is made:
    before the run, so a closure the running tasks mutate cannot change a
    digest midway (or make it raise), and in one tight pass, which costs about
    a microsecond per task, less than making each as its task finishes.
    """

    __slots__ = ("graph", "entries", "_keys", "_function_of", "_pack", "_combine")

    def __init__(self, graph: Any) -> None:
        import msgpack

        from .fingerprint import DIGEST_SIZE, Fingerprinter, task_fingerprint, task_fingerprints

        # the codec's options: for a native scalar these bytes are the codec's
        self._pack = msgpack.Packer(use_bin_type=True, strict_types=True).pack
        self._combine = task_fingerprint
        self.graph = graph
        deps, funcs = graph.dependencies, graph.funcs
        hasher = Fingerprinter()
        by_id: dict[int, bytes] = {}
        function_of: dict = {}
        for task in deps:
            func = funcs[task]
            digest = by_id.get(id(func))
            if digest is None:
                try:
                    digest = hasher.digest(func)
                except Exception as exc:  # noqa: BLE001 - never stop a run over this
                    # a digest that matches nothing: the task reruns every time
                    digest = os.urandom(DIGEST_SIZE)
                    _log(graph.name, logging.WARNING,
                         "checkpoint: cannot fingerprint the function of task %r (%s: %s); "
                         "it will rerun every time", task, type(exc).__name__, exc)
                by_id[id(func)] = digest
            function_of[task] = digest
        self._function_of = function_of
        self._keys: dict = {}
        pack, key = self._pack, self.key
        keys = self._keys
        for task in deps:
            k = None
            if type(task) is str:  # the common case inline
                try:
                    k = pack(task)
                except Exception:  # noqa: BLE001 - a lone surrogate: the codec's way
                    pass
            keys[task] = k if k is not None else key(task)
        fingerprints = task_fingerprints(function_of, keys, deps)
        # task -> (key, fingerprint)
        self.entries: dict = {task: (keys[task], fingerprints[task]) for task in deps}

    def key(self, task: Any) -> bytes:
        """``encode_key(task)``, cached."""
        k = self._keys.get(task)
        if k is None:
            k = None
            if type(task) in _NATIVE_KEYS:
                try:
                    # what codec.encode gives a native scalar, 4x faster
                    k = self._pack(task)
                except Exception:  # noqa: BLE001 - a huge int, a lone surrogate: the codec's way
                    k = None
            if k is None:
                k = encode_key(task)
            self._keys[task] = k
        return k

    def entry(self, task: Any) -> tuple[bytes, bytes]:
        """``(key, fingerprint)`` of a task (one added to the graph since)."""
        found = self.entries.get(task)
        if found is None:
            parent_keys = [self.key(p) for p in self.graph.dependencies[task]]
            found = self.entries[task] = (
                self.key(task), self._combine(self._function_of.get(task, b""), parent_keys)
            )
        return found


# -- recording: the observer and its writer thread ------------------------------------


class _CheckpointObserver(Observer):
    """Turns each outcome into a row and hands it to the store's writer thread.

    ``task_finished`` runs on the coordinator's hot path.  It builds the whole
    row there (a result not encoded yet is encoded now, before a child can
    mutate the value; the key and fingerprint come from caches; a CRC-32) and
    appends it to a deque: a few microseconds, and no Python work is left for
    the writer, which would otherwise contend with the coordinator for the GIL.
    """

    __slots__ = ("store", "writer", "fingerprints", "entries", "graph_name", "max_payload", "_encode")

    def __init__(self, store: CheckpointStore) -> None:
        from .codec import encode

        self._encode = encode
        self.store = store
        self.writer: _Writer | None = None
        self.fingerprints: _TaskFingerprints | None = None
        self.entries: dict = {}
        self.graph_name = "taskmap"
        self.max_payload = store.max_payload

    def run_started(self, graph: Any, info: RunInfo) -> None:
        self.graph_name = graph.name
        self.writer, self.fingerprints = self.store._start_writer(graph)
        self.entries = self.fingerprints.entries

    def task_finished(self, event: TaskEvent) -> None:
        writer = self.writer
        if writer is None:
            return
        status = event.status
        error_text = None
        if status == DONE:
            payload = event.payload
            if payload is None:
                try:
                    payload = self._encode(event.value)
                except Exception as exc:  # noqa: BLE001 - the run goes on; the task reruns next time
                    error_text = f"not stored: {type(exc).__name__}: {exc}"
            if payload is not None and len(payload) > self.max_payload:
                error_text = (
                    f"not stored: its encoding is {len(payload)} bytes, over SQLite's "
                    f"limit of {self.max_payload} for one value"
                )
            if error_text is not None:
                status, payload = NOT_STORED, None
                _log(self.graph_name, logging.WARNING,
                     "checkpoint: result of task %r %s", event.name, error_text)
        elif status == FAILED:
            error = event.value
            error_text = _traceback_text(error)
            try:
                payload = self._encode(error)
            except Exception:  # noqa: BLE001 - the text is kept; rerunning needs no error object
                payload = None
        else:
            return  # SKIPPED: nothing; a skipped task reruns when its failed ancestor does
        name = event.name
        key, fp = self.entries.get(name) or self.fingerprints.entry(name)
        writer.put((key, fp, status, payload, _checksum(key, fp, status, payload),
                    error_text, time.time(), event.attempts))

    def run_finished(self, graph: Any, error: BaseException | None) -> None:
        if self.writer is not None:
            self.writer = None
            self.store.flush()


class _Writer:
    """The thread that commits rows in batches (group commit).

    ``put`` is called on the coordinator's thread: a deque append, plus a
    wake-up only when the writer is idle.  The writer takes every row waiting
    (up to a cap) and commits them as one transaction, at most once per
    ``_COMMIT_INTERVAL``; it sleeps without a timeout when nothing waits.

    Under a flood of tiny tasks the coordinator holds the GIL nearly all the
    time, and the writer, which needs it between SQLite calls, crawls through
    its commit and falls behind.  So once ``_HELP_ROWS`` rows wait, ``put``
    commits them itself, on the coordinator's thread: it first waits for the
    store's lock, which lets the writer finish its commit at full speed (the
    wait releases the GIL), then commits without any handing back and forth.
    What a crash can lose stays bounded by that many rows.

    Rows are taken from the queue under the store's lock, so they are
    committed in the order they came.  A failed write stops the recording
    (later rows are dropped) and is raised by :meth:`CheckpointStore.flush` at
    the end of the run, after the run itself finished.
    """

    def __init__(self, store: CheckpointStore, graph_name: str) -> None:
        self.store = store
        self.graph_name = graph_name
        self.pending: deque = deque()
        self.wake = threading.Event()
        self.idle = False
        self.stopping = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="taskmap-checkpoint", daemon=True)
        self.thread.start()

    def put(self, row: tuple) -> None:
        pending = self.pending
        pending.append(row)
        if self.idle:
            self.wake.set()
        elif len(pending) >= _HELP_ROWS:
            self._commit_some()

    def close(self) -> None:
        """Commit every row put so far, then stop the thread."""
        self.stopping = True
        self.wake.set()
        self.thread.join()

    def _loop(self) -> None:
        pending = self.pending
        while True:
            # idle: sleep until put() signals.  Idle first, then look: a put()
            # either lands before the look or sees idle and sets the event.
            self.idle = True
            if not pending:
                if self.stopping:
                    return
                self.wake.wait()
            self.idle = False
            self.wake.clear()
            # busy: commit what waits (at once: after a quiet spell the first
            # outcome is committed without delay), then let the next ones
            # gather for an interval.  Under load that bounds commits, and
            # wake-ups of this thread, to one per interval, and put() never
            # has to signal (on a busy machine a wake-up costs the
            # coordinator its core, or the GIL, for a while).
            while pending:
                started = time.monotonic()
                self._commit_some()
                # (a commit that took longer, under a flood, is followed at once)
                delay = started + _COMMIT_INTERVAL - time.monotonic()
                if delay > 0 and not self.stopping:
                    self.wake.wait(delay)  # close() cuts it short
                    self.wake.clear()

    def _commit_some(self) -> None:
        """Commit the rows waiting (up to the batch caps) as one transaction."""
        with self.store._lock:
            pending = self.pending
            batch = [pending.popleft() for _ in range(min(len(pending), _MAX_BATCH_ROWS))]
            if sum(len(row[3]) for row in batch if row[3] is not None) > _MAX_BATCH_BYTES:
                # big values: commit fewer of them at a time, the rest next round
                size = 0
                for n, row in enumerate(batch):
                    size += len(row[3]) if row[3] is not None else 0
                    if size > _MAX_BATCH_BYTES and n:
                        pending.extendleft(reversed(batch[n:]))
                        del batch[n:]
                        break
            if not batch or self.error is not None:
                return  # (after a failure the rest is dropped)
            try:
                self.store._write(batch)
            except Exception as exc:  # noqa: BLE001 - reported by flush()
                self.error = exc
                _log(self.graph_name, logging.ERROR,
                     "checkpoint %s: recording outcomes failed, no more will be stored: %s",
                     self.store.path, exc)
            except BaseException:
                # Ctrl-C while the coordinator commits: the transaction rolled
                # back; the rows go back, for the flush at the end of the run
                pending.extendleft(reversed(batch))
                raise


def _traceback_text(error: BaseException) -> str:
    remote = getattr(error, "remote_traceback", None)
    if isinstance(remote, str) and remote:
        return remote
    try:
        return "".join(traceback.format_exception(error))
    except Exception:  # noqa: BLE001
        return f"{type(error).__name__}: {error!r}"


def _log(graph_name: str, level: int, message: str, *args: Any) -> None:
    """Log on the graph's manager logger, only if someone listens (a library
    must not reach Python's last-resort stderr handler)."""
    logger = logging.getLogger(f"{graph_name}-manager")
    if logger.isEnabledFor(level) and logger.hasHandlers():
        logger.log(level, message, *args)
