"""Recording: the observer that turns each outcome into a row, and the writer
thread that commits the rows in batches (group commit)."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from taskmap.checkpoint.log import log
from taskmap.checkpoint.schema import NOT_STORED, row_checksum
from taskmap.observe.observers import DONE, FAILED, Observer, RunInfo, TaskEvent
from taskmap.runtime.capture import tail_lines

if TYPE_CHECKING:
    from taskmap.checkpoint.fingerprints import TaskFingerprints
    from taskmap.checkpoint.store import CheckpointStore

# The writer commits at most once per interval: a crash loses the outcomes of
# about this long, plus one commit's duration.
_COMMIT_INTERVAL = 0.005
# One transaction takes at most this much, so that one commit stays short even
# when thousands of outcomes arrived while the previous one was written.
_MAX_BATCH_ROWS = 5000
_MAX_BATCH_BYTES = 64 << 20
# A failed task's output tail, as its row keeps it
STORED_TAIL_LINES = 100
STORED_TAIL_CHARS = 16_000
# Rows waiting past which the coordinator commits a batch itself (a flood of
# tiny tasks, with which the writer thread cannot keep up).
_HELP_ROWS = 500


class CheckpointObserver(Observer):
    """Turns each outcome into a row and hands it to the store's writer thread.

    ``task_finished`` runs on the coordinator's hot path.  It builds the whole
    row there (a result not encoded yet is encoded now, before a child can
    mutate the value; the key and fingerprint come from caches; a CRC-32) and
    appends it to a deque: a few microseconds, and no Python work is left for
    the writer, which would otherwise contend with the coordinator for the GIL.
    """

    __slots__ = ("_encode", "entries", "fingerprints", "graph_name", "max_payload", "outputs", "store", "writer")

    def __init__(self, store: CheckpointStore) -> None:
        from taskmap.runtime.codec import encode

        self._encode = encode
        self.store = store
        self.writer: Writer | None = None
        self.fingerprints: TaskFingerprints | None = None
        self.entries: dict = {}
        self.graph_name = "taskmap"
        self.max_payload = store.max_payload
        self.outputs: dict = {}

    def run_started(self, graph: Any, info: RunInfo) -> None:
        self.graph_name = graph.name
        self.outputs = graph.output  # (the bookkeeper fills it before calling observers)
        self.writer, self.fingerprints = self.store._start_writer(graph)
        self.entries = self.fingerprints.entries

    def task_finished(self, event: TaskEvent) -> None:
        writer = self.writer
        if writer is None:
            return
        status = event.status
        error_text = output = None
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
                log(self.graph_name, logging.WARNING, "checkpoint: result of task %r %s", event.name, error_text)
        elif status == FAILED:
            error = event.value
            error_text = _traceback_text(error)
            text = self.outputs.get(event.name) if self.outputs else None
            if text:
                output = tail_lines(text, STORED_TAIL_LINES, STORED_TAIL_CHARS)
            try:
                payload = self._encode(error)
            except Exception:  # noqa: BLE001 - the text is kept; rerunning needs no error object
                payload = None
        else:
            return  # SKIPPED: nothing; a skipped task reruns when its failed ancestor does
        name = event.name
        # (set with the writer: not None here)
        key, fp = self.entries.get(name) or cast("TaskFingerprints", self.fingerprints).entry(name)
        writer.put(
            (
                key,
                fp,
                status,
                payload,
                row_checksum(key, fp, status, payload),
                error_text,
                time.time(),
                event.attempts,
                output,
            )
        )

    def run_finished(self, graph: Any, error: BaseException | None) -> None:
        self.writer = None
        self.store.end_run()  # (commits what is pending, lets go of the store)


class Writer:
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
                log(
                    self.graph_name,
                    logging.ERROR,
                    "checkpoint %s: recording outcomes failed, no more will be stored: %s",
                    self.store.path,
                    exc,
                )
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
