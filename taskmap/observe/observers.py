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
task failure).  With no observer the runners pay nothing per task, and an
observer pays only for the hooks it overrides.

Starts and outcomes also come in batches (:meth:`Observer.tasks_started`,
:meth:`Observer.tasks_finished`): what one message to or from a worker
carried.  Their defaults call the per-task hooks; an observer that overrides
a batch hook costs the run one call per batch, and the batch builds its
items only when read, which may be later and in the observer's own thread
(the live page does so): per task, the run then pays nothing for it.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
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

# events an in-process runner holds back before handing them over (Observers.hold)
HELD_BATCH = 64


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
    # the in-process runners hold starts and outcomes back and hand them over
    # in batches when every observer hearing them takes batches from any
    # thread (the live page); such an observer calls this, from any thread,
    # to be handed what is held now (a task that has run long is shown
    # running).  None otherwise.
    flush: Callable[[], None] | None = None


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

    # (internal) True: this observer's batch hooks may be called from any
    # thread, which lets the in-process runners hold events for it (see
    # RunInfo.flush); only for observers that merely queue what they are given
    _batches_from_any_thread = False

    def run_started(self, graph: Graph, info: RunInfo) -> None:
        """The run is about to start its first task."""

    def task_started(self, name: Any, worker: int | None, lane: str, when: float) -> None:
        """Task ``name`` was handed to ``worker`` (pid) at ``when`` (monotonic).

        For the parallel runners this is the coordinator's send time; the
        worker's own start time arrives in :meth:`task_finished`.
        """

    def task_finished(self, event: TaskEvent) -> None:
        """A task ended for good (after its last attempt) or was skipped."""

    def tasks_started(self, batch: Sequence[tuple[Any, int | None, str, float]]) -> None:
        """Tasks handed out together (one message to one worker), as
        ``(name, worker, lane, when)`` tuples.  The default calls
        :meth:`task_started` for each; override it to take the batch whole
        (it may be kept and read later, from any thread).

        Order: a task's start is told before its outcome.  A task that ran
        pinned behind its parent at a worker starts when its parent's
        outcome arrives, and its own outcome may come in the same message:
        an observer taking both starts and outcomes in batches may then be
        told its start before its parent's outcome (never after its own);
        one taking either per task is told every event in its exact order."""
        for name, worker, lane, when in batch:
            self.task_started(name, worker, lane, when)

    def tasks_finished(self, batch: Sequence[TaskEvent]) -> None:
        """Tasks that ended together (one message from one worker), as
        :class:`TaskEvent` objects.  The default calls :meth:`task_finished`
        for each; override it to take the batch whole (it may be kept and
        read later, from any thread)."""
        for event in batch:
            self.task_finished(event)

    def tasks_added(self, task: Any, elements: list) -> None:
        """``task`` expanded (``create_graph(expand=...)``): ``elements``
        (names ``task[i]`` to run, those finished in an earlier run left out)
        joined the run; each is started and finishes as a task does, and so
        does ``task`` itself once they all have."""

    def run_finished(self, graph: Graph, error: BaseException | None) -> None:
        """The run ended; ``error`` is what it raises, if anything."""


class StartedBatch(Sequence[tuple[Any, "int | None", str, float]]):
    """Tasks handed to one worker at once: a sequence of ``(name, worker,
    lane, when)``, each made when read.  ``tasks`` are the run's task numbers,
    ``names`` and ``is_io`` the run's tables (read only; they outlive the
    run, so a batch may be read after it)."""

    __slots__ = ("is_io", "names", "tasks", "when", "worker")

    def __init__(self, tasks: Sequence[int], names: Sequence[Any], is_io: Any, worker: int | None, when: float) -> None:
        self.tasks, self.names, self.is_io, self.worker, self.when = tasks, names, is_io, worker, when

    def __len__(self) -> int:
        return len(self.tasks)

    def _item(self, i: int) -> tuple[Any, int | None, str, float]:
        return (self.names[i], self.worker, IO if self.is_io[i] else CPU, self.when)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self._item(i) for i in self.tasks[k]]
        return self._item(self.tasks[k])

    def __iter__(self) -> Iterator[tuple[Any, int | None, str, float]]:
        names, is_io, worker, when = self.names, self.is_io, self.worker, self.when
        for i in self.tasks:
            yield (names[i], worker, IO if is_io[i] else CPU, when)


class FinishedBatch(Sequence[TaskEvent]):
    """Tasks that succeeded together (one results message): a sequence of
    :class:`TaskEvent`, each made when read.  ``rows`` are the runtime's
    ``(task, value, worker, start, end, payload, ...)``; ``names``, ``is_io``
    and ``attempts`` the run's tables (read only; a finished task's entries
    do not change, so a batch may be read later and from another thread)."""

    __slots__ = ("attempts", "is_io", "names", "rows")

    def __init__(self, rows: Sequence[tuple], names: Sequence[Any], is_io: Any, attempts: Sequence[int] | None) -> None:
        self.rows, self.names, self.is_io, self.attempts = rows, names, is_io, attempts

    def __len__(self) -> int:
        return len(self.rows)

    def _event(self, row: tuple) -> TaskEvent:
        i = row[0]
        # (positional: a keyword call of the dataclass costs 4x as much)
        return TaskEvent(
            self.names[i],
            DONE,
            IO if self.is_io[i] else CPU,
            row[3],
            row[4],
            row[2],
            self.attempts[i] if self.attempts is not None else 1,
            row[1],
            row[5],
        )

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self._event(row) for row in self.rows[k]]
        return self._event(self.rows[k])

    def __iter__(self) -> Iterator[TaskEvent]:
        for row in self.rows:
            yield self._event(row)


def _overrides(observer: Observer, *hooks: str) -> bool:
    kind = type(observer)
    return any(getattr(kind, hook) is not getattr(Observer, hook) for hook in hooks)


def _start_as_batch(o: Observer) -> Callable[[Any, int | None, str, float], None]:
    take = o.tasks_started

    def start(name: Any, worker: int | None, lane: str, when: float) -> None:
        take(((name, worker, lane, when),))

    return start


def _outcome_as_batch(o: Observer) -> Callable[[TaskEvent], None]:
    take = o.tasks_finished

    def outcome(event: TaskEvent) -> None:
        take((event,))

    return outcome


@dataclass(slots=True)
class Observers:
    """The observers of one run, called in order.  Falsy when empty, so the
    hot paths test ``if observers:`` and pay nothing otherwise; ``started``
    and ``finished`` are the hooks of those observers that override a hook
    of task starts (of outcomes), each taking one item (a batch-taking
    observer gets a batch of one): a run pays per task only for hooks
    someone has, and tests ``if observers.started:`` first."""

    items: list[Observer] = field(default_factory=list)
    started: list[Callable[[Any, int | None, str, float], None]] = field(init=False)
    finished: list[Callable[[TaskEvent], None]] = field(init=False)
    started_batch: list[Callable[[Sequence[tuple[Any, int | None, str, float]]], None]] = field(init=False)
    finished_batch: list[Callable[[Sequence[TaskEvent]], None]] = field(init=False)
    # some observer hears both starts and outcomes, one of them per task: it
    # is told them in their exact order (see Observer.tasks_started)
    exact_order: bool = field(init=False)
    # every observer hearing starts or outcomes takes them in batches, from any thread
    batches_anywhere: bool = field(init=False)
    # held starts ((name, worker, lane, when) tuples) and outcomes (TaskEvent),
    # in order, while an in-process runner holds them (see hold); else None.
    # The run's thread appends without a lock (deque appends and pops are
    # atomic); whoever hands them over takes the lock, so that two hand-overs
    # (the run's, the page thread's) keep their order
    held: deque[Any] | None = field(init=False)
    hold_lock: threading.Lock = field(init=False)

    def __post_init__(self) -> None:
        items, self.items = self.items, []
        self.started, self.finished, self.started_batch, self.finished_batch = [], [], [], []
        self.exact_order = False
        self.batches_anywhere = True
        self.held = None
        self.hold_lock = threading.Lock()
        for o in items:
            self.add(o)

    def add(self, o: Observer) -> None:
        """Call ``o`` too, after the others."""
        self.items.append(o)
        batch_start, batch_end = _overrides(o, "tasks_started"), _overrides(o, "tasks_finished")
        hears_start = batch_start or _overrides(o, "task_started")
        hears_end = batch_end or _overrides(o, "task_finished")
        if hears_start and hears_end and not (batch_start and batch_end):
            self.exact_order = True
        if (hears_start or hears_end) and not (
            o._batches_from_any_thread and (batch_start or not hears_start) and (batch_end or not hears_end)
        ):
            self.batches_anywhere = False
        if _overrides(o, "tasks_started"):
            self.started.append(_start_as_batch(o))
            self.started_batch.append(o.tasks_started)
        elif _overrides(o, "task_started"):
            self.started.append(o.task_started)
            self.started_batch.append(o.tasks_started)
        if _overrides(o, "tasks_finished"):
            self.finished.append(_outcome_as_batch(o))
            self.finished_batch.append(o.tasks_finished)
        elif _overrides(o, "task_finished"):
            self.finished.append(o.task_finished)
            self.finished_batch.append(o.tasks_finished)

    def __bool__(self) -> bool:
        return bool(self.items)

    def hold(self) -> Callable[[], None] | None:
        """For an in-process runner, which starts and ends tasks one at a
        time: when every observer hearing starts or outcomes takes batches
        from any thread (the live page), hold the per-task events and hand
        them over in batches of :data:`HELD_BATCH` (and before any other
        event); returns the thread-safe flush (for :attr:`RunInfo.flush`),
        or None when the events are told as they come."""
        if not self.batches_anywhere or not (self.started or self.finished):
            return None
        self.held = deque()
        return self.flush

    def flush(self) -> None:
        """Hand over the events held so far (any thread)."""
        with self.hold_lock:
            self._flush_held()

    def _flush_held(self) -> None:
        """Hand over what is held (``hold_lock`` held)."""
        held = self.held
        if not held:
            return
        popleft = held.popleft
        taken = [popleft() for _ in range(len(held))]
        # the starts, then the outcomes: each task's start comes before its
        # own outcome, which is all the order batches keep (see
        # Observer.tasks_started); one task at a time, the held events
        # alternate, and in their exact order would be batches of one
        starts = [e for e in taken if type(e) is tuple]
        if starts:
            for take_starts in self.started_batch:
                take_starts(starts)
        if len(starts) < len(taken):
            ends = [e for e in taken if type(e) is not tuple] if starts else taken
            for take_ends in self.finished_batch:
                take_ends(ends)

    def _tell_held(self) -> None:
        # (before any other event: the held ones come first)
        if self.held is not None:
            self.flush()

    def run_started(self, graph: Graph, info: RunInfo) -> None:
        for o in self.items:
            o.run_started(graph, info)

    def task_started(self, name: Any, worker: int | None, lane: str, when: float) -> None:
        held = self.held
        if held is not None:
            held.append((name, worker, lane, when))
            if len(held) >= HELD_BATCH:
                self.flush()
            return
        for hook in self.started:
            hook(name, worker, lane, when)

    def task_finished(self, event: TaskEvent) -> None:
        held = self.held
        if held is not None:
            held.append(event)
            if len(held) >= HELD_BATCH:
                self.flush()
            return
        for hook in self.finished:
            hook(event)

    def tasks_started(self, batch: Sequence[tuple[Any, int | None, str, float]]) -> None:
        self._tell_held()
        for hook in self.started_batch:
            hook(batch)

    def tasks_finished(self, batch: Sequence[TaskEvent]) -> None:
        self._tell_held()
        for hook in self.finished_batch:
            hook(batch)

    def tasks_added(self, task: Any, elements: list) -> None:
        self._tell_held()
        for o in self.items:
            o.tasks_added(task, elements)

    def run_finished(self, graph: Graph, error: BaseException | None) -> None:
        if self.held is not None:
            with self.hold_lock:
                self._flush_held()
                self.held = None  # (a late flush from another thread finds nothing)
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
