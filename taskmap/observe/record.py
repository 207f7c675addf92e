"""The record of a run that ``graph.last_run`` holds, read by the summary and
the trace file.

Two levels, so that a run nobody asked to watch pays nothing per task:

* Every run: the :class:`~taskmap.bookkeeping.Bookkeeper` writes a
  :class:`RunRecord` when the run starts and stamps its end time when it
  ends -- O(1) per run (runner, cores, start and end, how long ``graph.done``
  was before the run, the error that ended it).
* When asked (``summary=True`` or ``trace=`` on a runner), a
  :class:`RunRecorder` observer adds one compact :class:`TaskRecord` per
  finished task (when and where it ran, its lane and status), which is what
  per-worker busy time and the timeline need.

Attaching the recorder to every run was measured and rejected (the bar was
2%): on 2,000 trivial tasks it costs 8-13% of ``run_parallel_async``'s
throughput and 28% of ``run``'s, about 1.5 us per task for the observer
hooks, the TaskEvent and the TaskRecord.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskmap.observe.observers import FAILED, Observer, RunInfo, TaskEvent

if TYPE_CHECKING:
    from taskmap.graph import Graph


@dataclass(slots=True)
class TaskRecord:
    """One finished task of a recorded run.  Times are ``time.monotonic()``
    seconds (system-wide on Linux, so worker and coordinator readings
    compare); ``start``/``end``/``worker`` are None for a skipped task."""

    name: Any
    status: str  # "done", "failed", "skipped", or "unfinished" (see RunRecord.unfinished)
    lane: str  # "io" or "cpu"
    worker: int | None  # pid that ran it
    start: float | None  # when its function started (the worker's clock; unfinished: handed)
    end: float | None  # when it returned or raised
    handed: float | None  # when the coordinator handed it out (last attempt)
    received: float  # when the coordinator recorded the outcome
    attempts: int
    error: str | None = None  # "Type: message" of a failure
    failed_ancestor: Any = None  # for a skipped task

    @property
    def seconds(self) -> float | None:
        """How long the function ran, None for a skipped task."""
        if self.start is None or self.end is None:
            return None
        return self.end - self.start


@dataclass(slots=True)
class RunRecord:
    """What is known about the last run of a graph (``graph.last_run``).

    ``done_before``: the length of ``graph.done`` when the run started, so
    ``graph.done[done_before:]`` are the tasks this run finished (in order)
    as long as nobody edits ``done`` in between.  ``tasks`` is None unless
    the run was recorded per task (see the module docstring).
    """

    runner: str
    ncores: int
    started: float  # time.monotonic()
    done_before: int
    ended: float | None = None
    error: str | None = None  # "Type: message" of what ended the run, if it raised
    tasks: list[TaskRecord] | None = None
    coordinator_pid: int | None = None  # set with ``tasks``
    # with ``tasks``: tasks still running when the run ended (it raised or was
    # interrupted), status "unfinished", ``end`` the end of the run
    unfinished: list[TaskRecord] | None = None
    # the runner wrote graph.durations[task] for each task it ran (the
    # parallel runners; run_dask for the results it brought back)
    measures_durations: bool = False
    # per resource with a limit or a rate: {"peak", "waited" (seconds, all
    # tasks), "limit", "rate"} (taskmap.scheduling.resources); None: nothing was bounded
    resources: dict | None = None
    # each wait for a unit or a rate slot: (task, resource, from, to), in
    # time.monotonic() seconds (drawn by the trace)
    resource_waits: list | None = None

    @property
    def wall(self) -> float | None:
        """Seconds from start to end of the run (None while it runs)."""
        return None if self.ended is None else self.ended - self.started

    def finish(self, error: BaseException | None) -> None:
        """Stamp the end of the run (called by the bookkeeper)."""
        self.ended = time.monotonic()
        if error is not None:
            self.error = describe_error(error)


UNFINISHED = "unfinished"  # status of a task still running when the run ended


def describe_error(error: BaseException) -> str:
    """``Type: message`` (just ``Type`` when the message is empty)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RunRecorder(Observer):
    """Adds a :class:`TaskRecord` per finished task to ``graph.last_run``,
    and one per task still running when the run ends (``unfinished``).

    Keeps no results and no encoded payloads, only names, times and pids.
    """

    __slots__ = ("handed", "record", "tasks")

    def __init__(self) -> None:
        self.record: RunRecord | None = None
        self.tasks: list[TaskRecord] = []
        # task -> (handed out at, worker pid, lane) of its last attempt
        self.handed: dict[Any, tuple[float, int | None, str]] = {}

    def run_started(self, graph: Graph, info: RunInfo) -> None:
        self.tasks = []
        self.handed = {}
        record = graph.last_run
        self.record = record if isinstance(record, RunRecord) else None
        if self.record is not None:
            self.record.tasks = self.tasks
            self.record.coordinator_pid = info.coordinator_pid

    def task_started(self, name: Any, worker: int | None, lane: str, when: float) -> None:
        self.handed[name] = (when, worker, lane)  # a retried task keeps its last attempt

    def task_finished(self, event: TaskEvent) -> None:
        value = event.value
        handed = self.handed.pop(event.name, None)
        # positional: a keyword call of the dataclass costs 4x as much
        self.tasks.append(
            TaskRecord(
                event.name,
                event.status,
                event.lane,
                event.worker,
                event.start,
                event.end,
                None if handed is None else handed[0],  # handed
                time.monotonic(),  # received
                event.attempts,
                describe_error(value) if event.status == FAILED and isinstance(value, BaseException) else None,  # error
                event.failed_ancestor,
            )
        )

    def run_finished(self, graph: Graph, error: BaseException | None) -> None:
        record = self.record
        if record is None:
            return
        end = record.ended if record.ended is not None else time.monotonic()
        record.unfinished = [
            TaskRecord(name, UNFINISHED, lane, worker, when, end, when, end, 1)
            for name, (when, worker, lane) in self.handed.items()
        ]
        self.handed = {}
