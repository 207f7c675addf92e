"""``run_dask``: the same graph, with the same semantics, on a Dask cluster.

The calling process stays the coordinator; Dask's scheduler and workers do
the running.  The whole graph is submitted up front, each task a
``client.submit`` whose arguments are its parents' *futures*, so a result
goes from the worker that made it straight to the worker that needs it and
a dependency hop costs one scheduler round trip, not one through the caller
(measured on loopback: about 6 ms per hop up front against 11 ms when each
task is submitted once its parents are recorded, since the client batches
what it sends every 10 ms; the mixed ETL benchmark ran 20% faster)::

  caller = coordinator                        Dask scheduler + workers
 ┌───────────────────────────────┐ submit  ┌──────────────────────────────────┐
 │ SchedulingState + Bookkeeper  │ ──────▶ │ every task, parents as futures,  │
 │ (the same as every runner)    │ (once)  │ taskmap's priority (io first,    │
 │                               │         │ then critical path)              │
 │ a task "starts" when its      │         │ cpu task: a cpu slot (a unit of  │
 │ parents are recorded; its     │ ◀────── │   the taskmap-cpu resource)      │
 │ outcome is recorded when Dask │  done   │ io task: secede() from the pool, │
 │ says so (gathered in batches) │ events  │   coroutines on one shared loop  │
 └───────────────────────────────┘         │   per worker process             │
                                           └──────────────────────────────────┘

* The coordinator learns of each finished future through a done callback
  that puts it on a queue; it blocks on that queue (with a timeout only when
  a delayed retry is due), so nothing polls.  Futures that finish together
  are handled as one batch: one ``client.gather`` for their values.
* Its :class:`SchedulingState` is fed the outcomes in dependency order, as
  in the local runners: a future can finish before the coordinator has seen
  its parent finish (Dask ran it without asking), so such an outcome waits
  in ``early`` until the task has "started" in the state.  Observers and logs
  therefore see exactly the local runners' sequence of events.
* Failures.  On the worker a task's exception is caught and re-raised inside
  :class:`TaskFailure`, which carries it encoded by :mod:`taskmap.runtime.codec`
  (class, args and ``__dict__`` kept, as the parallel runtime does) with its
  traceback text; Dask marks the task's dependents erred, so they never run.
  The coordinator rebuilds the exception as the task's result, and the
  Bookkeeper gives every descendant the ancestor string.  A task whose
  worker died as often as Dask's ``allowed-failures`` permits arrives as
  ``KilledWorker`` and becomes a :class:`DaskWorkerCrashedError` (a
  :class:`taskmap.WorkerCrashedError`) for that task only.
* io tasks.  A Dask worker runs as many tasks at once as it has threads,
  ``async def`` tasks included (they run on its event loop but still count
  against its threads), so an io task that waited in a slot would keep a
  core idle.  An io task leaves the worker's thread pool
  (``distributed.secede``) as soon as it starts: its wait holds a thread,
  not a slot, and its coroutine runs on an event loop taskmap keeps in each
  worker process (not the worker's own loop, which a blocking coroutine
  would stall).  To start, though, it needs a free slot; on workers that
  offer the ``taskmap-cpu`` resource (:data:`CPU_RESOURCE`) with a thread to
  spare, cpu tasks ask for a unit of it and io tasks do not, so an io task
  starts at once even when every cpu slot is busy.  run_dask's own
  LocalCluster is laid out so; on other workers an io task may wait for the
  slot of a running cpu task to start.
* Limits and rates (``uses=``, ``limits=``, ``rates=``) are enforced by the
  coordinator, with the same gate in its :class:`SchedulingState` as every
  runner: a task under a limited or rated resource is submitted only when
  the gate lets it start (a unit free, its rate slot come, highest
  priority first), with its descendants, whose submits take its future; it
  gives its units back when its outcome is recorded.  So a limit holds
  across the cluster, a waiting task holds no worker thread, and the
  summary, progress bar and trace see the waits as in the local runners.
  Such a task pays one round trip through the caller to start.
* Retries are the coordinator's (not Dask's ``retries=``), so that a timeout
  and a dead worker are retried too, ``retry_delay`` is honoured and
  ``graph.attempts`` counts: a retried task is submitted again under a new
  key, with the descendants Dask had marked erred.
* Time limits are enforced on the worker, from the moment the task starts:
  an io coroutine past its limit is cancelled; any other task is reported as
  timed out and its thread left to finish unwatched (Dask cannot stop a
  running thread, and killing the worker would lose every result it holds).
* Output: each task's output (printed lines, log records; see
  :mod:`taskmap.runtime.capture`) comes back bounded with its
  :class:`Outcome` or :class:`TaskFailure`, for ``graph.output``; with
  ``output='pass'``/``'prefix'`` its lines are also shown as they are written:
  the worker publishes them as Dask events on a topic of the run's own, to
  which the caller subscribes for the run.  (A task whose value stays on the
  cluster, ``gather=``, returns no envelope: its output is shown, not kept.)
* Values: a task whose result the caller wants returns an :class:`Outcome`
  (the value plus worker pid and wall-clock start/end, for observers and
  ``graph.durations``); its children unwrap it on their worker.  A task whose
  result stays on the cluster (``gather=``) returns the bare value, and its
  ``graph.results`` entry is its Dask future.

What runs on the workers is :mod:`taskmap.dask.task` (imported there when the
first task arrives); dask and distributed are imported here inside the
functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import os
import queue
import signal
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Unpack

from taskmap.bookkeeping import Bookkeeper
from taskmap.cancellation import Cancellation
from taskmap.dask.task import Outcome, TaskCall, TaskFailure, run_task, warm_up
from taskmap.element_book import functions_of
from taskmap.errors import (
    RunCancelled,
    SerializationError,
    TaskmapError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from taskmap.expand import Element, result_of
from taskmap.graph import Graph
from taskmap.observe.observers import Observers
from taskmap.observe.output import CAPTURE, DEFAULT, OutputOptions
from taskmap.options import RunnerOptions, RunOptions
from taskmap.options import resolve as resolve_options
from taskmap.runners import state_for
from taskmap.runtime import codec, process_setup
from taskmap.runtime.process_setup import function_module
from taskmap.scheduling.limits import TaskLimits
from taskmap.scheduling.state import FINISHED, SchedulingState, TaskState

if TYPE_CHECKING:  # pragma: no cover - typing only
    from distributed import Client, Future

__all__ = ["DaskWorkerCrashedError", "run_dask"]

# The worker resource that marks cpu slots.  Workers that offer it (one unit
# per cpu task they may run at once) and have more threads than units let an
# io task start at once even while every cpu slot is busy: cpu tasks ask for
# a unit, io tasks for none, and an io task gives its thread back (secede) as
# soon as it starts.  run_dask's own LocalCluster is set up so.
CPU_RESOURCE = "taskmap-cpu"


# -- errors ---------------------------------------------------------------------


class DaskWorkerCrashedError(WorkerCrashedError):
    """Every Dask worker that ran the task died while running it, as many
    times as the scheduler's ``allowed-failures`` permits (Dask's
    ``KilledWorker``, kept as ``__cause__``).

    ``worker`` is the address of the last worker that died; ``pid`` and
    ``exitcode`` are ``None`` (the scheduler does not report them).
    """

    def __init__(self, task: Any, worker: str | None, tries: int | None) -> None:
        # WorkerCrashedError's own message speaks of one pid and exit code,
        # which Dask does not report; build the message here instead
        TaskmapError.__init__(
            self,
            f"the Dask workers running task {task!r} died"
            + (f" ({tries} times; the last one was {worker})" if tries else f" (last: {worker})"),
        )
        self.task = task
        self.pid = None
        self.exitcode = None
        self.signal_name = None
        self.worker = worker
        self.tries = tries

    def __reduce__(self):
        return (type(self), (self.task, self.worker, self.tries))


# -- the public runner -------------------------------------------------------------


def run_dask(
    graph: Graph,
    client: Client | None = None,
    address: str | None = None,
    raise_errors: bool = False,
    *,
    ncores: int | None = None,
    **options: Unpack[RunnerOptions],
) -> Graph:
    """Run the graph on a Dask distributed cluster; returns the graph.

    The cluster: ``client`` (a ``distributed.Client``, left open), else
    ``address`` (a scheduler address; a client is opened and closed here),
    else a ``LocalCluster`` of ``ncores`` single-threaded worker processes
    (default: one per core) on loopback, started by this call and stopped at
    its end (its workers are killed, not waited for: every result is in the
    graph by then).  taskmap must be importable on the workers.

    Semantics are the local runners': each task gets its parents' results in
    order with ``None`` left out; coroutine functions and plain functions both
    work; a task that raises has its exception (same class and args, with the
    worker's traceback text as ``remote_traceback`` and ``__cause__``) as its
    result and every descendant gets ``'Ancestor task <task> failed; task not
    run'``; unrelated tasks carry on; tasks in ``done`` are not run and their
    ``results`` are fed to their children; after ``reset_failed_tasks`` or
    ``reset_tasks`` another ``run_dask`` reruns exactly those tasks.  With
    ``raise_errors`` the first failure cancels what is still running and
    raises :class:`taskmap.TaskFailedError`.  A task whose workers died as
    often as the scheduler's ``allowed-failures`` permits fails with
    :class:`DaskWorkerCrashedError`; Dask reruns the tasks of a dead worker
    before that, and may rerun a finished task whose result died with it.

    io-bound tasks leave the worker's thread pool (``distributed.secede``)
    when they start, so their waits hold no worker slot; their coroutines run
    on one event loop per worker process.  cpu-bound tasks take a slot each;
    coroutine functions among them run on a loop private to their thread.
    When every worker offers the resource ``taskmap-cpu`` (one unit per cpu
    task it may run at once, with more threads than units; e.g. ``dask worker
    ADDRESS --nthreads 2 --resources taskmap-cpu=1``), cpu tasks ask for a
    unit and io tasks start at once even while all cpu slots are busy;
    otherwise an io task waits for a free slot to start.  The LocalCluster
    run_dask starts is laid out so (2 threads, 1 unit per worker).

    Results travel between tasks as futures, worker to worker.  ``gather``
    says which values come back to the caller: ``True`` (the default) every
    task's value is fetched as its task finishes (batched), so ``graph.results``
    is filled exactly as by the local runners; a collection of task names
    fetches only those (``False``: none), and every other task that succeeds gets its
    ``distributed.Future`` as its result (valid while ``client`` lives; a
    later ``run_dask`` with the same client passes it on to reruns).  Failed
    and skipped tasks always get their error or ancestor string.  Anything
    but ``True`` needs ``client=``, and is refused with a checkpoint store.

    ``timeout`` (seconds, or a mapping task -> seconds with the default under
    ``None``) is enforced on the worker from the task's start: an io coroutine
    past it is cancelled; any other task is reported as timed out
    (:class:`taskmap.TaskTimeoutError`) and its thread runs on unwatched.
    ``retries`` and ``retry_delay`` as in :func:`taskmap.run_parallel_async`:
    a task that raises, times out or whose workers died runs again, under a
    new key, up to that many times; ``graph.attempts[task]`` counts the runs.
    ``limits`` and ``rates`` as in the local runners, across the cluster: a
    task waiting for a unit or a rate slot is not submitted until it may
    start; a cpu task past its ``timeout`` gives its units back when it is
    reported, although its thread runs on.
    ``progress``, ``trace``, ``summary`` and ``observers`` as in the local
    runners; a task's start and end in the observers' events are the worker's clock,
    converted to this process's ``time.monotonic()``, and its ``worker`` is the
    worker's pid (for a result left on the cluster: this process's clock and
    pid).  Dask's own diagnostics (dashboard, ``performance_report``) see the
    tasks under their task names.  There is no ``memory_limit``: a Dask
    worker has its own (``LocalCluster(memory_limit=...)``, ``dask worker
    --memory-limit``), past which its nanny restarts it (a dead worker, above).
    """
    _check_options(graph, client, address, ncores, options.get("gather", True))
    opts = resolve_options("run_dask", graph, raise_errors, dict(options))
    return _run_dask_with(graph, client, address, ncores, opts)


def _run_dask_with(
    graph: Graph, client: Client | None, address: str | None, ncores: int | None, opts: RunOptions
) -> Graph:
    """``run_dask`` with resolved options.  A cancelled run (``opts.cancel``)
    cancels the futures Dask still runs for it and raises
    :class:`taskmap.RunCancelled`."""
    wanted = None if opts.keep is None else set(opts.keep)
    if wanted is not None:
        # an expansion counts the items of a whole task's result here
        wanted |= {m for m in graph.expand.values() if m not in graph.expand}
    with _connect(client, address, ncores) as dask_client:
        _DaskRun(
            graph,
            dask_client,
            opts.raise_errors,
            opts.limits,
            opts.observers,
            wanted,
            opts.resources,
            opts.cancel,
            opts.output,
        ).run()
    return graph


def _check_options(graph: Graph, client: Any, address: str | None, ncores: int | None, gather: Any) -> None:
    if client is not None and address is not None:
        raise ValueError("pass client= or address=, not both")
    if ncores is not None and (client is not None or address is not None):
        raise ValueError("ncores= sizes the LocalCluster run_dask starts; a given cluster has its own workers")
    if gather is True:
        return
    if gather is not False and (isinstance(gather, str) or not isinstance(gather, Collection)):
        raise TypeError(f"gather must be True, False or a collection of task names, not {gather!r}")
    unknown = [t for t in (gather or ()) if t not in graph.dependencies]
    if unknown:
        raise ValueError(f"gather names tasks that are not in the graph: {unknown[:10]!r}")
    if client is None:
        raise ValueError(
            "results left on the cluster (gather= other than True) need a client that outlives the run: pass client="
        )
    if graph.checkpoint is not None:
        raise ValueError("a checkpoint store records every result: use gather=True")


@contextlib.contextmanager
def _connect(client: Client | None, address: str | None, ncores: int | None) -> Iterator[Client]:
    """The client to run on: the caller's, one to ``address``, or one to a
    LocalCluster started here; what is opened here is closed here."""
    from distributed import Client, LocalCluster

    if client is not None:
        if client.asynchronous:
            raise ValueError("run_dask needs a synchronous distributed.Client")
        yield client
        return
    if address is not None:
        with Client(address) as own:
            yield own
        return
    n = ncores or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=n,
            processes=True,
            host="127.0.0.1",
            # one cpu slot per worker, and a second thread through which io
            # tasks start (each leaves the pool at once: see CPU_RESOURCE)
            threads_per_worker=2,
            resources={CPU_RESOURCE: 1},
            dashboard_address=None,
            # the scheduler's HTTP endpoints (health, metrics) on a free loopback
            # port: its default, 8787, warns when another cluster holds it
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            # taskmap prints nothing unless asked: a task's failure is in the
            # graph, not in a "Compute Failed" log line on stderr
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as own,
    ):
        try:
            yield own
        finally:
            _kill_workers(own)


def _kill_workers(client: Client) -> None:
    """SIGKILL the worker processes of a LocalCluster this call started,
    before closing it.  Every result is in the graph by then; a graceful
    close would wait 4 s for each task still running (after Ctrl-C, or a
    timed-out thread that runs on), which must not delay the caller."""
    with contextlib.suppress(Exception):  # then the close is the graceful one
        for pid in client.run(os.getpid).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- the coordinator ------------------------------------------------------------------


# seconds a rated task's start is shifted after its slot, so that starts on
# the workers are spaced as the slots are (see TaskCall.start_at)
RATE_SHIFT = 0.25


class _DaskRun:
    """One run of a graph on a Dask client (see the module docstring)."""

    # (slots: see taskmap.runtime.worker.Worker; it holds 30 attributes, the
    # most an instance dict shares its keys for)
    __slots__ = (
        "attempts",
        "book",
        "cancellation",
        "client",
        "clock_offset",
        "code_versions",
        "collectors",
        "cpu_resource",
        "dask_priority",
        "early",
        "funcs",
        "gated",
        "given",
        "graph",
        "in_run",
        "inbox",
        "later",
        "limits",
        "live",
        "names",
        "output",
        "output_topic",
        "rank",
        "running",
        "state",
        "submissions",
        "timers",
        "token",
        "unfinished_children",
        "wanted",
    )

    def __init__(
        self,
        graph: Graph,
        client: Client,
        raise_errors: bool,
        limits: TaskLimits,
        observers: Observers,
        wanted: set | None,
        resources: tuple[dict, dict] | None = None,
        cancel: Cancellation | None = None,
        output: OutputOptions = DEFAULT,
    ) -> None:
        self.cancellation = cancel
        # limits and rates are the state's gate, as in every runner: a task
        # waiting for a unit or a rate slot is not submitted (see submit_all)
        state = state_for(graph, resources)
        self.gated: list[bool] = state.gate.gated if state.gate is not None else [False] * len(state.names)
        self.graph = graph
        self.client = client
        self.state = state
        self.limits = limits
        self.names = state.names
        n = len(self.names)
        cpu_slots, self.cpu_resource = _cpu_slots(client)
        self.book = Bookkeeper(
            graph, state, raise_errors, observers, "run_dask", ncores=cpu_slots, measures_durations=True, output=output
        )
        self.output = self.book.collector
        self.attempts = [0] * n
        self.book.attempts = self.attempts
        # tasks this run handles (the others were done before it started)
        self.in_run = bytearray(s != TaskState.DONE for s in state.state)
        self.rank = [0] * n  # position in the order of submission
        for position, i in enumerate(_submission_order(state)):
            self.rank[i] = position
        self.wanted = wanted  # names whose values to gather; None: all
        # the current future of each task of the run; a finished task's stays
        # while a child that might be submitted again (a retry) still needs it
        self.live: dict[int, Future] = {}
        self.unfinished_children = [sum(1 for c in state.children[i] if self.in_run[c]) for i in range(n)]
        self.given: dict[int, Any] = {}  # futures of the results of tasks done before the run
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # (task, future) as Dask finishes them
        self.early: dict[int, Future] = {}  # finished before the state let them start
        self.running: set[int] = set()
        self.timers: list[tuple[float, int]] = []  # (when, task): delayed retries
        self.submissions = [0] * n
        self.token = uuid.uuid4().hex[:8]
        # the topic workers publish tasks' lines on, when they are shown
        self.output_topic = None if output.mode == CAPTURE else f"taskmap-output-{self.token}"
        # the caller's user modules: a task's worker must run this code
        self.code_versions = process_setup.snapshot().modules
        # worker wall clock -> this process's monotonic clock
        self.clock_offset = time.time() - time.monotonic()
        top = max(state.priority, default=0.0) + 1.0
        self.dask_priority = [top if state.is_io[i] else state.priority[i] for i in range(n)]
        self.funcs = functions_of(graph)
        # create_graph(expand=...): an expanded task never runs itself, and
        # what lies below one is submitted when the state makes it ready
        # (its elements exist only then); the rest goes at once, as ever
        self.collectors: dict[int, int] = state.mapped if state.expanding else {}  # type: ignore[attr-defined]
        self.later = _below_collectors(state) if self.collectors else set()
        if self.book.elements is not None:
            self.book.elements.on_expanded = self.grow

    # -- the run ------------------------------------------------------------------

    def run(self) -> None:
        state, book = self.state, self.book
        run_error: BaseException | None = None
        cancel = self.cancellation
        if self.output_topic is not None:
            # before any task is submitted: the subscription travels to the
            # scheduler in the client's stream ahead of the tasks, so no line
            # is published before it
            self.client.subscribe_topic(self.output_topic, self._show_output)
        try:
            self.submit_all()  # a function that cannot be sent stops the run before it starts
            self.warm_up_rated()
        except BaseException:
            self.unsubscribe()
            raise
        # a cancel wakes the one wait: a None on the queue of finished futures
        forget = cancel.on_cancel(lambda: self.inbox.put(None)) if cancel is not None else None
        try:
            book.start()
            while not state.all_finished:
                batch = self.start_ready()
                if cancel is not None and cancel.is_set:
                    # (after start_ready: a task whose parents are recorded has
                    # started, as Dask may have run it already; in_progress says so)
                    raise RunCancelled()
                if not batch:
                    if not self.running and not self.timers and state.next_rate_slot() is None:
                        break  # nothing can change any more (cannot happen; never hang)
                    batch = self.wait_for_outcomes()
                    self.fire_timers()
                self.record(batch)
        except BaseException as exc:
            run_error = exc
            self.abort()
            raise
        finally:
            if forget is not None:
                forget()
            self.finish(run_error)

    def _show_output(self, event: tuple) -> None:
        # (called on the client's event loop thread) event: (time, [task, stream, text])
        key, stream, text = event[1]
        self.output.show(key, stream, text)

    def unsubscribe(self) -> None:
        if self.output_topic is not None:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self.output_topic)

    def finish(self, error: BaseException | None) -> None:
        self.unsubscribe()
        names = self.names
        self.graph.attempts.update((names[i], k) for i, k in enumerate(self.attempts) if k)
        # dropping our futures lets Dask free what no one else holds
        self.live.clear()
        self.given.clear()
        self.early.clear()
        with contextlib.suppress(queue.Empty):
            while True:
                self.inbox.get_nowait()
        self.book.finish(error)

    def abort(self) -> None:
        """The run is ending early: cancel what Dask still runs for it."""
        self.graph.in_progress[:] = [self.names[i] for i in sorted(self.running)]
        pending = [f for f in self.live.values() if not f.done()]
        if pending:
            with contextlib.suppress(Exception):  # the cluster may be gone already
                self.client.cancel(pending)

    # -- submitting --------------------------------------------------------------------

    def submit_all(self) -> None:
        """Submit every task of the run, parents first, but those under a
        limit or a rate (submitted when the state's gate lets them start) and
        their descendants (submitted with them: a child's submit takes its
        parents' futures)."""
        self.check_functions()
        self.given = _scatter_given_results(self.client, self.graph, self.state, self.in_run)
        later = self.later
        order = sorted(
            (i for i in range(len(self.names)) if self.in_run[i] and i not in later), key=self.rank.__getitem__
        )
        try:
            for i in order:
                if self.may_submit(i):
                    self.live[i] = self.submit(i)
        except BaseException:
            self.client.cancel(list(self.live.values()))
            raise

    def check_functions(self) -> None:
        """Pickle each distinct function once, before anything is submitted:
        one that cannot be sent to a worker stops the run before it starts
        (Dask would only refuse it at its own submit, after its parents')."""
        funcs, names = self.funcs, self.names
        seen: set[int] = set()
        pickler = codec.FunctionPickler()
        for i, name in enumerate(names):
            func = funcs[name]
            if not self.in_run[i] or id(func) in seen:
                continue
            seen.add(id(func))
            try:
                pickler.dumps(func)
            except Exception as error:
                raise SerializationError(name, "function", type(func).__qualname__, str(error)) from error

    def submit(self, i: int) -> Future:
        name = self.names[i]
        args: list = []
        state, collectors = self.state, self.collectors
        for p in state.parents[i]:
            if p in collectors:
                args.append(list(self.graph.results[self.names[p]]))  # (values, or futures Dask resolves)
            elif self.in_run[p]:
                args.append(self.live[p])
            elif p in self.given:
                args.append(self.given[p])
            else:
                args.append(result_of(self.graph.results, self.names[p]))  # (None is left out on the worker)
        if collectors and i >= state.n_static:  # type: ignore[attr-defined]
            self._insert_item(i, args)
        func = self.funcs[name]
        module = function_module(func)
        version = self.code_versions.get(module) if module else None
        call = TaskCall(
            repr(name),
            func,
            bool(self.state.is_io[i]),
            self.limits.timeout[i],
            self.wanted is None or _task_of(name) in self.wanted,
            (module, version) if module and version is not None else None,  # (no module: no version)
            self.start_at(i),
            self.output_topic,
            i,
            self.output.level,
        )
        self.submissions[i] += 1
        key = f"{str(name)[:80]}-{self.token}-{i}-{self.submissions[i]}"
        needs = {CPU_RESOURCE: 1} if self.cpu_resource and not call.io else None
        try:
            future = self.client.submit(
                run_task,
                call,
                *args,
                key=key,
                pure=False,
                priority=self.dask_priority[i],
                resources=needs,
            )
        except Exception as error:  # the function (or the name) cannot be pickled
            raise SerializationError(name, "function", type(call.func).__qualname__, str(error)) from error
        future.add_done_callback(functools.partial(self._on_done, i))
        return future

    def warm_up_rated(self) -> None:
        """With rates: have every worker load the rated tasks' functions (and
        set up what a first task does) before the first slot; a start that
        waited for an import would come after its slot and bunch up with
        the next ones."""
        gate = self.state.gate
        if gate is None or not gate.rated:
            return
        rated = [i for i in range(len(self.names)) if self.in_run[i] and not gate.unrated[i]]
        if not rated:
            return
        funcs = list({id(f): f for f in (self.graph.funcs[self.names[i]] for i in rated)}.values())
        io = any(self.state.is_io[i] for i in rated)
        with contextlib.suppress(Exception):  # (a worker that cannot: its first start may be late, no more)
            self.client.run(warm_up, funcs, self.output.level, io)

    def start_at(self, i: int) -> float | None:
        """A rated task's start on the workers' wall clock: the slot the gate
        gave it, plus RATE_SHIFT (longer than Dask's usual latency from
        submit to start, which varies from task to task)."""
        gate = self.state.gate
        slot = gate.slot_taken(i) if gate is not None and self.gated[i] else None
        return None if slot is None else slot + self.clock_offset + RATE_SHIFT

    def _on_done(self, i: int, future: Future) -> None:
        # called in Dask's callback thread: only hand over
        self.inbox.put((i, future))

    def resubmit(self, i: int) -> None:
        """Submit task i again (a retry), with the descendants Dask marked
        erred when it failed.  A descendant that has a future already (an
        earlier retry of another of its ancestors submitted it) keeps it; one
        with another parent still waiting for its own retry is submitted by
        that parent's retry."""
        live, collectors = self.live, self.collectors
        for j in sorted(_waiting_descendants(self.state, self.in_run, i) | {i}, key=self.rank.__getitem__):
            if j in live or j in collectors or not (j == i or self.may_submit(j)):
                continue
            self.early.pop(j, None)
            live[j] = self.submit(j)

    def may_submit(self, i: int) -> bool:
        """Whether task i may go to Dask now, ahead of its start: every parent
        of the run has a future, and it uses no limited or rated resource
        (such a task goes when it starts, its units taken)."""
        if self.gated[i] and self.state.state[i] != TaskState.RUNNING:
            return False
        live, in_run, collectors = self.live, self.in_run, self.collectors
        # (an expanded task has no future: its list is passed as a value)
        return all(p in live or not in_run[p] or p in collectors for p in self.state.parents[i])

    # -- expansion (create_graph(expand=...)) -------------------------------------------

    def grow(self, t: int, first: int, n: int) -> None:
        """Collector t ran as elements ``first..first+n-1``: the per-task
        tables take them (as their task's), and their parents count them
        among their unfinished children (a retry needs their futures)."""
        state: Any = self.state
        limits = self.limits
        limits.timeout.extend([limits.timeout[t]] * n)
        limits.retries.extend([limits.retries[t]] * n)
        if state.gate is None:  # (else the gate's own list, which its extend_like grew)
            self.gated.extend([False] * n)
        for e in range(first, first + n):
            in_run = state.state[e] != TaskState.DONE
            self.attempts.append(0)
            self.submissions.append(0)
            self.rank.append(self.rank[t])
            self.dask_priority.append(self.dask_priority[t])
            self.in_run.append(in_run)
            self.unfinished_children.append(0)
            if in_run:
                for p in state.parents[e]:
                    if self.in_run[p]:
                        self.unfinished_children[p] += 1

    def _insert_item(self, e: int, args: list) -> None:
        """Element e's item in its task's mapped dependency's place."""
        state: Any = self.state
        t, k = state.element_of(e)
        pos = state.item_pos.get(t)
        if pos is not None:
            elements = self.book.elements
            assert elements is not None
            args.insert(pos, elements.items[t][k])

    # -- the state's side --------------------------------------------------------------

    def start_ready(self) -> list[tuple[int, Future]]:
        """Start every task the state has ready (its future usually exists
        already); returns the outcomes that arrived before they started."""
        state, book = self.state, self.book
        due = []
        while (i := state.pop_ready()) is not None:
            state.started(i)
            self.running.add(i)
            self.attempts[i] += 1
            if i not in self.live:
                self.resubmit(i)
            book.starting(i)
            future = self.early.pop(i, None)
            if future is not None:
                due.append((i, future))
        return due

    def wait_for_outcomes(self) -> list[tuple[int, Future]]:
        """Block until Dask finishes a future (or a delayed retry is due);
        return every outcome that has arrived."""
        due = [self.timers[0][0]] if self.timers else []
        slot = self.state.next_rate_slot()  # (the state's clock is time.monotonic)
        if slot is not None:
            due.append(slot)
        wait = max(0.0, min(due) - time.monotonic()) if due else None
        try:
            batch = [self.inbox.get(timeout=wait)]
        except queue.Empty:
            return []
        while True:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                return [item for item in batch if item is not None]  # (None: a cancel's wake-up)

    def fire_timers(self) -> None:
        """Requeue the delayed retries that are due, and the tasks whose rate
        slot has come."""
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, i = heapq.heappop(self.timers)
            if self.state.state[i] == TaskState.WAITING:
                self.state.requeue(i)
        slot = self.state.next_rate_slot()
        if slot is not None and slot <= now:
            self.state.rate_due()

    # -- outcomes ------------------------------------------------------------------------

    def record(self, batch: list[tuple[int, Future]]) -> None:
        """Record a batch of finished futures, in the state's order."""
        state = self.state
        current = []
        for i, future in batch:
            if self.live.get(i) is not future:
                continue  # an attempt superseded by a retry, or cancelled
            s = state.state[i]
            if s == TaskState.RUNNING:
                current.append((i, future))
            elif s in (TaskState.WAITING, TaskState.READY):
                self.early[i] = future  # a parent's outcome is still to be recorded
        values, unfetchable = self.fetch([(i, f) for i, f in current if self.gathers(i, f)])
        for i, future in current:
            if state.state[i] != TaskState.RUNNING:
                continue
            if i in unfetchable:
                self.failed(i, unfetchable[i])
            elif future.status == "error":
                error, pid, start, end = self.error_of(i, future)
                if start is not None:
                    self.graph.durations[self.names[i]] = end - start
                failure = future.exception()
                self.failed(i, error, pid, start, end, failure.output if isinstance(failure, TaskFailure) else None)
            elif future.status == "cancelled":
                self.failed(i, TaskmapError(f"Dask cancelled task {self.names[i]!r} (taskmap did not)"))
            else:
                self.succeeded(i, future, values.get(i))

    def gathers(self, i: int, future: Future) -> bool:
        """Whether task i's value comes back to the caller now."""
        if future.status in ("error", "cancelled"):
            return False
        return self.wanted is None or _task_of(self.names[i]) in self.wanted

    def fetch(self, finished: list[tuple[int, Future]]) -> tuple[dict, dict]:
        """The outcomes of ``finished`` in one ``gather``; a value that cannot
        be brought here fails its own task only."""
        if not finished:
            return {}, {}
        with contextlib.suppress(Exception):  # else find out which, one by one
            outcomes = self.client.gather([f for _, f in finished])
            return dict(zip((i for i, _ in finished), outcomes)), {}
        values, errors = {}, {}
        for i, future in finished:
            try:
                values[i] = future.result()
            except Exception as error:  # noqa: BLE001 - the result's own failure
                failure = SerializationError(
                    self.names[i],
                    "result",
                    self.value_type(future),
                    f"it could not be brought to the caller: {_brief(error)}",
                )
                failure.__cause__ = error
                errors[i] = failure
        return values, errors

    def value_type(self, future: Future) -> str:
        """The type name of the value a finished future holds, asked of the
        worker that holds it (the future knows only the envelope's type)."""
        try:
            return self.client.submit(_value_type_name, future, pure=False).result(timeout=30)
        except Exception:  # noqa: BLE001 - only for the message
            return getattr(future.type, "__qualname__", "unknown")

    def succeeded(self, i: int, future: Future, outcome: Outcome | None) -> None:
        self.running.discard(i)
        name = self.names[i]
        if outcome is None:  # the value stays on the cluster
            self.book.succeeded(i, future)
        else:
            start = outcome.start - self.clock_offset
            end = outcome.end - self.clock_offset
            self.graph.durations[name] = end - start
            self.output.set_text(i, getattr(outcome, "output", None))
            self.book.succeeded(i, outcome.value, outcome.pid, start, end)
        self.release_futures(i)

    def failed(
        self,
        i: int,
        error: BaseException,
        pid: int | None = None,
        start: float | None = None,
        end: float | None = None,
        output: str | None = None,
    ) -> None:
        self.running.discard(i)
        self.live.pop(i, None)
        dropped = self.drop_futures(_waiting_descendants(self.state, self.in_run, i))
        if 0 < self.attempts[i] <= self.limits.retries[i]:
            # another attempt; only the last failure is recorded
            if self.limits.retry_delay > 0:
                self.state.unstart(i)
                heapq.heappush(self.timers, (time.monotonic() + self.limits.retry_delay, i))
            else:
                self.state.requeue(i)
            self.cancel(dropped)
            return
        self.cancel(dropped + self.drop_futures(_skipped_by(self.state, i)))
        self.release_futures(i)
        self.output.set_text(i, output)
        self.book.failed(i, error, pid, start, end)  # skips the descendants; may raise

    def error_of(self, i: int, future: Future) -> tuple:
        """(error, pid, start, end) of a failed future."""
        from distributed.scheduler import KilledWorker

        name = self.names[i]
        error = future.exception()
        if isinstance(error, TaskFailure) and error.task != repr(name):
            # a result this task needed died with its worker, and Dask's
            # recomputation of it failed
            lost = TaskmapError(f"task {name!r} lost an argument: recomputing it failed: {error}")
            lost.__cause__ = error
            return lost, None, None, None
        if isinstance(error, TaskFailure):
            start, end = error.start - self.clock_offset, error.end - self.clock_offset
            return _rebuild_error(name, error, self.limits.timeout[i]), error.pid, start, end
        if isinstance(error, KilledWorker):
            worker = getattr(error.last_worker, "address", None)
            crashed = DaskWorkerCrashedError(name, worker, error.allowed_failures + 1)
            crashed.__cause__ = error
            return crashed, None, None, None
        return error, None, None, None  # Dask's own (a lost dependency...)

    # -- releasing futures ------------------------------------------------------------------

    def release_futures(self, i: int) -> None:
        """Task i finished for good: drop the futures no retry can need any
        more (Dask frees a result once no future and no waiting task holds
        it): i's own when it has no unfinished child, and each parent's whose
        last unfinished child it was.  (A child that is skipped never counts
        as finished here: its parents' futures are dropped at the run's end.)"""
        state, live = self.state, self.live
        if self.unfinished_children[i] == 0:
            live.pop(i, None)
        for p in state.parents[i]:
            if self.in_run[p]:
                self.unfinished_children[p] -= 1
                if self.unfinished_children[p] == 0 and state.state[p] in FINISHED:
                    live.pop(p, None)

    def drop_futures(self, tasks: Iterable[int]) -> list:
        """Forget the futures of ``tasks``; returns them (to cancel)."""
        dropped = []
        for j in tasks:
            self.early.pop(j, None)
            future = self.live.pop(j, None)
            if future is not None:
                dropped.append(future)
        return dropped

    def cancel(self, futures: list) -> None:
        # mostly erred already (Dask errs a failed task's dependents); those
        # still pending must not run
        pending = [f for f in futures if not f.done()]
        if pending:
            self.client.cancel(pending)


def _waiting_descendants(state: SchedulingState, in_run, i: int) -> set[int]:
    """Descendants of i in Dask's graph (through tasks of the run) that the
    run has not finished."""
    found: set[int] = set()
    stack = [c for c in state.children[i] if in_run[c]]
    while stack:
        c = stack.pop()
        if c in found or state.state[c] in FINISHED:
            continue
        found.add(c)
        stack.extend(g for g in state.children[c] if in_run[g])
    return found


def _skipped_by(state: SchedulingState, i: int) -> set[int]:
    """The tasks the state will skip when i fails (walked as
    ``SchedulingState.failed`` walks): descendants not yet started, also
    through tasks done before the run or running, whose futures Dask may be
    running, since in Dask's graph they do not depend on i."""
    found: set[int] = set()
    stack = list(state.children[i])
    while stack:
        c = stack.pop()
        if c in found or state.state[c] == TaskState.SKIPPED:
            continue  # (a skipped task's descendants were skipped with it)
        found.add(c)
        stack.extend(state.children[c])
    return {c for c in found if state.state[c] in (TaskState.WAITING, TaskState.READY)}


def _scatter_given_results(client: Client, graph: Graph, state: SchedulingState, in_run: bytearray) -> dict[int, Any]:
    """Futures of the results of tasks done before the run that a task of
    the run takes as an argument, sent to the cluster once each (a big
    value feeding many children travels once, not once per child)."""
    from distributed import Future

    results, names = graph.results, state.names
    needed = sorted({p for i in range(len(names)) if in_run[i] for p in state.parents[i] if not in_run[p]})
    given: dict[int, Any] = {}
    to_send: list[int] = []
    for p in needed:
        value = results.get(names[p])
        if value is None:
            continue  # left out of the arguments anyway
        if isinstance(value, Future):
            if value.client is not client:
                raise ValueError(
                    f"the result of task {names[p]!r} is a future of another Dask client; "
                    "run with that client, or reset the task"
                )
            given[p] = value
        else:
            to_send.append(p)
    if to_send:
        values = [results[names[p]] for p in to_send]
        try:
            futures = client.scatter(values, hash=False)
        except Exception as error:
            raise _unsendable(to_send, values, names, error) from error
        given.update(zip(to_send, futures))
    return given


def _task_of(name: Any) -> Any:
    """The task whose value ``gather`` names: an element's is its task's."""
    return name.task if type(name) is Element else name


def _below_collectors(state: Any) -> set[int]:
    """The expanded tasks of an expanding state and every task below them."""
    found: set[int] = set()
    stack = list(state.mapped)
    while stack:
        i = stack.pop()
        if i not in found:
            found.add(i)
            stack.extend(state.children[i])
            stack.extend(state.expanders.get(i, ()))
    return found


def _submission_order(state: SchedulingState) -> list[int]:
    """A topological order (parents before children: a child's submit takes
    their futures) that, among the tasks it may put next, puts io tasks first
    and then cpu tasks by critical path.  Dask gives free slots to tasks in
    the order they arrive more than by their priority, so this is the order
    in which the first ready tasks take them."""
    parents, children, is_io, priority = state.parents, state.children, state.is_io, state.priority
    waiting = [len(ps) for ps in parents]

    def key(i: int) -> tuple:
        return (not is_io[i], -priority[i], i)

    heap = [key(i) for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        i = heapq.heappop(heap)[-1]
        order.append(i)
        for c in children[i]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(heap, key(c))
    return order


def _rebuild_error(name: Any, failure: TaskFailure, limit: float | None) -> BaseException:
    """The task's own exception from a worker's :class:`TaskFailure`, as the
    parallel runtime rebuilds it."""
    if failure.timed_out:
        return TaskTimeoutError(name, limit if limit is not None else 0.0)
    return codec.decode_exception(failure.blob, failure.type_name, failure.message, failure.traceback_text)


def _value_type_name(result: Any) -> str:
    """Runs on a worker: the type name of a task's value."""
    value = result.value if type(result) is Outcome else result
    return type(value).__qualname__


def _brief(error: BaseException) -> str:
    """An error's message without the traceback text Dask puts in some."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ({lines[-1].strip()})"


def _unsendable(tasks: list[int], values: list, names: list, error: Exception) -> Exception:
    """A SerializationError naming the first given result that cannot be
    sent to the cluster (or ``error`` itself when each one pickles)."""
    import cloudpickle

    for p, value in zip(tasks, values):
        try:
            cloudpickle.dumps(value)
        except Exception as cause:  # noqa: BLE001
            return SerializationError(names[p], "result", type(value).__qualname__, str(cause))
    return error


def _cpu_slots(client: Client) -> tuple[int, bool]:
    """How many cpu tasks the cluster runs at once (what observers hear as
    ``ncores``), and whether its workers all offer :data:`CPU_RESOURCE` (then
    cpu tasks ask for it; else each task takes a thread slot)."""
    workers = list(client.scheduler_info().get("workers", {}).values())
    units = [w.get("resources", {}).get(CPU_RESOURCE) for w in workers]
    if units and all(units):
        return max(1, int(sum(units))), True
    return max(1, sum(w.get("nthreads", 1) for w in workers)), False
