"""The public runners.

``run`` and ``run_async`` execute in the calling process; ``run_parallel`` and
``run_parallel_async`` hand the graph to the coordinator of the parallel
runtime (:mod:`taskmap.coordinator`).  All four share the scheduling state
(:mod:`taskmap.state`) and the bookkeeping (:mod:`taskmap.bookkeeping`), so
their semantics are the same: arguments are the parents' results in order with
``None`` left out, a failed task's result is its exception and its descendants
get the ancestor string, ``raise_errors`` stops at the first failure.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .bookkeeping import Bookkeeper
from .errors import TASK_ERRORS
from .graph import Graph
from .limits import RetrySpec, TaskLimits, TimeoutSpec
from .observers import Observer, Observers, build_observers
from .results import GatherSpec, ThresholdSpec, resolve_gather, resolve_threshold
from .state import SchedulingState

# io-bound plain functions run in threads so their waits overlap; a stress
# test may start hundreds at once, so allow many (threads start on demand).
IO_THREADS = 256


def state_for(graph: Graph) -> SchedulingState:
    """The scheduling state of a run of ``graph``; a checkpoint store first
    restores the results it holds into the graph (so they count as done)."""
    if graph.checkpoint is not None:
        graph.checkpoint.restore(graph)
    return SchedulingState(
        graph.dependencies, graph.io_bound, graph.done, graph.durations or None
    )


def run(
    graph: Graph,
    raise_errors: bool = False,
    *,
    progress: bool | None = None,
    trace: str | os.PathLike[str] | None = None,
    summary: bool = False,
    observers: Iterable[Observer] | None = None,
) -> Graph:
    """Run every task not yet done, one at a time, in this process.

    Coroutine functions are awaited on a private event loop.  Returns the same
    graph, with ``results`` and ``done`` filled in.  With ``raise_errors`` the
    first failure raises :class:`taskmap.TaskFailedError` (its message holds
    the original one; the original is its ``__cause__``).

    ``progress``, ``trace``, ``summary`` and ``observers`` as in
    :func:`run_parallel_async`.
    """
    state = state_for(graph)
    book = Bookkeeper(
        graph, state, raise_errors, build_observers(graph, progress, trace, observers, summary), "run"
    )
    loop: asyncio.AbstractEventLoop | None = None
    funcs = graph.funcs
    names = state.names
    run_error: BaseException | None = None
    book.start()
    try:
        while (i := state.pop_ready()) is not None:
            name = names[i]
            state.started(i)
            book.starting(i)
            try:
                value = funcs[name](*book.args(i))
                if inspect.isawaitable(value):
                    if loop is None:
                        loop = _private_loop()
                    value = loop.run_until_complete(_await(value))
            except TASK_ERRORS as error:
                book.failed(i, error)
            else:
                book.succeeded(i, value)
    except BaseException as exc:
        run_error = exc
        raise
    finally:
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


def run_async(
    graph: Graph,
    sleep: float = 0.01,
    raise_errors: bool = False,
    *,
    progress: bool | None = None,
    trace: str | os.PathLike[str] | None = None,
    summary: bool = False,
    observers: Iterable[Observer] | None = None,
) -> Graph:
    """Run the graph on one asyncio event loop in this process.

    Coroutine functions run concurrently; io-bound plain functions run in
    threads so their waits overlap; other plain functions run on the loop one
    at a time, io-bound tasks first, the rest by critical-path priority.
    ``sleep`` is accepted for compatibility and ignored: nothing polls.
    Returns the graph.  With ``raise_errors`` the first failure cancels what
    is running and raises :class:`taskmap.TaskFailedError`, a ``RuntimeError``.
    ``progress``, ``trace``, ``summary`` and ``observers`` as in
    :func:`run_parallel_async`.
    """
    del sleep
    obs = build_observers(graph, progress, trace, observers, summary)
    _run_coroutine(lambda: _run_async(graph, raise_errors, obs))
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
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="taskmap-run-async")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def _run_async(graph: Graph, raise_errors: bool, observers: Observers) -> None:
    state = state_for(graph)
    book = Bookkeeper(graph, state, raise_errors, observers, "run_async")
    loop = asyncio.get_running_loop()
    funcs, names, is_io = graph.funcs, state.names, state.is_io
    threads = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="taskmap-io")
    running: dict[asyncio.Future, int] = {}

    def launch(i: int) -> None:
        """Start task i; returns after a plain cpu task has run inline."""
        name = names[i]
        state.started(i)
        book.starting(i)
        func = funcs[name]
        args = book.args(i)
        if is_io[i] and not inspect.iscoroutinefunction(func):
            running[asyncio.ensure_future(_in_thread(loop, threads, func, args))] = i
            return
        try:
            value = func(*args)
        except TASK_ERRORS as error:
            book.failed(i, error)
            return
        if inspect.isawaitable(value):
            running[asyncio.ensure_future(value)] = i
        else:
            book.succeeded(i, value)

    def collect(fut: asyncio.Future) -> None:
        i = running.pop(fut)
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
            if not running:
                break
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                collect(fut)
    except BaseException as exc:
        run_error = exc
        raise
    finally:
        for fut in running:
            fut.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
            graph.in_progress[:] = [names[i] for i in running.values()]
        threads.shutdown(wait=False, cancel_futures=True)
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
    timeout: TimeoutSpec = None,
    retries: RetrySpec = 0,
    retry_delay: float = 0.0,
    memory_limit: int | None = None,
    progress: bool | None = None,
    trace: str | os.PathLike[str] | None = None,
    summary: bool = False,
    observers: Iterable[Observer] | None = None,
    gather: GatherSpec = True,
    shm_threshold: ThresholdSpec = "auto",
) -> Graph:
    """Run the graph on ``ncores`` worker processes (default: all cores).

    Tasks are cpu tasks unless listed in ``io_bound``.  ``nprocs`` is an alias
    of ``ncores``; ``sleep`` is ignored.  ``timeout``, ``retries`` and
    ``retry_delay``, ``memory_limit``, ``progress``, ``trace``, ``summary``,
    ``observers``, ``gather`` and ``shm_threshold`` as in
    :func:`run_parallel_async`.  Returns the graph.
    """
    del sleep
    from .coordinator import run_graph

    n = default_ncores(ncores, nprocs, half=False)
    limits = TaskLimits(list(graph.dependencies), timeout, retries, retry_delay, memory_limit)
    obs = build_observers(graph, progress, trace, observers, summary)
    keep = resolve_gather(graph, gather)
    threshold = resolve_threshold(shm_threshold)
    return run_graph(graph, n, raise_errors, limits, obs, "run_parallel", threshold, keep)


def run_parallel_async(
    graph: Graph,
    sleep: float = 0.1,
    ncores: int | None = None,
    raise_errors: bool = False,
    *,
    nprocs: int | None = None,
    timeout: TimeoutSpec = None,
    retries: RetrySpec = 0,
    retry_delay: float = 0.0,
    memory_limit: int | None = None,
    progress: bool | None = None,
    trace: str | os.PathLike[str] | None = None,
    summary: bool = False,
    observers: Iterable[Observer] | None = None,
    gather: GatherSpec = True,
    shm_threshold: ThresholdSpec = "auto",
) -> Graph:
    """Run the graph on ``ncores`` worker processes (default: half the cores,
    at least 1), each running an asyncio loop: io-bound tasks start at once and
    overlap their waits, cpu-bound tasks run one at a time per worker.

    ``nprocs`` is an alias of ``ncores``; ``sleep`` is ignored.  Returns the
    graph.  With ``raise_errors`` the first failure stops the run and raises
    :class:`taskmap.TaskFailedError`, a ``RuntimeError`` whose message says
    ``check your logs``.

    ``timeout``: seconds for every task, or a mapping task -> seconds (key
    ``None``: the default).  An io task past its limit is cancelled; a cpu
    task past its limit has its worker killed and replaced.  Its result is a
    :class:`taskmap.TaskTimeoutError`.  ``retries`` (a count, or a mapping
    like ``timeout``): a task that raises, times out or whose worker dies is
    run again, after ``retry_delay`` seconds, up to that many times before its
    last error counts; ``graph.attempts[task]`` says how often it ran.
    ``memory_limit``: bytes one worker may allocate; past it the allocating
    task fails with ``MemoryError`` (the pool restarts its workers when the
    limit changes).  A SIGTERM during the run stops it like Ctrl-C: workers are stopped,
    finished results stay in the graph, ``KeyboardInterrupt`` is raised.

    ``progress=True``: a progress bar on stderr (tqdm: tasks finished, ETA,
    done/failed/skipped/running counts), redrawn at most 5 times a second by
    a helper thread; ``None`` (the default) or ``False``: none.
    ``trace``: a file path; when the run ends (also when it raises) the run's
    timeline is written there in the Chrome trace-event JSON format, one
    process per worker with cpu and io rows, for https://ui.perfetto.dev or
    chrome://tracing (see :mod:`taskmap.trace`).
    ``summary=True``: record each task's start, end and worker in
    ``graph.last_run``, so that :func:`taskmap.summarize` can report busy
    time per worker (implied by ``trace``).  Without it every run still
    records its wall time, and this runner each task's duration.
    ``observers``: objects of :class:`taskmap.Observer` subclasses whose hooks
    are called at the run's events (task started / finished, run started /
    finished), in the calling thread.  With none of these options a run pays
    nothing per task for them.

    ``shm_threshold``: a result's buffers of at least this many bytes (numpy
    arrays, pandas frames, bytes/bytearray...) travel through shared memory:
    the worker that made them writes them once into a segment in
    ``/dev/shm``, only a handle crosses the pipes, and a child's worker maps
    the segment (a numpy argument is then a read-only array over it; copy it
    to change it).  ``"auto"`` (the default): ``$TASKMAP_SHM_THRESHOLD`` if
    set (bytes, or ``off``), else 256 KiB; ``None``: off, everything through
    the pipes.  No segment outlives the run.
    ``gather``: which results come back to ``graph.results``: ``True`` (the
    default) all; a collection of task names: those, every other task that
    succeeds gets a :class:`taskmap.NotKept` as its result (its value only
    went to its children, so intermediate big values are freed as soon as
    their readers finished); ``False``: none.  Refused with a checkpoint.
    Kept big values are copy-on-write mappings of their segments: no copy,
    writable, and nothing left in ``/dev/shm``.
    """
    del sleep
    from .coordinator import run_graph

    n = default_ncores(ncores, nprocs, half=True)
    limits = TaskLimits(list(graph.dependencies), timeout, retries, retry_delay, memory_limit)
    obs = build_observers(graph, progress, trace, observers, summary)
    keep = resolve_gather(graph, gather)
    threshold = resolve_threshold(shm_threshold)
    return run_graph(graph, n, raise_errors, limits, obs, "run_parallel_async", threshold, keep)
