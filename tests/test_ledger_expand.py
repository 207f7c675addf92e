"""The ledger over a graph that expands (create_graph(expand=...)), with no
process: event sequences in, instructions out, ``validate()`` after every
event.  Elements appear at the event that brings their mapped result; they
are dispatched, pinned, retried, crashed and skipped like any task."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmap.errors import WorkerCrashedError
from taskmap.expand import Element
from taskmap.runtime import codec
from taskmap.runtime.messages import SUB_AFTER, SUB_ARGS, SUB_SLOTS, SUB_TASK, Stage
from taskmap.scheduling.expansion import ExpandingState
from taskmap.scheduling.ledger import (
    Dispatch,
    Expanded,
    Failed,
    Ledger,
    ResultsArrived,
    Send,
    Succeeded,
    WorkerDied,
    WorkerJoined,
)
from taskmap.scheduling.limits import TaskLimits
from taskmap.scheduling.state import DONE, FAILED, SKIPPED, TaskState

ETL = {"files": [], "config": [], "parse": ["files", "config"], "clean": ["parse"], "total": ["clean"]}
OVER = {"parse": "files", "clean": "parse"}


class Values:
    """Results are msgpack-native; an error is a RuntimeError with the
    failure's message; items as the codec values would give them."""

    decode = staticmethod(codec.decode)

    def __init__(self, state) -> None:
        self.names = state.names

    def given(self, i: int, p: int) -> bytes:
        raise AssertionError(f"{self.names[i]} needs a result not produced in the run: {self.names[p]}")

    def items(self, t: int, blob: bytes) -> list[Any]:
        from taskmap.expand import items_of

        return items_of(self.names[t], codec.decode(blob))

    def not_kept(self, i: int) -> Any:
        return None

    def unreadable(self, i, outcome, error):
        return ValueError(str(error))

    def error(self, i: int, failure: list) -> BaseException:
        return RuntimeError(failure[2])


class Harness:
    def __init__(self, deps=ETL, expand=OVER, workers=2, retries=0, io=()) -> None:
        self.state = ExpandingState(deps, io, (), None, None, expand)
        self.state.start()
        self.ledger = Ledger(
            self.state,
            TaskLimits(self.state.names, retries=retries),
            [0] * len(self.state.names),
            Values(self.state),
            {},
            validating=True,  # check_invariants after every event
        )
        self.values: dict[Any, Any] = {}  # name -> value recorded
        self.failed: dict[Any, BaseException] = {}
        self.skipped: dict[Any, Any] = {}  # name -> the failed task it is skipped for
        self.collected: list = []
        for k in range(workers):
            self.do(WorkerJoined(f"w{k}", 100 + k, True, 0))

    @property
    def names(self):
        return self.state.names

    def do(self, event) -> list:
        out = self.ledger.handle(event)
        for ins in out:
            if isinstance(ins, Succeeded):
                for row in ins.rows:
                    self.values[self.names[row[0]]] = row[1]
            elif isinstance(ins, Failed):
                self.failed[self.names[ins.task]] = ins.error
                for s in ins.skipped:
                    self.skipped[self.names[s]] = self.names[ins.task]
            elif isinstance(ins, Expanded):
                for s, root in ins.news.skipped:
                    self.skipped[self.names[s]] = self.names[root]
                self.collected.extend(self.names[t] for t in ins.news.collected)
        return out

    def dispatch(self) -> dict[str, list]:
        return {ins.worker: ins.subs for ins in self.do(Dispatch()) if isinstance(ins, Send)}

    def ok(self, name, value) -> list:
        """``name`` succeeded with ``value``, reported by the worker holding it."""
        i = self.state.index[name]
        return self.do(ResultsArrived(self.ledger.holder(i), [[i, True, codec.encode(value), 0.0, 0.001]]))

    def fail(self, name) -> list:
        i = self.state.index[name]
        failure = [None, "RuntimeError", "boom", "", Stage.RUN]
        return self.do(ResultsArrived(self.ledger.holder(i), [[i, False, failure, 0.0, 0.001]]))

    def held(self) -> dict:
        """Where each sent task is: worker -> names."""
        return {w: [self.names[i] for i in (*h.io_tasks, *h.cpu_tasks)] for w, h in self.ledger.workers.items()}


def by_name(h: Harness, subs) -> list:
    return [str(h.names[s[SUB_TASK]]) for s in subs]


def test_elements_appear_with_the_mapped_result_and_get_their_item_in_its_place():
    h = Harness()
    sent = h.dispatch()
    assert sorted(n for subs in sent.values() for n in by_name(h, subs)) == ["config", "files"]
    h.ok("config", "!")
    out = h.ok("files", ["a", "b"])
    (expanded,) = [ins for ins in out if isinstance(ins, Expanded)]
    assert [(h.names[t], n) for t, _, n in expanded.news.expanded] == [("parse", 2), ("clean", 2)]
    sent = h.dispatch()
    subs = [s for subs in sent.values() for s in subs]
    parse = {str(h.names[s[SUB_TASK]]): s for s in subs if str(h.names[s[SUB_TASK]]).startswith("parse")}
    # element i's arguments: item i where 'files' was, then config's result
    assert [codec.decode(a) for a in parse["parse[0]"][SUB_ARGS]] == ["a", "!"]
    assert [codec.decode(a) for a in parse["parse[1]"][SUB_ARGS]] == ["b", "!"]
    # clean[i] waits for nothing but parse[i]: pinned behind it on its worker
    pinned = {str(h.names[s[SUB_TASK]]): s[SUB_AFTER] for s in subs if s[SUB_AFTER] >= 0}
    assert pinned == {"clean[0]": h.state.index[Element("parse", 0)], "clean[1]": h.state.index[Element("parse", 1)]}


def run_all(h: Harness, outcome) -> None:
    """Dispatch and answer until the run ends; ``outcome(name)`` -> value, or
    an exception to fail the task with."""
    for _ in range(100):
        if h.state.all_finished:
            return
        for subs in h.dispatch().values():
            for s in subs:
                name = h.names[s[SUB_TASK]]
                args = [codec.decode(a) for a in s[SUB_ARGS]]
                if s[SUB_AFTER] >= 0:  # pinned: its parent's value goes in the slots
                    if h.names[s[SUB_AFTER]] not in h.values:
                        continue  # (its parent failed: withdrawn, it never runs)
                    for slot in s[SUB_SLOTS]:
                        args.insert(slot, h.values[h.names[s[SUB_AFTER]]])
                value = outcome(name, args)
                if isinstance(value, Exception):
                    h.fail(name)
                else:
                    h.ok(name, value)
    raise AssertionError("the run did not end")


def etl_outcome(name, args):
    task = name.task if isinstance(name, Element) else name
    if task == "files":
        return ["a", "b", "c", "d"]
    if task == "config":
        return "!"
    if task == "parse":
        return RuntimeError("bad") if args[0] == "c" else args[0].upper() + args[1]
    if task == "clean":
        return args[0].lower()
    return "|".join(args[0])


def test_a_failed_element_skips_its_chain_and_the_list_taker_and_fails_its_tasks():
    h = Harness()
    run_all(h, etl_outcome)
    assert h.values[Element("clean", 3)] == "d!"
    assert set(h.failed) == {Element("parse", 2)}
    assert h.skipped == {Element("clean", 2): Element("parse", 2), "total": Element("parse", 2)}
    assert h.state.state[h.state.index["parse"]] == FAILED
    assert h.state.state[h.state.index["clean"]] == FAILED
    assert sorted(h.collected) == ["clean", "parse"]


def test_a_string_fails_the_expanding_task_and_skips_what_is_below():
    h = Harness()
    run_all(h, lambda name, args: "abc" if name == "files" else etl_outcome(name, args))
    assert isinstance(h.failed["parse"], TypeError)
    assert h.skipped == {"clean": "parse", "total": "parse"}


def test_a_crash_in_the_middle_of_the_elements_fails_only_the_running_one():
    h = Harness(workers=1)
    for _ in range(2):  # files and config, one at a time on the one worker
        for s in h.dispatch()["w0"]:
            name = h.names[s[SUB_TASK]]
            h.ok(name, ["a", "b", "c"] if name == "files" else "!")
    sent = h.dispatch()["w0"]
    assert by_name(h, sent)[:2] == ["parse[0]", "clean[0]"]
    h.ok(Element("parse", 0), "A")
    h.ok(Element("clean", 0), "a")
    assert by_name(h, h.dispatch()["w0"]) == ["parse[1]", "clean[1]"]
    running = h.state.index[Element("parse", 1)]
    h.do(WorkerDied("w0", -9, running, h.state.index[Element("clean", 0)], None))
    assert isinstance(h.failed[Element("parse", 1)], WorkerCrashedError)
    assert h.skipped == {Element("clean", 1): Element("parse", 1), "total": Element("parse", 1)}
    # the replacement takes the element that never began
    h.do(WorkerJoined("w1", 101, True, 0))
    run_all(h, lambda name, args: args[0].upper() if name.task == "parse" else args[0].lower())
    assert h.values[Element("clean", 2)] == "c"
    assert h.state.all_finished


def test_a_retried_element_runs_again_with_its_item():
    h = Harness(retries=1)
    tries: dict = {}

    def outcome(name, args):
        tries[name] = tries.get(name, 0) + 1
        if name == Element("parse", 1) and tries[name] == 1:
            return RuntimeError("once")
        return etl_outcome(name, args) if name != Element("parse", 2) else "C!"

    run_all(h, outcome)
    assert tries[Element("parse", 1)] == 2 and h.values[Element("parse", 1)] == "B!"
    assert h.ledger.attempts[h.state.index[Element("parse", 1)]] == 2
    assert h.values["total"] == "a!|b!|c!|d!" and not h.failed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 6),
    failing=st.sets(st.integers(0, 5), max_size=3),
    workers=st.integers(1, 3),
)
def test_the_ledger_agrees_with_a_model_of_what_runs(n, failing, workers):
    """Whatever fails, every element either ran or is skipped for exactly
    the element that failed above it; the list takers run only when nothing
    failed; the invariants hold after every event (validating)."""
    h = Harness(workers=workers)

    def outcome(name, args):
        task = name.task if isinstance(name, Element) else name
        if task == "files":
            return list(range(n))
        if task == "config":
            return 0
        if task == "parse":
            return RuntimeError("x") if args[0] in failing else args[0] * 10
        if task == "clean":
            return args[0] + 1
        return sum(args[0])

    run_all(h, outcome)
    bad = sorted(k for k in failing if k < n)
    for k in range(n):
        if k in bad:
            assert Element("parse", k) in h.failed
            assert h.skipped[Element("clean", k)] == Element("parse", k)
        else:
            assert h.values[Element("clean", k)] == k * 10 + 1
    if bad:
        # skipped for the first of them to fail (whichever that was)
        assert h.skipped["total"] in {Element("parse", k) for k in bad}
    else:
        assert h.values["total"] == sum(k * 10 + 1 for k in range(n))
    status = h.state.state
    for name in ("parse", "clean"):
        assert status[h.state.index[name]] == (FAILED if bad else DONE)
    assert all(s in (DONE, FAILED, SKIPPED) for s in status)
    assert TaskState(status[h.state.index["total"]]) == (TaskState.SKIPPED if bad else TaskState.DONE)
