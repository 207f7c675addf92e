"""Observers: optional hooks the runners call at the events of a run.

In the manner of trio's ``Instrument`` and dask's ``Callback``, progress bars,
timelines, summaries and the checkpoint store are observers: the core calls
them, it never contains them.  Every runner builds its list of observers with
:func:`build_observers` and hands it to the :class:`~taskmap.bookkeeping.Bookkeeper`,
which is the one place outcomes are recorded, so every runner reports the same
events in the same order:

    run_started  (once)
    task_started (each time a task is handed to a worker / started in-process)
    task_finished (once per task that ends: done, failed or skipped; a retried
                   attempt that failed is not reported, only the final outcome)
    tasks_added  (an expanded task's elements joined the run, see expand=)
    run_finished (once, also when the run is interrupted or raises)

Observers are called in the coordinator's thread and must return quickly: the
run waits for them.  An observer that raises stops the run (it is a bug, not a
task failure).  With no observer the runners pay nothing per task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskmap.graph import Graph

# task_finished statuses: the one vocabulary of a task's outcome
# (taskmap.observe.status, re-exported here; "not run" never reaches task_finished)
from taskmap.observe.status import DONE as DONE
from taskmap.observe.status import FAILED as FAILED
from taskmap.observe.status import SKIPPED as SKIPPED

# lanes a task runs in
IO = "io"
CPU = "cpu"


@dataclass(slots=True)
class RunInfo:
    """What an observer learns when a run starts (:meth:`Observer.run_started`)."""

    runner: str  # "run", "run_async", "run_parallel", "run_parallel_async", ...
    """The runner's name: ``"run"``, ``"run_async"``, ``"run_parallel"``, ``"run_parallel_async"`` or ``"run_dask"``."""
    ncores: int  # worker processes (1 for the in-process runners)
    """Worker processes (1 for the in-process runners)."""
    tasks: list  # names of the tasks this run will try to finish, in graph order
    """Names of the tasks this run will try to finish, in graph order."""
    started: float  # time.monotonic() when the run started
    """``time.monotonic()`` when the run started."""
    coordinator_pid: int
    """The pid of the process that runs the graph (the caller's)."""
    # how many ready tasks wait for a unit or a rate slot now (limits=,
    # rates=); None when the run bounds no resource.  Safe to call from an
    # observer's own thread (it reads one int).
    waiting_for_resources: Callable[[], int] | None = None


@dataclass(slots=True)
class TaskEvent:
    """The outcome of one task.

    ``start``/``end`` are ``time.monotonic()`` seconds; for tasks run in a
    worker they are the worker's own clock readings (CLOCK_MONOTONIC is
    system-wide on Linux, so they compare with the coordinator's), ``None``
    for a skipped task.  ``worker`` is the pid that ran it (the coordinator's
    own pid for in-process runners), ``None`` when skipped.  ``value`` is the
    result (the exception for a failure, the ancestor string for a skip);
    ``payload`` is the result already encoded by :mod:`taskmap.runtime.codec` when the
    runner has it (saves an observer that stores results a second encode).
    """

    name: Any
    status: str  # DONE, FAILED or SKIPPED
    lane: str  # IO or CPU
    start: float | None = None
    end: float | None = None
    worker: int | None = None
    attempts: int = 1
    value: Any = None
    payload: bytes | None = None
    failed_ancestor: Any = None  # for a skipped task: the task whose failure skipped it


class Observer:
    """Base class of observers; every hook is a no-op, override what you need.

    Pass instances to any runner as ``observers=[...]``.  Each run calls, in
    this order: :meth:`run_started` once; :meth:`task_started` each time a
    task is handed out; :meth:`task_finished` once per task that ends for
    good (done, failed after its last attempt, or skipped);
    :meth:`tasks_added` when a task expands; :meth:`run_finished` once, also
    when the run raises or is interrupted.  Hooks are called in the
    coordinator's thread (the caller's, or the ``taskmap-run`` thread of
    :func:`taskmap.start`) and the run waits for them, so return quickly.
    An observer that raises stops the run: it is a bug, not a task failure.
    The progress bar, the trace, the live page and the checkpoint store are
    observers.
    """

    def run_started(self, graph: Graph, info: RunInfo) -> None:
        """The run is about to start its first task."""

    def task_started(self, name: Any, worker: int | None, lane: str, when: float) -> None:
        """Task ``name`` was handed to ``worker`` (pid) at ``when`` (monotonic).

        For the parallel runners this is the coordinator's send time; the
        worker's own start time arrives in :meth:`task_finished`.
        """

    def task_finished(self, event: TaskEvent) -> None:
        """A task ended for good (after its last attempt) or was skipped."""

    def tasks_added(self, task: Any, elements: list) -> None:
        """``task`` expanded (``create_graph(expand=...)``): ``elements``
        (names ``task[i]`` to run, those finished in an earlier run left out)
        joined the run; each is started and finishes as a task does, and so
        does ``task`` itself once they all have."""

    def run_finished(self, graph: Graph, error: BaseException | None) -> None:
        """The run ended; ``error`` is what it raises, if anything."""


@dataclass(slots=True)
class Observers:
    """The observers of one run, called in order.  Falsy when empty, so the
    hot paths test ``if observers:`` and pay nothing otherwise."""

    items: list[Observer] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.items)

    def run_started(self, graph: Graph, info: RunInfo) -> None:
        for o in self.items:
            o.run_started(graph, info)

    def task_started(self, name: Any, worker: int | None, lane: str, when: float) -> None:
        for o in self.items:
            o.task_started(name, worker, lane, when)

    def task_finished(self, event: TaskEvent) -> None:
        for o in self.items:
            o.task_finished(event)

    def tasks_added(self, task: Any, elements: list) -> None:
        for o in self.items:
            o.tasks_added(task, elements)

    def run_finished(self, graph: Graph, error: BaseException | None) -> None:
        # every observer hears the end, even when an earlier one raises
        first: BaseException | None = None
        for o in self.items:
            try:
                o.run_finished(graph, error)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if first is None:
                    first = exc
        if first is not None and error is None:
            raise first


def build_observers(
    graph: Graph,
    progress: bool | None = None,
    trace: str | os.PathLike[str] | None = None,
    observers: Iterable[Observer] | None = None,
    summary: bool = False,
) -> Observers:
    """The observers of one run, from the runner options.

    ``progress``: True shows a progress bar on stderr (:mod:`taskmap.observe.progress`);
    None (the default) and False show none.  ``trace``: a path to write the
    run's timeline to, in the Chrome trace-event format (:mod:`taskmap.observe.trace`).
    ``summary``: record each task's times and worker in ``graph.last_run`` for
    :func:`taskmap.summarize` (implied by ``trace``; see :mod:`taskmap.observe.record`
    for what it costs).  ``observers`` are the caller's own
    :class:`Observer` objects, called last.

    With none of these and no checkpoint store the result is empty, and the
    run pays nothing per task.
    """
    items: list[Observer] = []
    if graph.checkpoint is not None:
        # the durable store records each outcome as it happens (taskmap.checkpoint)
        items.append(graph.checkpoint.observer())
    # the modules below are imported only when asked for: a plain run never loads tqdm
    if summary or trace is not None:
        from taskmap.observe.record import RunRecorder

        items.append(RunRecorder())
    if progress:
        from taskmap.observe.progress import ProgressBar

        items.append(ProgressBar())
    if trace is not None:
        from taskmap.observe.trace import TraceWriter

        items.append(TraceWriter(trace))
    if observers:
        items.extend(observers)
    return Observers(items)
