"""The timeline of a run as a Chrome trace-event JSON file (``trace=path``).

The file opens in https://ui.perfetto.dev and chrome://tracing.  Layout:

* one process per worker (``pid`` = the worker's pid, named ``worker <pid>``)
  and one for the coordinator (``pid`` = the calling process, named
  ``coordinator``; the in-process runners run their tasks there too);
* in each, one row per lane: ``tid`` 1 is ``cpu``, ``tid`` 2, 3, ... are
  ``io 1``, ``io 2``, ...: io tasks overlap within a worker, and Perfetto
  draws overlapping slices of one row badly, so each io task goes to the
  first io row free at its start (greedy interval colouring) and no row has
  overlapping slices.  cpu tasks never overlap in a worker; if they do (a
  cpu-lane coroutine that awaits, in ``run_async``) they spill into extra
  ``cpu 2``... rows the same way;
* each task that ran is one complete event (``ph: "X"``) with ``ts``/``dur``
  in microseconds from the start of the run, measured by the process that
  ran it (a task still running when the run ended, interrupted or stopped by
  ``raise_errors``, has status ``unfinished`` and is drawn from when it was
  handed out to the end of the run); ``args`` hold the task's name, status, lane, attempts, error
  (and a failed task's ``output``: the last lines it wrote), and
  ``queued_ms`` (handed out by the coordinator -> started) and
  ``returned_ms`` (ended -> outcome recorded by the coordinator);
* the coordinator's ``scheduler`` row (the next ``tid`` after its lane
  rows; never 0, which some Perfetto versions merge with ``tid`` 1) holds
  one slice for the
  whole run, a counter track ``tasks`` (how many are in flight, how many
  finished, over time) and an instant event per task that did not run
  (skipped because an ancestor failed, or failed before it could start).

Clocks: every time is ``time.monotonic()``; on Linux that is
CLOCK_MONOTONIC, one clock for every process, so worker and coordinator
times line up.

The file is written when the run ends, also when it raised or was
interrupted, to a temporary file that is renamed over ``path``.
"""

from __future__ import annotations

import heapq
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from taskmap.observe.observers import CPU, FAILED, IO, Observer
from taskmap.observe.record import UNFINISHED, RunRecord, TaskRecord
from taskmap.runtime.capture import tail_lines

if TYPE_CHECKING:
    from taskmap.graph import Graph

CPU_TID = 1
FIRST_IO_TID = 2
# a failed task's output tail in its event's args
TRACE_TAIL_LINES = 50
TRACE_TAIL_CHARS = 8000


class _Ran(Protocol):
    """A :class:`TaskRecord` drawn as a slice: its worker, start and end
    are known."""

    @property
    def name(self) -> Any: ...
    @property
    def status(self) -> str: ...
    @property
    def lane(self) -> str: ...
    @property
    def worker(self) -> int: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def handed(self) -> float | None: ...
    @property
    def received(self) -> float: ...
    @property
    def attempts(self) -> int: ...
    @property
    def error(self) -> str | None: ...


class TraceWriter(Observer):
    """Writes the run's timeline to ``path`` when the run ends.

    Needs the per-task record of the run (``graph.last_run.tasks``), which
    the runners' ``trace=`` option asks for.  Raises ``FileNotFoundError`` at
    once, not after the run, when the directory of ``path`` does not exist.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.parent.resolve().is_dir():
            raise FileNotFoundError(f"trace file directory does not exist: {self.path.parent}")

    def run_finished(self, graph: Graph, error: BaseException | None) -> None:
        write_trace(graph, self.path)


def write_trace(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Write the timeline of ``graph``'s last recorded run to ``path``
    (atomically: a temporary file in the same directory, then a rename).

    Raises ``ValueError`` when the last run was not recorded per task (run it
    with ``trace=`` or ``summary=True``).
    """
    record = graph.last_run
    if not isinstance(record, RunRecord) or record.tasks is None:
        raise ValueError("the last run of this graph was not recorded per task; run it with trace=PATH or summary=True")
    document = {
        "traceEvents": trace_events(record, str(graph.name), getattr(graph, "output", None)),
        "displayTimeUnit": "ms",
        "otherData": {
            "graph": str(graph.name),
            "runner": record.runner,
            "ncores": record.ncores,
            "wall_seconds": record.wall,
            "error": record.error,
            "clock": "time.monotonic (CLOCK_MONOTONIC), ts relative to the start of the run",
        },
    }
    # json.dumps, not json.dump: only the one-shot form uses the C encoder (3x faster)
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def trace_events(
    record: RunRecord, graph_name: str = "taskmap", output: Mapping[Any, str] | None = None
) -> list[dict[str, Any]]:
    """The trace events of a recorded run (see the module docstring);
    ``output``: the graph's task output, whose tails failed tasks carry."""
    output = output or {}
    t0 = record.started
    coordinator = record.coordinator_pid if record.coordinator_pid is not None else os.getpid()
    tasks = record.tasks or []

    def us(t: float) -> float:
        return round((t - t0) * 1e6, 3)

    events: list[dict[str, Any]] = []
    drawn = [t for t in tasks if t.start is not None and t.end is not None and t.worker is not None]
    # tasks cut off by the end of the run (interrupted, or stopped by raise_errors):
    # drawn from when they were handed out to the end of the run
    drawn += [t for t in record.unfinished or () if t.worker is not None]
    # (the filters above leave records with worker, start and end set; an
    # unfinished one has them from its handing out: mypy cannot see either)
    ran = cast("list[_Ran]", drawn)

    # -- lane rows per process: greedy interval colouring -----------------
    by_lane: dict[tuple[int, str], list[_Ran]] = defaultdict(list)
    for t in ran:
        by_lane[t.worker, t.lane].append(t)
    row_of: dict[int, int] = {}  # id(task record) -> row number within its lane
    rows_in: dict[tuple[int, str], int] = {}
    for key, group in by_lane.items():
        coloured = _colour(group)
        rows_in[key] = max(coloured.values()) + 1 if coloured else 0
        row_of.update(coloured)

    first_start: dict[int, float] = {}
    for t in ran:
        if t.worker not in first_start or t.start < first_start[t.worker]:
            first_start[t.worker] = t.start
    first_start.pop(coordinator, None)
    pids = [coordinator, *sorted(first_start, key=first_start.__getitem__)]
    tid_of: dict[tuple[int, str, int], int] = {}
    scheduler_tid = CPU_TID  # the coordinator's own row: after its lane rows, if any
    for order, pid in enumerate(pids):
        n_cpu = rows_in.get((pid, CPU), 0)
        n_io = rows_in.get((pid, IO), 0)
        rows: list[tuple[int, str, int]] = []  # (tid, row name, sort position)
        for row in range(n_cpu):
            # cpu row 0 is tid 1; spill-over rows (rare) come after the io rows
            tid = CPU_TID if row == 0 else FIRST_IO_TID + n_io + row - 1
            tid_of[pid, CPU, row] = tid
            rows.append((tid, "cpu" if row == 0 else f"cpu {row + 1}", 1 + row))
        for row in range(n_io):
            tid_of[pid, IO, row] = FIRST_IO_TID + row
            rows.append((FIRST_IO_TID + row, f"io {row + 1}", 1 + n_cpu + row))
        if pid == coordinator:
            # a small tid of its own, never 0 (some Perfetto versions merge tid 0 into 1)
            scheduler_tid = max((tid for tid, _, _ in rows), default=0) + 1
            rows.append((scheduler_tid, "scheduler", 0))
        name = "coordinator" if pid == coordinator else f"worker {pid}"
        first_tid = min(tid for tid, _, _ in rows) if rows else CPU_TID
        events.append(_meta("process_name", pid, first_tid, {"name": name}))
        events.append(_meta("process_sort_index", pid, first_tid, {"sort_index": order}))
        for tid, label, sort in rows:
            events.append(_meta("thread_name", pid, tid, {"name": label}))
            events.append(_meta("thread_sort_index", pid, tid, {"sort_index": sort}))

    # -- one complete event per task that ran ------------------------------
    for t in ran:
        args: dict[str, Any] = {
            "task": str(t.name),
            "status": t.status,
            "lane": t.lane,
            "attempts": t.attempts,
            "worker": t.worker,
        }
        if t.status == UNFINISHED:
            args["note"] = "still running when the run ended; drawn from when it was handed out"
        else:
            if t.handed is not None and t.handed <= t.start:
                # (a task sent ahead behind its parent counts as handed out when
                # the parent's result arrives, often after it started: no figure)
                args["queued_ms"] = round((t.start - t.handed) * 1e3, 3)
            args["returned_ms"] = round((t.received - t.end) * 1e3, 3)
        if t.error is not None:
            args["error"] = t.error
        if t.status == FAILED and output.get(t.name):
            args["output"] = tail_lines(output[t.name], TRACE_TAIL_LINES, TRACE_TAIL_CHARS)
        event = {
            "name": str(t.name),
            "cat": t.lane,
            "ph": "X",
            "ts": us(t.start),
            "dur": round((t.end - t.start) * 1e6, 3),
            "pid": t.worker,
            "tid": tid_of[t.worker, t.lane, row_of[id(t)]],
            "args": args,
        }
        if t.status == FAILED:
            event["cname"] = "terrible"  # red in chrome://tracing
        events.append(event)

    # -- the coordinator's scheduler row -----------------------------------
    end = record.ended if record.ended is not None else max((t.received for t in tasks), default=t0)
    run_args: dict[str, Any] = {"runner": record.runner, "ncores": record.ncores, "tasks": len(tasks)}
    if record.error is not None:
        run_args["error"] = record.error
    events.append(
        {
            "name": f"run {graph_name}",
            "cat": "run",
            "ph": "X",
            "ts": 0.0,
            "dur": round((end - t0) * 1e6, 3),
            "pid": coordinator,
            "tid": scheduler_tid,
            "args": run_args,
        }
    )
    ran_ids = {id(t) for t in ran}
    for rec in tasks:
        if id(rec) in ran_ids:
            continue
        # never ran: skipped (an ancestor failed), or failed before it could
        # start (e.g. its argument could not be sent)
        args = {"task": str(rec.name), "status": rec.status}
        if rec.failed_ancestor is not None:
            args["failed_ancestor"] = str(rec.failed_ancestor)
        if rec.error is not None:
            args["error"] = rec.error
        if rec.status == FAILED and output.get(rec.name):
            args["output"] = tail_lines(output[rec.name], TRACE_TAIL_LINES, TRACE_TAIL_CHARS)
        events.append(
            {
                "name": f"{rec.status} {rec.name}",
                "cat": rec.status,
                "ph": "i",
                "s": "t",
                "ts": us(rec.received),
                "pid": coordinator,
                "tid": scheduler_tid,
                "args": args,
            }
        )
    events.extend(_counter_events(tasks, record.unfinished or [], coordinator, scheduler_tid, us))
    # waits for a unit or a rate slot (limits=, rates=): async slices, one
    # track per resource, on the coordinator (the task was sent nowhere yet)
    for k, (task, resource, start, end) in enumerate(record.resource_waits or ()):
        common = {"cat": "resource wait", "id": k, "pid": coordinator, "tid": scheduler_tid}
        name = f"{task} waits for {resource}"
        events.append(
            {"name": name, "ph": "b", "ts": us(start), **common, "args": {"task": str(task), "resource": resource}}
        )
        events.append({"name": name, "ph": "e", "ts": us(end), **common})
    return events


def _colour(group: list[_Ran]) -> dict[int, int]:
    """Rows for intervals so that no row holds two overlapping ones: each
    goes to the lowest-numbered row free at its start.  O(n log n)."""
    rows: dict[int, int] = {}
    busy: list[tuple[float, int]] = []  # (end, row) of rows in use
    free: list[int] = []  # rows free again, lowest first
    count = 0
    for t in sorted(group, key=lambda t: (t.start, t.end)):
        while busy and busy[0][0] <= t.start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            row = heapq.heappop(free)
        else:
            row = count
            count += 1
        rows[id(t)] = row
        heapq.heappush(busy, (t.end, row))
    return rows


def _counter_events(
    tasks: list[TaskRecord], unfinished: list[TaskRecord], pid: int, tid: int, us: Callable[[float], float]
) -> list[dict[str, Any]]:
    """A ``tasks`` counter: how many are in flight (handed out, outcome not
    yet recorded) and how many have finished, at each change."""
    changes: list[tuple[float, int, int]] = []  # (time, in-flight delta, finished delta)
    changes += [(t.handed, 1, 0) for t in unfinished if t.handed is not None]
    for t in tasks:
        if t.handed is not None:
            changes.append((t.handed, 1, 0))
            changes.append((t.received, -1, 1))
        else:
            changes.append((t.received, 0, 1))
    changes.sort()
    out: list[dict[str, Any]] = []
    in_flight = finished = 0
    for when, d_flight, d_done in changes:
        in_flight += d_flight
        finished += d_done
        sample = {
            "name": "tasks",
            "ph": "C",
            "ts": us(when),
            "pid": pid,
            "tid": tid,
            "args": {"in flight": in_flight, "finished": finished},
        }
        if out and out[-1]["ts"] == sample["ts"]:
            out[-1] = sample  # same instant: keep the last value
        else:
            out.append(sample)
    return out


def _meta(kind: str, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": args}
