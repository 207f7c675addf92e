"""A worker process: one asyncio loop for io tasks, one thread for cpu tasks.

Data flow inside a worker::

    coordinator pipe --> reader thread --+--> loop thread (asyncio): io tasks,
                                         |    any number at once; plain io
                                         |    functions in a thread pool
                                         +--> cpu thread: cpu tasks one at a
                                              time (coroutines on its own loop)
    results <-- sent by whichever thread finished them, under one send lock

Why three threads: the reader never blocks on anything but the pipe, so a big
message from the coordinator is always drained even while this worker sends a
big result (no deadlock of two full pipes); cpu tasks run off the loop thread,
so a long cpu task stalls the io tasks only for the interpreter's switch
interval, not for the task's duration.

Shutdown: a SHUTDOWN message, or EOF on the pipe (the coordinator closed it or
died), ends the process at once with ``os._exit`` -- whatever is running is
abandoned, because nobody is left to receive its result.  On EOF from a
coordinator that died, the worker first removes that coordinator's shared
memory segments (nobody else would until the next coordinator starts).
SIGINT is ignored: on Ctrl-C the coordinator decides and stops the workers
itself.

Output (:mod:`taskmap.runtime.capture`): ``sys.stdout``/``sys.stderr`` and the
root logger are captured for the worker's life.  While a task runs, the
context variable ``capture.owner`` names it (set around a cpu task's call, in
an io coroutine's own asyncio task, in the io thread around a plain
function), and each complete line it writes goes into the outbox, sent to the
coordinator in an ``OUTPUT`` message as soon as the loop thread gets to it.
Every send of results first drains the outbox under the send lock, so a
task's lines always arrive before its outcome.  A task that writes nothing
costs a context variable set and reset, and one test of an empty dict.
What reaches the fds 1 and 2 themselves (C code, subprocesses) goes through
pipes (:mod:`taskmap.runtime.fd_output`): forwarded to the original
descriptors as it arrives, and the running cpu task's when no io task runs.

Big results (:mod:`taskmap.runtime.shm`): with the run's threshold set, a result's
big buffers go into a shared memory segment and only a handle is sent.  A
task's arguments are dropped as soon as its function returns, and the inputs
it was told it reads last are unlinked before its own result is written, so
a chain of big values holds about one input and one output at a time.
"""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import inspect
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
import types
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from taskmap.runtime import capture, codec, fd_output, messages, shm
from taskmap.runtime.functions import FunctionTable
from taskmap.runtime.messages import (
    MSG_KIND,
    OUT_END,
    OUT_OK,
    OUT_PAYLOAD,
    OUT_START,
    SUB_AFTER,
    SUB_ARGS,
    SUB_DIRECT,
    SUB_FIRST,
    SUB_FUNC,
    SUB_IO,
    SUB_RELEASE,
    SUB_SLOTS,
    SUB_TASK,
    SUB_TIMEOUT,
    SUBMIT_CAPTURE_LEVEL,
    SUBMIT_CODES,
    SUBMIT_DROP,
    SUBMIT_SHM,
    Kind,
    Stage,
)
from taskmap.runtime.process_setup import WorkerSetup
from taskmap.runtime.slot import IO_RING

IO_THREADS = 256
GC_YOUNG = 10_000  # container allocations between the collector's young passes (see worker_main)
BATCH_SECONDS = 0.001  # longest a finished cpu result waits for batch-mates
SMALL_MESSAGE = 1 << 16  # loop thread sends up to this much inline
OUTBOX_MAX = 1 << 16  # characters of output waiting past which the writing thread sends them itself


class _RunOutput(capture.Sink):
    """One run's task output in a worker: complete lines go to the
    worker's outbox.  A sink of an earlier run (a thread left running past
    its time limit) passes its lines to the worker's own streams."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker
        self.current = True

    def lines(self, key: Any, stream: int, text: str) -> None:
        if self.current:
            self.worker.output_lines(key, stream, text)
        elif stream in capture.SHOWN:  # (what reached fds 1 and 2 was forwarded already)
            capture.original(stream).write(text)


class _BrokenFunction:
    """Stands in for a function that could not be loaded in this worker."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Worker:
    # (slots: with more than 30 attributes an instance's dict stops sharing its
    # keys, and every self.method() and self.attribute of the hot paths took the
    # interpreter's slow lookup: +6% instructions per task on the cpu thread)
    __slots__ = (
        "batch_lock",
        "conn",
        "coordinator_pidfd",
        "cpu_batch",
        "cpu_owner",
        "cpu_queue",
        "cpu_waiting",
        "fd_pipes",
        "followers",
        "funcs",
        "function_table",
        "io_flags",
        "io_received",
        "io_tasks",
        "io_threads",
        "log_handler",
        "loop",
        "outbox",
        "outbox_lock",
        "outbox_size",
        "output",
        "pending_io",
        "progress",
        "run_id",
        "running",
        "send_lock",
        "sender",
        "setup",
        "shm_prefix",
        "shm_writer",
        "tee",
    )

    def __init__(self, conn, progress, shm_prefix: str | None = None) -> None:
        self.conn = conn
        # shared memory: the coordinator's segment prefix, a pidfd that tells
        # whether it is still alive, and the run's writer (None: off)
        self.shm_prefix = shm_prefix
        self.coordinator_pidfd = _open_pidfd(shm_prefix)
        self.shm_writer: shm.SegmentWriter | None = None
        # running[0]: the cpu task running now, or -1 (shared with the coordinator)
        self.progress = progress
        self.running = progress.view()
        # io_flags[n % IO_RING]: io task number n (in arrival order) began
        self.io_flags = progress.io_flags()
        self.io_received = 0
        self.cpu_batch: list = []
        self.batch_lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.funcs: dict = {}
        self.run_id = None
        # cpu tasks waiting to run, in order; the queue holds one token per
        # task (a blocking get in C, where a deque cannot wait), so a task
        # sent to run first can go to the front of the deque
        self.cpu_waiting: deque = deque()
        self.cpu_queue: queue.SimpleQueue = queue.SimpleQueue()
        self.followers: dict[int, list] = {}  # parent -> tasks pinned behind it
        self.send_lock = threading.Lock()
        self.io_tasks: dict[int, asyncio.Task] = {}
        self.pending_io: list = []
        self.io_threads = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="taskmap-io")
        self.sender = ThreadPoolExecutor(1, thread_name_prefix="taskmap-send")
        # the caller's cwd, environment, sys.path and code; cwd and streams
        # put back after each task
        self.setup = WorkerSetup()
        # code resolved by name stays across runs (see taskmap.runtime.functions)
        self.function_table = FunctionTable()
        # what tasks write: lines waiting to be sent, [task, stream, [pieces], ...]
        self.output = _RunOutput(self)
        self.outbox: list = []
        self.outbox_size = 0
        self.outbox_lock = threading.Lock()
        self.log_handler: logging.Handler | None = None
        # fds 1 and 2 through pipes, for what C code and subprocesses write
        self.tee: fd_output.DescriptorTee | None = None
        self.fd_pipes: list[int] = []
        self.cpu_owner: list[Any] = [None, None]

    # -- threads ----------------------------------------------------------

    def serve(self) -> None:
        self.conn.send_bytes(messages.pack_hello(os.getpid(), self.fd_pipes))
        threading.Thread(target=self.read, name="taskmap-reader", daemon=True).start()
        threading.Thread(target=self.run_cpu, name="taskmap-cpu", daemon=True).start()
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def read(self) -> None:
        """Reader thread: drain the pipe, route each task to its lane."""
        conn, loop = self.conn, self.loop
        try:
            while True:
                msg = messages.unpack(conn.recv_bytes())
                kind = msg[MSG_KIND]
                if kind == Kind.SUBMIT:
                    _, run_id, funcs, subs = msg[:4]
                    if run_id != self.run_id:
                        self.run_id = run_id
                        self.funcs = {}
                        self.function_table.new_run()
                        self.set_shm_threshold(msg[SUBMIT_SHM] if len(msg) > SUBMIT_SHM else None)
                        self.setup.new_run()
                        self.new_output(msg[SUBMIT_CAPTURE_LEVEL] if len(msg) > SUBMIT_CAPTURE_LEVEL else logging.INFO)
                    if msg[SUBMIT_CODES] or msg[SUBMIT_DROP]:
                        self.function_table.add_codes(msg[SUBMIT_CODES], msg[SUBMIT_DROP])
                    if funcs:
                        self.load_functions(funcs)
                    io = []
                    flags = self.io_flags
                    # register pinned tasks before their parents can run
                    followers = self.followers
                    for sub in subs:
                        if sub[SUB_AFTER] >= 0:
                            followers.setdefault(sub[SUB_AFTER], []).append(sub)
                    for sub in subs:
                        if sub[SUB_AFTER] >= 0:
                            continue
                        if sub[SUB_IO]:
                            # number it as the coordinator did (send order)
                            # and clear the flag it reuses, before it can begin
                            n = self.io_received % IO_RING
                            self.io_received += 1
                            flags[n] = 0
                            io.append((sub, n))
                        else:
                            if sub[SUB_FIRST]:
                                self.cpu_waiting.appendleft(sub)
                            else:
                                self.cpu_waiting.append(sub)
                            self.cpu_queue.put(None)
                    if io:
                        loop.call_soon_threadsafe(self.start_io, io)
                elif kind == Kind.SETUP:
                    self.apply_setup(msg[1])
                elif kind == Kind.SHUTDOWN:
                    break
        except (EOFError, OSError):
            self.coordinator_gone()  # the coordinator closed the pipe or died
        _exit_now()

    def new_output(self, level: int) -> None:
        """A new run: its own sink, and its capture level."""
        self.output.current = False
        self.output = _RunOutput(self)
        if self.log_handler is not None:
            self.log_handler.setLevel(level)

    # -- output ---------------------------------------------------------------

    def output_lines(self, task: int, stream: int, text: str) -> None:
        """Any thread: complete lines a task wrote, to be sent."""
        with self.outbox_lock:
            box = self.outbox
            if box and box[-3] == task and box[-2] == stream:
                box[-1].append(text)
            else:
                box += (task, stream, [text])
            first = self.outbox_size == 0
            self.outbox_size += len(text)
            # (what reached fds 1 and 2 goes at once: it is often a dying
            # process's last words, and the process may not live to the loop)
            full = self.outbox_size > OUTBOX_MAX or stream >= capture.FD_STDOUT
        if full:
            self.send_output()  # (the writer waits for the pipe: backpressure)
        elif first:
            try:
                self.loop.call_soon_threadsafe(self.flush_output)
            except RuntimeError:
                pass  # (the loop is closed: the worker is exiting)

    def take_output(self) -> bytes | None:
        """The outbox as an OUTPUT message (None: empty); under the send lock."""
        with self.outbox_lock:
            box = self.outbox
            if not box:
                return None
            self.outbox = []
            self.outbox_size = 0
        for k in range(2, len(box), 3):
            box[k] = "".join(box[k])
        return messages.pack_output(box)

    def flush_output(self) -> None:
        """Loop thread: send what is in the outbox (the loop never waits)."""
        if self.outbox:
            self.send_from_loop(None)

    def send_output(self) -> None:
        """Any thread: send what is in the outbox, waiting for the send lock."""
        self.send(None)

    def set_shm_threshold(self, threshold: int | None) -> None:
        writer = self.shm_writer
        if threshold is None or self.shm_prefix is None:
            self.shm_writer = None
        elif writer is None or writer.threshold != threshold:
            self.shm_writer = shm.SegmentWriter(self.shm_prefix, threshold)

    def coordinator_gone(self) -> None:
        """The pipe broke: if the coordinator died, remove its segments; exit."""
        if self.shm_prefix is not None:
            try:
                shm.close_and_sweep(self.shm_prefix, self.coordinator_pidfd)
            except BaseException:  # noqa: BLE001 - exiting regardless
                pass
        _exit_now()

    def task_segments(self, release: list[str], hand_over: bool = False):
        """What a result is encoded with: the task's view of the writer
        (None when shared memory is off: release now, nothing to write)."""
        writer = self.shm_writer
        if writer is None:
            if release:
                shm.unlink(release)
            return None
        return writer.for_task(release, hand_over)

    def apply_setup(self, body: dict) -> None:
        """Take the caller's setup, before any task of the run.  A failure
        here must not end the reader thread: it is reported on stderr and the
        run goes on (a task then meets whatever it could not set)."""
        try:
            self.setup.apply(body)
        except Exception:  # noqa: BLE001
            traceback.print_exc()

    def load_functions(self, funcs: dict) -> None:
        """Load a run's new functions; a function whose module this worker
        cannot run as the caller does fails its tasks (never old code)."""
        setup, table, epoch = self.setup, self.function_table, self.setup.reloads
        loaded = {func_id: self._load(table, entry, epoch) for func_id, entry in funcs.items()}
        setup.check_imports()  # (loading may have imported user modules)
        for func_id, func in loaded.items():
            error = setup.stale_error(func)
            self.funcs[func_id] = func if error is None else _BrokenFunction(error)

    @staticmethod
    def _load(table: FunctionTable, entry: list, epoch: int):
        try:
            return table.build(entry, epoch)
        except BaseException as error:  # noqa: BLE001 - reported per task
            return _BrokenFunction(error)

    def run_cpu(self) -> None:
        """cpu thread: one task at a time.  Results of short tasks run back
        to back are batched (a message per tiny task would cost more than the
        task), but none waits more than BATCH_SECONDS: the loop thread sends
        a batch that is still open by then, even while the cpu thread is in a
        long task.  The running task's number is kept in shared memory so
        that, should the worker crash, the coordinator blames exactly that
        task and reruns the finished ones whose results were still batched."""
        cpu_queue, waiting = self.cpu_queue, self.cpu_waiting
        coroutine_loop = asyncio.new_event_loop()
        # this thread's output owner: [sink, the task running or None]
        capture.owner.set(self.cpu_owner)
        if self.tee is not None:
            self.tee.owner = self.cpu_owner
        while True:
            cpu_queue.get()  # (a task was put in the deque before its token)
            self.execute_chain(waiting.popleft(), coroutine_loop)

    def take_cpu_batch(self) -> list:
        with self.batch_lock:
            batch, self.cpu_batch = self.cpu_batch, []
            return batch

    def flush_cpu(self) -> None:
        """cpu thread (or the sender thread): send what is batched.  The
        batch is taken and sent under one lock, so results leave in the
        order they finished: a pinned child's result never overtakes its
        parent's (as it could when a big batch waited for the sender thread
        while the cpu thread sent the next one)."""
        try:
            with self.send_lock:
                batch = self.take_cpu_batch()
                if batch:
                    self._send_locked(messages.pack_results(batch))
        except OSError:
            self.coordinator_gone()

    def flush_cpu_late(self) -> None:
        """Loop thread, BATCH_SECONDS after a batch opened: have the sender
        thread send it if the cpu thread has not (the loop never waits for a
        send)."""
        if self.cpu_batch:
            self.sender.submit(self.flush_cpu)

    def execute_chain(self, sub, coroutine_loop) -> None:
        """Run ``sub``, then the tasks pinned behind it (depth first) with the
        parent's value as an argument; drop them if the parent failed."""
        chain: list[tuple[Any, list[Any] | None]] = [(sub, None)]
        cpu_queue = self.cpu_queue
        followers = self.followers
        running = self.running
        loop = self.loop
        after_task = self.setup.after_task
        while chain:
            sub, parent_value = chain.pop()
            running[1] = time.monotonic_ns()
            running[0] = sub[SUB_TASK]
            outcome, value = self.execute_cpu(sub, coroutine_loop, parent_value)
            parent_value = None
            after_task()  # (cwd and streams as before it, for the next task)
            running[0] = -1
            running[2] = sub[SUB_TASK]  # finished, even if its result never gets out
            # take the pinned tasks before the outcome is published: once the
            # coordinator sees it, it may pin new tasks behind this number
            pinned = followers.pop(sub[SUB_TASK], None)
            if pinned:
                if outcome[OUT_OK]:
                    # a value that went to shared memory reaches its pinned
                    # children as it reaches any other: decoded from there
                    # (read-only, and this copy of it can be freed now)
                    if outcome[OUT_PAYLOAD] and codec.segment_names(outcome[OUT_PAYLOAD]):
                        value = None
                        chain.extend((f, [None, outcome[OUT_PAYLOAD]]) for f in reversed(pinned))
                    else:  # (also a value handed over: see execute_cpu)
                        chain.extend((f, [value, None]) for f in reversed(pinned))
                else:
                    self.drop(pinned)
            value = None
            with self.batch_lock:
                self.cpu_batch.append(outcome)
                opened = len(self.cpu_batch) == 1
            if outcome[OUT_END] - outcome[OUT_START] >= BATCH_SECONDS or (not chain and cpu_queue.empty()):
                # nothing runs next, or this task was long enough to pay for
                # its own message: send now (with any batch-mates) rather than
                # after a timer and two thread wake-ups that would each wait
                # for the GIL behind the next task
                self.flush_cpu()
            elif opened:
                loop.call_soon_threadsafe(loop.call_later, BATCH_SECONDS, self.flush_cpu_late)

    def drop(self, subs: list) -> None:
        """Forget pinned tasks whose parent failed (the coordinator skips them)."""
        stack = list(subs)
        while stack:
            stack.extend(self.followers.pop(stack.pop()[SUB_TASK], ()))

    # -- running one task -------------------------------------------------

    def prepare(self, sub, parent_value: list | None = None):
        """The function and decoded arguments of a submission, and the names
        of the segments it may release, or raise with the stage at which it
        went wrong.  ``parent_value`` is ``[value, None]`` of the parent a
        pinned task ran behind, or ``[None, encoded]`` when that value lies
        in shared memory; it is emptied (the arguments hold the value)."""
        func = self.funcs.get(sub[SUB_FUNC])
        if func is None or isinstance(func, _BrokenFunction):
            error = func.error if func is not None else KeyError(f"function {sub[SUB_FUNC]} not sent")
            raise _StageError(Stage.FUNCTION, error)
        encoded_args = sub[SUB_ARGS]
        parent_encoded = parent_value[1] if parent_value is not None else None
        release = (
            [name for k in sub[SUB_RELEASE] for name in codec.segment_names(encoded_args[k])]
            if sub[SUB_RELEASE]
            else []
        )
        args = []
        for k, blob in enumerate(encoded_args):
            try:
                args.append(codec.decode(blob))
            except BaseException as error:
                raise _StageError(Stage.ARGS, error, f"argument {k + 1}") from error
        if parent_value is not None:
            try:
                value = parent_value[0] if parent_encoded is None else codec.decode(parent_encoded)
            except BaseException as error:
                raise _StageError(Stage.ARGS, error, "the value of the task it ran behind") from error
            parent_value.clear()
            if value is not None:
                for slot in sub[SUB_SLOTS]:
                    args.insert(slot, value)
            del value
        return func, args, release

    def execute_cpu(self, sub, coroutine_loop, parent_value: list | None = None) -> tuple:
        """Run one cpu task; return its outcome and its value.  A value only
        the task pinned behind it reads (``direct``) is not copied to shared
        memory: it is handed over here, the coordinator gets a stand-in."""
        start = time.monotonic()
        release: list[str] = []
        output = self.output
        cpu_owner = self.cpu_owner
        cpu_owner[0] = output
        cpu_owner[1] = sub[SUB_TASK]  # (and bytes reaching fds 1 and 2 are its now)
        try:
            func, args, release = self.prepare(sub, parent_value)
            value = func(*args)
            del args  # the inputs' mappings go before the result is written
            # (inspect.isawaitable by type, remembered: its ABC check cost
            # more than a trivial task's call)
            awaitable = _AWAITABLE.get(type(value))
            if awaitable is None:
                awaitable = _awaitable_type(type(value))
            if awaitable and inspect.isawaitable(value):
                value = coroutine_loop.run_until_complete(_await(value))
        except _StageError as err:
            shm.unlink(release)
            return failure(sub[SUB_TASK], err.error, err.stage, start, type_name=err.what), None
        except BaseException as error:  # noqa: BLE001 - the task's failure
            shm.unlink(release)
            return failure(sub[SUB_TASK], error, Stage.RUN, start), None
        finally:
            tee = self.tee
            if tee is not None and tee.maybe:
                tee.end()  # (what it wrote to fds 1 and 2 and the pipe still holds)
            cpu_owner[1] = None
            if output.open:
                output.finish(sub[SUB_TASK])
        writer = self.shm_writer
        if writer is None:
            segments = None
            if release:
                shm.unlink(release)
        elif release or sub[SUB_DIRECT]:
            segments = writer.for_task(release, sub[SUB_DIRECT] and sub[SUB_TASK] in self.followers)
        else:
            segments = writer.plain  # (most tasks: nothing to release or hand over)
        return success(sub[SUB_TASK], value, start, segments), value

    def start_io(self, subs) -> None:
        for sub, flag in subs:
            # (the dict holds the only strong reference to the asyncio task)
            self.io_tasks[sub[SUB_TASK]] = self.loop.create_task(self.run_io(sub, flag))

    async def run_io(self, sub, flag: int) -> None:
        # The task's flag in the shared slot tells the coordinator, should the
        # worker die, whether it began (it fails) or not (a blocking task may
        # stall the loop before it does, or every io thread may be busy; it is
        # requeued): a coroutine begins at its first step, here, a plain
        # function when its thread calls it (see call_io).
        # (decided once: the flag of a plain function goes with it to its thread)
        thread_flag = flag if _runs_in_a_thread(self.funcs.get(sub[SUB_FUNC])) else None
        if thread_flag is None:
            self.io_flags[flag] = 1
        start = time.monotonic()
        task = sub[SUB_TASK]
        release: list[str] = []
        output = self.output
        # (this asyncio task's own context: no reset needed)
        capture.owner.set(owned := (output, task))
        try:
            func, args, release = self.prepare(sub)
            limit = sub[SUB_TIMEOUT]
            if limit is None:
                value = await self.call_io(func, args, thread_flag, owned)
            else:
                deadline = asyncio.timeout(limit)
                try:
                    async with deadline:
                        value = await self.call_io(func, args, thread_flag, owned)
                except TimeoutError as error:
                    if not deadline.expired():
                        raise  # the task's own TimeoutError
                    # (a plain function's thread runs on, unwatched)
                    raise _StageError(Stage.TIMEOUT, error) from None
        except asyncio.CancelledError as error:
            # (a coroutine runs in a task: current_task() is not None)
            if cast("asyncio.Task[Any]", asyncio.current_task()).cancelling():
                self.io_tasks.pop(task, None)
                return  # the worker's loop is shutting down
            # the task's own code raised it (say, it awaited something that
            # was cancelled): a failure like any other, or the run would hang
            if output.open:
                output.finish(task)
            outcome = failure(task, error, Stage.RUN, start)
        except _StageError as err:
            if output.open:
                output.finish(task)
            outcome = failure(task, err.error, err.stage, start, type_name=err.what)
        except BaseException as error:  # noqa: BLE001
            if output.open:
                output.finish(task)
            outcome = failure(task, error, Stage.RUN, start)
        else:
            if output.open:
                output.finish(task)
            del args  # the inputs' mappings go before the result is written
            outcome = success(task, value, start, self.task_segments(release))
            release = []
        if release:
            shm.unlink(release)
        self.setup.after_task()
        self.io_tasks.pop(task, None)
        self.pending_io.append(outcome)
        if len(self.pending_io) == 1:
            # results finishing in the same loop iteration travel together
            self.loop.call_soon(self.flush_io)

    async def call_io(self, func, args, thread_flag: int | None, owned: tuple):
        """Await a coroutine function's call here, or call a plain function in
        an io thread, which sets its io flag ``thread_flag`` first and owns
        its output as ``owned``."""
        if thread_flag is None:
            return await func(*args)
        value = await self.loop.run_in_executor(self.io_threads, _begin, self.io_flags, thread_flag, func, args, owned)
        if inspect.isawaitable(value):
            value = await value
        return value

    def flush_io(self) -> None:
        batch, self.pending_io = self.pending_io, []
        self.send_from_loop(messages.pack_results(batch))

    def send_from_loop(self, data: bytes | None) -> None:
        """Loop thread: the outbox, then ``data`` (None: the outbox only),
        inline when small and the send lock is free, else from the sender
        thread: the loop must not wait behind a big send."""
        if (data is None or len(data) <= SMALL_MESSAGE) and self.send_lock.acquire(blocking=False):
            try:
                self._send_locked(data)
            except OSError:
                self.coordinator_gone()
            finally:
                self.send_lock.release()
        else:
            self.sender.submit(self.send, data)

    def send(self, data: bytes | None) -> None:
        """Any thread: the outbox, then ``data``, waiting for the send lock."""
        try:
            with self.send_lock:
                self._send_locked(data)
        except OSError:
            self.coordinator_gone()

    def _send_locked(self, data: bytes | None) -> None:
        """Under the send lock: the outbox first (a task's lines go before its
        outcome), then ``data``."""
        if self.outbox:
            output = self.take_output()
            if output is not None:
                self.conn.send_bytes(output)
        if data is not None:
            self.conn.send_bytes(data)


class _StageError(Exception):
    """A task failed before or after its own code: ``stage`` says where;
    ``what`` names the value (e.g. ``"argument 2"``) for the message."""

    def __init__(self, stage: Stage, error: BaseException, what: str | None = None) -> None:
        self.stage = stage
        self.error = error
        self.what = what


async def _await(awaitable):
    return await awaitable


def _runs_in_a_thread(func) -> bool:
    """Whether an io task's function is a plain one, run in an io thread
    (not a coroutine function, nor a function that could not be loaded)."""
    return callable(func) and not isinstance(func, _BrokenFunction) and not inspect.iscoroutinefunction(func)


def _begin(flags: memoryview, flag: int, func, args, owned: tuple):
    """In an io thread: mark the task begun, then call its function, its
    output owned by the task (a thread does not inherit the loop's context)."""
    flags[flag] = 1
    token = capture.owner.set(owned)
    try:
        return func(*args)
    finally:
        capture.owner.reset(token)


# type -> whether its values may be awaitable (a generator only with the
# iterable-coroutine flag: inspect.isawaitable tells, per value)
_AWAITABLE: dict[type, bool] = {}


def _awaitable_type(kind: type) -> bool:
    maybe = issubclass(kind, (collections.abc.Awaitable, types.GeneratorType))
    if len(_AWAITABLE) < 4096:  # (types made at run time could grow it forever)
        _AWAITABLE[kind] = maybe
    return maybe


def success(task: int, value, start: float, segments: shm.TaskSegments | None = None) -> list:
    """An Outcome for a task that returned ``value``; with ``segments``,
    its big buffers go to shared memory (and released inputs are unlinked)."""
    end = time.monotonic()
    try:
        payload = codec.encode(value, segments)
    except shm.HandOver:
        return [task, True, codec.encode_handed_over(str(task)), start, end]
    except BaseException as error:  # noqa: BLE001
        return failure(task, error, Stage.RESULT, start, end, type_name=_type_name(type(value)))
    finally:
        if segments is not None and segments.release:
            segments.flush_release()
    if payload[0] in _EXT_FIRST_BYTES:
        # pickled: name its type, in case the coordinator cannot rebuild it
        return [task, True, payload, start, end, _type_name(type(value))]
    return [task, True, payload, start, end]


# msgpack's ext formats (fixext 1-16, ext 8/16/32): a value the codec pickled
_EXT_FIRST_BYTES = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def failure(
    task: int,
    error: BaseException,
    stage: int,
    start: float,
    end: float | None = None,
    type_name: str | None = None,
) -> list:
    """An Outcome for a failed task: the exception encoded if it survives a
    round trip, always a type name (the exception's, or ``type_name``: the
    offending value's), message and traceback text."""
    if end is None:
        end = time.monotonic()
    text = "".join(traceback.format_exception(error))
    try:
        blob = codec.encode(error)
        codec.decode(blob)  # an exception that will not rebuild travels as text
    except BaseException:  # noqa: BLE001
        blob = None
    if type_name is None:
        type_name = _type_name(type(error))
    try:
        message = str(error)
    except BaseException:  # noqa: BLE001
        message = "<unprintable>"
    return [task, False, [blob, type_name, message, text, int(stage)], start, end]


_tee: fd_output.DescriptorTee | None = None


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    if _tee is not None:
        _tee.flush()
    os._exit(0)


SWITCH_INTERVAL = 0.001  # seconds; see worker_main


def _open_pidfd(prefix: str | None) -> int | None:
    """A pidfd of the coordinator named in the segment prefix (opened now,
    so it keeps naming that process even if its pid is reused later)."""
    if prefix is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(int(prefix.split("-")[1]))
    except (OSError, ValueError, IndexError):
        return None


def worker_main(conn, progress, memory_limit: int | None = None, shm_prefix: str | None = None) -> None:
    """Entry point of a worker process (started through loky)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit is not None:
        # Allocations past the limit fail with MemoryError in the task that
        # makes them (RLIMIT_DATA covers the heap and anonymous mappings), so
        # the task fails and the worker lives on, with no memory polling.
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
    # A pure-Python cpu task holds the GIL until the interpreter forces a
    # switch; at the default 5 ms the io loop waits that long (and more, as
    # it needs the GIL again after each wake-up).  1 ms bounds the stall of io
    # tasks; with no other thread waiting, no switch happens at all.
    sys.setswitchinterval(SWITCH_INTERVAL)
    worker = Worker(conn, progress, shm_prefix)
    worker.setup.guard()
    # what tasks write is theirs (the guarded streams are wrapped: cwd and
    # streams are still put back after each task)
    worker.log_handler = capture.install_for_process(logging.INFO)
    worker.setup.stdout, worker.setup.stderr = sys.stdout, sys.stderr
    global _tee
    if os.environ.get("TASKMAP_FD_OUTPUT", "1") != "0":
        _tee = worker.tee = fd_output.DescriptorTee(lambda: bool(worker.io_tasks))
        worker.fd_pipes = worker.tee.start()
        if not worker.fd_pipes:
            _tee = worker.tee = None
    # The collector: every 700 container allocations (the default) it walks
    # the young objects, and with thousands of io tasks in flight those are
    # their tasks and coroutines, again and again: 0.15-0.20 s of a 0.6-0.7 s
    # storm of 10,000 sleeping coroutines on one worker.  Every GC_YOUNG
    # allocations instead (about 0.03-0.06 s there); what the worker imported
    # is frozen out of the full collections.  Tasks' cyclic garbage waits a
    # little longer to be freed, nothing else changes.
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    worker.serve()
