"""The coordinator: the calling process's side of a parallel run, a thin
shell around the run's :class:`~taskmap.scheduling.ledger.Ledger`.

Data flow (compare CPython's ``concurrent/futures/process.py``)::

    Ledger (pure: queues, depth, pins, retries, crash attribution)
       ^ events                         | instructions
       |                                v
    Coordinator  --SUBMIT [Submission...]-->  worker k (one duplex pipe each)
       ^   <--RESULTS [Outcome...]-------------    |
       |   <--sentinel k fires (process died)------+
       +-- Bookkeeper (graph results, observers, logs)

The coordinator blocks in ONE ``poll`` over every worker's pipe and every
worker's process sentinel (and the first armed timer); each wake-up becomes
an event for the ledger -- results, a worker's HELLO, a death with what the
worker's shared slot says, a timer that is due -- and the instructions it
returns are carried out: send submissions, record outcomes with the
bookkeeper, kill or start a worker, unlink shared memory segments, arm a
timer.  Before each wait the ledger hands out what is ready
(:class:`~taskmap.scheduling.ledger.Dispatch`).  Nothing sleeps or polls.  What is
decided, and why, is in :mod:`taskmap.scheduling.ledger`; here are only the pipes, the
poll, the codec and the processes.

Big results (:mod:`taskmap.runtime.shm`): a worker puts a big result's buffers in a
shared memory segment and sends a handle; the coordinator forwards the handle
to the children (their workers map the segment), maps it itself only for a
result it keeps (``gather``), unlinks a segment when the ledger says nobody
reads it any more, and removes every segment of its prefix when the run ends,
however it ends.  On Ctrl-C or an abort it kills the busy workers (all
workers on Ctrl-C) before the exception leaves the runner.

Task output: workers send what tasks write in ``OUTPUT`` messages, each
before the outcomes of the tasks that wrote it; the coordinator hands them to
the bookkeeper's collector (:mod:`taskmap.observe.output`), which shows the
lines and keeps each task's text until its outcome is recorded.  A task sent
again (a retry) starts its text afresh.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from typing import Any, cast

from taskmap.bookkeeping import Bookkeeper
from taskmap.cancellation import Cancellation
from taskmap.errors import RunCancelled
from taskmap.graph import Graph
from taskmap.heap import frozen_during
from taskmap.observe.observers import Observers
from taskmap.observe.output import DEFAULT, OutputOptions
from taskmap.runtime import fd_output, messages, process_setup, shm
from taskmap.runtime.capture import FD_STDERR, FD_STDOUT
from taskmap.runtime.messages import (
    HELLO_FD_PIPES,
    HELLO_PID,
    MSG_KIND,
    OUTPUT_CHUNKS,
    RESULTS_OUTCOMES,
    SUB_AFTER,
    SUB_FUNC,
    SUB_TASK,
    Kind,
)
from taskmap.runtime.pool import WorkerHandle, WorkerPool, take_pool
from taskmap.runtime.values import CodecValues, ship_functions
from taskmap.scheduling.ledger import (
    CPU_DEADLINE,
    ArmTimer,
    Dispatch,
    Expanded,
    Failed,
    Hello,
    Instruction,
    Kill,
    Ledger,
    Release,
    ResultsArrived,
    Send,
    SendFailed,
    StartWorker,
    Succeeded,
    SweepSegments,
    TimerDue,
    WorkerDied,
    WorkerJoined,
)
from taskmap.scheduling.limits import TaskLimits
from taskmap.scheduling.state import SchedulingState

_run_ids = itertools.count(1)
CODES_HELD = 1024  # pickled code a worker keeps across runs, at most
_DISPATCH = Dispatch()


@frozen_during
def run_graph(
    graph: Graph,
    ncores: int,
    raise_errors: bool,
    limits: TaskLimits | None = None,
    observers: Observers | None = None,
    runner: str = "run_parallel_async",
    shm_threshold: int | None = None,
    gather: frozenset | None = None,
    resources: tuple[dict, dict] | None = None,
    cancel: Cancellation | None = None,
    output: OutputOptions = DEFAULT,
) -> Graph:
    """Run every unfinished task of ``graph`` on ``ncores`` worker processes;
    ``observers`` hear the run's events (:mod:`taskmap.observe.observers`).
    ``shm_threshold``: bytes from which a result's buffers go through shared
    memory (None: never); ``gather``: names of the results to keep (None:
    all; the others become :class:`taskmap.NotKept`); ``resources``: the
    run's (limits, rates), enforced where tasks are dispatched; ``cancel``:
    when set, the run stops as at a failure with ``raise_errors`` (the
    workers holding its tasks are killed and replaced) and raises
    :class:`taskmap.RunCancelled`; ``output``: what is shown of the tasks'
    output, and the capture level.  A run takes a pool of warm workers of
    its own: two runs at once in one process do not share workers."""
    from taskmap.runners import state_for  # (runners imports this module lazily)

    state = state_for(graph, resources)
    if limits is None:
        limits = TaskLimits(state.names)
    if state.all_finished:
        # nothing to run, but it is a run all the same: graph.last_run and
        # the observers say so (no worker is started for it)
        book = Bookkeeper(graph, state, raise_errors, observers, runner, ncores, True, output)
        book.start()
        book.finish(None)
        return graph
    with take_pool() as pool, _sigterm_as_interrupt():
        pool.configure(limits.memory_limit)
        # start missing workers first: they boot (a fresh interpreter each,
        # ~0.2 s) while the coordinator pickles the functions and prepares
        pool.resize(ncores)
        Coordinator(
            graph,
            state,
            pool,
            ncores,
            raise_errors,
            limits,
            observers,
            runner,
            shm_threshold if pool.shm_prefix is not None else None,
            gather,
            cancel,
            output,
        ).run()
    return graph


@contextmanager
def _sigterm_as_interrupt():
    """During a run, SIGTERM stops it like Ctrl-C (workers stopped, finished
    results kept, KeyboardInterrupt raised) instead of killing the process
    with its workers orphaned.  Only from the main thread, and only where
    nobody installed a handler of their own."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Coordinator:
    # (slots: attribute and method lookups on the hot paths stay fast, also
    # in subclasses that add their own; see taskmap.runtime.worker.Worker)
    __slots__ = (
        "book",
        "cancel",
        "func_of",
        "functions",
        "graph",
        "ledger",
        "ncores",
        "output",
        "pipe_pollers",
        "poller",
        "pool",
        "run_id",
        "setup",
        "shm_threshold",
        "state",
        "timer_seq",
        "timers",
        "wakeup_fd",
        "watched",
        "watching",
    )

    def __init__(
        self,
        graph: Graph,
        state: SchedulingState,
        pool: WorkerPool,
        ncores: int,
        raise_errors: bool,
        limits: TaskLimits,
        observers: Observers | None = None,
        runner: str = "run_parallel_async",
        shm_threshold: int | None = None,
        gather: frozenset | None = None,
        cancel: Cancellation | None = None,
        output: OutputOptions = DEFAULT,
    ) -> None:
        self.graph = graph
        self.cancel = cancel
        self.state = state
        self.pool = pool
        self.ncores = ncores
        self.shm_threshold = shm_threshold
        self.book = Bookkeeper(graph, state, raise_errors, observers, runner, ncores, True, output)
        self.output = self.book.collector
        self.run_id = next(_run_ids)
        # cwd, environment, sys.path and user modules, as of the run's start
        self.setup = process_setup.snapshot()
        # each task's function as code (pickled once) and data (taskmap.runtime.functions)
        self.functions = ship_functions(graph, state)
        self.func_of = self.functions.func_of
        keep = None if gather is None else {state.index[name] for name in gather}
        self.ledger = Ledger(
            state,
            limits,
            self.func_of,
            CodecValues(graph, state, limits),
            graph.durations,
            keep,
            shm=shm_threshold is not None,
            stop_on_failure=raise_errors,
            validating=bool(os.environ.get("TASKMAP_VALIDATE")),
            code_of=self.functions.code_of,
        )
        self.book.attempts = self.ledger.attempts
        if self.book.elements is not None:
            self.book.elements.expands = False  # (the ledger expands, with the encoded items)
        # armed timers (cpu time limits, delayed retries): (when, seq, kind,
        # task); wait_once sleeps until the first
        self.timers: list[tuple[float, int, int, int]] = []
        self.timer_seq = itertools.count()
        # what wait_once polls (see watch)
        self.watching: list[WorkerHandle] = []
        self.poller = select.poll()
        self.watched: dict[int, tuple[WorkerHandle, bool]] = {}
        self.pipe_pollers: dict[WorkerHandle, Any] = {}
        self.wakeup_fd = -1  # read end of the cancel wake-up pipe (see listen_for_cancel)

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        state, ledger = self.state, self.ledger
        self.pool.resize(self.ncores)
        forget = self.listen_for_cancel()
        try:
            # (inside: an observer that raises at the start still ends the
            # run's bookkeeping and undoes the cancel's wake-up pipe)
            self.book.start()
            for w in self.pool.workers:
                self.apply(ledger.handle(WorkerJoined(w, w.pid, w.ready, w.io_sent)))
            while not state.all_finished:
                self.apply(ledger.handle(_DISPATCH))
                if state.all_finished:
                    break  # dispatching failed the last tasks (an argument that cannot be sent)
                self.wait_once()
                if self.timers:
                    self.fire_timers()
        except BaseException as exc:
            self._abort(exc)
            self._finish(exc)
            raise
        finally:
            forget()
        self._finish(None)

    def listen_for_cancel(self) -> Callable[[], None]:
        """With a cancel switch: a wake-up pipe in the one wait, written by
        the cancelling thread.  Returns what undoes it (at the run's end)."""
        cancel = self.cancel
        if cancel is None:
            return lambda: None
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self.wakeup_fd = read_fd

        def wake() -> None:
            with contextlib.suppress(OSError):  # (full, or closed at the run's end)
                os.write(write_fd, b"x")

        forget = cancel.on_cancel(wake)

        def close() -> None:
            forget()
            self.wakeup_fd = -1
            os.close(read_fd)
            os.close(write_fd)

        return close

    def _finish(self, error: BaseException | None) -> None:
        try:
            for w, held in self.ledger.workers.items():
                cast(WorkerHandle, w).io_sent = held.io_sent  # (a worker numbers its io tasks over its life)
            names = self.state.names
            self.graph.attempts.update((names[i], n) for i, n in enumerate(self.ledger.attempts) if n)
            self.book.finish(error)
        finally:
            # every segment of the run goes, also those of crashed workers and
            # those no message reported; kept results stay mapped (unlinked
            # files live on while mapped)
            if self.pool.shm_prefix is not None:
                shm.remove_all(self.pool.shm_prefix)

    def apply(self, instructions: list[Instruction]) -> None:
        """Carry out the ledger's instructions, in order (the most frequent
        first)."""
        book = self.book
        # type(ins) per branch, not once: mypy narrows ``type(x) is C`` only
        # written out, and it costs what one ``kind = type(ins)`` did
        for ins in instructions:
            if type(ins) is Succeeded:
                book.recorded_successes(ins.rows, ins.followers)
            elif type(ins) is Send:
                # (the ledger keys workers as Hashable; they are this pool's handles)
                self.send(cast(WorkerHandle, ins.worker), ins.subs)
            elif type(ins) is Failed:
                book.recorded_failure(*ins)  # (raises with raise_errors)
            elif type(ins) is ArmTimer:
                when = time.monotonic() + ins.after
                heapq.heappush(self.timers, (when, next(self.timer_seq), ins.kind, ins.task))
            elif type(ins) is Release:
                shm.unlink(ins.names)
            elif type(ins) is Kill:
                # its sentinel fires; worker_died does the rest
                cast(WorkerHandle, ins.worker).send_kill()
            elif type(ins) is StartWorker:
                w = self.pool.spawn()
                self.apply(self.ledger.handle(WorkerJoined(w, w.pid, False, w.io_sent)))
            elif type(ins) is Expanded:
                assert book.elements is not None
                book.elements.apply(ins.news)
            elif type(ins) is SweepSegments:
                if self.pool.shm_prefix is not None:
                    shm.remove_unreported(f"{self.pool.shm_prefix}{ins.pid}-", ins.reported)
            else:
                raise TypeError(f"unknown instruction {ins!r}")

    def wait_once(self) -> None:
        """Block until a worker's pipe has a message or a worker dies (or
        the first deadline passes); handle what happened."""
        workers = self.pool.workers
        if self.watching != workers:
            self.watch(workers)
        if self.timers:
            # (rounded up: waking before the deadline would only wait again)
            timeout_ms = max(0, math.ceil((self.timers[0][0] - time.monotonic()) * 1000))
        else:
            timeout_ms = None
        for fd, _ in self.poller.poll(timeout_ms):
            if fd == self.wakeup_fd:
                raise RunCancelled()
            w, died = self.watched[fd]
            if w in self.pool.workers:
                if died:
                    self.worker_died(w)
                else:
                    self.receive(w)

    def watch(self, workers: list[WorkerHandle]) -> None:
        """Poll these workers' pipes and sentinels from now on.  One poll
        object serves a run until a worker is replaced: building one per
        wake-up, as ``multiprocessing.connection.wait`` does, cost more than
        the rest of a wake-up's system calls here."""
        self.watching = list(workers)  # (the handles themselves: no id reuse)
        self.poller = select.poll()
        self.watched = {}
        self.pipe_pollers = {}
        for w in workers:
            fd = w.conn.fileno()
            self.poller.register(fd, select.POLLIN)
            self.poller.register(w.sentinel, select.POLLIN)
            self.watched[fd] = (w, False)
            self.watched[w.sentinel] = (w, True)
            self.pipe_pollers[w] = one = select.poll()
            one.register(fd, select.POLLIN)
        if self.wakeup_fd >= 0:
            self.poller.register(self.wakeup_fd, select.POLLIN)

    def receive(self, w: WorkerHandle) -> None:
        """Read every message waiting on w's pipe."""
        conn = w.conn
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                self.worker_died(w)
                return
            msg = messages.unpack(data)
            kind = msg[MSG_KIND]
            if kind == Kind.RESULTS:
                self.apply(self.ledger.handle(ResultsArrived(w, msg[RESULTS_OUTCOMES])))
            elif kind == Kind.OUTPUT:
                self.output.arrived(msg[OUTPUT_CHUNKS])
            elif kind == Kind.HELLO:
                w.ready = True
                w.pid = msg[HELLO_PID]
                if len(msg) > HELLO_FD_PIPES and msg[HELLO_FD_PIPES]:
                    w.fd_pipes = fd_output.open_remote(w.pid, msg[HELLO_FD_PIPES])
                self.apply(self.ledger.handle(Hello(w, w.pid)))
            if w not in self.pool.workers or not self.pipe_pollers[w].poll(0):
                return  # (a hang-up reads as readable: recv_bytes sees the EOF)

    def fire_timers(self) -> None:
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            when, _, kind, i = heapq.heappop(timers)
            self.timer_due(when, kind, i, now)

    def timer_due(self, when: float, kind: int, i: int, now: float) -> None:
        """A timer armed for ``when`` is due: the ledger's (a cpu task's time
        limit, with what each worker's slot says it runs; a delayed retry; a
        rate's next slot).  A subclass adds kinds of its own."""
        slots: dict[Hashable, tuple[int, int]] = {}
        if kind == CPU_DEADLINE:
            slots = {w: (w.slot.value, w.slot.started_ns) for w in self.pool.workers if w.slot is not None}
        self.apply(self.ledger.handle(TimerDue(kind, i, now, slots)))

    def send(self, w: WorkerHandle, subs: list) -> None:
        setup = None
        if w.run_id != self.run_id:
            w.run_id = self.run_id
            w.funcs_sent = set()
            w.codes_sent = set()
            body = process_setup.message_body(w.setup_heard, self.setup)
            if body is not None:
                setup = messages.pack_setup(body)
            w.setup_heard = self.setup
        new = {}
        codes: dict[int, list] = {}
        drop: list[bytes] = []
        functions, funcs_sent = self.functions, w.funcs_sent
        started = []
        if self.output.kept:  # (an attempt's text starts afresh: a retry's too)
            for sub in subs:
                self.output.restart(sub[SUB_TASK])
        for sub in subs:
            fid = sub[SUB_FUNC]
            if fid not in funcs_sent:
                funcs_sent.add(fid)
                new[fid] = functions.entries[fid]
                for n in functions.needs.get(fid, ()):
                    if n not in w.codes_sent:  # (code pickled by value: once per run)
                        w.codes_sent.add(n)
                        codes[n] = self.code_for(w, n, drop)
            if sub[SUB_AFTER] < 0:  # (a pinned one starts when its parent succeeded)
                started.append(sub[SUB_TASK])
        self.book.started_together(started, w.pid)
        try:
            if setup is not None:
                w.conn.send_bytes(setup)  # (the worker applies it before any task)
            w.conn.send_bytes(
                messages.pack_submit(self.run_id, new, subs, self.shm_threshold, codes, drop, self.output.level)
            )
        except (OSError, ValueError):
            # it died before taking them: they never started, so they go back
            self.apply(self.ledger.handle(SendFailed(w, subs)))
            self.worker_died(w)

    def code_for(self, w: WorkerHandle, n: int, drop: list[bytes]) -> list:
        """``[digest, blob]``, or ``[digest, None]`` when w kept that code
        from an earlier run; the oldest kept code is dropped past
        CODES_HELD (``drop`` says which, so both sides keep the same)."""
        digest = self.functions.digests[n]
        held = w.codes_held
        if digest in held:
            held.move_to_end(digest)
            return [digest, None]
        held[digest] = None
        while len(held) > CODES_HELD:
            drop.append(held.popitem(last=False)[0])
        return [digest, self.functions.codes[n]]

    # -- faults -------------------------------------------------------------

    def worker_died(self, w: WorkerHandle) -> None:
        """Hand in what w sent before dying, then its death with what its
        slot says (the ledger fails, requeues, and has a replacement started)."""
        if w not in self.pool.workers:
            return
        self.pool.workers.remove(w)  # broken: no more dispatch to it
        try:
            while w.conn.poll(0):
                msg = messages.unpack(w.conn.recv_bytes())
                if msg[MSG_KIND] == Kind.RESULTS:
                    self.apply(self.ledger.handle(ResultsArrived(w, msg[RESULTS_OUTCOMES])))
                elif msg[MSG_KIND] == Kind.OUTPUT:
                    self.output.arrived(msg[OUTPUT_CHUNKS])
        except (EOFError, OSError):
            pass
        exitcode = w.exitcode()
        slot = w.slot
        running = slot.value if slot is not None else -1
        last_finished = slot.last_finished if slot is not None else -1
        if exitcode is None:  # closed its pipe but lives on: make sure
            w.kill()
            exitcode = w.process.exitcode
        slot = w.slot  # (None once kill() closed it)
        flags = bytes(slot.io_flags()) if slot is not None else None
        if w.fd_pipes:
            self.left_in_pipes(w, running)
        w.close()
        self.apply(self.ledger.handle(WorkerDied(w, exitcode, running, last_finished, flags)))

    def left_in_pipes(self, w: WorkerHandle, running: int) -> None:
        """What C code or a subprocess wrote to the dead worker's fds 1 and 2
        that its forwarder had not passed on: to where it was going (this
        process's fds 1 and 2, which the worker inherited), and to the cpu
        task the crash interrupted when that was all the worker ran."""
        pipes, w.fd_pipes = w.fd_pipes, []
        held = self.ledger.workers.get(w)
        owner = running if running >= 0 and held is not None and not held.io_tasks else -1
        for fd, kind, data in zip((1, 2), (FD_STDOUT, FD_STDERR), fd_output.drain(pipes), strict=False):
            if not data:
                continue
            fd_output.write_all(fd, data)
            if owner >= 0:
                self.output.write(owner, kind, data.decode("utf-8", "replace"))
        if owner >= 0 and self.output.open:
            self.output.finish(owner)

    def _abort(self, exc: BaseException) -> None:
        """Stop promptly: Ctrl-C kills every worker, any other abort (e.g.
        raise_errors) kills the workers that still hold tasks."""
        names = self.state.names
        readings = {w: (w.slot.value, bytes(w.slot.io_flags())) for w in self.pool.workers if w.slot is not None}
        self.graph.in_progress[:] = [names[i] for i in self.ledger.began(readings)]
        if isinstance(exc, Exception):
            for w in [w for w in self.pool.workers if self.ledger.busy(w)]:
                self.pool.discard(w, kill=True)
            if isinstance(exc, RunCancelled) and not (self.cancel is not None and self.cancel.final):
                self.pool.resize(self.ncores)  # replacements boot now, warm for the next run
        else:
            self.pool.kill_all()
