"""Applying task outcomes to the graph: the one place every runner records a
result, a failure and the skipped descendants of a failure.

It joins the pure :class:`~taskmap.scheduling.state.SchedulingState` (numbers) and the
user's :class:`~taskmap.graph.Graph` (names, results, ``done``, ``output``), and calls the
run's observers (:mod:`taskmap.observe.observers`: progress, trace, checkpoint store,
the caller's own) and its logging at each event.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskmap.errors import TaskFailedError
from taskmap.graph import Graph
from taskmap.observe.logs import RunLog
from taskmap.observe.observers import (
    CPU,
    DONE,
    FAILED,
    IO,
    SKIPPED,
    FinishedBatch,
    Observers,
    RunInfo,
    StartedBatch,
    TaskEvent,
)
from taskmap.observe.output import DEFAULT, OutputCollector, OutputOptions
from taskmap.observe.record import RunRecord
from taskmap.scheduling.state import SchedulingState, TaskState, ancestor_failed_message

if TYPE_CHECKING:
    from taskmap.element_book import ElementBook


class Bookkeeper:
    """Records outcomes of one run into ``graph`` and ``state``.

    With ``raise_errors`` the first failure is recorded, then raised as a
    :class:`TaskFailedError` chained to the task's own exception.
    """

    __slots__ = (
        "attempts",
        "collector",
        "done",
        "elements",
        "graph",
        "held_flush",
        "log",
        "measures_durations",
        "names",
        "ncores",
        "observers",
        "outputs",
        "pid",
        "raise_errors",
        "record",
        "results",
        "runner",
        "start_batches",
        "started_at",
        "state",
    )

    def __init__(
        self,
        graph: Graph,
        state: SchedulingState,
        raise_errors: bool = False,
        observers: Observers | None = None,
        runner: str = "run",
        ncores: int = 1,
        measures_durations: bool = False,
        output: OutputOptions = DEFAULT,
    ) -> None:
        self.graph = graph
        self.state = state
        self.log = RunLog(graph.name)
        self.raise_errors = raise_errors
        self.names = state.names
        self.results = graph.results
        self.done = graph.done
        # None when nobody observes: the per-task paths test it, and testing
        # None costs less than calling Observers.__bool__ for every task
        self.observers: Observers | None = observers if observers else None
        self.runner = runner
        self.ncores = ncores
        # the runner writes graph.durations[task] for every task it runs
        self.measures_durations = measures_durations
        # when each task was last started (only kept when someone observes);
        # tasks handed out together are kept as (tasks, when) until a start
        # time is looked up (rarely: a failure with no times of its worker's)
        self.started_at: dict[int, float] = {}
        self.start_batches: list[tuple[list[int], float]] = []
        self.held_flush: Callable[[], None] | None = None  # see hold_events
        self.pid = os.getpid()  # (the in-process runners' worker, in every event)
        # attempts per task, for runners that retry (the coordinator's list)
        self.attempts: list[int] | None = None
        self.record: RunRecord | None = None
        # what tasks write: the runner (or the coordinator) feeds the
        # collector; a task's text goes to graph.output when it is recorded
        self.collector = OutputCollector(self.names, output, str(graph.name))
        self.outputs = graph.output
        # expanded tasks (create_graph(expand=...)); None for static graphs,
        # which pay one test per recorded outcome for it
        self.elements: ElementBook | None = None
        if state.expanding:
            from taskmap.element_book import ElementBook

            self.elements = ElementBook(self, state, expands=True)  # type: ignore[arg-type]

    def args(self, i: int) -> list:
        """The arguments of task i: its parents' results in order, None left out."""
        if self.elements is not None and i >= self.elements.n_static:
            return self.elements.args(i)
        results, names = self.results, self.names
        out = []
        for p in self.state.parents[i]:
            value = results.get(names[p])
            if value is not None:
                out.append(value)
        return out

    def hold_events(self) -> None:
        """An in-process runner's: let the observers hold per-task events and
        hear them in batches when they all can (:meth:`Observers.hold`).
        Before :meth:`start`."""
        if self.observers is not None:
            self.held_flush = self.observers.hold()

    def start(self) -> None:
        """Start the scheduling state, tell the observers, log the queued tasks."""
        state = self.state
        state.start()
        # graph.last_run: O(1) per run; per-task detail only when a
        # RunRecorder observes the run (taskmap.observe.record)
        now = time.monotonic()
        self.record = self.graph.last_run = RunRecord(
            self.runner,
            self.ncores,
            now,
            len(self.graph.done),
            measures_durations=self.measures_durations,
        )
        if self.observers:
            names, st = state.names, state.state
            done = TaskState.DONE
            info = RunInfo(
                runner=self.runner,
                ncores=self.ncores,
                tasks=[name for name, s in zip(names, st) if s != done] if done in st else list(names),
                started=now,
                coordinator_pid=os.getpid(),
                waiting_for_resources=state.waiting_in_gate if state.gate is not None else None,
                flush=self.held_flush,
            )
            self.observers.run_started(self.graph, info)
        if self.log.manager_on:
            self.log.queueing(state.names[i] for i in state.queued_io() + sorted(i for _, i in state.ready_cpu))
        if self.elements is not None:
            self.elements.after_event()

    def starting(self, i: int, pid: int | None = None) -> None:
        """Task i was started (in-process) or handed to worker ``pid``."""
        self.log.starting(self.names[i], pid)
        observers = self.observers
        if observers is not None:
            now = time.monotonic()
            self.started_at[i] = now
            if observers.started:
                observers.task_started(self.names[i], pid or self.pid, IO if self.state.is_io[i] else CPU, now)

    def started_together(self, tasks: list[int], pid: int | None) -> None:
        """``tasks`` were handed to worker ``pid`` in one message: the
        observers hear them as one batch."""
        log = self.log
        if log.worker_on:
            names = self.names
            for i in tasks:
                log.starting(names[i], pid)
        observers = self.observers
        if observers is not None:
            now = time.monotonic()
            self.start_batches.append((tasks, now))
            if observers.started:
                observers.tasks_started(StartedBatch(tasks, self.names, self.state.is_io, pid or self.pid, now))

    def finish(self, error: BaseException | None = None) -> None:
        """The run ended (``error``: what it raises); tell the observers."""
        if self.record is not None:
            gate = self.state.gate
            if gate is not None:
                self.record.resources = gate.report()
                names = self.state.names
                self.record.resource_waits = [(names[i], gate.names[r], start, end) for i, r, start, end in gate.spans]
            self.record.finish(error)
        if self.observers:
            self.observers.run_finished(self.graph, error)

    def _event(self, i, status, value, pid, start, end, payload=None) -> TaskEvent:
        if start is None:
            if self.start_batches:
                for tasks, when in self.start_batches:
                    self.started_at.update(dict.fromkeys(tasks, when))
                self.start_batches.clear()
            start = self.started_at.get(i)
            end = time.monotonic()
        # positional: a keyword call of the dataclass costs 4x as much (1.2 us)
        return TaskEvent(
            self.names[i],  # name
            status,
            IO if self.state.is_io[i] else CPU,  # lane
            start,
            end,
            pid or self.pid,  # worker
            self.attempts[i] if self.attempts is not None else 1,  # attempts
            value,
            payload,
        )

    def succeeded(
        self,
        i: int,
        value,
        pid: int | None = None,
        start: float | None = None,
        end: float | None = None,
        payload: bytes | None = None,
    ) -> None:
        """Record task i's result.  ``start``/``end``: the worker's monotonic
        clock around the call, when it ran elsewhere; ``payload``: the result
        already encoded, when the runner has it."""
        self.recorded_success(i, value, pid, start, end, payload, self.state.finished(i))

    def recorded_success(
        self,
        i: int,
        value,
        pid: int | None,
        start: float | None,
        end: float | None,
        payload: bytes | None,
        became: int,
        notify: bool = True,
    ) -> None:
        """Record task i's result, the state already told (``became``: how
        many children became ready); see :meth:`succeeded`.  ``notify``:
        False when the caller tells the observers (a batch)."""
        name = self.names[i]
        elements = self.elements
        if elements is not None and i >= elements.n_static:
            elements.set_value(i, value, True)
        else:
            self.results[name] = value
            self.done.append(name)
        if self.collector.kept or self.outputs:
            self._take_output(i, name)
        self.log.finished(name, pid)
        if notify:
            observers = self.observers
            if observers is not None and observers.finished:
                observers.task_finished(self._event(i, DONE, value, pid, start, end, payload))
        if became and self.log.manager_on:
            state, names = self.state, self.names
            self.log.queueing(names[c] for c in state.children[i] if state.state[c] == TaskState.READY)
        if elements is not None:
            elements.after_event()

    def recorded_successes(self, rows: list[tuple], followers: list[int]) -> None:
        """One results message's successes, the state already told: the
        ledger's rows ``(task, value, pid, start, end, payload, became,
        follower)``; a ``follower`` >= 0 (the task pinned behind it) starts
        now; ``followers`` are those.  Observers hear outcomes and starts in
        batches (see :meth:`_announce`)."""
        log = self.log
        if self.elements is None and not (self.collector.kept or self.outputs or log.worker_on or log.manager_on):
            # (the common case: values into the graph in a few C-level passes)
            names = self.names
            done = [names[row[0]] for row in rows]
            self.results.update(zip(done, [row[1] for row in rows]))
            self.done.extend_new(done)
        else:
            one = self.recorded_success
            for task, value, pid, start, end, payload, became, _ in rows:
                one(task, value, pid, start, end, payload, became, False)
        observers = self.observers
        if log.worker_on or (observers is not None and (observers.started or observers.finished)):
            self._announce(rows, followers)

    def _announce(self, rows: list[tuple], followers: list[int]) -> None:
        """The outcomes of ``rows`` (one message's: one worker's) and the
        starts of the tasks pinned behind them.  A task's start is always
        told before its own outcome (which may be in the same rows: it ran
        behind its parent at the worker).  When an observer takes starts or
        outcomes one at a time (``observers.exact_order``), each start also
        comes after its parent's outcome: outcomes up to one of a task
        started in these rows, then the starts so far, and so on; else two
        batches: the starts, then the outcomes."""
        observers = self.observers
        hear = observers is not None and bool(observers.finished)
        if not hear or not observers.exact_order:  # type: ignore[union-attr]
            # starts only, or batch observers: a start before its own outcome
            # is all the order kept (see Observer.tasks_started)
            if followers:
                self.started_together(followers, rows[0][2])
            if hear:
                self.observers.tasks_finished(FinishedBatch(rows, self.names, self.state.is_io, self.attempts))  # type: ignore[union-attr]
            return
        lo = 0
        waiting: dict[int | None, list[int]] = {}  # starts not told yet, by worker
        untold: set[int] = set()
        for k, row in enumerate(rows):
            if row[0] in untold:
                self._tell(rows, lo, k, waiting, hear)
                lo, waiting, untold = k, {}, set()
            if row[7] >= 0:
                waiting.setdefault(row[2], []).append(row[7])
                untold.add(row[7])
        self._tell(rows, lo, len(rows), waiting, hear)

    def _tell(self, rows: list[tuple], lo: int, hi: int, waiting: dict[int | None, list[int]], hear: bool) -> None:
        if hear and hi > lo:
            part = rows if lo == 0 and hi == len(rows) else rows[lo:hi]
            self.observers.tasks_finished(FinishedBatch(part, self.names, self.state.is_io, self.attempts))  # type: ignore[union-attr]
        for pid, tasks in waiting.items():
            self.started_together(tasks, pid)

    def _take_output(self, i: int, name) -> None:
        """graph.output[name]: what task i wrote in this run, or nothing."""
        text = self.collector.take(i)
        if text is None:
            self.outputs.pop(name, None)  # (from an earlier run)
        else:
            self.outputs[name] = text

    def failed(
        self,
        i: int,
        error: BaseException,
        pid: int | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        """Record task i's failure and skip its descendants; raise if asked."""
        self.recorded_failure(i, error, pid, start, end, self.state.failed(i))

    def recorded_failure(
        self,
        i: int,
        error: BaseException,
        pid: int | None,
        start: float | None,
        end: float | None,
        skipped: list[int],
    ) -> None:
        """Record task i's failure and its ``skipped`` descendants, the state
        already told; raise if asked.  See :meth:`failed`."""
        name = self.names[i]
        elements = self.elements
        if elements is not None and i >= elements.n_static:
            elements.set_value(i, error, False)
        else:
            self.results[name] = error
            self.done.append(name)
        if self.collector.kept or self.outputs:
            self._take_output(i, name)
        self.log.failed(name, error, pid)
        observers = self.observers
        if observers is not None and not observers.finished:
            observers = None  # (nobody hears outcomes)
        if observers is not None:
            observers.task_finished(self._event(i, FAILED, error, pid, start, end))
        if skipped:
            message = ancestor_failed_message(name)
            names, results, done = self.names, self.results, self.done
            is_io = self.state.is_io
            outputs = self.outputs
            for s in skipped:
                if elements is not None and s >= elements.n_static:
                    elements.set_value(s, message, False)
                else:
                    results[names[s]] = message
                    done.append(names[s])
                if outputs:
                    outputs.pop(names[s], None)  # (from an earlier run)
                if observers is not None:
                    observers.task_finished(
                        TaskEvent(  # (positional, see _event)
                            names[s],
                            SKIPPED,
                            IO if is_io[s] else CPU,
                            None,
                            None,
                            None,
                            0,
                            message,
                            None,
                            name,
                        )
                    )
            self.log.skipped(name, (names[s] for s in skipped))
        if self.raise_errors:
            raise TaskFailedError(name, error) from error
        if elements is not None:
            elements.after_event()

    def recorded_skip(self, s: int, root: int) -> None:
        """Task s was skipped for the failure of ``root`` without a failure
        of its own being recorded (an element created below a failed one)."""
        names = self.names
        message = ancestor_failed_message(names[root])
        elements = self.elements
        if elements is not None and s >= elements.n_static:
            elements.set_value(s, message, False)
        else:
            self.results[names[s]] = message
            self.done.append(names[s])
        if self.observers is not None and self.observers.finished:
            lane = IO if self.state.is_io[s] else CPU
            self.observers.task_finished(
                TaskEvent(names[s], SKIPPED, lane, None, None, None, 0, message, None, names[root])
            )
