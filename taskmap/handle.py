"""A run as a handle: start it, await it, cancel it, take results as they finish.

    run = taskmap.start(graph, runner="run_parallel_async", ncores=2, timeout=5)
    for task, result in run.as_completed():    # finishing order; `async for` too
        ...
    graph = await run                          # never blocks the event loop
    run.cancel()                               # any thread, any number of times
    graph = run.wait(timeout=None)

The run goes on in a thread of its own (``taskmap-run``), in the very runner
function that the blocking call (``taskmap.run_parallel_async(graph, ...)``)
runs in the caller's thread, with two additions: an observer that feeds
:meth:`Run.as_completed`, and a :class:`~taskmap.cancellation.Cancellation`
that the runner's one wait listens to (the coordinator's wake-up pipe, the
Dask runner's queue, the event loop's main task).  Options are checked by
:func:`start` itself, so a bad option raises in the caller, before anything
runs.  Waiting, in a thread or on an event loop, is a condition variable or
a future resolved from the run's thread: nothing polls.

Cancelling stops what runs (io tasks cancelled, workers running cpu tasks
killed and replaced, nothing new starts), keeps every finished result in the
graph, lists what was running in ``graph.in_progress``, and makes
:meth:`Run.wait`, ``await run`` and the end of :meth:`Run.as_completed` raise
:class:`taskmap.RunCancelled`.  ``run`` (one task at a time in the run's
thread) cannot stop a plain function that is running: the run stops when it
returns.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Unpack

from taskmap.cancellation import Cancellation
from taskmap.errors import RunCancelled
from taskmap.observe.observers import Observer, TaskEvent
from taskmap.options import RunnerOptions, RunOptions
from taskmap.options import resolve as resolve_options

if TYPE_CHECKING:
    from distributed import Client

    from taskmap.graph import Graph

RUNNERS = ("run", "run_async", "run_parallel", "run_parallel_async", "run_dask")

_live_runs: set[Run] = set()  # started runs not ended yet
_running_lock = threading.Lock()


def _cancel_live_runs() -> None:
    """At interpreter exit: cancel the runs still going and give them a
    moment to stop, before the warm pools shut down (a run's thread is a
    daemon: left alone, its coordinator would meet its workers' deaths and
    start others while the interpreter exits)."""
    with _running_lock:
        runs = list(_live_runs)
    for run in runs:
        run._cancel.cancel(final=True)
    for run in runs:
        if run._thread is not None:
            run._thread.join(5.0)


def start(
    graph: Graph,
    runner: str = "run_parallel_async",
    *,
    ncores: int | None = None,
    raise_errors: bool = False,
    client: Client | None = None,
    address: str | None = None,
    **options: Unpack[RunnerOptions],
) -> Run:
    """Start running ``graph`` with ``runner`` (the name of one of the five
    runners) and return its :class:`Run` at once.

    ``ncores`` as for the parallel runners and ``run_dask`` (refused by
    ``run`` and ``run_async``); ``client`` and ``address`` only for
    ``run_dask``; ``raise_errors`` and ``options`` as for the runner (see
    :mod:`taskmap.options`).  Bad options raise here, before anything runs.
    A graph that another started run is still running is refused
    (``RuntimeError``): two runs may not write one graph's results.
    """
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
    if ncores is not None and runner in ("run", "run_async"):
        raise TypeError(f"{runner} runs in this process and takes no ncores=")
    if (client is not None or address is not None) and runner != "run_dask":
        raise TypeError(f"client= and address= are options of run_dask, not of {runner}")
    if runner == "run_dask":
        from taskmap.dask.runner import _check_options

        _check_options(graph, client, address, ncores, options.get("gather", True))
    cancel = Cancellation()
    opts = resolve_options(runner, graph, raise_errors, dict(options))._replace(cancel=cancel)
    feed = _Feed()
    opts.observers.add(feed)
    body = _runner_body(runner, graph, opts, ncores, client, address)
    run = Run(graph, runner, cancel)
    with _running_lock:
        if any(live.graph is graph for live in _live_runs):
            raise RuntimeError("this graph is being run by another taskmap.start; wait for it or cancel it first")
        _live_runs.add(run)
    # registered again at every start, so that it runs before the pools'
    # shutdown (atexit calls the last registered first; the pool registers
    # its own at its creation, made here if it has not happened yet)
    if runner in ("run_parallel", "run_parallel_async"):
        from taskmap.runtime.pool import get_pool

        get_pool()
    atexit.unregister(_cancel_live_runs)
    atexit.register(_cancel_live_runs)
    feed.run = run
    if opts.given.get("dashboard") not in (None, False):
        from taskmap.observe.dashboard import Dashboard

        run._has_dashboard = True
        for observer in opts.observers.items:
            if isinstance(observer, Dashboard):
                observer.on_url.append(run._dashboard_ready)
    run._begin(body)
    return run


def _runner_body(
    runner: str, graph: Graph, opts: RunOptions, ncores: int | None, client: Any, address: str | None
) -> Callable[[], Any]:
    """What the run's thread calls: the runner's own body, options resolved."""
    from taskmap import runners

    if runner == "run":
        return lambda: runners._run(graph, opts)
    if runner == "run_async":
        return lambda: runners._run_coroutine(lambda: runners._run_async(graph, opts))
    if runner == "run_dask":
        from taskmap.dask.runner import _run_dask_with

        return lambda: _run_dask_with(graph, client, address, ncores, opts)
    n = runners.default_ncores(ncores, None, half=runner == "run_parallel_async")
    return lambda: runners._run_parallel_with(graph, n, opts)


class Run:
    """A run started by :func:`start`.  ``graph`` is the graph it fills in;
    ``runner`` the runner's name.  Every method may be called from any
    thread; ``await run`` and ``async for ... in run.as_completed()`` from
    any event loop."""

    def __init__(self, graph: Graph, runner: str, cancel: Cancellation) -> None:
        self.graph = graph
        self.runner = runner
        self._cancel = cancel
        self._changed = threading.Condition()
        self._finished: list[tuple[Any, Any]] = []  # (task, result) in finishing order
        self._ended = False
        self._error: BaseException | None = None
        # (loop, future) of coroutines waiting for the next change
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._thread: threading.Thread | None = None
        self._has_dashboard = False  # dashboard= was given
        self._dashboard_url: str | None = None
        self._dashboard_known = False  # the page is served, or could not be

    def __repr__(self) -> str:
        state = "cancelled" if self._cancel.is_set else ("done" if self._ended else "running")
        return f"<taskmap.Run {self.runner}: {len(self._finished)} tasks finished, {state}>"

    # -- the run's thread ---------------------------------------------------------------

    def _begin(self, body: Callable[[], Any]) -> None:
        self._thread = threading.Thread(target=self._main, args=(body,), name="taskmap-run", daemon=True)
        self._thread.start()

    def _main(self, body: Callable[[], Any]) -> None:
        try:
            body()
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits
            # the handle may live long: its error keeps the traceback's lines,
            # not the runner's locals (the coordinator, its workers, values)
            traceback.clear_frames(error.__traceback__)
            self._error = error
        finally:
            with _running_lock:
                _live_runs.discard(self)
            with self._changed:
                self._ended = True
                self._notify()

    def _task_finished(self, task: Any, result: Any) -> None:
        with self._changed:
            self._finished.append((task, result))
            self._notify()

    def _dashboard_ready(self, url: str | None) -> None:
        """The page is served at ``url`` (None: it could not be)."""
        with self._changed:
            self._dashboard_url = url
            self._dashboard_known = True
            self._changed.notify_all()

    def _notify(self) -> None:
        """Wake every waiter (the lock is held)."""
        self._changed.notify_all()
        waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits there
                loop.call_soon_threadsafe(_resolve, future)

    # -- the caller's side --------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the run (see the module docstring); returns at once, from any
        thread, any number of times.  No effect once the run has ended."""
        if not self._ended:
            self._cancel.cancel()

    @property
    def dashboard_url(self) -> str | None:
        """The address of the run's live page (``dashboard=``), its token
        included; None for a run without one, or whose page could not be
        served (its port was taken: a ``RuntimeWarning`` said so).  Blocks
        until the page is served (the run's start) or the run has ended
        before that.  The page is served until the run ends."""
        if not self._has_dashboard:
            return None
        with self._changed:
            self._changed.wait_for(lambda: self._dashboard_known or self._ended)
            return self._dashboard_url

    def done(self) -> bool:
        """Whether the run has ended (finished, failed, or cancelled)."""
        return self._ended

    def wait(self, timeout: float | None = None) -> Graph:
        """Block until the run ends; return the graph, or raise what the run
        raised (:class:`taskmap.RunCancelled` when cancelled,
        :class:`taskmap.TaskFailedError` with ``raise_errors``...).
        ``TimeoutError`` when ``timeout`` seconds pass first (the run goes
        on).  Ctrl-C while waiting cancels the run and raises
        ``KeyboardInterrupt`` once it has stopped."""
        try:
            with self._changed:
                if not self._changed.wait_for(lambda: self._ended, timeout):
                    raise TimeoutError(f"the run did not end within {timeout} s (it goes on)")
        except KeyboardInterrupt:
            self._stop_after_interrupt()
            raise
        return self._outcome()

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._wait_async().__await__()

    async def _wait_async(self) -> Graph:
        try:
            while not self._ended:
                await self._next_change()
        except asyncio.CancelledError:
            # the awaiting task was cancelled: so is the run; the task sees
            # its CancelledError once the run has stopped
            self.cancel()
            while not self._ended:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._next_change()
            raise
        return self._outcome()

    def as_completed(self) -> Completions:
        """An iterator (and async iterator) over ``(task, result)`` of every
        task that finishes, in finishing order, failed and skipped tasks
        included, each once per call, from the start of the run.  It ends
        with the run, raising what the run raised (:class:`taskmap.RunCancelled`
        when cancelled)."""
        return Completions(self)

    # -- helpers -------------------------------------------------------------------------

    async def _next_change(self) -> None:
        """Return after the next finished task or the end (at once if the run
        has ended)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._changed:
            if self._ended:
                return
            self._async_waiters.append((loop, future))
        await future

    def _outcome(self) -> Graph:
        if self._error is not None:
            raise self._error
        return self.graph

    def _stop_after_interrupt(self) -> None:
        """Ctrl-C in a waiting caller: cancel, and wait until the run stopped."""
        self.cancel()
        thread = self._thread
        while thread is not None and thread.is_alive():
            with contextlib.suppress(KeyboardInterrupt):
                thread.join()


class Completions(Iterator[tuple[Any, Any]], AsyncIterator[tuple[Any, Any]]):
    """What :meth:`Run.as_completed` returns (see there)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._next = 0
        self._over = False

    def __iter__(self) -> Completions:
        return self

    def __next__(self) -> tuple[Any, Any]:
        run = self._run
        if not self._over:
            try:
                with run._changed:
                    run._changed.wait_for(lambda: self._next < len(run._finished) or run._ended)
            except KeyboardInterrupt:
                run._stop_after_interrupt()
                raise
        item = self._take()
        if item is None:
            raise StopIteration
        return item

    def __aiter__(self) -> Completions:
        return self

    async def __anext__(self) -> tuple[Any, Any]:
        run = self._run
        while not self._over and self._next >= len(run._finished) and not run._ended:
            await run._next_change()
        item = self._take()
        if item is None:
            raise StopAsyncIteration
        return item

    def _take(self) -> tuple[Any, Any] | None:
        """The next item, or None at the end (raising the run's error once)."""
        run = self._run
        with run._changed:
            if self._next < len(run._finished):
                self._next += 1
                return run._finished[self._next - 1]
        if not self._over:
            self._over = True
            if run._error is not None:
                raise run._error
        return None


class _Feed(Observer):
    """Hands each finished task to its :class:`Run` (in the run's thread)."""

    run: Run

    def task_finished(self, event: TaskEvent) -> None:
        self.run._task_finished(event.name, event.value)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["RUNNERS", "Completions", "Run", "RunCancelled", "start"]
