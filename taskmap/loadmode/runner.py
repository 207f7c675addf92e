"""Load mode's runner: instances of a scenario graph started on an open-loop
schedule inside ONE parallel run on the warm workers.

It is the parallel runtime's coordinator (:mod:`taskmap.runtime.coordinator`)
with three differences, all in :class:`LoadCoordinator`:

* arrivals are timers in the coordinator's own heap (``self.timers``, the
  one ``poll`` wait's timeout), one armed at a time: arrival ``k`` at the
  schedule's time for ``k`` (:mod:`taskmap.loadmode.schedule`), computed from
  ``k``, so nothing drifts; several due at once (the coordinator was busy)
  all start at the next wake-up, each still timed from its own scheduled
  time;
* each arrival adds a whole instance to the running ledger: the scenario's
  graph from ``make_scenario(k)`` becomes tasks ``(k, name)`` of an
  :class:`~taskmap.scheduling.instances.InstanceState` (slots reused from
  retired instances), the ledger's per-task tables are set for them
  (:meth:`~taskmap.scheduling.ledger.Ledger.place`, as it grows them for
  ``expand`` elements), their functions are shipped by a
  :class:`~taskmap.runtime.functions.Shipper` (code pickled once per
  distinct function), and the ledger dispatches them like any task;
* outcomes go to a :class:`LoadBook` instead of a graph: each task's run
  time into its name's histogram, each finished instance's latency from its
  scheduled arrival into the scenario's; the instance is then retired from
  the state, the ledger and the output collector, so memory stays flat
  however long the run.

An arrival while ``max_in_flight`` instances run is dropped and counted.
The run ends when the schedule has no more arrivals and the last instance
finished, or ``grace`` seconds after the schedule's end (instances still
running then are stopped and counted as unfinished), or when cancelled.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import math
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple, TextIO

from taskmap.cancellation import Cancellation
from taskmap.errors import RemoteTaskError, RunCancelled, SerializationError
from taskmap.graph import Graph, create_graph
from taskmap.heap import frozen_during
from taskmap.loadmode.live import LiveTable
from taskmap.loadmode.report import LoadReport
from taskmap.loadmode.schedule import Schedule, make_schedule
from taskmap.observe.output import CAPTURE, OutputOptions, resolve_output
from taskmap.runtime.coordinator import Coordinator, _sigterm_as_interrupt
from taskmap.runtime.functions import Shipper, UnsendableFunction
from taskmap.runtime.pool import WorkerPool, take_pool
from taskmap.scheduling.instances import InstanceState, Shape, shape_of
from taskmap.scheduling.ledger import Dispatch, WorkerJoined
from taskmap.scheduling.limits import TaskLimits, _check_retries, _check_timeout
from taskmap.scheduling.resources import ResourceGate

# the coordinator's timer kinds of a load run (the ledger's are 0..2)
ARRIVAL, TICK, GRACE = 10, 11, 12
_DISPATCH = Dispatch()
DEFAULT_MAX_IN_FLIGHT = 1000
DEFAULT_GRACE = 30.0


class _Discard(dict):  # type: ignore[type-arg]
    """The ledger's ``durations`` in a load run: per-task run times go to the
    report's histograms, not into a dict keyed by ever new names."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


class _GraceOver(Exception):
    """The grace period after the schedule's end is over."""


class LoadBook:
    """The coordinator's bookkeeper in a load run (the methods
    :class:`~taskmap.runtime.coordinator.Coordinator` calls on a
    :class:`~taskmap.bookkeeping.Bookkeeper`): records outcomes into the
    report, per instance."""

    elements = None  # (no expand= in a load run's state)

    def __init__(self, state: InstanceState, report: LoadReport, collector: Any) -> None:
        self.state = state
        self.report = report
        self.collector = collector
        self.attempts: list[int] | None = None
        # False while the warm-up instances run: nothing of them is measured
        self.recording = True
        # live instance -> [scheduled arrival, last end, first error or None]
        self.live: dict[int, list[Any]] = {}

    def start(self) -> None:
        pass

    def finish(self, error: BaseException | None) -> None:
        pass

    def starting(self, i: int, pid: int | None = None) -> None:
        pass

    def started_together(self, tasks: list[int], pid: int | None) -> None:
        pass

    def recorded_successes(self, rows: list[tuple], followers: list[int]) -> None:
        one = self.recorded_success
        for task, value, pid, start, end, payload, became, _follower in rows:
            one(task, value, pid, start, end, payload, became)

    def recorded_success(
        self,
        i: int,
        value: Any,
        pid: int | None,
        start: float | None,
        end: float | None,
        payload: bytes | None,
        became: int,
    ) -> None:
        k, name = self.state.names[i]
        if start is not None and end is not None and self.recording:
            self.report.task(name).ok(end - start)
            entry = self.live[k]
            if end > entry[1]:
                entry[1] = end
        if self.collector.kept:
            self.collector.take(i)

    def recorded_failure(
        self,
        i: int,
        error: BaseException,
        pid: int | None,
        start: float | None,
        end: float | None,
        skipped: list[int],
    ) -> None:
        k, name = self.state.names[i]
        text = self.collector.take(i) if self.collector.kept else None
        if isinstance(error, RemoteTaskError):  # (a class the coordinator could not rebuild)
            kind, message = error.type_name.rpartition(".")[2], error.message
        else:
            kind, message = type(error).__qualname__, str(error)
        if self.recording:
            self.report.task(name).failed(kind, message, text, k)
        entry = self.live[k]
        entry[1] = max(entry[1], end if end is not None else time.monotonic())
        if entry[2] is None:
            entry[2] = (kind, f"{name}: {message}")


class LoadCoordinator(Coordinator):
    """The coordinator of one load run (see the module docstring)."""

    __slots__ = (
        "applying",
        "checked_resources",
        "fired",
        "grace",
        "istate",
        "live_table",
        "make_scenario",
        "max_in_flight",
        "next_k",
        "report",
        "resource_names",
        "retries_spec",
        "schedule",
        "shapes",
        "shipper",
        "stopped_at",
        "t0",
        "timeout_spec",
        "warmup",
    )

    def __init__(
        self,
        make_scenario: Callable[[int], Graph],
        schedule: Schedule,
        pool: WorkerPool,
        ncores: int,
        max_in_flight: int,
        report: LoadReport,
        resources: tuple[Mapping[str, int], Mapping[str, float]] = ({}, {}),
        timeout: Any = None,
        retries: Any = 0,
        cancel: Cancellation | None = None,
        output: OutputOptions | None = None,
        live: LiveTable | None = None,
        grace: float = DEFAULT_GRACE,
        warmup: bool = True,
    ) -> None:
        state = InstanceState()
        limits, rates = resources
        self.resource_names = sorted(set(limits) | set(rates))
        if self.resource_names:
            names = self.resource_names
            state.attach_gate(
                ResourceGate(
                    names,
                    [],
                    [limits.get(n) for n in names],
                    [1.0 / rates[n] if n in rates else None for n in names],
                    [],
                )
            )
        super().__init__(
            create_graph({}, {}, name="taskmap-load"),
            state,
            pool,
            ncores,
            False,
            TaskLimits([]),
            None,
            "load",
            None,
            frozenset(),  # (gather: no value is decoded in the coordinator)
            cancel,
            output or OutputOptions(CAPTURE, 20),
        )
        self.ledger.durations = _Discard()
        self.shipper = Shipper()
        self.functions = self.shipper.shipment
        self.book = LoadBook(state, report, self.output)  # type: ignore[assignment]
        self.book.attempts = self.ledger.attempts
        self.istate = state
        self.make_scenario = make_scenario
        self.schedule = schedule
        self.max_in_flight = max_in_flight
        self.report = report
        self.timeout_spec = timeout
        self.retries_spec = retries
        self.live_table = live
        self.grace = grace
        self.warmup = warmup
        self.shapes: dict[Hashable, tuple[Shape, list[Any], list[Any], list[Any]]] = {}
        self.next_k = 0  # the next arrival to arm
        self.fired = 0  # arrivals that came (started or dropped)
        self.applying = 0  # depth of apply() calls
        self.t0 = 0.0  # the schedule's start, monotonic
        self.stopped_at: float | None = None
        self.checked_resources = False
        report.target_rate = schedule.count / schedule.duration
        report.max_in_flight = max_in_flight
        report.ncores = ncores

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        ledger, state = self.ledger, self.istate
        self.pool.resize(self.ncores)
        forget = self.listen_for_cancel()
        try:
            for w in self.pool.workers:
                self.apply(ledger.handle(WorkerJoined(w, w.pid, w.ready, w.io_sent)))
            # the schedule starts once every worker is up: a cold pool's
            # start-up is not the service's latency
            while not all(held.ready for held in ledger.workers.values()):
                self.wait_once()
            if self.warmup:
                self.warm_up()
            self.t0 = time.monotonic()
            self.arm_arrival()
            if self.live_table is not None:
                self.arm(self.t0 + 1.0, TICK)
            while self.fired < self.schedule.count or state.left:
                self.apply(ledger.handle(_DISPATCH))
                self.wait_once()
                if self.timers:
                    self.fire_timers()
        except (RunCancelled, KeyboardInterrupt, _GraceOver) as exc:
            self.report.cancelled = not isinstance(exc, _GraceOver)
            self.report.unfinished = state.in_flight
            self._abort(exc if isinstance(exc, KeyboardInterrupt) else RunCancelled())
            if isinstance(exc, KeyboardInterrupt):
                self.report.interrupted = True
        except BaseException as exc:
            self._abort(exc)
            raise
        finally:
            forget()
            self.close_report()

    def warm_up(self) -> None:
        """One unmeasured instance per worker, all at once, until they
        finish (keys -1, -2, ...: no arrival has them); the book records
        nothing of them (see :meth:`LoadBook.recording`)."""
        ledger, state, book = self.ledger, self.istate, self.book
        book.recording = False  # type: ignore[attr-defined]
        for j in range(self.ncores):
            self.place(-1 - j, self.make_scenario(j), time.monotonic())
        # (a service that never answers: the run ends after grace seconds)
        self.arm(time.monotonic() + self.grace, GRACE)
        while state.left:
            self.apply(ledger.handle(_DISPATCH))
            self.wait_once()
            if self.timers:
                self.fire_timers()
        self.timers = [t for t in self.timers if t[2] != GRACE]
        heapq.heapify(self.timers)
        book.recording = True  # type: ignore[attr-defined]

    def close_report(self) -> None:
        report = self.report
        if self.t0:
            end = time.monotonic() if report.cancelled else self.t0 + self.schedule.duration
            report.duration = min(self.schedule.duration, end - self.t0)
            report.scheduled = self.fired
        try:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            report.coordinator_rss_peak = rss * (1 if sys.platform == "darwin" else 1024)
        except (ImportError, OSError):
            pass
        if self.live_table is not None:
            self.live_table.close(report, self.istate.in_flight)

    def _finish(self, error: BaseException | None) -> None:
        pass  # (no graph to fill in: the report is the result)

    def arm(self, when: float, kind: int, task: int = -1) -> None:
        heapq.heappush(self.timers, (when, next(self.timer_seq), kind, task))

    def arm_arrival(self) -> None:
        k = self.next_k
        if k < self.schedule.count:
            self.arm(self.t0 + self.schedule.time_of(k), ARRIVAL, k)
            self.next_k = k + 1
        else:
            self.arm(self.t0 + self.schedule.duration + self.grace, GRACE)

    def apply(self, instructions: list[Any]) -> None:
        # (nested when an instruction's own events are applied, e.g. a
        # replacement worker joining: instances are retired only once the
        # outermost list is carried out, whose later instructions may still
        # name their tasks)
        self.applying += 1
        try:
            super().apply(instructions)
        finally:
            self.applying -= 1
        if self.istate.completed and not self.applying:
            self.retire_completed()

    def timer_due(self, when: float, kind: int, i: int, now: float) -> None:
        if kind == ARRIVAL:
            self.arrive(i, when)
            self.arm_arrival()
        elif kind == TICK:
            assert self.live_table is not None
            self.live_table.show(self.report, self.istate.in_flight, now - self.t0)
            self.arm(when + 1.0, TICK)
        elif kind == GRACE:
            raise _GraceOver()
        else:
            super().timer_due(when, kind, i, now)

    # -- instances ------------------------------------------------------------

    def arrive(self, k: int, due: float) -> None:
        """Arrival k, scheduled at ``due``: start instance k, or drop it."""
        report, state = self.report, self.istate
        self.fired += 1
        in_flight = state.in_flight
        if in_flight >= self.max_in_flight:
            report.dropped += 1
            return
        self.place(k, self.make_scenario(k), due)
        report.started += 1
        if in_flight + 1 > report.peak_in_flight:
            report.peak_in_flight = in_flight + 1
        report.lateness.ok(max(0.0, time.monotonic() - due))

    def place(self, k: int, graph: Graph, due: float) -> None:
        """Start instance ``k`` (``graph``), due at ``due``: its tasks join
        the ledger in free slots."""
        state = self.istate
        if not isinstance(graph, Graph):
            raise TypeError(f"make_scenario returned {type(graph).__name__}, not a graph (taskmap.create_graph)")
        shape, timeouts, retries, uses = self.shape_for(graph)
        slots = state.add(k, shape)
        fids, codes = [], []
        funcs = graph.funcs
        for name in shape.names:
            try:
                fid, code = self.shipper.fid(funcs[name])
            except UnsendableFunction as error:
                func = funcs[name]
                raise SerializationError(name, "function", type(func).__qualname__, str(error.__cause__)) from (
                    error.__cause__
                )
            fids.append(fid)
            codes.append(code)
        self.ledger.place(slots, fids, codes, timeouts, retries)
        gate = state.gate
        if gate is not None:
            priority = state.priority
            for e, u in zip(slots, uses):
                gate.place(e, u, -priority[e])
        self.book.live[k] = [due, 0.0, None]  # type: ignore[attr-defined]
        state.start_instance(k)

    def shape_for(self, graph: Graph) -> tuple[Shape, list[Any], list[Any], list[Any]]:
        """The scenario's shape, time limits, retries and resource uses, per
        distinct structure (computed once)."""
        deps = graph.dependencies
        key = (
            tuple((name, tuple(d)) for name, d in deps.items()),
            frozenset(graph.io_bound),
            tuple(sorted(graph.priority.items(), key=repr)) if graph.priority else (),
            tuple(sorted(graph.uses.items(), key=repr)) if graph.uses else (),
        )
        found = self.shapes.get(key)
        if found is not None:
            return found
        shape = shape_of(deps, list(graph.io_bound), graph.priority or None)
        timeouts = [_per_name(self.timeout_spec, name, None, "timeout", _check_timeout) for name in shape.names]
        retries = [_per_name(self.retries_spec, name, 0, "retries", _check_retries) for name in shape.names]
        number = {n: r for r, n in enumerate(self.resource_names)}
        uses = [tuple(number[r] for r in graph.uses.get(name, ()) if r in number) for name in shape.names]
        if not self.checked_resources:
            self.check_resources(graph)
        if len(self.shapes) >= 64:
            self.shapes.clear()
        found = self.shapes[key] = (shape, timeouts, retries, uses)
        return found

    def check_resources(self, graph: Graph) -> None:
        """As for any run (DESIGN 7): a limited or rated name that no task
        of the scenario uses is a typo; a task needing more units than a
        limit could never start."""
        self.checked_resources = True
        used = {r for names in graph.uses.values() for r in names}
        unknown = [n for n in self.resource_names if n not in used]
        if unknown:
            raise ValueError(f"limits/rates name resources no task of the scenario uses: {unknown!r}")
        gate = self.istate.gate
        if gate is not None:
            for task, names in graph.uses.items():
                for r, n in enumerate(gate.names):
                    limit = gate.limit[r]
                    if limit is not None and names.count(n) > limit:
                        raise ValueError(f"task {task!r} uses {names.count(n)} units of {n!r} but its limit is {limit}")

    def retire_completed(self) -> None:
        """Record the instances whose tasks all finished, and retire them."""
        state, report, live = self.istate, self.report, self.book.live  # type: ignore[attr-defined]
        collector = self.output
        now = time.monotonic()
        for k in state.completed:
            due, last_end, failure = live.pop(k)
            if k < 0:  # (a warm-up instance: not measured)
                pass
            elif failure is None:
                report.completed += 1
                report.scenario.ok((last_end or now) - due)
            else:
                report.completed += 1
                report.scenario.failed(failure[0], failure[1], None, k)
            slots = state.retire(k)
            self.ledger.retire(slots)
            if collector.kept or collector.open or collector.prefixes:
                for e in slots:
                    collector.kept.pop(e, None)
                    collector.open.pop(e, None)
                    collector.prefixes.pop(e, None)
        state.completed.clear()
        gate = state.gate
        if gate is not None and len(gate.spans) > 10_000:
            gate.spans.clear()  # (kept for a trace; a load run has none)


def _per_name(spec: Any, name: Any, empty: Any, what: str, check: Callable[[Any, str], Any]) -> Any:
    if isinstance(spec, Mapping):
        return check(spec.get(name, spec.get(None, empty)), what)
    return check(spec, what)


class _Plan(NamedTuple):
    """A load run's arguments, checked and resolved (:func:`_prepare`)."""

    make_scenario: Callable[[int], Graph]
    schedule: Schedule
    ncores: int
    max_in_flight: int
    resources: tuple[dict[str, int], dict[str, float]]
    timeout: Any
    retries: Any
    output: OutputOptions
    live: LiveTable | None
    grace: float
    warmup: bool


@frozen_during
def _run_load(plan: _Plan, report: LoadReport, cancel: Cancellation | None) -> LoadReport:
    with take_pool() as pool, _sigterm_as_interrupt():
        pool.configure(None)
        pool.resize(plan.ncores)
        LoadCoordinator(
            plan.make_scenario,
            plan.schedule,
            pool,
            plan.ncores,
            plan.max_in_flight,
            report,
            plan.resources,
            plan.timeout,
            plan.retries,
            cancel,
            plan.output,
            plan.live,
            plan.grace,
            plan.warmup,
        ).run()
    return report


def _prepare(
    make_scenario: Callable[[int], Graph],
    rate: float | None,
    duration: float | None,
    ramp: float | None,
    stages: Sequence[tuple[float, float]] | None,
    max_in_flight: int,
    ncores: int | None,
    limits: Mapping[str, int] | None,
    rates: Mapping[str, float] | None,
    timeout: Any,
    retries: Any,
    output: str,
    capture_level: int | str,
    live: bool | TextIO | None,
    grace: float,
    warmup: bool,
) -> _Plan:
    """Check :func:`load`'s arguments (raising as it documents) and resolve them."""
    from taskmap.runners import default_ncores

    if not callable(make_scenario):
        raise TypeError(f"make_scenario must be callable (i -> graph), not {type(make_scenario).__name__}")
    schedule = make_schedule(rate, duration, ramp, stages)
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be an int >= 1, not {max_in_flight!r}")
    if not (isinstance(grace, (int, float)) and grace >= 0):
        raise ValueError(f"grace must be a number of seconds >= 0, not {grace!r}")
    lim = dict(limits or {})
    for name, n in lim.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"limit of {name!r} must be an int >= 1, not {n!r}")
    rat = dict(rates or {})
    for name, r in rat.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0 or math.isinf(r):
            raise ValueError(f"rate of {name!r} must be a number > 0, not {r!r}")
    table: LiveTable | None = None
    if live is None:
        live = sys.stderr.isatty()
    if live is True:
        table = LiveTable(sys.stderr)
    elif live:
        table = LiveTable(live)  # type: ignore[arg-type]
    return _Plan(
        make_scenario,
        schedule,
        default_ncores(ncores, None, half=True),
        max_in_flight,
        (lim, rat),
        timeout,
        retries,
        resolve_output(output, capture_level),
        table,
        grace,
        bool(warmup),
    )


def load(
    make_scenario: Callable[[int], Graph],
    rate: float | None = None,
    duration: float | None = None,
    ramp: float | None = None,
    stages: Sequence[tuple[float, float]] | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ncores: int | None = None,
    *,
    limits: Mapping[str, int] | None = None,
    rates: Mapping[str, float] | None = None,
    timeout: float | Mapping[Any, float | None] | None = None,
    retries: int | Mapping[Any, int] = 0,
    output: str = CAPTURE,
    capture_level: int | str = "WARNING",
    live: bool | TextIO | None = None,
    grace: float = DEFAULT_GRACE,
    warmup: bool = True,
) -> LoadReport:
    """Run instances of a scenario on an open-loop schedule and measure them.

    ``make_scenario(i)`` returns the graph of instance ``i``
    (:func:`taskmap.create_graph`; called in this process at each arrival,
    so keep it cheap).  Instance ``i`` starts at its scheduled arrival
    whatever earlier instances are doing: a constant ``rate`` (instances
    per second) for ``duration`` seconds, the first ``ramp`` seconds of them
    going linearly from 0 up to ``rate``; or ``stages=[(seconds, rate),
    ...]``, each stage going linearly from the last one's rate (0 at first)
    to its own.  An arrival while ``max_in_flight`` instances run is
    dropped and counted (``report.dropped``).  All instances run in one
    parallel run on ``ncores`` warm worker processes (default: half the
    cores), their io tasks overlapping on the workers' event loops.

    Latencies go into HDR histograms (:mod:`taskmap.loadmode.report`): each
    task's run time per task name, and each instance's from its
    *scheduled* arrival to the end of its last task (corrected for
    coordinated omission, as wrk2 does).  A failed task fails its instance
    (its descendants are skipped); errors are counted by exception type,
    with a few examples and the tail of what the task wrote (``output``:
    ``'capture'`` by default, so a run prints nothing; ``capture_level``:
    the lowest level of log records kept).

    ``limits``/``rates``: as for every runner (resource -> concurrent
    tasks / starts per second), over the tasks of all instances: a
    connection limit holds across the whole load.  ``timeout``/``retries``:
    per task, a number or {scenario task name: number}.  ``live``: a live
    table on stderr, refreshed once a second (default: when stderr is a
    terminal; or a stream to write it to).  ``grace``: seconds after the
    schedule's end that running instances may take to finish; those still
    running then are stopped and counted (``report.unfinished``).
    ``warmup``: before the schedule starts, one instance per worker runs
    (made by ``make_scenario(0)``, ``make_scenario(1)``, ...) and is not
    measured nor counted: the workers import the scenario's modules and
    open their connections before the clock starts, as wrk2's calibration
    period keeps a cold start out of the figures.

    Returns a :class:`~taskmap.loadmode.report.LoadReport`.  Ctrl-C (or
    SIGTERM) stops the run at once, workers stopped, and returns the
    partial report with ``cancelled`` and ``interrupted`` set.
    """
    plan = _prepare(
        make_scenario,
        rate,
        duration,
        ramp,
        stages,
        max_in_flight,
        ncores,
        limits,
        rates,
        timeout,
        retries,
        output,
        capture_level,
        live,
        grace,
        warmup,
    )
    return _run_load(plan, LoadReport(), None)


_load_threads = itertools.count(1)


class LoadRun:
    """A load run started by :func:`start_load`: ``report`` fills in while
    it runs; :meth:`cancel` stops it (the report then covers what ran);
    :meth:`wait` returns the report."""

    def __init__(self, body: Callable[[Cancellation], LoadReport], report: LoadReport) -> None:
        self.report = report
        self._cancel = Cancellation()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._main, args=(body,), name=f"taskmap-load-{next(_load_threads)}", daemon=True
        )
        self._thread.start()

    def _main(self, body: Callable[[Cancellation], LoadReport]) -> None:
        try:
            body(self._cancel)
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits
            self._error = error
        finally:
            self._done.set()

    def cancel(self) -> None:
        """Stop the run (any thread, any number of times): instances running
        are stopped, their workers' io tasks cancelled."""
        self._cancel.cancel()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> LoadReport:
        """The report once the run ended; TimeoutError if ``timeout``
        seconds pass first (the run goes on).  Ctrl-C cancels the run."""
        try:
            if not self._done.wait(timeout):
                raise TimeoutError(f"the load run did not end within {timeout} s")
        except KeyboardInterrupt:
            self.cancel()
            self._done.wait()
            self.report.interrupted = True
        if self._error is not None:
            raise self._error
        return self.report


def start_load(*args: Any, **kwargs: Any) -> LoadRun:
    """As :func:`load`, with the same arguments, in a thread of its own:
    returns a :class:`LoadRun` at once (the arguments are checked first, in
    the caller; ``live`` defaults to False here: no table on the caller's
    terminal unless asked for)."""
    kwargs.setdefault("live", False)
    arguments = inspect.signature(load).bind(*args, **kwargs)
    arguments.apply_defaults()
    plan = _prepare(**arguments.arguments)
    report = LoadReport()
    return LoadRun(lambda cancel: _run_load(plan, report, cancel), report)
