"""What runs on a Dask worker for each taskmap task (see :mod:`taskmap.dask.runner`).

:func:`run_task` is the Dask task of every taskmap task: it runs the task's
function on its parents' results (in order, ``None`` left out), an io task
after leaving the worker's thread pool with its coroutine on a per-process
event loop, a cpu task in its thread slot; a failure is raised as a
:class:`TaskFailure` carrying the exception encoded by :mod:`taskmap.runtime.codec`.
Workers import this module, not the runner.

Output (:mod:`taskmap.runtime.capture`): the first task a worker process runs
installs the capture there for the process's life.  Each task owns its
output through the context variable (set in its thread; a coroutine on the
io loop inherits it, as does the helper thread of a time limit), kept
bounded in a :class:`_TaskText` that travels back in the task's
:class:`Outcome` or :class:`TaskFailure`; when the caller shows output
(``output='pass'`` or ``'prefix'``) each complete line is also published at
once as a Dask event on the run's topic, which the caller subscribes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from taskmap.errors import TASK_ERRORS, StaleCodeError
from taskmap.runtime import capture, codec

# A failure's message is cut to this many characters in Dask's own display of
# the error (the full text travels encoded); Dask replaces an exception whose
# str() exceeds its max-error-length (10,000) by another one.
_SHORT_MESSAGE = 2000


class TaskFailure(Exception):
    """What a worker raises when a task fails: the task's exception encoded
    by :mod:`taskmap.runtime.codec` (``blob``; ``None`` when it cannot be encoded),
    its class name, message and traceback text, whether the task ran past its
    time limit, and the worker's pid and wall-clock start/end."""

    def __init__(
        self,
        task: str,
        blob: bytes | None,
        type_name: str,
        message: str,
        traceback_text: str,
        timed_out: bool,
        pid: int,
        start: float,
        end: float,
        output: str | None = None,
    ) -> None:
        super().__init__(task, type_name, message[:_SHORT_MESSAGE])
        self.output = output  # what the task wrote (bounded), or None
        self.task = task
        self.blob = blob
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.timed_out = timed_out
        self.pid, self.start, self.end = pid, start, end

    def __reduce__(self):
        return (
            type(self),
            (
                self.task,
                self.blob,
                self.type_name,
                self.message,
                self.traceback_text,
                self.timed_out,
                self.pid,
                self.start,
                self.end,
                self.output,
            ),
        )

    def __str__(self) -> str:
        what = "ran past its time limit" if self.timed_out else "failed"
        return f"task {self.task} {what}: {self.type_name}: {self.message[:_SHORT_MESSAGE]}"


# -- what runs on the workers ----------------------------------------------------------


class TaskCall(NamedTuple):
    """Everything a worker needs to run one task besides its arguments."""

    label: str  # repr of the task name, for messages
    func: Callable
    io: bool
    timeout: float | None
    envelope: bool  # return an Outcome (the caller gathers the value)
    # the caller's version of the user module whose code func runs (None: not
    # a user module): a worker holding another version fails the task
    code: tuple[str, tuple] | None = None
    # a rated task's start on the worker's wall clock: the slot the caller's
    # gate gave it, shifted by RATE_SHIFT (see run_task)
    start_at: float | None = None
    # the task's output: the Dask event topic its lines are published on as
    # they are written (None: the caller shows none), its number in the run
    # (the caller's key for it), and the least level of a log record kept
    output_topic: str | None = None
    output_key: int = 0
    capture_level: int = logging.INFO


class Outcome:
    """A task's value with where and when it ran (worker pid, wall clock),
    and what it wrote (bounded; None: nothing)."""

    __slots__ = ("end", "output", "pid", "start", "value")

    def __init__(self, value: Any, pid: int, start: float, end: float, output: str | None = None) -> None:
        self.value, self.pid, self.start, self.end = value, pid, start, end
        self.output = output

    def __reduce__(self):
        return (Outcome, (self.value, self.pid, self.start, self.end, self.output))

    def __sizeof__(self) -> int:
        # Dask's memory accounting (dask.sizeof falls back to sys.getsizeof):
        # count the value, or a 50 MB array would look like 64 bytes
        from dask.sizeof import sizeof

        return sizeof(self.value) + 64


class _TimedOut(Exception):
    """Raised on a worker when a task runs past its limit."""


def run_task(call: TaskCall, *parent_results: Any) -> Any:
    """The Dask task of every taskmap task: run ``call.func`` on the parents'
    results (in order, ``None`` left out) and return its value (wrapped in an
    :class:`Outcome` when the caller will gather it)."""
    args = []
    for result in parent_results:
        value = result.value if type(result) is Outcome else result
        if value is not None:
            args.append(value)
    if call.io:
        from distributed import secede

        # leave the worker's thread pool: the wait holds a thread, not one of
        # the worker's nthreads slots, so io tasks overlap and cpu tasks run
        secede()
    if call.start_at is not None:
        _start_on_its_slot(call)
    return _run(call, args)


def warm_up(funcs: list, capture_level: int, io: bool) -> None:
    """Run on every worker (``client.run``) before a run with rates: the
    rated tasks' functions have been unpickled to get here (their modules
    imported), and what a first task sets up is set up, so that no first
    start comes after its slot by an import's length."""
    del funcs
    _capture_here(capture_level)
    if io:
        _io_loop()


def _start_on_its_slot(call: TaskCall) -> None:
    """A rated task starts at its slot (shifted): submitted at the slot, it
    arrives after Dask's latency, which varies from one task to the next; a
    fixed shift longer than that latency keeps the starts as far apart as
    the slots.  A cpu task waits out of the worker's thread slots."""
    # what a worker's first task sets up, now rather than after the slot
    _capture_here(call.capture_level)
    if call.io:
        _io_loop()
    delay = call.start_at - time.time() if call.start_at is not None else 0.0
    if delay <= 0:
        return
    from distributed import rejoin, secede

    if not call.io:
        secede()
    time.sleep(delay)
    if not call.io:
        rejoin()


def _run(call: TaskCall, args: list) -> Any:
    pid, start = os.getpid(), time.time()
    text = _TaskText(call)
    owned = capture.owner.set((text, call.output_key))
    try:
        if call.code is not None:
            _check_code(*call.code)
        value = _call_io(call, args) if call.io else _call_cpu(call, args)
    except _TimedOut:
        output = text.end(owned)
        raise TaskFailure(call.label, None, "TaskTimeoutError", "", "", True, pid, start, time.time(), output) from None
    except TASK_ERRORS as error:  # the task's own failure, its result
        output = text.end(owned)
        raise _failure(call.label, error, pid, start, output) from None
    except BaseException:
        text.end(owned)
        raise
    output = text.end(owned)
    if call.envelope:
        return Outcome(value, pid, start, time.time(), output)
    return value


class _TaskText(capture.Sink):
    """One task's output on a Dask worker: kept (bounded) to travel back
    with its outcome, and each complete line published on the run's topic
    when the caller shows output."""

    def __init__(self, call: TaskCall) -> None:
        super().__init__()
        _capture_here(call.capture_level)
        self.kept: capture.KeptText | None = None
        self.topic = call.output_topic
        self.worker: Any = None
        if self.topic is not None:
            from distributed import get_worker

            with contextlib.suppress(ValueError):  # (not on a Dask worker: nothing to publish on)
                self.worker = get_worker()

    def lines(self, key: Any, stream: int, text: str) -> None:
        if self.kept is None:
            self.kept = capture.KeptText()
        self.kept.add(text)
        if stream in capture.SHOWN and self.worker is not None:
            with contextlib.suppress(Exception):  # (the worker is closing: the text is still kept)
                self.worker.log_event(self.topic, [key, stream, text])

    def end(self, owned: contextvars.Token) -> str | None:
        """The task ended: its output, or None when it wrote nothing."""
        capture.owner.reset(owned)
        if self.open:
            for key in list(self.open):
                self.finish(key)
        return None if self.kept is None else self.kept.text()


_capture_lock = threading.Lock()
_capture_handler: dict[int, logging.Handler] = {}  # pid -> the process's log handler


def _capture_here(level: int) -> None:
    """Capture output in this worker process (once per process); records
    at ``level`` and above are kept (the last run's level)."""
    handler = _capture_handler.get(os.getpid())
    if handler is None:
        with _capture_lock:
            handler = _capture_handler.get(os.getpid())
            if handler is None:
                handler = _capture_handler[os.getpid()] = capture.install_for_process(level)
    if handler.level != level:
        handler.setLevel(level)


# module name -> (module object, its spec, the version of its file read the
# first time one of its functions ran here with that module object and spec)
_imported_versions: dict[str, tuple[Any, Any, Any]] = {}


def _check_code(module: str, version: tuple) -> None:
    """Refuse to run code of ``module`` other than the caller's: a Dask
    worker runs tasks in threads, so a module cannot be reloaded under them;
    the task fails naming the module instead of giving a stale result."""
    from taskmap.runtime.process_setup import file_version, user_module_file

    obj = sys.modules.get(module)
    spec = getattr(obj, "__spec__", None)
    seen = _imported_versions.get(module)
    if seen is None or seen[0] is not obj or seen[1] is not spec:
        path = user_module_file(module, obj)
        seen = _imported_versions[module] = (obj, spec, file_version(path) if path else ())
    if seen[2] != tuple(version):
        raise StaleCodeError(
            module,
            f"this Dask worker (pid {os.getpid()}) imported another version of {version[0]} "
            "than the caller runs (it was edited and reloaded in the caller, or edited "
            "since the worker imported it); restart the workers (client.restart()) "
            "or reload the module on them, and reload it in the caller",
        )


def _failure(label: str, error: BaseException, pid: int, start: float, output: str | None = None) -> TaskFailure:
    end = time.time()
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        blob: bytes | None = codec.encode(error)
    except Exception:  # noqa: BLE001 - the coordinator gets a RemoteTaskError instead
        blob = None
    return TaskFailure(label, blob, type(error).__qualname__, str(error), text, False, pid, start, end, output)


def _call_cpu(call: TaskCall, args: list) -> Any:
    """A cpu task in the worker's thread slot; a returned awaitable (a
    coroutine function's coroutine) is run to its end on a private loop."""
    if call.timeout is None:
        return _finish(call.func(*args), _thread_loop())
    return _in_thread_with_limit(lambda: _finish(call.func(*args), None), call.timeout, call.label)


def _call_io(call: TaskCall, args: list) -> Any:
    """An io task, after it left the thread pool: a coroutine runs on the
    worker's shared io loop (cancelled past its limit); a plain function runs
    in this thread."""
    if inspect.iscoroutinefunction(call.func):
        return _io_loop().run(call.func(*args), call.timeout)
    if call.timeout is None:
        return _finish(call.func(*args), _io_loop())
    return _in_thread_with_limit(lambda: _finish(call.func(*args), _io_loop()), call.timeout, call.label)


def _finish(value: Any, loop: _IoLoop | asyncio.AbstractEventLoop | None) -> Any:
    """``value``, or what it resolves to when it is awaitable."""
    if not inspect.isawaitable(value):
        return value
    if loop is None:
        return asyncio.run(_await(value))
    if isinstance(loop, _IoLoop):
        return loop.run(value, None)
    return loop.run_until_complete(_await(value))


async def _await(awaitable):
    return await awaitable


_local = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's private event loop for cpu coroutines (reused: a Dask
    worker's cpu threads live as long as the worker)."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def _in_thread_with_limit(work: Callable[[], Any], limit: float, label: str) -> Any:
    """Run ``work`` in a helper thread and wait at most ``limit`` seconds.
    Past the limit the thread cannot be stopped: it is left to finish
    unwatched, and its result is dropped."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as error:  # noqa: BLE001 - re-raised in the waiting thread
            box["error"] = error

    # (the helper thread runs in a copy of this context: the task owns its output there too)
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name=f"taskmap-limited {label}", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise _TimedOut
    if "error" in box:
        raise box["error"]
    return box["value"]


class _IoLoop:
    """One asyncio loop per worker process, in a daemon thread, shared by the
    io coroutines of that worker.  Shared rather than one loop per task, so
    that clients a coroutine caches (an aiohttp session...) stay bound to a
    live loop; separate from the Dask worker's own loop, so that a coroutine
    that blocks for a while does not stall the worker's heartbeats."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="taskmap-io-loop", daemon=True)
        self.thread.start()

    def run(self, awaitable: Any, limit: float | None) -> Any:
        """Run ``awaitable`` on the loop and wait for it in this thread."""
        result = asyncio.run_coroutine_threadsafe(_own_cancel(awaitable, limit), self.loop).result()
        if type(result) is _Cancelled:
            raise result.error
        return result


class _Cancelled(NamedTuple):
    error: asyncio.CancelledError


async def _own_cancel(awaitable: Any, limit: float | None) -> Any:
    # a CancelledError the task raises itself is its failure; crossing the
    # thread boundary as is, it would arrive as a bare concurrent.futures one
    try:
        return await _with_limit(awaitable, limit)
    except asyncio.CancelledError as error:
        # (a coroutine runs in a task: current_task() is not None)
        if cast("asyncio.Task[Any]", asyncio.current_task()).cancelling():
            raise
        return _Cancelled(error)


async def _with_limit(awaitable: Any, limit: float | None) -> Any:
    if limit is None:
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    # asyncio.wait, not wait_for: a TimeoutError the task raises itself must
    # stay the task's own failure, not count as running past the limit
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise _TimedOut
    return task.result()


_io_loops: dict[int, _IoLoop] = {}
_io_loops_lock = threading.Lock()


def _io_loop() -> _IoLoop:
    """This process's io loop, started on first use (keyed by pid: a forked
    child does not inherit the loop's thread)."""
    pid = os.getpid()
    loop = _io_loops.get(pid)
    if loop is None:
        with _io_loops_lock:
            loop = _io_loops.get(pid)
            if loop is None:
                loop = _io_loops[pid] = _IoLoop()
    return loop
