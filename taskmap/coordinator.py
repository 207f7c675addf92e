"""The coordinator: the calling process's side of a parallel run.

Data flow (compare CPython's ``concurrent/futures/process.py``)::

    SchedulingState                 WorkerHandle k (one duplex pipe each)
    io queue  (FIFO)   --dispatch-->  SUBMIT [task, func, io, args]  --> worker k
    cpu queue (heap by critical path)
                  ^                                                   |
                  |  finished / failed                                v
    Bookkeeper <--+-- RESULTS [task, ok, payload, start, end] <-- worker k
                      sentinel k fires                         (process died)

The coordinator blocks in ONE ``poll`` over every worker's pipe and every
worker's process sentinel; each wake-up is sorted into
results (record them, push the tasks that became ready), a worker's HELLO (it
can take tasks), or a death.  Nothing sleeps or polls.

io tasks are pushed to a worker the moment they are ready (to the worker with
the fewest io tasks in flight): they only wait.  cpu tasks stay in the
coordinator's heap until some worker has room: a worker holds at most
``depth`` cpu tasks, 1 while tasks are long so each goes to the first free
core (2 while more tasks are ready than the workers can take: the next one
then waits at the worker, not a round trip away; 3 when a task more
critical than the one waiting becomes ready: it is sent to run first), more
when measured tasks are so short that the pipe's round trip would leave the
core idle.  Everything that becomes ready together travels to a
worker in one message.

Big results (:mod:`taskmap.shm`): a worker puts a big result's buffers in a
shared memory segment and sends a handle; the coordinator forwards the handle
to the children (their workers map the segment), maps it itself only for a
result it keeps (``gather``), tells the last reader of a segment it may unlink
it, and removes every segment of its prefix when the run ends, however it
ends.

When a worker dies, the coordinator first reads whatever results it managed to
send, then fails the task it was running with :class:`WorkerCrashedError`
(naming pid and exit code or signal), puts its unstarted cpu tasks back in the
queue, and starts a replacement.  On Ctrl-C or an abort it kills the busy
workers (all workers on Ctrl-C) before the exception leaves the runner.
"""

from __future__ import annotations

import heapq
import itertools
import math
import select
import signal
import threading
import time
from contextlib import contextmanager

from . import codec, messages, process_setup, shm
from .bookkeeping import Bookkeeper
from .errors import (
    SerializationError,
    StaleCodeError,
    TaskmapError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from .graph import Graph
from .limits import TaskLimits
from .messages import Kind, Stage
from .observers import Observers
from .pool import WorkerHandle, WorkerPool, get_pool
from .results import NotKept
from .state import DONE, FINISHED, RUNNING, WAITING, SchedulingState

MAX_CPU_DEPTH = 64
MAX_PINNED = 64  # longest chain sent ahead to one worker in one message
PIPELINE_SECONDS = 0.0003  # work to keep queued at a worker when tasks are tiny
MAX_START_FAILURES = 3

_run_ids = itertools.count(1)


def finished_before_crash(
    order: list[int], marker: int, last_finished: int, sent_first: list[list[int]] = ()
) -> set[int]:
    """Which tasks a dead worker held had finished (their results lost with
    it, still batched there).  ``order``: the tasks it held, in the order it
    was to run them; ``marker``: the cpu task it was running (-1: none) and
    ``last_finished``: the last cpu task it finished, both read from its
    shared slot; ``sent_first``: each task sent to run ahead of a waiting
    task, with the tasks pinned behind it.

    Tasks before the running one finished; with none running, those up to
    the last finished.  But a task sent to run first may not have run
    before the task it went ahead of, which could have started before it
    arrived: it counts as finished only when the slot proves it (it, or a
    task pinned behind it, finished last or is running)."""
    ran: set[int] = set()
    if marker in order:
        ran.update(order[: order.index(marker)])
    elif last_finished in order:
        ran.update(order[: order.index(last_finished) + 1])
    for chain in sent_first:
        if chain[0] in ran and last_finished not in chain and marker not in chain:
            ran.difference_update(chain)
    return ran


def run_graph(
    graph: Graph,
    ncores: int,
    raise_errors: bool,
    limits: TaskLimits | None = None,
    observers: Observers | None = None,
    runner: str = "run_parallel_async",
    shm_threshold: int | None = None,
    gather: frozenset | None = None,
) -> Graph:
    """Run every unfinished task of ``graph`` on ``ncores`` worker processes;
    ``observers`` hear the run's events (:mod:`taskmap.observers`).
    ``shm_threshold``: bytes from which a result's buffers go through shared
    memory (None: never); ``gather``: names of the results to keep (None:
    all; the others become :class:`taskmap.NotKept`)."""
    from .runners import state_for  # (runners imports this module lazily)

    state = state_for(graph)
    if limits is None:
        limits = TaskLimits(state.names)
    if state.all_finished:
        # nothing to run, but it is a run all the same: graph.last_run and
        # the observers say so (no worker is started for it)
        book = Bookkeeper(graph, state, raise_errors, observers, runner, ncores, measures_durations=True)
        book.start()
        book.finish(None)
        return graph
    pool = get_pool()
    with pool.lock, _sigterm_as_interrupt():
        pool.configure(limits.memory_limit)
        # start missing workers first: they boot (a fresh interpreter each,
        # ~0.2 s) while the coordinator pickles the functions and prepares
        pool.resize(ncores)
        Coordinator(
            graph, state, pool, ncores, raise_errors, limits, observers, runner,
            shm_threshold if pool.shm_prefix is not None else None, gather,
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
    ) -> None:
        self.graph = graph
        self.shm_threshold = shm_threshold
        # task numbers whose results come back to the caller (None: all)
        self.keep = None if gather is None else {state.index[name] for name in gather}
        # segment -> tasks whose encoded results point into it
        self.segment_users: dict[str, list[int]] = {}
        # task -> how many of its children are known to have finished (a prefix)
        self.finished_cursor: dict[int, int] = {}
        self.limits = limits
        self.attempts = [0] * len(state.names)
        # deadlines, not polling: (when, seq, kind, task); wait_once sleeps until the first
        self.timers: list[tuple[float, int, int, int]] = []
        self.timer_seq = itertools.count()
        self.timed_out: set[int] = set()
        self.state = state
        self.pool = pool
        self.ncores = ncores
        self.book = Bookkeeper(graph, state, raise_errors, observers, runner, ncores, measures_durations=True)
        self.book.attempts = self.attempts
        self.run_id = next(_run_ids)
        # cwd, environment, sys.path and user modules, as of the run's start
        self.setup = process_setup.snapshot()
        self.encoded: dict[int, bytes] = {}  # task -> its encoded result
        self.func_of, self.func_blobs = self._pickle_functions()
        # moving average of cpu task time per function: how deep to queue
        # its tasks at a worker (a function not measured yet gets depth 1)
        self.cpu_seconds: dict[int, float] = {}
        # chains sent ahead: parent -> (child pinned behind it, worker), and back
        self.pinned: dict[int, tuple[int, WorkerHandle]] = {}
        self.pinned_behind: dict[int, int] = {}
        # cpu task sent to run first at its worker -> the task it went ahead of
        self.ahead_of: dict[int, int] = {}
        self.start_failures = 0
        # what wait_once polls (see watch)
        self.watching: list[WorkerHandle] = []
        self.poller = select.poll()
        self.watched: dict[int, tuple[WorkerHandle, bool]] = {}
        self.pipe_pollers: dict[WorkerHandle, select.poll] = {}

    # -- before the run ---------------------------------------------------

    def _pickle_functions(self) -> tuple[list[int], dict[int, bytes]]:
        """Pickle each distinct function once; a function that cannot be sent
        to a worker stops the run before it starts, naming the task."""
        funcs, names, state = self.graph.funcs, self.state.names, self.state.state
        ids: dict[int, int] = {}
        blobs: dict[int, bytes] = {}
        func_of = [0] * len(names)
        pickler = codec.FunctionPickler()
        for i, name in enumerate(names):
            if state[i] == DONE:
                continue
            func = funcs[name]
            key = id(func)
            fid = ids.get(key)
            if fid is None:
                try:
                    blob = pickler.dumps(func)
                except Exception as error:
                    raise SerializationError(
                        name, "function", type(func).__qualname__, str(error)
                    ) from error
                fid = ids[key] = len(ids)
                blobs[fid] = blob
            func_of[i] = fid
        return func_of, blobs

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        state, book = self.state, self.book
        self.pool.resize(self.ncores)
        for w in self.pool.workers:
            w.forget_tasks()  # (send() resets funcs_sent when the run id changes)
        book.start()
        try:
            while not state.all_finished:
                self.dispatch()
                if state.all_finished:
                    break  # dispatching failed the last tasks (an argument that cannot be sent)
                self.wait_once()
                if self.timers:
                    self.fire_timers()
        except BaseException as exc:
            self._abort(exc)
            self._finish(exc)
            raise
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        try:
            for w in self.pool.workers:
                w.forget_tasks()
            names = self.state.names
            self.graph.attempts.update((names[i], n) for i, n in enumerate(self.attempts) if n)
            self.book.finish(error)
        finally:
            # every segment of the run goes, also those of crashed workers and
            # those no message reported; kept results stay mapped (unlinked
            # files live on while mapped)
            if self.pool.shm_prefix is not None:
                shm.remove_all(self.pool.shm_prefix)

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
            kind = msg[0]
            if kind == Kind.RESULTS:
                self.outcomes(w, msg[1])
            elif kind == Kind.HELLO:
                w.ready = True
                w.pid = msg[1]
                self.start_failures = 0
            if w not in self.pool.workers or not self.pipe_pollers[w].poll(0):
                return  # (a hang-up reads as readable: recv_bytes sees the EOF)

    def outcomes(self, w: WorkerHandle, batch: list) -> None:
        """Record the outcomes of one RESULTS message from worker w.  (One
        call per message, its lookups hoisted: with tiny tasks this loop is
        the coordinator's busiest.)"""
        state, book, graph_durations = self.state, self.book, self.graph.durations
        status, names, is_io = state.state, state.names, state.is_io
        io_tasks, cpu_tasks = w.io_tasks, w.cpu_tasks
        func_of, cpu_seconds = self.func_of, self.cpu_seconds
        pinned, pinned_behind, ahead_of = self.pinned, self.pinned_behind, self.ahead_of
        encoded, keep = self.encoded, self.keep
        shm_on = self.shm_threshold is not None
        for outcome in batch:
            i, ok, payload, start, end = outcome[:5]
            took = end - start
            if is_io[i]:
                io_tasks.pop(i, None)
            else:
                if cpu_tasks and cpu_tasks[0] == i:
                    cpu_tasks.popleft()
                else:
                    try:
                        cpu_tasks.remove(i)
                    except ValueError:
                        pass
                fid = func_of[i]
                avg = cpu_seconds.get(fid)
                cpu_seconds[fid] = took if avg is None else 0.8 * avg + 0.2 * took
            if pinned_behind:
                pinned_behind.pop(i, None)
            if ahead_of:
                ahead_of.pop(i, None)
            if status[i] != RUNNING:
                continue  # cancelled, timed out or its pinned parent failed meanwhile
            name = names[i]
            graph_durations[name] = took
            if not ok:
                self.fail(i, self.rebuild_error(name, payload), w.pid, start, end)
                continue
            segments = (
                codec.segment_names(payload)
                if shm_on and payload and payload[0] in codec.EXT_HEADS
                else ()
            )
            for segment in segments:
                self.segment_users.setdefault(segment, []).append(i)
            try:
                if keep is None or i in keep:
                    # a kept big value: a private copy-on-write mapping of its
                    # segment, so the caller gets a writable array, no copy
                    value = codec.decode(payload, writable=True)
                else:
                    value = NotKept(name)
            except Exception as error:
                failure = SerializationError(
                    # the worker names the type of every pickled result
                    name, "result", outcome[5] if len(outcome) > 5 else None,
                    str(error), "deserialised in the coordinator",
                )
                failure.__cause__ = error
                self.fail(i, failure, w.pid)
                continue
            encoded[i] = payload
            # (a handle is no value to store: a checkpoint encodes the value)
            book.succeeded(i, value, w.pid, start, end, None if segments else payload)
            if self.segment_users:
                self.release_read_inputs(i)
            if pinned:
                follower = pinned.pop(i, None)  # the task pinned behind it runs on
                if follower is not None:
                    book.starting(follower[0], w.pid)

    def fail(
        self, i: int, error: BaseException, pid: int | None = None, start: float | None = None,
        end: float | None = None, retry: bool = True,
    ) -> None:
        """Record task i's failure; tasks pinned behind it wait again first,
        so that the failure skips them like any other descendant."""
        entry = self.pinned.pop(i, None)
        while entry is not None:
            child, w = entry
            self.pinned_behind.pop(child, None)
            self.state.unstart(child)
            self.attempts[child] -= 1  # withdrawn before it ran
            try:
                w.cpu_tasks.remove(child)
            except ValueError:
                pass
            entry = self.pinned.pop(child, None)
        if retry and 0 < self.attempts[i] <= self.limits.retries[i]:
            # another attempt: the failure is not recorded, only the last one is
            self.timed_out.discard(i)
            delay = self.limits.retry_delay
            if delay > 0:
                self.state.unstart(i)
                self.add_timer(time.monotonic() + delay, self.RETRY, i)
            else:
                self.state.requeue(i)
            return
        self.book.failed(i, error, pid, start, end)

    def rebuild_error(self, name, failure: list) -> BaseException:
        blob, type_name, message, text, stage = failure
        if stage == Stage.TIMEOUT:
            i = self.state.index[name]
            return TaskTimeoutError(name, self.limits.timeout[i])
        error = codec.decode_exception(blob, type_name, message, text)
        if stage == Stage.RUN or isinstance(error, StaleCodeError):
            return error
        if stage == Stage.ARGS:
            # the worker could not decode the argument it names: the error's
            # type says nothing of the value's (its message names the class)
            wrapped = SerializationError(name, type_name, None, message, "deserialised in the worker")
        else:
            what = {Stage.FUNCTION: "function", Stage.RESULT: "result"}[stage]
            action = "deserialised in the worker" if stage == Stage.FUNCTION else "serialised"
            # (for a function the worker could not load, type_name is the error's)
            of_type = None if stage == Stage.FUNCTION else type_name
            wrapped = SerializationError(name, what, of_type, message, action)
        wrapped.__cause__ = error
        wrapped.remote_traceback = text  # type: ignore[attr-defined]
        return wrapped

    # -- deadlines: cpu time limits, delayed retries -------------------------

    CPU_DEADLINE, RETRY = 0, 1

    def add_timer(self, when: float, kind: int, i: int) -> None:
        heapq.heappush(self.timers, (when, next(self.timer_seq), kind, i))

    def fire_timers(self) -> None:
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, kind, i = heapq.heappop(timers)
            if kind == self.RETRY:
                if self.state.state[i] == WAITING:
                    self.state.requeue(i)
            else:
                self.check_cpu_deadline(i, now)

    def check_cpu_deadline(self, i: int, now: float) -> None:
        """Kill the worker of cpu task i if i has run past its limit; else
        look again when it could have (it may still be queued)."""
        if self.state.state[i] != RUNNING:
            return
        w = next((w for w in self.pool.workers if i in w.cpu_tasks), None)
        if w is None:
            return
        limit = self.limits.timeout[i]
        if w.slot.value == i:
            started = w.slot.started_ns / 1e9
            if now - started >= limit:
                self.timed_out.add(i)
                w.send_kill()  # its sentinel fires; worker_died does the rest
                return
            self.add_timer(started + limit, self.CPU_DEADLINE, i)
        else:
            self.add_timer(now + limit, self.CPU_DEADLINE, i)

    # -- handing out tasks ------------------------------------------------

    def cpu_depth(self, i: int) -> int:
        """How many cpu tasks a worker may hold when task i is the next."""
        avg = self.cpu_seconds.get(self.func_of[i])
        if avg is None:
            return 1
        return min(MAX_CPU_DEPTH, 1 + int(PIPELINE_SECONDS / max(avg, 1e-7)))

    def dispatch(self) -> None:
        state = self.state
        if not state.has_ready():
            return
        ready = [w for w in self.pool.workers if w.ready]
        if not ready:
            return
        batches: dict[WorkerHandle, list] = {}
        while (i := state.pop_io()) is not None:
            w = min(ready, key=_io_load)
            self.assign(w, i, True, batches)
        while (i := state.peek_cpu()) is not None:
            w, held = _least_cpu_loaded(ready)
            # One task queued behind the running one hides the round trip
            # (about 0.4 ms of idle core per task), but commits the task to
            # this worker: do it only while more tasks are ready than workers
            # can take, so the other workers have their next task too.
            if held >= self.cpu_depth(i) and not (
                held == 1 and len(state.ready_cpu) > len(ready)
            ):
                # The task sent ahead to a worker may be less critical than
                # this one, which became ready since: this one goes first
                # there (else it would wait for both tasks, not one).
                w = self.queue_to_jump(ready, i)
                if w is None:
                    break
                waiting = w.cpu_tasks[1]
                state.pop_cpu()
                self.assign(w, i, False, batches, first=True)
                if i in w.cpu_tasks:  # (not if its arguments could not be sent)
                    w.cpu_tasks.remove(waiting)  # it runs after i and i's chain
                    w.cpu_tasks.append(waiting)
                    self.ahead_of[i] = waiting
                continue
            state.pop_cpu()
            self.assign(w, i, False, batches)
        for w, subs in batches.items():
            self.send(w, subs)

    def queue_to_jump(self, ready: list[WorkerHandle], i: int) -> WorkerHandle | None:
        """A worker where cpu task i should run next, ahead of the one task
        waiting there behind the running one, because i's chain below is
        longer; None if there is none.  Only long tasks (depth 1), one jump
        per queue, and never ahead of a task pinned behind its parent."""
        if self.cpu_depth(i) != 1:
            return None
        priority = self.state.priority
        for w in ready:
            tasks = w.cpu_tasks
            if len(tasks) == 2:
                waiting = tasks[1]
                if (
                    priority[waiting] < priority[i]
                    and waiting not in self.pinned_behind
                    and waiting not in self.ahead_of
                ):
                    return w
        return None

    def assign(self, w: WorkerHandle, i: int, io: bool, batches: dict, first: bool = False) -> None:
        state = self.state
        args = []
        release = []
        for p in state.parents[i]:
            blob = self.encoded.get(p)
            if blob is None:
                blob = self._encode_given_result(i, p)
                if blob is None:
                    return  # task i failed: its argument cannot be sent
            if not codec.is_none(blob):
                if self.segment_users and self.may_release(p, i, blob):
                    release.append(len(args))
                args.append(blob)
        state.started(i)
        self.attempts[i] += 1
        limit = self.limits.timeout[i]
        batch = batches.setdefault(w, [])
        batch.append([i, self.func_of[i], io, args, -1, (), limit if io else None, release, False, first])
        self.book.starting(i, w.pid)
        if io:
            w.io_tasks[i] = w.io_sent
            w.io_sent += 1
        else:
            w.cpu_tasks.append(i)
            if limit is not None:
                self.add_timer(time.monotonic() + limit, self.CPU_DEADLINE, i)
            self.pin_chain(w, i, batch)

    def pin_chain(self, w: WorkerHandle, parent: int, batch: list) -> None:
        """Send ahead, behind a cpu task, the chain of cpu tasks that wait
        for nothing else: each runs on the same worker right after its
        parent, with no round trip through the coordinator.  A task sent out
        before in this run (a retry, or a rerun after a crash) is not pinned:
        should it kill its worker again, it must not take the results of the
        tasks before it in the chain, still batched there, down with it."""
        state = self.state
        children, remaining, status, is_io = state.children, state.remaining, state.state, state.is_io
        encoded, priority, attempts = self.encoded, state.priority, self.attempts
        for _ in range(MAX_PINNED):
            best = -1
            for c in children[parent]:
                if (
                    remaining[c] == 1
                    and status[c] == WAITING
                    and not is_io[c]
                    and attempts[c] == 0
                    and (best < 0 or priority[c] > priority[best])
                ):
                    best = c
            if best < 0:
                return
            args, slots, release = [], [], []
            for q in state.parents[best]:
                if q == parent:
                    slots.append(len(args))
                    continue
                blob = encoded.get(q)
                if blob is None:
                    return  # a given result not encoded yet: take the normal path
                if not codec.is_none(blob):
                    if self.segment_users and self.may_release(q, best, blob):
                        release.append(len(args))
                    args.append(blob)
            if (
                self.shm_threshold is not None
                and len(children[parent]) == 1
                and not self.keeps(parent)
                and self.limits.retries[best] == 0
            ):
                # only best reads parent's value: a big one is handed over in
                # the worker, never copied (batch[-1] is parent's submission)
                batch[-1][8] = True
            state.started(best)
            self.attempts[best] += 1
            w.cpu_tasks.append(best)
            limit = self.limits.timeout[best]
            if limit is not None:
                self.add_timer(time.monotonic() + limit, self.CPU_DEADLINE, best)
            self.pinned[parent] = (best, w)
            self.pinned_behind[best] = parent
            batch.append([best, self.func_of[best], False, args, parent, slots, None, release, False, False])
            # reported as started when its parent succeeds: until then it
            # may be withdrawn (the parent fails) and never run
            parent = best

    def _pinned_chain(self, i: int) -> list[int]:
        """Task i and the tasks pinned behind it, in the order they run."""
        chain = [i]
        while (entry := self.pinned.get(chain[-1])) is not None:
            chain.append(entry[0])
        return chain

    def keeps(self, i: int) -> bool:
        """Whether task i's result comes back to the caller."""
        return self.keep is None or i in self.keep

    def may_release(self, p: int, i: int, blob: bytes) -> bool:
        """Whether task i, reading p's result ``blob``, is the last reader of
        every segment the blob points into: no result pointing into it is
        kept, every other child of those results has finished, and i will
        not be retried (a retry would read them again).  ``i`` = -1: no new
        reader, only whether every reader has finished."""
        if i >= 0 and self.limits.retries[i]:
            return False
        names = codec.segment_names(blob)
        if not names:
            return False
        for name in names:
            for q in self.segment_users.get(name, ()):
                if self.keeps(q) or self._has_unfinished_child(q, i):
                    return False
        return True

    def _has_unfinished_child(self, q: int, ignore: int) -> bool:
        """Whether a child of q other than ``ignore`` has not finished.
        Amortised O(1): a child that finished stays finished during a run,
        so a cursor per q skips them once (a fan-out of n readers costs O(n)
        in all, not O(n) per reader)."""
        children, status = self.state.children[q], self.state.state
        k = self.finished_cursor.get(q, 0)
        n = len(children)
        while k < n and status[children[k]] in FINISHED:
            k += 1
        self.finished_cursor[q] = k
        for j in range(k, n):
            c = children[j]
            if c != ignore and status[c] not in FINISHED:
                return True
        return False

    def release_read_inputs(self, i: int) -> None:
        """Task i succeeded: unlink its parents' segments that nobody will
        read any more (what a last reader did not release itself, e.g. in a
        fan-out whose children ran at the same time)."""
        users, encoded = self.segment_users, self.encoded
        for p in self.state.parents[i]:
            blob = encoded.get(p)
            if blob is not None and self.may_release(p, -1, blob):
                names = codec.segment_names(blob)
                shm.unlink(names)
                for name in names:
                    users.pop(name, None)

    def _encode_given_result(self, i: int, p: int) -> bytes | None:
        """Encode a result the run did not produce (given in ``results`` or
        cleared by a reset); on failure fail task i, naming both tasks."""
        names = self.state.names
        value = self.graph.results.get(names[p])
        try:
            if type(value) is NotKept:
                raise ValueError(
                    f"the result of task {names[p]!r} was not kept (gather=); "
                    f"reset {names[p]!r} too to run {names[i]!r} again"
                )
            blob = codec.encode(value)
        except Exception as error:
            self.state.started(i)
            failure = SerializationError(
                names[i], f"argument from task {names[p]!r}", type(value).__qualname__, str(error)
            )
            failure.__cause__ = error
            self.fail(i, failure, retry=False)  # encoding it again would fail again
            return None
        self.encoded[p] = blob
        return blob

    def send(self, w: WorkerHandle, subs: list) -> None:
        setup = None
        if w.run_id != self.run_id:
            w.run_id = self.run_id
            w.funcs_sent = set()
            body = process_setup.message_body(w.setup_heard, self.setup)
            if body is not None:
                setup = messages.pack_setup(body)
            w.setup_heard = self.setup
        new = {}
        for sub in subs:
            fid = sub[1]
            if fid not in w.funcs_sent:
                w.funcs_sent.add(fid)
                new[fid] = self.func_blobs[fid]
        try:
            if setup is not None:
                w.conn.send_bytes(setup)  # (the worker applies it before any task)
            w.conn.send_bytes(messages.pack_submit(self.run_id, new, subs, self.shm_threshold))
        except (OSError, ValueError):
            # it died before taking them: they never started, so they go back
            for sub in subs:
                i = sub[0]
                w.io_tasks.pop(i, None)
                self.ahead_of.pop(i, None)
                try:
                    w.cpu_tasks.remove(i)
                except ValueError:
                    pass
                self.attempts[i] -= 1  # it never reached a worker
                parent = self.pinned_behind.pop(i, None)
                if parent is not None:  # waits for its parent, sent in the same batch
                    self.pinned.pop(parent, None)
                    self.state.unstart(i)
                else:
                    self.state.requeue(i)
            self.worker_died(w)

    # -- faults -------------------------------------------------------------

    def worker_died(self, w: WorkerHandle) -> None:
        """Read what w sent before dying, fail the task(s) it was running,
        requeue the cpu tasks it had not started, start a replacement."""
        if w not in self.pool.workers:
            return
        self.pool.workers.remove(w)  # broken: no more dispatch to it
        try:
            while w.conn.poll(0):
                msg = messages.unpack(w.conn.recv_bytes())
                if msg[0] == Kind.RESULTS:
                    self.outcomes(w, msg[1])
        except (EOFError, OSError):
            pass
        if self.pool.shm_prefix is not None and w.pid is not None:
            # what it wrote but never announced (a segment half written at a
            # crash) can never be read: free that memory now, not at the end
            shm.remove_unreported(f"{self.pool.shm_prefix}{w.pid}-", self.segment_users)
        exitcode = w.exitcode()
        marker = w.slot.value if w.slot is not None else -1
        last_finished = w.slot.last_finished if w.slot is not None else -1
        if exitcode is None:  # closed its pipe but lives on: make sure
            w.kill()
            exitcode = w.process.exitcode
        # io tasks begin as soon as the worker can: those whose flag in the
        # slot says they began were running; the rest (still in the pipe, or
        # behind a loop some task blocked, or waiting for an io thread) go
        # back to the queue.
        began = [
            w.slot is None or w.slot.io_began(n, w.io_sent) for n in w.io_tasks.values()
        ]
        w.close()
        # Of the cpu tasks, the slot names the one running at the
        # crash; those before it finished but their results were still
        # batched, those after it had not started: both kinds go back too.
        running = [i for i, b in zip(w.io_tasks, began) if b]
        order = list(w.cpu_tasks)
        order.extend(i for i, b in zip(w.io_tasks, began) if not b)
        # finished, but the result was lost with the worker
        first = [self._pinned_chain(i) for i in order if i in self.ahead_of]
        ran = finished_before_crash(order, marker, last_finished, first)
        for i in w.cpu_tasks:
            self.ahead_of.pop(i, None)
        if marker in order:
            running.insert(0, marker)  # the prime suspect is named first
            order.remove(marker)
        if marker in self.timed_out:
            # we killed it for that task: its io tasks are innocent, they rerun
            order.extend(running[1:])
            running = running[:1]
        w.forget_tasks()
        if not w.ready:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                raise TaskmapError(
                    f"worker processes die while starting (last exit code {exitcode}); "
                    "see their stderr"
                )
        self.pool.spawn()
        names, state = self.state.names, self.state.state
        lost = []
        for i in order:
            if state[i] == RUNNING:
                if i in ran and self.attempts[i] > self.limits.retries[i] + 1:
                    # its result was lost with the worker more than once (say,
                    # it kills its worker after returning): stop rerunning it
                    lost.append(i)
                    continue
                if i not in ran:
                    self.attempts[i] -= 1  # it never ran, or not by its own fault
                parent = self.pinned_behind.pop(i, None)
                if parent is not None and state[parent] not in FINISHED:
                    # pinned behind a parent that has to run again: wait for it
                    self.pinned.pop(parent, None)
                    self.state.unstart(i)
                else:
                    self.state.requeue(i)
        # "c runs behind p in w" is void with w: each such c was requeued,
        # withdrawn or is failed below on its own; a link left behind would
        # have p's next failure withdraw c again, even a c that had failed
        for p in [p for p, (_, pw) in self.pinned.items() if pw is w]:
            self.pinned_behind.pop(self.pinned.pop(p)[0], None)
        for i in lost + running:
            if state[i] == RUNNING:
                if i in self.timed_out:
                    error = TaskTimeoutError(names[i], self.limits.timeout[i])
                else:
                    error = WorkerCrashedError(names[i], w.pid, exitcode)
                self.fail(i, error, w.pid)

    def _abort(self, exc: BaseException) -> None:
        """Stop promptly: Ctrl-C kills every worker, any other abort (e.g.
        raise_errors) kills the workers that still hold tasks."""
        names, state = self.state.names, self.state.state
        self.graph.in_progress[:] = [
            names[i] for i in range(len(names)) if state[i] == RUNNING
        ]
        if isinstance(exc, Exception):
            for w in [w for w in self.pool.workers if w.busy]:
                self.pool.discard(w, kill=True)
        else:
            self.pool.kill_all()


def _io_load(w: WorkerHandle) -> int:
    return len(w.io_tasks)


def _least_cpu_loaded(workers: list[WorkerHandle]) -> tuple[WorkerHandle, int]:
    """The worker holding the fewest cpu tasks (the first of equals) and
    how many it holds.  (A loop, not min(key=): called once per cpu task.)"""
    best, held = workers[0], len(workers[0].cpu_tasks)
    for w in workers:
        n = len(w.cpu_tasks)
        if n < held:
            best, held = w, n
    return best, held
