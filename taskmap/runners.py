"""The public runners.

``run`` and ``run_async`` execute in the calling process; ``run_parallel`` and
``run_parallel_async`` hand the graph to the coordinator of the parallel
runtime (:mod:`taskmap.runtime.coordinator`).  All four share the scheduling state
(:mod:`taskmap.scheduling.state`) and the bookkeeping (:mod:`taskmap.bookkeeping`), so
their semantics are the same: arguments are the parents' results in order with
``None`` left out, a failed task's result is its exception and its descendants
get the ancestor string, ``raise_errors`` stops at the first failure.

Task output (:mod:`taskmap.runtime.capture`): ``run`` and ``run_async``
capture this process's streams and root logger for the run, and each task
runs with the context variable ``capture.owner`` naming it (set around its
call; a coroutine's asyncio task copies it when created; a plain io
function's thread sets it itself), so the run's collector gets its lines.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Unpack

from taskmap.bookkeeping import Bookkeeper
from taskmap.element_book import functions_of
from taskmap.errors import TASK_ERRORS, RunCancelled
from taskmap.graph import Graph
from taskmap.heap import frozen_during
from taskmap.options import RunnerOptions, RunOptions
from taskmap.options import resolve as resolve_options
from taskmap.runtime import capture
from taskmap.scheduling.state import SchedulingState

# io-bound plain functions run in threads so their waits overlap; a stress
# test may start hundreds at once, so allow many (threads start on demand).
IO_THREADS = 256


def state_for(graph: Graph, resources: tuple[dict, dict] | None = None) -> SchedulingState:
    """The scheduling state of a run of ``graph``; a checkpoint store first
    restores the results it holds into the graph (so they count as done).
    ``resources``: the run's (limits, rates), enforced by a gate in the
    state (:mod:`taskmap.scheduling.resources`)."""
    if graph.checkpoint is not None:
        graph.checkpoint.restore(graph)
    state: SchedulingState
    if graph.expand:
        from taskmap.element_book import done_elements
        from taskmap.scheduling.expansion import ExpandingState

        state = ExpandingState(
            graph.dependencies,
            graph.io_bound,
            graph.done,
            graph.durations or None,
            graph.priority,
            graph.expand,
            done_elements(graph),
        )
    else:
        state = SchedulingState(graph.dependencies, graph.io_bound, graph.done, graph.durations or None, graph.priority)
    if resources is not None:
        from taskmap.scheduling.resources import build_gate

        gate = build_gate(state.names, graph.uses, resources[0], resources[1], [])
        if gate is not None:
            state.attach_gate(gate)
    return state


def run(graph: Graph, raise_errors: bool = False, **options: Unpack[RunnerOptions]) -> Graph:
    """Run every task not yet done, one at a time, in this process.

    Coroutine functions are awaited on a private event loop.  Returns the same
    graph, with ``results`` and ``done`` filled in.  With ``raise_errors`` the
    first failure raises :class:`taskmap.TaskFailedError` (its message holds
    the original one; the original is its ``__cause__``).

    ``options``: ``progress``, ``trace``, ``summary``, ``observers``,
    ``limits``, ``rates``, ``output``, ``capture_level`` (see
    :mod:`taskmap.options`).
    """
    return _run(graph, resolve_options("run", graph, raise_errors, options))


@frozen_during
def _run(graph: Graph, opts: RunOptions) -> Graph:
    """``run`` with resolved options.  A cancelled run (``opts.cancel``)
    starts nothing more; a coroutine task it is awaiting is cancelled (a
    plain function runs to its end: it cannot be stopped in this thread)."""
    state = state_for(graph, opts.resources)
    book = Bookkeeper(graph, state, opts.raise_errors, opts.observers, "run", output=opts.output)
    book.hold_events()  # (one task at a time: observers that can take events in batches do)
    loop: asyncio.AbstractEventLoop | None = None
    funcs = functions_of(graph)
    names = state.names
    sink = book.collector
    cancel = opts.cancel
    awaiting: list[asyncio.Task] = []  # the coroutine task being awaited, if any
    woken = threading.Event()  # a rate wait ends early on cancel
    forget = None
    if cancel is not None:

        def wake() -> None:
            woken.set()
            for task in awaiting.copy():  # (the run's thread may change it meanwhile)
                task.get_loop().call_soon_threadsafe(task.cancel)

        forget = cancel.on_cancel(wake)
    run_error: BaseException | None = None
    capture.install(sink.level, sink.skip)
    # one task at a time: the owner is set once, its key per task
    held: list = [sink, None]
    owned = capture.owner.set(held)
    try:
        book.start()  # (inside: an observer that raises at the start still undoes the capture)
        while True:
            if cancel is not None and cancel.is_set:
                raise RunCancelled()
            i = state.pop_ready()
            if i is None:
                # nothing to run but tasks waiting for a rate slot: wait for it
                slot = state.next_rate_slot()
                if slot is None:
                    break
                woken.wait(max(0.0, slot - state.clock()))
                state.rate_due()
                continue
            name = names[i]
            state.started(i)
            book.starting(i)
            held[1] = i  # (a coroutine's asyncio task sees the same list)
            try:
                value = funcs[name](*book.args(i))
                if inspect.isawaitable(value):
                    if loop is None:
                        loop = _private_loop()
                    task = loop.create_task(_await(value))
                    awaiting.append(task)
                    if cancel is not None and cancel.is_set:
                        task.cancel()
                    try:
                        value = loop.run_until_complete(task)
                    finally:
                        awaiting.clear()
            except TASK_ERRORS as error:
                held[1] = None
                if sink.open:
                    sink.finish(i)
                if cancel is not None and cancel.is_set and isinstance(error, asyncio.CancelledError):
                    graph.in_progress[:] = [name]  # cancelled by the run's cancel, not failed
                    raise RunCancelled() from None
                book.failed(i, error)
            else:
                held[1] = None
                if sink.open:
                    sink.finish(i)
                book.succeeded(i, value)
    except BaseException as exc:
        run_error = exc
        raise
    finally:
        capture.owner.reset(owned)
        capture.uninstall(sink.level, sink.skip)
        if forget is not None:
            forget()
        if loop is not None:
            loop.close()
        book.finish(run_error)
    return graph


async def _await(awaitable):
    return await awaitable


def _private_loop() -> asyncio.AbstractEventLoop:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.new_event_loop()
    raise RuntimeError(
        "taskmap.run was called from a running event loop with a coroutine task; "
        "use `await` on taskmap.run_async's coroutine form or call it from a thread"
    )


def run_async(graph: Graph, sleep: float = 0.01, raise_errors: bool = False, **options: Unpack[RunnerOptions]) -> Graph:
    """Run the graph on one asyncio event loop in this process.

    Coroutine functions run concurrently; io-bound plain functions run in
    threads so their waits overlap; other plain functions run on the loop one
    at a time, io-bound tasks first, the rest by critical-path priority.
    ``sleep`` is accepted for compatibility and ignored: nothing polls.
    Returns the graph.  With ``raise_errors`` the first failure cancels what
    is running and raises :class:`taskmap.TaskFailedError`, a ``RuntimeError``.
    ``options``: ``progress``, ``trace``, ``summary``, ``observers``,
    ``limits``, ``rates``, ``output``, ``capture_level`` (see
    :mod:`taskmap.options`).
    """
    del sleep
    opts = resolve_options("run_async", graph, raise_errors, options)
    _run_coroutine(lambda: _run_async(graph, opts))
    return graph


def _run_coroutine(make_coro):
    """``asyncio.run`` that also works when this thread already runs a loop
    (e.g. in Jupyter): then the graph runs on a loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_loop = False
    else:
        in_loop = True
    if not in_loop:
        # outside the except block, or every exception a task raises would
        # carry "RuntimeError: no running event loop" as its __context__
        return asyncio.run(make_coro())
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(make_coro())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="taskmap-run-async")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


@frozen_during
async def _run_async(graph: Graph, opts: RunOptions) -> None:
    """``run_async`` with resolved options, on the running loop.  A
    cancelled run (``opts.cancel``) cancels this coroutine: the io tasks
    running are cancelled and :class:`taskmap.RunCancelled` is raised."""
    state = state_for(graph, opts.resources)
    book = Bookkeeper(graph, state, opts.raise_errors, opts.observers, "run_async", output=opts.output)
    book.hold_events()
    loop = asyncio.get_running_loop()
    cancel = opts.cancel
    forget = None
    if cancel is not None:
        main = asyncio.current_task()
        assert main is not None

        def wake() -> None:
            loop.call_soon_threadsafe(main.cancel)

        forget = cancel.on_cancel(wake)
    funcs, names, is_io = functions_of(graph), state.names, state.is_io
    threads = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="taskmap-io")
    running: dict[asyncio.Future, int] = {}
    sink = book.collector
    owner = capture.owner
    # plain functions run inline one at a time: the loop's owner is set
    # once, its key per task; an asyncio task gets an owner of its own
    held: list = [sink, None]
    owner.set(held)  # (this coroutine's own context)

    def launch(i: int) -> None:
        """Start task i; returns after a plain cpu task has run inline."""
        name = names[i]
        state.started(i)
        book.starting(i)
        func = funcs[name]
        args = book.args(i)
        if is_io[i] and not inspect.iscoroutinefunction(func):
            # (the asyncio task awaiting the thread, which may return an
            # awaitable, copies the owner set around its creation)
            owned = owner.set((sink, i))
            call = _in_thread(loop, threads, capture.call_owned, (sink, i, func, args))
            running[asyncio.ensure_future(call)] = i
            owner.reset(owned)
            return
        held[1] = i
        try:
            value = func(*args)
        except TASK_ERRORS as error:
            held[1] = None
            if sink.open:
                sink.finish(i)
            book.failed(i, error)
            return
        held[1] = None
        if inspect.isawaitable(value):
            owned = owner.set((sink, i))
            running[asyncio.ensure_future(value)] = i
            owner.reset(owned)
            return
        if sink.open:
            sink.finish(i)
        book.succeeded(i, value)

    def collect(fut: asyncio.Future) -> None:
        i = running.pop(fut)
        if sink.open:
            sink.finish(i)
        if fut.cancelled():  # the task raised CancelledError itself
            try:
                fut.result()
            except asyncio.CancelledError as cancelled:
                book.failed(i, cancelled)
            return
        error = fut.exception()
        if error is None:
            book.succeeded(i, fut.result())
        elif isinstance(error, Exception):
            book.failed(i, error)
        else:  # KeyboardInterrupt and friends end the run
            raise error

    run_error: BaseException | None = None
    capture.install(sink.level, sink.skip)
    try:
        book.start()
        while not state.all_finished:
            while (i := state.pop_io()) is not None:
                launch(i)
            if (i := state.pop_cpu()) is not None:
                # let io tasks just launched reach their first await before a
                # plain cpu function holds the loop
                await asyncio.sleep(0)
                launch(i)
                for fut in [f for f in running if f.done()]:
                    collect(fut)
                continue
            # tasks waiting for a rate slot: a timer in the one wait
            slot = state.next_rate_slot()
            if not running:
                if slot is None:
                    break
                await asyncio.sleep(max(0.0, slot - state.clock()))
                state.rate_due()
                continue
            timeout = None if slot is None else max(0.0, slot - state.clock())
            finished, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                collect(fut)
            if slot is not None and state.clock() >= slot:
                state.rate_due()
    except BaseException as exc:
        run_error = exc
        if cancel is not None and cancel.is_set and isinstance(exc, asyncio.CancelledError):
            run_error = RunCancelled()
            raise run_error from None
        raise
    finally:
        if forget is not None:
            forget()
        for fut in running:
            fut.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
            graph.in_progress[:] = [names[i] for i in running.values()]
        threads.shutdown(wait=False, cancel_futures=True)
        capture.uninstall(sink.level, sink.skip)
        book.finish(run_error)


async def _in_thread(loop, threads, func, args):
    value = await loop.run_in_executor(threads, func, *args)
    if inspect.isawaitable(value):
        value = await value
    return value


def default_ncores(ncores: int | None, nprocs: int | None, half: bool) -> int:
    """Resolve the ``ncores``/``nprocs`` aliases (at least 1)."""
    if ncores is not None and nprocs is not None and ncores != nprocs:
        raise ValueError(f"ncores={ncores} and nprocs={nprocs} disagree; pass one of them")
    n = ncores if ncores is not None else nprocs
    if n is None:
        cores = os.cpu_count() or 1
        n = cores // 2 if half else cores
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"ncores must be an int, not {type(n).__name__}")
    return max(1, n)


def run_parallel(
    graph: Graph,
    sleep: float = 0.01,
    ncores: int | None = None,
    raise_errors: bool = False,
    *,
    nprocs: int | None = None,
    **options: Unpack[RunnerOptions],
) -> Graph:
    """Run the graph on ``ncores`` worker processes (default: all cores).

    As :func:`run_parallel_async` (the same runtime; only the default number
    of workers differs): tasks are cpu tasks unless listed in ``io_bound``,
    ``nprocs`` is an alias of ``ncores``, ``sleep`` is ignored.  Returns the
    graph; with ``raise_errors`` the first failure raises
    :class:`taskmap.TaskFailedError`.  ``options``: every option of
    :mod:`taskmap.options`.
    """
    del sleep
    return _run_parallel("run_parallel", graph, default_ncores(ncores, nprocs, half=False), raise_errors, options)


def run_parallel_async(
    graph: Graph,
    sleep: float = 0.1,
    ncores: int | None = None,
    raise_errors: bool = False,
    *,
    nprocs: int | None = None,
    **options: Unpack[RunnerOptions],
) -> Graph:
    """Run the graph on ``ncores`` worker processes (default: half the cores,
    at least 1), each running an asyncio loop: io-bound tasks start at once and
    overlap their waits, cpu-bound tasks run one at a time per worker.

    ``nprocs`` is an alias of ``ncores``; ``sleep`` is ignored.  Returns the
    graph.  With ``raise_errors`` the first failure stops the run and raises
    :class:`taskmap.TaskFailedError`, a ``RuntimeError`` whose message says
    ``check your logs``.  A SIGTERM during the run stops it like Ctrl-C:
    workers are stopped, finished results stay in the graph,
    ``KeyboardInterrupt`` is raised.

    ``options``: ``timeout``, ``retries``, ``retry_delay``, ``memory_limit``,
    ``progress``, ``trace``, ``summary``, ``observers``, ``gather``,
    ``shm_threshold``, documented once in :mod:`taskmap.options`.  Big
    results travel through shared memory from ``shm_threshold`` bytes on: the
    worker that made them writes them once into a segment in ``/dev/shm``,
    only a handle crosses the pipes, and a child's worker maps the segment (a
    numpy argument is then a read-only array over it; copy it to change it).
    No segment outlives the run.  Kept big values are copy-on-write mappings
    of their segments: no copy, writable.
    """
    del sleep
    return _run_parallel("run_parallel_async", graph, default_ncores(ncores, nprocs, half=True), raise_errors, options)


def _run_parallel(runner: str, graph: Graph, ncores: int, raise_errors: bool, options: RunnerOptions) -> Graph:
    return _run_parallel_with(graph, ncores, resolve_options(runner, graph, raise_errors, options))


def _run_parallel_with(graph: Graph, ncores: int, opts: RunOptions) -> Graph:
    """Either parallel runner with resolved options."""
    from taskmap.runtime.coordinator import run_graph

    return run_graph(
        graph,
        ncores,
        opts.raise_errors,
        opts.limits,
        opts.observers,
        opts.runner,
        opts.shm_threshold,
        opts.keep,
        opts.resources,
        opts.cancel,
        opts.output,
    )
