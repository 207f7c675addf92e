"""Checkpoint and resume: a durable store of task outcomes in one SQLite file.

    graph = taskmap.create_graph(funcs, dependencies, checkpoint="run.db")
    taskmap.run_parallel_async(graph)   # killed half-way?  Run the same again:
    # finished tasks are not run again, their results feed their children

Nothing to install or start: the store is an SQLite database (standard
library ``sqlite3``) in WAL mode.  Values are stored with the runtime's codec
(:mod:`taskmap.runtime.codec`), so what comes back equals, with the same type, what
the task returned.

Schema (version :data:`SCHEMA_VERSION`)::

    meta(name TEXT PRIMARY KEY, value TEXT)     schema_version, created_by, graph_name
                                                (the graph that used it last)
    tasks(key BLOB UNIQUE,        the task name, encoded (see encode_key)
          fingerprint BLOB,       the task's function and dependency list (taskmap.checkpoint.fingerprint)
          status TEXT,            'done', 'failed' or 'not_stored' (a result the codec refused)
          payload BLOB,           the encoded result, or the encoded exception, or NULL
          checksum INTEGER,       CRC-32 of key, fingerprint, status and payload
          error TEXT,             traceback text of a failure, or why a result was not stored
          finished REAL,          time.time() when the outcome was recorded
          attempts INTEGER,       how often the task was started in that run
          output TEXT)            a failed task's output tail (its last 100 lines), or NULL;
                                  added to an older store when a run takes it

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

# The modules, one job each:
#   store.py        CheckpointStore, open_checkpoint, as_store, StoredEntry
#   file_check.py   the file before SQLite sees it (not SQLite, truncated)
#   schema.py       tables, columns, INSERTs, encode_key, the row checksum
#   restore.py      RestoreReport; deciding what stays, what reruns
#   fingerprints.py the keys and fingerprints of one graph's tasks
#   recorder.py     the observer that makes rows; the writer thread
#   log.py          messages on the graph's manager logger
# None imports sqlite3, the codec or hashlib at its top (see store.py).

from taskmap.checkpoint.restore import RestoreReport
from taskmap.checkpoint.schema import NOT_STORED, SCHEMA_VERSION, encode_key
from taskmap.checkpoint.store import (
    CheckpointStore,
    StoredEntry,
    as_store,  # noqa: F401 - not in __all__ (as before): imported from here by taskmap.graph
    open_checkpoint,
)

__all__ = [
    "NOT_STORED",
    "SCHEMA_VERSION",
    "CheckpointStore",
    "RestoreReport",
    "StoredEntry",
    "encode_key",
    "open_checkpoint",
]
