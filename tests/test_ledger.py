"""The ledger with no process at all: event sequences in, instructions and
state out, ``validate()`` after every event.

Each fault bug fixed so far in the coordinator's bookkeeping is replayed
here as the events that led to it (the commit that fixed it is named in the
test's docstring); a hypothesis test drives the ledger with random event
sequences against a model of the worker (results that succeed or fail,
deaths at any point with what the slot would say, time limits, retries).
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from taskmap.errors import TaskTimeoutError, WorkerCrashedError
from taskmap.runtime import codec
from taskmap.runtime.messages import (
    SUB_AFTER,
    SUB_ARGS,
    SUB_FIRST,
    SUB_IO,
    SUB_SLOTS,
    SUB_TASK,
    Stage,
)
from taskmap.runtime.slot import IO_RING
from taskmap.scheduling.ledger import (
    CPU_DEADLINE,
    ArmTimer,
    Dispatch,
    Failed,
    Hello,
    Kill,
    Ledger,
    ResultsArrived,
    Send,
    SendFailed,
    StartWorker,
    Succeeded,
    TimerDue,
    WorkerDied,
    WorkerJoined,
)
from taskmap.scheduling.limits import TaskLimits
from taskmap.scheduling.state import (
    DONE,
    FAILED,
    FINISHED,
    READY,
    RUNNING,
    SKIPPED,
    WAITING,
    IllegalTransition,
    SchedulingState,
)


class Done(NamedTuple):
    """One row of a Succeeded instruction, by name."""

    task: int
    value: Any
    pid: int | None
    start: float
    end: float
    payload: bytes | None
    became: int
    follower: int


class FakeValues:
    """Values as the tests see them: results are msgpack-native, an error is
    a RuntimeError with the failure's message."""

    decode = staticmethod(codec.decode)

    def __init__(self, state: SchedulingState, given: dict) -> None:
        self.names = state.names
        self.given_results = given

    def given(self, i: int, p: int) -> bytes:
        return codec.encode(self.given_results[self.names[p]])

    def not_kept(self, i: int) -> Any:
        return f"not kept: {self.names[i]}"

    def unreadable(self, i: int, outcome: list, error: Exception) -> BaseException:
        return ValueError(f"result of {self.names[i]} unreadable: {error}")

    def error(self, i: int, failure: list) -> BaseException:
        if failure[4] == Stage.TIMEOUT:
            return TaskTimeoutError(self.names[i], 1.0)
        return RuntimeError(failure[2])


class Harness:
    """A ledger over ``deps`` with workers ``w0``.. ready, every event
    followed by ``validate()`` and every record kept."""

    def __init__(
        self,
        deps: dict,
        io=(),
        workers: int = 2,
        retries=0,
        timeout=None,
        retry_delay=0.0,
        done=(),
        given=None,
        stop_on_failure=False,
    ) -> None:
        self.state = SchedulingState(deps, io, done)
        self.state.start()
        self.names = self.state.names
        self.ix = self.state.index
        limits = TaskLimits(self.names, timeout=timeout, retries=retries, retry_delay=retry_delay)
        self.ledger = Ledger(
            self.state,
            limits,
            [0] * len(self.names),
            FakeValues(self.state, given or {}),
            {},
            stop_on_failure=stop_on_failure,
        )
        self.records: dict[int, list] = {}  # task -> its records (Done, Failed, "skipped")
        self.timers: list[ArmTimer] = []
        self.started_workers = 0
        for k in range(workers):
            self.do(WorkerJoined(f"w{k}", 100 + k, True, 0))

    def do(self, event) -> list:
        out = self.ledger.handle(event)
        self.ledger.validate()
        for ins in out:
            if isinstance(ins, Succeeded):
                for row in ins.rows:
                    done = Done(*row)
                    self.records.setdefault(done.task, []).append(done)
                # (the observers' starts of pinned tasks are told from this list)
                assert ins.followers == [Done(*row).follower for row in ins.rows if Done(*row).follower >= 0]
            if isinstance(ins, Failed):
                self.records.setdefault(ins.task, []).append(ins)
            if isinstance(ins, Failed):
                for s in ins.skipped:
                    self.records.setdefault(s, []).append("skipped")
            if isinstance(ins, ArmTimer):
                self.timers.append(ins)
            if isinstance(ins, StartWorker):
                self.started_workers += 1
        return out

    def dispatch(self) -> dict[str, list]:
        """The submissions sent, by worker."""
        return {ins.worker: ins.subs for ins in self.do(Dispatch()) if isinstance(ins, Send)}

    def t(self, name) -> int:
        return self.ix[name]

    def status(self, name) -> int:
        return self.state.state[self.ix[name]]

    def ok(self, w, *names, value=None) -> list:
        return self.do(
            ResultsArrived(
                w, [[self.ix[n], True, codec.encode(value if value is not None else n), 0.0, 0.001] for n in names]
            )
        )

    def fail(self, w, name, message="boom") -> list:
        return self.do(
            ResultsArrived(w, [[self.ix[name], False, [None, "RuntimeError", message, "", Stage.RUN], 0.0, 0.001]])
        )

    def die(self, w, running=None, last=None, began=None) -> list:
        """w died; its slot says ``running``/``last`` (names or None) and,
        when ``began`` is given, which io task numbers began."""
        flags = None
        if began is not None:
            ring = bytearray(IO_RING)
            for n in began:
                ring[n] = 1
            flags = bytes(ring)
        return self.do(
            WorkerDied(
                w,
                -9,
                self.ix[running] if running else -1,
                self.ix[last] if last else -1,
                flags,
            )
        )

    def error_of(self, name):
        recs = self.records[self.ix[name]]
        assert len(recs) == 1, recs
        return recs[0].error


def tasks(subs) -> list:
    return [s[SUB_TASK] for s in subs]


# -- the transitions are checked ----------------------------------------------


def test_a_second_result_for_a_task_is_ignored_as_stale_but_a_second_death_raises():
    h = Harness({"a": []}, workers=1)
    assert tasks(h.dispatch()["w0"]) == [h.t("a")]
    h.ok("w0", "a")
    h.ok("w0", "a")  # (stale: the state says DONE, nothing recorded)
    assert len(h.records[h.t("a")]) == 1
    h.die("w0")
    with pytest.raises(KeyError):
        h.die("w0")


def test_finishing_a_task_twice_through_the_state_raises():
    h = Harness({"a": []}, workers=1)
    h.dispatch()
    h.ok("w0", "a")
    with pytest.raises(IllegalTransition):
        h.state.finished(h.t("a"))


def test_dispatch_queues_io_first_and_cpu_by_critical_path():
    deps = {"short": [], "long": [], "l2": ["long"], "l3": ["l2"], "io": []}
    h = Harness(deps, io=["io"], workers=1)
    subs = h.dispatch()["w0"]
    # io first; then the long chain's head with its chain pinned behind it
    assert tasks(subs) == [h.t("io"), h.t("long"), h.t("l2"), h.t("l3")]
    assert [s[SUB_AFTER] for s in subs] == [-1, -1, h.t("long"), h.t("l2")]
    assert subs[2][SUB_SLOTS] == [0]
    assert h.status("short") == READY  # depth 1: it waits in the coordinator


def test_a_pinned_task_starts_with_its_parents_success_and_waits_no_round_trip():
    h = Harness({"a": [], "b": ["a"]}, workers=1)
    assert [s[SUB_AFTER] for s in h.dispatch()["w0"]] == [-1, h.t("a")]
    (ins,) = h.ok("w0", "a")
    assert [Done(*row).follower for row in ins.rows] == [h.t("b")]
    assert h.dispatch() == {} and h.status("b") == RUNNING
    h.ok("w0", "b")
    assert h.state.all_finished and h.ledger.attempts == [1, 1]


def test_io_tasks_ready_together_share_one_message_and_a_storm_still_spreads():
    few = {f"io{k}": [] for k in range(3)}
    h = Harness(few, io=list(few), workers=2)
    sent = h.dispatch()
    assert list(sent) == ["w0"] and len(sent["w0"]) == 3  # one message, one wake-up
    many = {f"io{k}": [] for k in range(200)}
    h = Harness(many, io=list(many), workers=2)
    sent = h.dispatch()
    assert sorted(len(subs) for subs in sent.values()) == [96, 104]  # chunks of 32, alternating


def test_began_names_the_running_cpu_task_and_the_io_tasks_that_began_not_those_sent_ahead():
    """What a stopped run lists in ``graph.in_progress``: by the slots, the
    cpu task each worker runs and its io tasks whose flag is set; without a
    reading, all it holds but what is pinned behind a parent."""
    deps = {"io0": [], "io1": [], "long": [], "l2": ["long"], "other": []}
    h = Harness(deps, io=["io0", "io1"], workers=1)
    subs = h.dispatch()["w0"]
    assert tasks(subs) == [h.t("io0"), h.t("io1"), h.t("long"), h.t("l2")]  # l2 pinned behind long
    ring = bytearray(IO_RING)
    ring[1] = 1  # io1 began, io0 not yet
    assert h.ledger.began({"w0": (h.t("long"), bytes(ring))}) == sorted([h.t("io1"), h.t("long")])
    assert h.ledger.began({"w0": (-1, bytes(ring))}) == [h.t("io1")]  # between two cpu tasks
    assert h.ledger.began({}) == sorted([h.t("io0"), h.t("io1"), h.t("long")])


# -- the fault bugs fixed so far, replayed ---------------------------------


def test_stale_pin_link_after_a_death_does_not_count_a_failed_task_twice():
    """b211764: a worker dies while b, pinned behind a, runs there, a's
    result still batched in it; b fails (no retries left), a reruns and
    fails.  The link "b runs behind a in w0" outlived w0, so a's failure
    withdrew b again, skipped it and counted it finished twice."""
    h = Harness({"a": [], "b": ["a"]}, workers=2)
    assert tasks(h.dispatch()["w0"]) == [h.t("a"), h.t("b")]
    out = h.die("w0", running="b", last="a")
    assert any(isinstance(i, StartWorker) for i in out)
    assert isinstance(h.error_of("b"), WorkerCrashedError)
    assert h.status("a") == READY and h.ledger.attempts[h.t("a")] == 1  # its result was lost
    assert not h.ledger.pinned and not h.ledger.pinned_behind
    assert tasks(h.dispatch()["w1"]) == [h.t("a")]
    h.fail("w1", "a")
    assert h.status("b") == FAILED and len(h.records[h.t("b")]) == 1
    assert isinstance(h.error_of("b"), WorkerCrashedError)  # not the ancestor string
    assert h.state.all_finished


def test_a_retried_task_is_not_pinned_behind_its_parent_again():
    """ba22539: a task that kills its worker was pinned again, on its retry,
    behind the tasks before it in its chain; their results, batched in the
    worker, were lost with it again until they failed as lost."""
    h = Harness({"a": [], "b": ["a"], "c": ["b"]}, workers=2, retries={"c": 1})
    assert tasks(h.dispatch()["w0"]) == [h.t("a"), h.t("b"), h.t("c")]
    h.die("w0", running="c", last="b")  # a and b finished, their results lost
    assert h.t("c") not in h.records  # c has a retry left
    assert [h.status(n) for n in "abc"] == [READY, WAITING, WAITING]
    # a reruns alone: b was sent out before in this run, so it is not pinned
    assert tasks(h.dispatch()["w1"]) == [h.t("a")]
    h.ok("w1", "a")
    assert tasks(h.dispatch()["w1"]) == [h.t("b")]
    h.ok("w1", "b")
    assert tasks(h.dispatch()["w1"]) == [h.t("c")]
    h.die("w1", running="c", last="b")  # c kills its worker again
    assert isinstance(h.error_of("c"), WorkerCrashedError)
    assert h.status("a") == DONE and h.status("b") == DONE  # not lost a second time
    assert h.state.all_finished


def test_a_requeued_task_waits_for_a_parent_lost_in_the_same_crash():
    """530b631: b, pinned behind a, crashed its worker after a finished
    there (a's result lost); b's retry ran before a's rerun, without a's
    value as its argument."""
    h = Harness({"a": [], "b": ["a"]}, workers=2, retries=1)
    h.dispatch()
    h.die("w0", running="b", last="a")
    assert h.status("a") == READY and h.status("b") == WAITING
    assert tasks(h.dispatch()["w1"]) == [h.t("a")]  # b is not pinned: it was sent before
    h.ok("w1", "a", value=7)
    (sub,) = h.dispatch()["w1"]
    assert sub[SUB_TASK] == h.t("b") and sub[SUB_ARGS] == [codec.encode(7)]


def test_a_plain_io_function_that_never_began_on_a_dead_worker_is_requeued():
    """40ea15a: an io task waiting for an io thread when its worker died
    was failed as crashed; the slot's flag per io task says it never began."""
    h = Harness({"x": [], "y": [], "z": []}, io=["x", "y", "z"], workers=1)
    assert tasks(h.dispatch()["w0"]) == [h.t("x"), h.t("y"), h.t("z")]
    h.ok("w0", "x")  # io number 0 finished; 1 (y) began, 2 (z) waits for a thread
    h.die("w0", began=[0, 1])
    assert isinstance(h.error_of("y"), WorkerCrashedError)
    assert h.status("z") == READY and h.ledger.attempts[h.t("z")] == 0 and h.t("z") not in h.records


def test_a_task_sent_first_counts_as_run_only_when_the_slot_proves_it():
    """ec1e0f0: a task sent to run ahead of the one waiting at a worker may
    not have run before it (that one may have started before it arrived):
    it counts as finished, its result lost, only when the slot proves it."""
    deps = {"j": [], "i": ["j"], "k": ["i"], "m": ["k"], "x": [], "y": [], "z": []}
    for running, ran in (("y", {"x"}), ("k", {"x", "i"})):
        h = Harness(deps, io=["j"], workers=1)
        assert tasks(h.dispatch()["w0"]) == [h.t("j"), h.t("x"), h.t("y")]
        h.ok("w0", "j")  # i becomes ready, more critical than y waiting at w0
        subs = h.dispatch()["w0"]
        assert tasks(subs) == [h.t("i"), h.t("k"), h.t("m")] and subs[0][SUB_FIRST]
        assert list(h.ledger.workers["w0"].cpu_tasks) == [h.t(n) for n in ("x", "i", "k", "m", "y")]
        h.die("w0", running=running, last="x" if running == "y" else "i")
        assert isinstance(h.error_of(running), WorkerCrashedError)
        attempts = {n: h.ledger.attempts[h.t(n)] for n in ("x", "i")}
        assert attempts == {n: 1 if n in ran else 0 for n in ("x", "i")}, (running, attempts)
        assert h.status("x") == READY and h.status("i") == READY
        if running == "y":
            assert h.status("k") == WAITING and h.status("m") == WAITING
        else:
            assert h.status("m") == SKIPPED


def test_pinned_tasks_whose_send_failed_wait_for_their_parent_and_spend_no_attempt():
    """22435f6 (broken-pipe requeue of pinned tasks and attempts): a send
    that fails puts back its tasks, the pinned ones waiting for their
    parent, none of them charged an attempt."""
    h = Harness({"a": [], "b": ["a"]}, workers=2)
    subs = h.dispatch()["w0"]
    h.do(SendFailed("w0", subs))
    h.die("w0")
    assert h.status("a") == READY and h.status("b") == WAITING
    assert h.ledger.attempts == [0, 0] and not h.ledger.pinned


def test_the_crashing_task_is_blamed_before_the_io_tasks_and_a_timed_out_one_alone():
    """22435f6 (crash blame order) and the time limits: the cpu task the
    slot names is failed first; killed for its time limit, it alone fails
    (with TaskTimeoutError) and the io tasks that began rerun."""
    h = Harness({"c": [], "io": []}, io=["io"], workers=1, timeout={"c": 5.0})
    h.dispatch()
    assert ArmTimer(5.0, CPU_DEADLINE, h.t("c")) in h.timers
    # running since 7 s: look again when its 5 s are up
    out = h.do(TimerDue(CPU_DEADLINE, h.t("c"), 10.0, {"w0": (h.t("c"), 7 * 10**9)}))
    assert out == [ArmTimer(2.0, CPU_DEADLINE, h.t("c"))]
    out = h.do(TimerDue(CPU_DEADLINE, h.t("c"), 10.0, {"w0": (h.t("c"), 1 * 10**9)}))
    assert out == [Kill("w0")]
    h.die("w0", running="c", began=[0])
    assert isinstance(h.error_of("c"), TaskTimeoutError)
    assert h.status("io") == READY and h.t("io") not in h.records


def test_a_lost_result_is_rerun_at_most_its_retries_plus_one_times():
    """22435f6 (lost-result rerun bound): a task that kills its worker
    after returning is not rerun forever: its result lost more than once,
    it fails."""
    h = Harness({"a": [], "b": ["a"]}, workers=1)
    for _ in range(2):
        w = next(iter(h.ledger.workers))
        h.dispatch()
        h.die(w, running="b", last="a")
        new = f"n{h.started_workers}"
        h.do(WorkerJoined(new, 1, False, 0))
        h.do(Hello(new, 1))
    assert isinstance(h.error_of("a"), WorkerCrashedError)


def test_a_failed_parent_withdraws_the_tasks_pinned_behind_it():
    h = Harness({"a": [], "b": ["a"], "c": ["b"]}, workers=1)
    h.dispatch()
    h.fail("w0", "a")
    assert [h.status(n) for n in "abc"] == [FAILED, SKIPPED, SKIPPED]
    assert h.ledger.attempts == [1, 0, 0] and not h.ledger.workers["w0"].cpu_tasks


def test_a_retry_after_a_delay_waits_for_its_timer():
    h = Harness({"a": []}, workers=1, retries=1, retry_delay=2.0)
    h.dispatch()
    out = h.fail("w0", "a")
    assert out == [ArmTimer(2.0, 1, h.t("a"))] and h.status("a") == WAITING
    assert h.dispatch() == {}
    h.do(TimerDue(1, h.t("a"), 2.0, {}))
    assert tasks(h.dispatch()["w0"]) == [h.t("a")]
    h.ok("w0", "a")
    assert h.state.all_finished and h.ledger.attempts == [2]


def test_stop_on_failure_stops_at_the_first_recorded_failure():
    h = Harness({"a": [], "b": []}, io=["a", "b"], workers=1, stop_on_failure=True)
    h.dispatch()
    out = h.do(
        ResultsArrived(
            "w0",
            [
                [h.t("a"), False, [None, "RuntimeError", "x", "", Stage.RUN], 0.0, 0.1],
                [h.t("b"), True, codec.encode(1), 0.0, 0.1],
            ],
        )
    )
    assert [type(i) for i in out] == [Failed]
    assert h.status("b") == RUNNING  # the run stops here: b is in progress


def test_a_given_result_that_cannot_be_encoded_fails_its_reader_without_retry():
    class Unencodable(FakeValues):
        def given(self, i, p):
            raise ValueError("no")

    h = Harness({"g": [], "a": ["g"]}, done=["g"], workers=1, retries=2)
    h.ledger.values = h.ledger.dispatcher.values = Unencodable(h.state, {})
    assert h.dispatch() == {}
    assert isinstance(h.error_of("a"), ValueError) and h.state.all_finished


# -- random event sequences -------------------------------------------------


class FakeWorker:
    """What a worker does with its submissions, as far as the ledger can
    tell: cpu tasks one at a time in order (``first`` ahead of those
    waiting, pinned ones right after their parent succeeded, dropped when
    it failed), io tasks begun and finished in any order, results batched
    until flushed, and a slot (running, last finished, io flags)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.cpu: deque = deque()
        self.chain: list = []  # (sub, parent value) to run next
        self.followers: dict[int, list] = {}
        self.io_waiting: list = []
        self.io_running: list = []
        self.io_received = 0
        self.flags: set[int] = set()
        self.current = None
        self.started = 0.0
        self.marker = -1
        self.last_finished = -1
        self.batch: list = []

    def receive(self, subs: list) -> None:
        for sub in subs:
            if sub[SUB_AFTER] >= 0:
                self.followers.setdefault(sub[SUB_AFTER], []).append(sub)
        for sub in subs:
            if sub[SUB_AFTER] >= 0:
                continue
            if sub[SUB_IO]:
                n = self.io_received
                self.io_received += 1
                self.flags.discard(n)
                self.io_waiting.append((sub, n))
            elif sub[SUB_FIRST]:
                self.cpu.appendleft(sub)
            else:
                self.cpu.append(sub)

    def busy(self) -> bool:
        return bool(self.current or self.chain or self.cpu or self.io_waiting or self.io_running)

    @staticmethod
    def compute(sub, parent_value=None) -> list:
        args = [codec.decode(b) for b in sub[SUB_ARGS]]
        for k in sub[SUB_SLOTS]:
            args.insert(k, parent_value)
        return [sub[SUB_TASK], args]

    def outcome(self, sub, ok: bool, parent_value=None):
        if ok:
            value = self.compute(sub, parent_value)
            return [sub[SUB_TASK], True, codec.encode(value), 0.0, 0.001], value
        return [sub[SUB_TASK], False, [None, "RuntimeError", "boom", "", Stage.RUN], 0.0, 0.001], None

    def cpu_step(self, ok: bool, now: float) -> None:
        if self.current is None:
            if self.chain:
                self.current = self.chain.pop()
            elif self.cpu:
                self.current = (self.cpu.popleft(), None)
            else:
                return
            self.marker = self.current[0][SUB_TASK]
            self.started = now
            return
        sub, parent_value = self.current
        outcome, value = self.outcome(sub, ok, parent_value)
        self.current = None
        self.marker = -1
        self.last_finished = sub[SUB_TASK]
        pinned = self.followers.pop(sub[SUB_TASK], None)
        if pinned:
            if ok:
                self.chain.extend((f, value) for f in reversed(pinned))
            else:
                stack = list(pinned)
                while stack:
                    stack.extend(self.followers.pop(stack.pop()[SUB_TASK], ()))
        self.batch.append(outcome)

    def io_step(self, ok: bool, pick: int) -> None:
        if self.io_waiting and (pick % 2 or not self.io_running):
            sub, n = self.io_waiting.pop(pick % len(self.io_waiting))
            self.flags.add(n)
            self.io_running.append(sub)
        elif self.io_running:
            sub = self.io_running.pop(pick % len(self.io_running))
            self.batch.append(self.outcome(sub, ok)[0])

    def slot(self) -> tuple[int, int, bytes]:
        ring = bytearray(IO_RING)
        for n in self.flags:
            ring[n % IO_RING] = 1
        return self.marker, self.last_finished, bytes(ring)


@st.composite
def graphs(draw):
    n = draw(st.integers(2, 12))
    deps: dict[str, list[str]] = {}
    io: list[str] = []
    if draw(st.booleans()):
        # an io task whose result makes a critical chain ready while the
        # workers hold a running and a waiting cpu task: it jumps the queue
        deps = {"j": [], "i1": ["j"], "i2": ["i1"], "i3": ["i2"], "x0": [], "x1": [], "x2": [], "x3": []}
        io = ["j"]
    for k in range(n):
        parents = draw(st.lists(st.integers(0, k - 1), max_size=3)) if k else []
        deps[f"t{k}"] = [f"t{p}" for p in parents]
    io += draw(st.lists(st.sampled_from([f"t{k}" for k in range(n)]), max_size=n // 2, unique=True))
    retries = {name: draw(st.integers(0, 2)) for name in deps}
    timeout = {name: draw(st.sampled_from([None, None, 3.0])) for name in deps if name not in io}
    delay = draw(st.sampled_from([0.0, 0.0, 1.5]))
    return deps, io, retries, timeout, delay


class World:
    """The ledger and a model of its workers, each event followed by
    ``validate()``."""

    def __init__(self, deps, io, retries, timeout, delay, nworkers) -> None:
        self.h = Harness(deps, io=io, workers=0, retries=retries, timeout=timeout, retry_delay=delay)
        self.workers: dict[str, FakeWorker] = {}
        self.now = 0.0
        self.armed: list[tuple[float, int, int]] = []
        self.count = 0
        for _ in range(nworkers):
            self.spawn(ready=True)

    def spawn(self, ready: bool) -> None:
        key = f"w{self.count}"
        self.count += 1
        self.workers[key] = FakeWorker(key)
        self.apply(self.h.do(WorkerJoined(key, self.count, ready, 0)))

    def apply(self, out: list) -> None:
        for ins in out:
            if isinstance(ins, ArmTimer):
                self.armed.append((self.now + ins.after, ins.kind, ins.task))
            elif isinstance(ins, StartWorker):
                self.spawn(ready=False)
            elif isinstance(ins, Kill):
                event("killed for a time limit")
                self.die(ins.worker)

    def dispatch(self, fail_send: bool = False) -> None:
        for ins in self.h.do(Dispatch()):
            self.apply([ins])
            if isinstance(ins, Send) and ins.worker in self.workers:
                if fail_send:
                    self.apply(self.h.do(SendFailed(ins.worker, ins.subs)))
                    self.die(ins.worker)
                    fail_send = False
                else:
                    if any(sub[SUB_AFTER] >= 0 for sub in ins.subs):
                        event("pinned")
                    if any(sub[SUB_FIRST] for sub in ins.subs):
                        event("sent first")
                    self.workers[ins.worker].receive(ins.subs)

    def flush(self, key: str) -> None:
        w = self.workers[key]
        batch, w.batch = w.batch, []
        if batch:
            self.apply(self.h.do(ResultsArrived(key, batch)))

    def die(self, key: str, flush_first: bool = False) -> None:
        if key not in self.workers:
            return
        if flush_first:
            self.flush(key)
        w = self.workers.pop(key)
        event(f"death with {'a' if w.marker >= 0 else 'no'} running task")
        self.apply(self.h.do(WorkerDied(key, -9, *w.slot())))

    def timer(self, pick: int) -> None:
        if not self.armed:
            return
        self.armed.sort()
        when, kind, task = self.armed.pop(pick % len(self.armed))
        self.now = max(self.now, when)
        slots = {k: (w.marker, int(w.started * 1e9)) for k, w in self.workers.items()}
        self.apply(self.h.do(TimerDue(kind, task, self.now, slots)))

    def hello(self) -> None:
        for key, held in list(self.h.ledger.workers.items()):
            if not held.ready:
                self.apply(self.h.do(Hello(key, 1)))


@pytest.mark.timeout(240)  # 500 examples: ~30 s on a quiet 2-core machine, 3x that on a busy one
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.integers(1, 3), st.data())
def test_random_event_sequences_keep_the_invariants_and_finish_every_task_once(graph, nworkers, data):
    deps, io, retries, timeout, delay = graph
    world = World(deps, io, retries, timeout, delay, nworkers)
    h = world.h
    deaths = 0
    for _ in range(data.draw(st.integers(0, 100), label="steps")):
        action = data.draw(
            st.sampled_from(
                [
                    "dispatch",
                    "dispatch",
                    "cpu",
                    "cpu",
                    "cpu",
                    "io",
                    "io",
                    "flush",
                    "flush",
                    "die",
                    "timer",
                    "hello",
                    "sendfail",
                ]
            ),
            label="action",
        )
        keys = list(world.workers)
        key = data.draw(st.sampled_from(keys), label="worker") if keys else None
        ok = data.draw(st.booleans(), label="ok")
        world.now += 0.5
        if action == "dispatch" or (action == "sendfail" and deaths >= 4):
            world.dispatch()
        elif action == "sendfail":
            deaths += 1
            world.dispatch(fail_send=True)
        elif action == "cpu" and key:
            world.workers[key].cpu_step(ok, world.now)
        elif action == "io" and key:
            world.workers[key].io_step(ok, data.draw(st.integers(0, 5), label="pick"))
        elif action == "flush" and key:
            world.flush(key)
        elif action == "die" and key and deaths < 4 and h.ledger.workers[key].ready:
            deaths += 1
            world.die(key, flush_first=data.draw(st.booleans(), label="flush first"))
        elif action == "timer":
            world.timer(data.draw(st.integers(0, 5), label="pick"))
        elif action == "hello":
            world.hello()
    # then let everything run to its end, every task succeeding
    for _ in range(2000):
        if h.state.all_finished:
            break
        world.hello()
        world.dispatch()
        moved = False
        for key, w in list(world.workers.items()):
            while w.busy():
                moved = True
                w.cpu_step(True, world.now)
                w.io_step(True, 1)
            world.flush(key)
        if not moved:
            world.timer(0)
    assert h.state.all_finished
    status = h.state.state
    for i, name in enumerate(h.names):
        recs = h.records.get(i, [])
        assert len(recs) == 1, (name, recs)  # exactly one final state, recorded once
        rec = recs[0]
        assert status[i] == {Done: DONE, Failed: FAILED, str: SKIPPED}[type(rec)]
        if isinstance(rec, Failed):
            event(f"failed: {type(rec.error).__name__}")
        if h.ledger.attempts[i] > 1:
            event("retried")
        if isinstance(rec, Done):
            # it ran with its parents' values, in order
            assert rec.value == [i, [h.records[p][0].value for p in h.state.parents[i]]], name
    assert all(s in FINISHED for s in status)
    assert not any(held.io_tasks or held.cpu_tasks for held in h.ledger.workers.values())
    assert not h.ledger.pinned and not h.ledger.pinned_behind
