"""The coordinator's bookkeeping as a pure, checked ledger: events in,
instructions out, no I/O.

In the manner of dask's ``distributed/worker_state_machine.py``, the
coordinator (:mod:`taskmap.runtime.coordinator`) turns what happens to it -- a
worker's HELLO, a RESULTS message, a dead worker and what its shared slot
says, a send that failed, a timer that is due, "about to wait" -- into an
:data:`Event`, hands it to :meth:`Ledger.handle`, and carries out the
:data:`Instruction` list it gets back (send these submissions to that worker,
kill it, start a worker, unlink these segments, arm a timer, record this
outcome).  Everything that decides lives here:

* ready queues and priorities (in :class:`~taskmap.scheduling.state.SchedulingState`:
  io FIFO, cpu by critical path) and how many cpu tasks a worker may hold
  (the *depth*);
* pinning (a chain of cpu tasks sent ahead behind its parent, run without a
  round trip) and jumping (``Submission.first``: a more critical task runs
  before the one waiting at a worker);
* attempts, retries (at once or after a delay) and cpu time limits (a timer,
  then the slot's reading, then a kill);
* crash attribution: which tasks a dead worker ran (their results lost,
  still batched there), was running (they fail) or never began (they go
  back), from the slot's running/last-finished task and io flags;
* segment lifetimes: who may unlink which shared memory segment.

Workers are opaque keys (the coordinator's ``WorkerHandle``; strings in the
tests).  Values are opaque too: the ledger forwards encoded results and asks
its :class:`Values` (the coordinator's decoder) for a kept value or a
rebuilt error, so it can be driven by event sequences with no process at all
(``tests/test_ledger.py``).  Every transition of a task's state is checked
by :class:`~taskmap.scheduling.state.SchedulingState` (an illegal one raises), and
:meth:`Ledger.validate` asserts the invariants between events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from taskmap.errors import TaskmapError, TaskTimeoutError, WorkerCrashedError
from taskmap.runtime import codec
from taskmap.runtime.messages import (
    OUT_END,
    OUT_OK,
    OUT_PAYLOAD,
    OUT_START,
    OUT_TASK,
    SUB_AFTER,
    SUB_DIRECT,
    SUB_TASK,
)
from taskmap.runtime.slot import io_began
from taskmap.scheduling.limits import TaskLimits
from taskmap.scheduling.state import DONE, FINISHED, READY, RUNNING, WAITING, SchedulingState

MAX_CPU_DEPTH = 64
MAX_PINNED = 64  # longest chain sent ahead to one worker in one message
PIPELINE_SECONDS = 0.0003  # work to keep queued at a worker when tasks are tiny
MAX_START_FAILURES = 3
IO_CHUNK = 32  # io tasks ready at once that go to the same worker

# timer kinds
CPU_DEADLINE, RETRY, RATE = 0, 1, 2  # (RATE: task -1, the gate's next rate slot)

Worker = Hashable


# -- events in ---------------------------------------------------------------


class WorkerJoined(NamedTuple):
    """A worker takes part in the run: at its start, or a replacement just
    started.  ``io_sent``: io tasks sent to it over its life (it numbers
    them the same way); ``ready``: its HELLO arrived already."""

    worker: Worker
    pid: int | None
    ready: bool
    io_sent: int = 0


class Hello(NamedTuple):
    """The worker is up and takes tasks."""

    worker: Worker
    pid: int | None


class ResultsArrived(NamedTuple):
    """One RESULTS message: a batch of :class:`~taskmap.runtime.messages.Outcome` lists."""

    worker: Worker
    outcomes: list[list[Any]]


class WorkerDied(NamedTuple):
    """The worker is gone (its last messages were handed in before).  What
    its slot says: ``running``, the cpu task it was running (-1: none),
    ``last_finished``, the last cpu task it finished (-1: none), and
    ``io_flags``, the ring of io tasks' "began" flags (None: no slot, every
    io task counts as begun)."""

    worker: Worker
    exitcode: int | None
    running: int = -1
    last_finished: int = -1
    io_flags: bytes | None = None


class SendFailed(NamedTuple):
    """These submissions never reached the worker (its pipe broke); a
    :class:`WorkerDied` follows."""

    worker: Worker
    subs: list[list[Any]]


class TimerDue(NamedTuple):
    """A timer armed by :class:`ArmTimer` is due.  ``slots``: each worker's
    slot reading ``(running task, its start in monotonic ns)``, for a cpu
    time limit."""

    kind: int
    task: int
    now: float
    slots: dict[Worker, tuple[int, int]]


class Dispatch(NamedTuple):
    """The coordinator is about to wait: hand out what is ready."""


Event = WorkerJoined | Hello | ResultsArrived | WorkerDied | SendFailed | TimerDue | Dispatch


# -- instructions out ----------------------------------------------------------


class Send(NamedTuple):
    """Send these :class:`~taskmap.runtime.messages.Submission` lists to the worker.
    Each not pinned behind a parent (``after`` < 0) starts now: record it as
    started on that worker (a pinned one starts when its parent succeeded,
    see :class:`Succeeded`)."""

    worker: Worker
    subs: list[list[Any]]


# (task, value, pid, start, end, payload, became, follower): see Succeeded
SuccessRow = tuple[int, Any, "int | None", float, float, "bytes | None", int, int]


class Succeeded(NamedTuple):
    """Record these results, in order (the state says DONE already): all
    from one message, so one worker's (one pid).  Each row is
    ``(task, value, pid, start, end, payload, became, follower)``: the
    task's value, the worker's pid and monotonic clock around the call;
    ``payload`` the encoded value when it is one a checkpoint can store
    (not a shared memory handle); ``became`` how many children became
    ready; ``follower`` the task pinned behind it, which starts now on the
    same worker (-1: none).  ``followers``: those tasks (every follower >= 0
    of the rows, in order).  (Rows, not one instruction per task: a plain
    tuple costs a fraction of a NamedTuple, and this is the path every task
    takes.)"""

    rows: list[SuccessRow]
    followers: list[int]


class Failed(NamedTuple):
    """Record a failure (the state says FAILED already) and its skipped
    descendants."""

    task: int
    error: BaseException
    pid: int | None
    start: float | None
    end: float | None
    skipped: list[int]


class Kill(NamedTuple):
    """Kill the worker now (its death is reported as a :class:`WorkerDied`)."""

    worker: Worker


class StartWorker(NamedTuple):
    """Start a worker (report it with :class:`WorkerJoined`)."""


class Release(NamedTuple):
    """Unlink these shared memory segments: nobody reads them any more."""

    names: list[str]


class SweepSegments(NamedTuple):
    """Unlink the dead worker ``pid``'s segments not in ``reported`` (what no
    result announced, e.g. one half written at its crash)."""

    pid: int
    reported: dict[str, list[int]]


class ArmTimer(NamedTuple):
    """Hand in ``TimerDue(kind, task, ...)`` ``after`` seconds from now."""

    after: float
    kind: int
    task: int


class Expanded(NamedTuple):
    """Record what an expanding state did during the event (tasks run as
    elements, tasks whose elements all finished, elements skipped at their
    creation: :class:`~taskmap.scheduling.expansion.News`)."""

    news: Any


Instruction = Send | Succeeded | Failed | Kill | StartWorker | Release | SweepSegments | ArmTimer | Expanded


class Values(Protocol):
    """Turns encoded data into values and errors (the coordinator's codec
    work; the tests use plain stand-ins)."""

    # a kept result's value from its encoded form (called once per task: a
    # C-level callable where possible); it may raise, see ``unreadable``
    decode: Callable[[bytes], Any]

    def given(self, i: int, p: int) -> bytes:
        """Parent p's result, not produced in this run, encoded for task i;
        raises the error that fails task i when it cannot be."""

    def items(self, t: int, blob: bytes) -> list[Any]:
        """The items of the encoded result ``blob`` that the expanded task t
        maps over; raises the error that fails t when it has none (a
        string, a mapping)."""

    def not_kept(self, i: int) -> Any:
        """The stand-in for task i's result when it is not kept (``gather``)."""

    def unreadable(self, i: int, outcome: list[Any], error: Exception) -> BaseException:
        """The error that fails task i when ``decode`` raised ``error``."""

    def error(self, i: int, failure: list[Any]) -> BaseException:
        """Task i's error from a :class:`~taskmap.runtime.messages.Failure` list."""


def finished_before_crash(
    order: list[int], marker: int, last_finished: int, sent_first: Sequence[Sequence[int]] = ()
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


class Held:
    """What one worker holds: its io tasks (task -> its number among the io
    tasks sent to it over its life) and its cpu tasks in the order it runs
    them."""

    __slots__ = ("cpu_tasks", "io_sent", "io_tasks", "key", "pid", "ready")

    def __init__(self, key: Worker, pid: int | None, ready: bool, io_sent: int) -> None:
        self.key = key
        self.pid = pid
        self.ready = ready
        self.io_tasks: dict[int, int] = {}
        self.io_sent = io_sent
        self.cpu_tasks: deque[int] = deque()


class Segments:
    """Who may unlink which shared memory segment: a segment goes once no
    result pointing into it is kept and every reader has finished (or the
    last reader unlinks it itself, told so in its submission)."""

    __slots__ = ("cursor", "encoded", "keep", "retries", "state", "users")

    def __init__(
        self, state: SchedulingState, keep: set[int] | None, retries: list[int], encoded: dict[int, bytes]
    ) -> None:
        self.state = state
        self.keep = keep
        self.retries = retries
        self.encoded = encoded
        # segment -> tasks whose encoded results point into it
        self.users: dict[str, list[int]] = {}
        # task -> how many of its children are known to have finished (a prefix)
        self.cursor: dict[int, int] = {}

    def keeps(self, i: int) -> bool:
        """Whether task i's result comes back to the caller."""
        return self.keep is None or i in self.keep

    def may_release(self, i: int, blob: bytes) -> bool:
        """Whether task i, reading ``blob`` (a parent's result), is the last
        reader of every segment the blob points into: no result pointing into
        it is kept, every other child of those results has finished, and i
        will not be retried (a retry would read them again).  ``i`` = -1: no
        new reader, only whether every reader has finished."""
        if i >= 0 and self.retries[i]:
            return False
        names = codec.segment_names(blob)
        if not names:
            return False
        for name in names:
            for q in self.users.get(name, ()):
                if self.keeps(q) or self._has_unfinished_child(q, i):
                    return False
        return True

    def _has_unfinished_child(self, q: int, ignore: int) -> bool:
        """Whether a child of q other than ``ignore`` has not finished.
        Amortised O(1): a child that finished stays finished during a run,
        so a cursor per q skips them once (a fan-out of n readers costs O(n)
        in all, not O(n) per reader)."""
        children, status = self.state.children[q], self.state.state
        k = self.cursor.get(q, 0)
        n = len(children)
        while k < n and status[children[k]] in FINISHED:
            k += 1
        self.cursor[q] = k
        for j in range(k, n):
            c = children[j]
            if c != ignore and status[c] not in FINISHED:
                return True
        return False

    def read_inputs(self, i: int, out: list[Instruction]) -> None:
        """Task i succeeded: release its parents' segments that nobody will
        read any more (what a last reader did not release itself, e.g. in a
        fan-out whose children ran at the same time)."""
        users, encoded = self.users, self.encoded
        for p in self.state.parents[i]:
            blob = encoded.get(p)
            if blob is not None and self.may_release(-1, blob):
                names = codec.segment_names(blob)
                out.append(Release(names))
                for name in names:
                    users.pop(name, None)


class Ledger:
    """The decisions of one parallel run over ``state``.  ``func_of[i]``:
    task i's function id; ``code_of[i]``: the number of the code it runs
    (default: ``func_of``; cpu times are measured per code); ``durations``: where measured run times go (the
    graph's); ``keep``: tasks whose results come back (None: all);
    ``shm``: whether results may point into shared memory;
    ``stop_on_failure`` (``raise_errors``): stop handling an event at the
    first recorded failure, whose record then raises; ``validating``: check
    the invariants after every event (the tests; ``TASKMAP_VALIDATE=1`` for
    a real run)."""

    __slots__ = (
        "_handlers",
        "ahead_of",
        "attempts",
        "code_of",
        "cpu_seconds",
        "dispatcher",
        "durations",
        "encoded",
        "func_of",
        "items",
        "limits",
        "pinned",
        "pinned_behind",
        "rate_timer_at",
        "segments",
        "shm",
        "start_failures",
        "state",
        "stop_on_failure",
        "stopped",
        "timed_out",
        "validating",
        "values",
        "workers",
    )

    def __init__(
        self,
        state: SchedulingState,
        limits: TaskLimits,
        func_of: list[int],
        values: Values,
        durations: dict[Any, float],
        keep: set[int] | None = None,
        shm: bool = False,
        stop_on_failure: bool = False,
        validating: bool = False,
        code_of: list[int] | None = None,
    ) -> None:
        self.state = state
        # task -> the number of the code it runs (tasks of one function, or of
        # partials and closures of one function, share it): what is measured
        # per function is measured per code
        self.code_of = code_of if code_of is not None else func_of
        self.validating = validating
        self.stopped = False  # a failure was recorded with stop_on_failure
        self.limits = limits
        self.func_of = func_of
        self.values = values
        self.durations = durations
        self.shm = shm
        self.stop_on_failure = stop_on_failure
        self.attempts = [0] * len(state.names)
        self.encoded: dict[int, bytes] = {}  # task -> its encoded result
        self.segments = Segments(state, keep, limits.retries, self.encoded)
        self.workers: dict[Worker, Held] = {}  # in the order they joined
        # moving average of cpu task time per function: how deep to queue
        # its tasks at a worker (a function not measured yet gets depth 1)
        self.cpu_seconds: dict[int, float] = {}
        # chains sent ahead: parent -> (child pinned behind it, worker), and back
        self.pinned: dict[int, tuple[int, Worker]] = {}
        self.pinned_behind: dict[int, int] = {}
        # cpu task sent to run first at its worker -> the task it went ahead of
        self.ahead_of: dict[int, int] = {}
        self.timed_out: set[int] = set()  # tasks whose worker was killed for their time limit
        self.rate_timer_at: float | None = None  # when the armed RATE timer fires
        self.start_failures = 0
        # expanded task -> the items its elements map over (create_graph(expand=...))
        self.items: dict[int, list[Any]] = {}
        self.dispatcher = Dispatcher(self)
        self._handlers = {
            Dispatch: self.dispatcher.dispatch,
            ResultsArrived: self._results,
            Hello: self._hello,
            WorkerJoined: self._joined,
            WorkerDied: self._died,
            SendFailed: self._send_failed,
            TimerDue: self._timer_due,
        }

    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event; the instructions to carry out, in order."""
        out: list[Instruction] = []
        self._handlers[type(event)](event, out)  # type: ignore[operator]
        if self.state.expanding and not self.stopped:
            self._expansions(out)
        if self.state.gate is not None:
            self._arm_rate_timer(out)
        if self.validating:
            check_invariants(self)
        return out

    # -- queries ----------------------------------------------------------

    def busy(self, w: Worker) -> bool:
        held = self.workers.get(w)
        return held is not None and bool(held.io_tasks or held.cpu_tasks)

    def holder(self, i: int) -> Worker | None:
        """The worker holding task i, if any."""
        for w, held in self.workers.items():
            if i in held.io_tasks or i in held.cpu_tasks:
                return w
        return None

    def running(self) -> list[int]:
        status = self.state.state
        return [i for i in range(len(status)) if status[i] == RUNNING]

    def began(self, readings: Mapping[Any, tuple[int, bytes | None]]) -> list[int]:
        """The tasks that had begun on the workers, in task order, by each
        worker's slot reading ``(cpu task running, io flags ring)``: its
        running cpu task and the io tasks whose flag is set.  A worker with
        no reading counts as having begun every task it holds but those
        pinned behind a parent (they start when it succeeds).  For
        ``graph.in_progress`` when a run stops."""
        found: list[int] = []
        for w, held in self.workers.items():
            reading = readings.get(w)
            if reading is None:
                found.extend(i for i in held.cpu_tasks if i not in self.pinned_behind)
                found.extend(held.io_tasks)
                continue
            running, flags = reading
            if running in held.cpu_tasks:
                found.append(running)
            found.extend(i for i, n in held.io_tasks.items() if flags is None or io_began(flags, n, held.io_sent))
        return sorted(found)

    # -- workers come and go ------------------------------------------------

    def _joined(self, ev: WorkerJoined, out: list[Instruction]) -> None:
        if ev.worker in self.workers:
            raise TaskmapError(f"worker {ev.worker!r} joined twice")
        self.workers[ev.worker] = Held(ev.worker, ev.pid, ev.ready, ev.io_sent)

    def _hello(self, ev: Hello, out: list[Instruction]) -> None:
        held = self.workers[ev.worker]
        held.ready = True
        held.pid = ev.pid
        self.start_failures = 0

    # -- results ------------------------------------------------------------

    def _results(self, ev: ResultsArrived, out: list[Instruction]) -> None:
        """Record the outcomes of one RESULTS message.  (Its lookups hoisted:
        with tiny tasks this loop is the coordinator's busiest.)"""
        held = self.workers.get(ev.worker)
        if held is None:
            return  # (a worker already reported dead: nothing it says counts)
        state, durations, values, segments = self.state, self.durations, self.values, self.segments
        status, names, is_io = state.state, state.names, state.is_io
        io_tasks, cpu_tasks, pid = held.io_tasks, held.cpu_tasks, held.pid
        code_of, cpu_seconds = self.code_of, self.cpu_seconds
        pinned, pinned_behind, ahead_of = self.pinned, self.pinned_behind, self.ahead_of
        encoded, keep, shm_on, decode = self.encoded, segments.keep, self.shm, values.decode
        rows: list[SuccessRow] = []
        followers: list[int] = []  # (of these rows)
        for outcome in ev.outcomes:
            i = outcome[OUT_TASK]
            start, end = outcome[OUT_START], outcome[OUT_END]
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
                code = code_of[i]
                avg = cpu_seconds.get(code)
                cpu_seconds[code] = took if avg is None else 0.8 * avg + 0.2 * took
            if pinned_behind:
                pinned_behind.pop(i, None)
            if ahead_of:
                ahead_of.pop(i, None)
            if status[i] != RUNNING:
                continue  # timed out or its pinned parent failed meanwhile
            durations[names[i]] = took
            payload = outcome[OUT_PAYLOAD]
            if not outcome[OUT_OK]:
                if rows:
                    out.append(Succeeded(rows, followers))
                    rows, followers = [], []
                if self._fail(i, values.error(i, payload), pid, start, end, out) and self.stop_on_failure:
                    return
                continue
            segs = codec.segment_names(payload) if shm_on and payload and payload[0] in codec.EXT_HEADS else ()
            for segment in segs:
                segments.users.setdefault(segment, []).append(i)
            try:
                value = decode(payload) if keep is None or i in keep else values.not_kept(i)
            except Exception as error:  # noqa: BLE001 - the task's error
                if rows:
                    out.append(Succeeded(rows, followers))
                    rows, followers = [], []
                failure = values.unreadable(i, outcome, error)
                if self._fail(i, failure, pid, None, None, out) and self.stop_on_failure:
                    return
                continue
            encoded[i] = payload
            follower = -1
            if pinned:
                entry = pinned.pop(i, None)  # the task pinned behind it runs on
                if entry is not None:
                    follower = entry[0]
                    del pinned_behind[follower]
                    followers.append(follower)
            # (a handle is no value to store: a checkpoint encodes the value)
            rows.append((i, value, pid, start, end, None if segs else payload, state.finished(i), follower))
            if segments.users:
                out.append(Succeeded(rows, followers))
                rows, followers = [], []
                segments.read_inputs(i, out)
        if rows:
            out.append(Succeeded(rows, followers))

    def _fail(
        self,
        i: int,
        error: BaseException,
        pid: int | None,
        start: float | None,
        end: float | None,
        out: list[Instruction],
        retry: bool = True,
    ) -> bool:
        """Task i failed; tasks pinned behind it wait again first, so that
        the failure skips them like any other descendant.  Another attempt
        if it has some left (only the last failure is recorded), else the
        failure is recorded: returns whether it was."""
        state, attempts = self.state, self.attempts
        entry = self.pinned.pop(i, None)
        while entry is not None:
            child, w = entry
            del self.pinned_behind[child]
            state.unstart(child)
            attempts[child] -= 1  # withdrawn before it ran
            held = self.workers.get(w)
            if held is not None:
                held.cpu_tasks.remove(child)
            entry = self.pinned.pop(child, None)
        if retry and 0 < attempts[i] <= self.limits.retries[i]:
            self.timed_out.discard(i)
            delay = self.limits.retry_delay
            if delay > 0:
                state.unstart(i)
                out.append(ArmTimer(delay, RETRY, i))
            else:
                state.requeue(i)
            return False
        out.append(Failed(i, error, pid, start, end, state.failed(i)))
        if self.stop_on_failure:
            self.stopped = True  # (its record raises: the run ends half-way through this event)
        return True

    # -- expansion (create_graph(expand=...)) -------------------------------------

    def _expansions(self, out: list[Instruction]) -> None:
        """Expand the tasks whose mapped result came (its items encoded one
        by one), grow the per-task tables for the new elements, and pass the
        state's news on to the bookkeeper."""
        state: Any = self.state
        encoded = self.encoded
        while state.to_expand:
            t = state.to_expand[0]
            m = state.mapped[t]
            try:
                blob = encoded.get(m)
                if blob is None:
                    blob = encoded[m] = self.values.given(t, m)
                items = self.values.items(t, blob)
            except Exception as error:  # noqa: BLE001 - it fails the expanding task
                out.append(Failed(t, error, None, None, None, state.fail_expansion(t)))
                if self.stop_on_failure:
                    self.stopped = True
                    return
                continue
            self.items[t] = items
            state.expand(t, len(items))
        news = state.take_news()
        if not (news.expanded or news.collected or news.skipped):
            return
        limits, keep = self.limits, self.segments.keep
        for t, _first, n in news.expanded:
            self.attempts.extend([0] * n)
            limits.timeout.extend([limits.timeout[t]] * n)
            limits.retries.extend([limits.retries[t]] * n)
            self.func_of.extend([self.func_of[t]] * n)
            if self.code_of is not self.func_of:
                self.code_of.extend([self.code_of[t]] * n)
            if keep is not None and t in keep:
                keep.update(range(_first, _first + n))
        for t in news.collected:
            if state.state[t] == DONE:
                blobs = []
                for e in state.elements(t):
                    blob = encoded.get(e)
                    blobs.append(blob if blob is not None else self.values.given(t, e))
                encoded[t] = codec.encode_list(blobs)
        out.append(Expanded(news))

    # -- instances (taskmap.load: InstanceState) ------------------------------------

    def place(
        self,
        tasks: Sequence[int],
        func_of: Sequence[int],
        code_of: Sequence[int],
        timeout: Sequence[float | None],
        retries: Sequence[int],
    ) -> None:
        """Tasks joined the running state at these numbers (a new number is
        the next one; a number of a retired task is reused): set their
        per-task tables, as :meth:`_expansions` grows them for elements."""
        attempts, limits = self.attempts, self.limits
        own_code = self.code_of is not self.func_of
        for e, f, c, t, r in zip(tasks, func_of, code_of, timeout, retries, strict=True):
            if e == len(attempts):
                attempts.append(0)
                limits.timeout.append(t)
                limits.retries.append(r)
                self.func_of.append(f)
                if own_code:
                    self.code_of.append(c)
            else:
                attempts[e] = 0
                limits.timeout[e] = t
                limits.retries[e] = r
                self.func_of[e] = f
                if own_code:
                    self.code_of[e] = c

    def retire(self, tasks: Sequence[int]) -> None:
        """These finished tasks leave the run (their numbers may be reused):
        forget what the ledger keeps of them."""
        encoded, cursor = self.encoded, self.segments.cursor
        for e in tasks:
            self.attempts[e] = 0
            encoded.pop(e, None)
            cursor.pop(e, None)
            self.timed_out.discard(e)

    # -- timers ---------------------------------------------------------------

    def _arm_rate_timer(self, out: list[Instruction]) -> None:
        """A timer for the next rate slot a waiting task needs (one armed at a
        time: the earliest)."""
        slot = self.state.next_rate_slot()
        if slot is not None and (self.rate_timer_at is None or slot < self.rate_timer_at):
            self.rate_timer_at = slot
            out.append(ArmTimer(max(0.0, slot - self.state.clock()), RATE, -1))

    def _timer_due(self, ev: TimerDue, out: list[Instruction]) -> None:
        i, state = ev.task, self.state
        if ev.kind == RATE:
            self.rate_timer_at = None
            state.rate_due()  # (the next Dispatch sends what it queued)
            return
        if ev.kind == RETRY:
            if state.state[i] == WAITING:
                state.requeue(i)
            return
        # a cpu time limit: kill the worker of task i if i has run past it;
        # else look again when it could have (it may still be queued)
        if state.state[i] != RUNNING:
            return
        w = next((w for w, held in self.workers.items() if i in held.cpu_tasks), None)
        if w is None:
            return
        limit = self.limits.timeout[i]
        assert limit is not None
        running, started_ns = ev.slots.get(w, (-1, 0))
        if running == i:
            started = started_ns / 1e9
            if ev.now - started >= limit:
                self.timed_out.add(i)
                out.append(Kill(w))  # its death is reported; _died does the rest
                return
            out.append(ArmTimer(started + limit - ev.now, CPU_DEADLINE, i))
        else:
            out.append(ArmTimer(limit, CPU_DEADLINE, i))

    def _pinned_chain(self, i: int) -> list[int]:
        """Task i and the tasks pinned behind it, in the order they run."""
        chain = [i]
        while (entry := self.pinned.get(chain[-1])) is not None:
            chain.append(entry[0])
        return chain

    # -- faults -------------------------------------------------------------

    def _send_failed(self, ev: SendFailed, out: list[Instruction]) -> None:
        """The worker died before taking them: they never started, so they
        go back (their own tasks first: pinned ones wait for their parent)."""
        held = self.workers[ev.worker]
        state = self.state
        for sub in ev.subs:
            i = sub[SUB_TASK]
            held.io_tasks.pop(i, None)
            self.ahead_of.pop(i, None)
            try:
                held.cpu_tasks.remove(i)
            except ValueError:
                pass
            self.attempts[i] -= 1  # it never reached a worker
            if sub[SUB_AFTER] >= 0:  # waits for its parent, sent in the same batch
                parent = self.pinned_behind.pop(i)
                del self.pinned[parent]
                state.unstart(i)
            else:
                state.requeue(i)

    def _died(self, ev: WorkerDied, out: list[Instruction]) -> None:
        """Fail the task(s) w was running, requeue those it had not started
        or whose results it lost, start a replacement."""
        w = ev.worker
        held = self.workers.pop(w)
        if self.shm and held.pid is not None:
            # what it wrote but never announced (a segment half written at a
            # crash) can never be read: free that memory now, not at the end
            out.append(SweepSegments(held.pid, self.segments.users))
        marker = ev.running
        # io tasks begin as soon as the worker can: those whose flag in the
        # slot says they began were running; the rest (still in the pipe, or
        # behind a loop some task blocked, or waiting for an io thread) go
        # back to the queue.
        flags, sent = ev.io_flags, held.io_sent
        began = [flags is None or io_began(flags, n, sent) for n in held.io_tasks.values()]
        # Of the cpu tasks, the slot names the one running at the crash;
        # those before it finished but their results were still batched,
        # those after it had not started: both kinds go back too.
        running = [i for i, b in zip(held.io_tasks, began, strict=True) if b]
        order = list(held.cpu_tasks)
        order.extend(i for i, b in zip(held.io_tasks, began, strict=True) if not b)
        # finished, but the result was lost with the worker
        first = [self._pinned_chain(i) for i in order if i in self.ahead_of]
        ran = finished_before_crash(order, marker, ev.last_finished, first)
        for i in held.cpu_tasks:
            self.ahead_of.pop(i, None)
        if marker in order:
            running.insert(0, marker)  # the prime suspect is named first
            order.remove(marker)
        if marker in self.timed_out:
            # we killed it for that task: its io tasks are innocent, they rerun
            order.extend(running[1:])
            running = running[:1]
        if not held.ready:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                raise TaskmapError(
                    f"worker processes die while starting (last exit code {ev.exitcode}); see their stderr"
                )
        out.append(StartWorker())
        state, attempts, retries = self.state, self.attempts, self.limits.retries
        status, names = state.state, state.names
        lost = []
        for i in order:
            if status[i] == RUNNING:
                if i in ran and attempts[i] > retries[i] + 1:
                    # its result was lost with the worker more than once (say,
                    # it kills its worker after returning): stop rerunning it
                    lost.append(i)
                    continue
                if i not in ran:
                    attempts[i] -= 1  # it never ran, or not by its own fault
                parent = self.pinned_behind.pop(i, None)
                if parent is not None and status[parent] not in FINISHED:
                    # pinned behind a parent that has to run again: wait for it
                    self.pinned.pop(parent, None)
                    state.unstart(i)
                else:
                    state.requeue(i)
        # "c runs behind p in w" is void with w: each such c was requeued,
        # withdrawn or is failed below on its own; a link left behind would
        # have p's next failure withdraw c again, even a c that had failed
        # (b211764)
        for p in [p for p, (_, pw) in self.pinned.items() if pw == w]:
            self.pinned_behind.pop(self.pinned.pop(p)[0], None)
        for i in lost + running:
            if status[i] == RUNNING:
                error: BaseException
                if i in self.timed_out:
                    error = TaskTimeoutError(names[i], self.limits.timeout[i])
                else:
                    error = WorkerCrashedError(names[i], held.pid, ev.exitcode)
                if self._fail(i, error, held.pid, None, None, out) and self.stop_on_failure:
                    return

    def validate(self) -> None:
        """Assert the invariants that hold between events (the tests call it
        after every event; O(tasks + edges)).  See :func:`check_invariants`."""
        check_invariants(self)


class Dispatcher:
    """The ledger's dispatch policy: which ready task goes to which worker
    and when.  io tasks go at once, to the worker with the fewest in
    flight, in chunks of IO_CHUNK (those ready together share a message).
    A worker holds at most ``cpu_depth`` cpu tasks: 1 while tasks
    are long, so each goes to the first free core (2 while more are ready
    than the workers can take: the next then waits at the worker, not a
    round trip away; 3 when a more critical task becomes ready: it jumps
    the one waiting), more when measured tasks are so short that the pipe's
    round trip would leave the core idle.  Chains of cpu tasks that wait
    for nothing else are pinned behind their parent.  (It shares the
    ledger's tables; :class:`Ledger` owns them.)"""

    def __init__(self, ledger: Ledger) -> None:
        self.state = ledger.state
        self.limits = ledger.limits
        self.func_of = ledger.func_of
        self.code_of = ledger.code_of
        self.values = ledger.values
        self.attempts = ledger.attempts
        self.encoded = ledger.encoded
        self.segments = ledger.segments
        self.workers = ledger.workers
        self.cpu_seconds = ledger.cpu_seconds
        self.pinned = ledger.pinned
        self.pinned_behind = ledger.pinned_behind
        self.ahead_of = ledger.ahead_of
        self.shm = ledger.shm
        self.items = ledger.items
        self.stop_on_failure = ledger.stop_on_failure
        self._fail = ledger._fail

    def cpu_depth(self, i: int) -> int:
        """How many cpu tasks a worker may hold when task i is the next."""
        avg = self.cpu_seconds.get(self.code_of[i])
        if avg is None:
            return 1
        return min(MAX_CPU_DEPTH, 1 + int(PIPELINE_SECONDS / max(avg, 1e-7)))

    def dispatch(self, ev: Dispatch, out: list[Instruction]) -> None:
        state = self.state
        if not state.has_ready():
            return
        ready = [held for held in self.workers.values() if held.ready]
        if not ready:
            return
        batches: dict[Worker, list[list[Any]]] = {}
        try:
            # io tasks ready together go to one worker in chunks of IO_CHUNK,
            # each chunk to the worker with the fewest in flight: a few tasks
            # (a scenario's fan-out) cost one message and one wake-up, not
            # one per worker; a storm still spreads evenly
            held, chunk = None, 0
            while (i := state.pop_io()) is not None:
                if held is None or chunk == IO_CHUNK:
                    held, chunk = min(ready, key=_io_load), 0
                self._assign(held, i, True, batches, out)
                chunk += 1
            while (i := state.peek_cpu()) is not None:
                held, n = _least_cpu_loaded(ready)
                # One task queued behind the running one hides the round trip
                # (about 0.4 ms of idle core per task), but commits the task to
                # this worker: do it only while more tasks are ready than workers
                # can take, so the other workers have their next task too.
                if n >= self.cpu_depth(i) and not (n == 1 and len(state.ready_cpu) > len(ready)):
                    # The task sent ahead to a worker may be less critical than
                    # this one, which became ready since: this one goes first
                    # there (else it would wait for both tasks, not one).
                    found = self._queue_to_jump(ready, i)
                    if found is None:
                        break
                    held = found
                    waiting = held.cpu_tasks[1]
                    state.pop_cpu()
                    self._assign(held, i, False, batches, out, first=True)
                    if i in held.cpu_tasks:  # (not if its arguments could not be sent)
                        held.cpu_tasks.remove(waiting)  # it runs after i and i's chain
                        held.cpu_tasks.append(waiting)
                        self.ahead_of[i] = waiting
                    continue
                state.pop_cpu()
                self._assign(held, i, False, batches, out)
        except _Stop:
            return  # a recorded failure raises: send nothing more
        for w, subs in batches.items():
            out.append(Send(w, subs))

    def _item(self, i: int) -> bytes | BaseException | None:
        """Task i's item, encoded, if it is an element over a whole task's
        result (None otherwise); the error that fails it if the item cannot
        be encoded.  (Encoded when sent, not at the expansion: a decoded item
        costs less memory than its encoding and a dict entry.)"""
        state: Any = self.state
        if i < state.n_static:
            return None
        t, k = state.element_of(i)
        items = self.items.get(t)
        if items is None:
            return None
        try:
            return codec.encode(items[k])
        except Exception as error:  # noqa: BLE001 - it fails the element
            return error

    def _queue_to_jump(self, ready: list[Held], i: int) -> Held | None:
        """A worker where cpu task i should run next, ahead of the one task
        waiting there behind the running one, because i's chain below is
        longer; None if there is none.  Only long tasks (depth 1), one jump
        per queue, and never ahead of a task pinned behind its parent."""
        if self.cpu_depth(i) != 1:
            return None
        priority = self.state.priority
        for held in ready:
            tasks = held.cpu_tasks
            if len(tasks) == 2:
                waiting = tasks[1]
                if (
                    priority[waiting] < priority[i]
                    and waiting not in self.pinned_behind
                    and waiting not in self.ahead_of
                ):
                    return held
        return None

    def _assign(
        self,
        held: Held,
        i: int,
        io: bool,
        batches: dict[Worker, list[list[Any]]],
        out: list[Instruction],
        first: bool = False,
    ) -> None:
        state, segments, encoded = self.state, self.segments, self.encoded
        args: list[bytes] = []
        release: list[int] = []
        item = self._item(i) if self.items else None
        for p in state.parents[i]:
            blob = encoded.get(p)
            if blob is None:
                try:
                    blob = encoded[p] = self.values.given(i, p)
                except Exception as error:  # noqa: BLE001 - an argument that cannot be sent
                    state.started(i)
                    # (encoding it again would fail again: no retry)
                    if self._fail(i, error, None, None, None, out, retry=False) and self.stop_on_failure:
                        raise _Stop from None
                    return
            if not codec.is_none(blob):
                if segments.users and segments.may_release(i, blob):
                    release.append(len(args))
                args.append(blob)
        if item is not None:
            if isinstance(item, BaseException):  # (the item could not be encoded: it fails the element)
                state.started(i)
                if self._fail(i, item, None, None, None, out, retry=False) and self.stop_on_failure:
                    raise _Stop from None
                return
            _insert_item(state, i, item, args, release, encoded)
        state.started(i)
        self.attempts[i] += 1
        limit = self.limits.timeout[i]
        batch = batches.setdefault(held.key, [])
        # (a Submission: see taskmap.runtime.messages)
        batch.append([i, self.func_of[i], io, args, -1, (), limit if io else None, release, False, first])
        if io:
            held.io_tasks[i] = held.io_sent
            held.io_sent += 1
        else:
            held.cpu_tasks.append(i)
            if limit is not None:
                out.append(ArmTimer(limit, CPU_DEADLINE, i))
            self._pin_chain(held, i, batch, out)

    def _pin_chain(self, held: Held, parent: int, batch: list[list[Any]], out: list[Instruction]) -> None:
        """Send ahead, behind a cpu task, the chain of cpu tasks that wait
        for nothing else: each runs on the same worker right after its
        parent, with no round trip through the coordinator.  A task sent out
        before in this run (a retry, or a rerun after a crash) is not pinned:
        should it kill its worker again, it must not take the results of the
        tasks before it in the chain, still batched there, down with it."""
        state, segments, encoded = self.state, self.segments, self.encoded
        children, remaining, status, is_io = state.children, state.remaining, state.state, state.is_io
        priority, attempts, limits = state.priority, self.attempts, self.limits
        # a task that uses a limited resource is pinned behind its parent
        # only if its units can be taken now (it holds them while it waits
        # there, so the limit still holds); a rated one never: its start is
        # what the rate spaces
        gate = state.gate
        # an expanded task never runs itself: not pinned (its elements are)
        collectors = state.mapped if state.expanding else None  # type: ignore[attr-defined]
        for _ in range(MAX_PINNED):
            best = -1
            for c in children[parent]:
                if (
                    remaining[c] == 1
                    and status[c] == WAITING
                    and not is_io[c]
                    and attempts[c] == 0
                    and (best < 0 or priority[c] > priority[best])
                    and (gate is None or not gate.gated[c] or (gate.unrated[c] and gate.blocked(c, 0.0) is None))
                    and (collectors is None or c not in collectors)
                ):
                    best = c
            if best < 0:
                return
            args: list[bytes] = []
            slots: list[int] = []
            release: list[int] = []
            for q in state.parents[best]:
                if q == parent:
                    slots.append(len(args))
                    continue
                blob = encoded.get(q)
                if blob is None:
                    return  # a given result not encoded yet: take the normal path
                if not codec.is_none(blob):
                    if segments.users and segments.may_release(best, blob):
                        release.append(len(args))
                    args.append(blob)
            if self.shm and len(children[parent]) == 1 and not segments.keeps(parent) and limits.retries[best] == 0:
                # only best reads parent's value: a big one is handed over in
                # the worker, never copied (batch[-1] is parent's submission)
                batch[-1][SUB_DIRECT] = True
            state.started(best)
            if gate is not None and gate.gated[best]:
                gate.take(best, state.clock())  # (held while it waits behind its parent)
            attempts[best] += 1
            held.cpu_tasks.append(best)
            limit = limits.timeout[best]
            if limit is not None:
                out.append(ArmTimer(limit, CPU_DEADLINE, best))
            self.pinned[parent] = (best, held.key)
            self.pinned_behind[best] = parent
            batch.append([best, self.func_of[best], False, args, parent, slots, None, release, False, False])
            # reported as started when its parent succeeds: until then it
            # may be withdrawn (the parent fails) and never run
            parent = best


def check_invariants(ledger: Ledger) -> None:
    """Assert the invariants of a ledger between events: a running task is
    held by exactly one worker, and only running tasks are; a worker holds
    no task before its HELLO, each once, in its own lane; each task's count
    of unfinished parents is right, a ready task waits for none and a
    running one only for the parent it is pinned behind; the count of
    unfinished tasks matches the states; every ready task is in exactly one
    queue, once; a pin link exists in both directions or neither, between
    two running tasks held by one live worker in that order; a task sent
    first is a running cpu task; a segment's users are done tasks.  (None
    once a run stopped at a failure: it ends half-way through that event.)"""
    if ledger.stopped:
        return
    state = ledger.state
    status, names = state.state, state.names
    n = len(names)
    holders: dict[int, list[Worker]] = {}
    for w, held in ledger.workers.items():
        assert len(set(held.cpu_tasks)) == len(held.cpu_tasks), f"{w!r} holds a cpu task twice"
        assert not set(held.cpu_tasks) & set(held.io_tasks), f"{w!r}: a task in both lanes"
        for i in held.io_tasks:
            assert state.is_io[i], f"{names[i]!r} is not io"
        for i in held.cpu_tasks:
            assert not state.is_io[i], f"{names[i]!r} is not cpu"
        numbers = list(held.io_tasks.values())
        assert len(set(numbers)) == len(numbers) and all(0 <= k < held.io_sent for k in numbers)
        for i in (*held.io_tasks, *held.cpu_tasks):
            holders.setdefault(i, []).append(w)
        if not held.ready:
            assert not held.io_tasks and not held.cpu_tasks, f"{w!r} holds tasks before its HELLO"
    for i in range(n):
        s = status[i]
        if s == RUNNING:
            assert len(holders.get(i, ())) == 1, (
                f"running task {names[i]!r} is held by {holders.get(i, [])!r}, not exactly one worker"
            )
            assert ledger.attempts[i] >= 1, f"running task {names[i]!r} has no attempt"
        else:
            assert i not in holders, f"{names[i]!r} ({s}) is held by {holders[i]!r}"
        assert ledger.attempts[i] >= 0
        left = state.expected_remaining(i)
        assert state.remaining[i] == left, f"{names[i]!r}: remaining {state.remaining[i]} != {left}"
        if s == READY:
            assert left == 0, f"ready task {names[i]!r} waits for a parent"
        elif s == RUNNING and left:
            p = ledger.pinned_behind.get(i)
            assert left == 1 and p is not None and status[p] == RUNNING, (
                f"running task {names[i]!r} waits for a parent it is not pinned behind"
            )
    assert state.unfinished == sum(1 for s in status if s not in FINISHED), "unfinished count"
    # every ready task is in exactly one queue, once (the queues drop
    # the entries of tasks that left READY lazily)
    in_io: dict[int, int] = {}
    for i in state.queued_io():
        in_io[i] = in_io.get(i, 0) + 1
    in_cpu: dict[int, int] = {}
    for _, i in state.ready_cpu:
        in_cpu[i] = in_cpu.get(i, 0) + 1
    gate = state.gate
    if gate is not None:
        gate.validate()
    for i in range(n):
        if status[i] == READY:
            if gate is not None and i in gate.waits_on:
                # waiting in the gate for a unit or a rate slot, in no queue
                assert i not in in_io and i not in in_cpu, f"gated task {names[i]!r} also queued"
                continue
            lane, other = (in_io, in_cpu) if state.is_io[i] else (in_cpu, in_io)
            assert lane.get(i, 0) == 1 and i not in other, f"ready task {names[i]!r} queued {lane.get(i, 0)} times"
    # a pin link exists in both directions or neither, between two
    # running tasks held by the same worker, the child after its parent
    assert len(ledger.pinned) == len(ledger.pinned_behind), "pin links one way only"
    for p, (c, w) in ledger.pinned.items():
        assert ledger.pinned_behind.get(c) == p, f"pin {names[p]!r} -> {names[c]!r} one way only"
        assert status[p] == RUNNING and status[c] == RUNNING, f"pin {names[p]!r} -> {names[c]!r} not running"
        on = ledger.workers.get(w)
        assert on is not None, f"pin {names[p]!r} -> {names[c]!r} on a worker that is gone"
        order = list(on.cpu_tasks)
        assert p in order and c in order and order.index(p) < order.index(c), "pinned out of order"
    for i in ledger.ahead_of:
        assert status[i] == RUNNING, f"{names[i]!r} sent first but not running"
        assert not state.is_io[i]
    for name, users in ledger.segments.users.items():
        for q in users:
            assert status[q] == DONE and q in ledger.encoded, f"segment {name} of unfinished {names[q]!r}"


class _Stop(Exception):
    """A failure was recorded during dispatch and the run stops."""


def _insert_item(
    state: Any, e: int, item: bytes, args: list[bytes], release: list[int], encoded: dict[int, bytes]
) -> None:
    """Put element e's item among its arguments, where its task's mapped
    dependency was (None left out, as ever)."""
    if codec.is_none(item):
        return
    t, _ = state.element_of(e)
    pos = state.item_pos[t]
    k = sum(1 for p in state.parents[e][:pos] if not codec.is_none(encoded[p]))
    args.insert(k, item)
    release[:] = [r + 1 if r >= k else r for r in release]


def _io_load(held: Held) -> int:
    return len(held.io_tasks)


def _least_cpu_loaded(ready: list[Held]) -> tuple[Held, int]:
    """The worker holding the fewest cpu tasks (the first of equals) and
    how many it holds.  (A loop, not min(key=): called once per cpu task.)"""
    best = ready[0]
    n = len(best.cpu_tasks)
    for held in ready:
        k = len(held.cpu_tasks)
        if k < n:
            best, n = held, k
    return best, n
