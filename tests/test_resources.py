"""Resources (issue 18, taskmap/resources.py): concurrency limits, rate
limits and priorities.

The gate and the scheduling state are driven with no process (a fake clock);
the runners are checked end to end from the tasks' own start and end times:
never more tasks holding a resource than its limit, and the limit reached;
rated starts spaced as promised; priorities ordering starts under a limit of
1; faults, timeouts and retries under a limit neither leaking a unit nor
exceeding it."""

from __future__ import annotations

import asyncio
import functools
import os
import time

import pytest
from _tasks import fail_once, max_overlap
from hypothesis import given, settings
from hypothesis import strategies as st

import taskmap
from taskmap.scheduling.resources import ResourceGate, build_gate, check_limits_and_rates, normalise_uses
from taskmap.scheduling.state import READY, RUNNING, SchedulingState

# -- validation ---------------------------------------------------------------


def test_uses_and_priority_name_tasks():
    deps = {"a": [], "b": []}
    funcs = {"a": lambda: 1, "b": lambda: 2}
    with pytest.raises(ValueError, match="'zz'"):
        taskmap.create_graph(funcs, deps, uses={"zz": "api"})
    with pytest.raises(ValueError, match="'zz'"):
        taskmap.create_graph(funcs, deps, priority={"zz": 3})
    with pytest.raises(TypeError, match="int"):
        taskmap.create_graph(funcs, deps, priority={"a": 1.5})
    graph = taskmap.create_graph(funcs, deps, uses={"a": "api", "b": ["db", "api", "api"]}, priority={"b": 2})
    assert graph.uses == {"a": ("api",), "b": ("db", "api", "api")}
    assert graph.priority == {"b": 2}


@pytest.mark.parametrize("runner", ["run", "run_async"])
def test_priority_on_a_graph_with_io_tasks_runs(runner):
    async def fetch():
        return 1

    graph = taskmap.create_graph(
        {"fetch": fetch, "use": lambda x: x + 1},
        {"fetch": [], "use": ["fetch"]},
        io_bound=["fetch"],
        priority={"use": 3},
    )
    getattr(taskmap, runner)(graph)
    assert graph.results == {"fetch": 1, "use": 2}


def test_limits_and_rates_are_checked_against_the_uses():
    uses = normalise_uses({"a": "api", "b": ["api", "api"]}, {"a": [], "b": []})
    with pytest.raises(ValueError, match="'apj'"):
        check_limits_and_rates(uses, {"apj": 2}, None)  # a typo must not lift a limit
    with pytest.raises(ValueError, match="'nope'"):
        check_limits_and_rates(uses, None, {"nope": 1})
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="limits"):
            check_limits_and_rates(uses, {"api": bad}, None)
    for bad in (0, -2, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="rates"):
            check_limits_and_rates(uses, None, {"api": bad})
    with pytest.raises(ValueError, match="never start"):
        check_limits_and_rates(uses, {"api": 1}, None)  # b needs two units
    assert check_limits_and_rates(uses, {"api": 2}, {"api": 5}) == ({"api": 2}, {"api": 5.0})


def test_a_runner_refuses_a_limit_on_an_unused_name_before_running():
    ran = []
    graph = taskmap.create_graph({"a": lambda: ran.append(1)}, {"a": []}, uses={"a": "api"})
    with pytest.raises(ValueError, match="'db'"):
        taskmap.run(graph, limits={"db": 1})
    assert ran == []


# -- the gate and the state, no process ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state_with(n, uses, limits=None, rates=None, priority=None, io=()):
    deps = {f"t{k}": [] for k in range(n)}
    state = SchedulingState(deps, io, (), None, priority)
    state.clock = clock = Clock()
    gate = build_gate(state.names, uses, limits or {}, rates or {}, [])
    state.attach_gate(gate)
    state.start()
    return state, gate, clock


def test_a_limit_of_two_holds_and_frees_in_priority_order():
    uses = {f"t{k}": ("api",) for k in range(5)}
    state, gate, _ = state_with(5, uses, {"api": 2}, priority={"t3": 5, "t4": 9})
    started = [state.pop_cpu(), state.pop_cpu()]
    assert [state.names[i] for i in started] == ["t4", "t3"]  # priority first
    assert state.pop_cpu() is None  # the rest wait in the gate, in no queue
    assert gate.waiting_count == 3
    for i in started:
        state.started(i)
    gate.validate()
    state.finished(started[0])  # one unit back: the first in line tries again
    nxt = state.pop_cpu()
    assert nxt is not None and state.pop_cpu() is None
    state.started(nxt)
    assert gate.in_use[0] == 2 and gate.peak[0] == 2
    gate.validate()


def test_a_rate_spaces_starts_and_a_timer_is_due_at_the_slot():
    uses = {f"t{k}": ("api",) for k in range(4)}
    state, gate, clock = state_with(4, uses, rates={"api": 10}, io=[f"t{k}" for k in range(4)])
    start = clock.now
    first = state.pop_io()
    assert first is not None and state.pop_io() is None
    assert gate.slot_taken(first) == pytest.approx(start)
    assert state.next_rate_slot() == pytest.approx(clock.now + 0.1)
    clock.now += 0.05
    assert state.rate_due() == 0  # not yet
    clock.now += 0.07  # the timer woke 20 ms late
    assert state.rate_due() == 1
    second = state.pop_io()
    assert second is not None and state.pop_io() is None
    # its slot is the grid's, not the late wake-up (run_dask starts it there)
    assert gate.slot_taken(second) == pytest.approx(start + 0.1)


def test_a_task_that_ends_however_gives_its_units_back_once():
    uses = {"t0": ("db",), "t1": ("db",), "t2": ("db",)}
    state, gate, _ = state_with(3, uses, {"db": 1})
    a = state.pop_cpu()
    state.started(a)
    state.requeue(a)  # its worker died: back to the queue, unit released
    assert gate.in_use[0] == 0
    b = state.pop_cpu()
    state.started(b)
    state.failed(b)
    assert gate.in_use[0] == 0
    c = state.pop_cpu()
    state.started(c)
    state.unstart(c)  # a retry after a delay waits without its unit
    assert gate.in_use[0] == 0
    gate.validate()


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 12),
    limit=st.integers(1, 3),
    rate=st.one_of(st.none(), st.sampled_from([5.0, 20.0, 100.0])),
    script=st.lists(
        st.tuples(st.sampled_from(["pop", "finish", "fail", "requeue", "tick"]), st.integers(0, 20)), max_size=80
    ),
    prio=st.dictionaries(st.integers(0, 11), st.integers(-3, 3)),
)
def test_random_event_sequences_keep_the_gate_true(n, limit, rate, script, prio):
    """Whatever the runner does, units in use equal the units of running
    tasks, never exceed the limit, and every task ends."""
    uses = {f"t{k}": ("api",) * (1 + (k % 2 and limit > 1)) for k in range(n)}
    priority = {f"t{k}": p for k, p in prio.items() if k < n}
    state, gate, clock = state_with(n, uses, {"api": limit}, {"api": rate} if rate else None, priority)
    starts: list[float] = []

    def pop():
        i = state.pop_cpu()
        if i is not None:
            state.started(i)
            starts.append(clock.now)
        return i

    for action, k in script + [("drain", 0)] * (4 * n + 10):
        running = [i for i in range(n) if state.state[i] == RUNNING]
        if action == "pop":
            pop()
        elif action in ("finish", "fail", "requeue") and running:
            i = running[k % len(running)]
            getattr(state, {"finish": "finished", "fail": "failed", "requeue": "requeue"}[action])(i)
        elif action == "tick" or action == "drain":
            slot = state.next_rate_slot()
            clock.now = max(clock.now, slot) if slot is not None else clock.now + 0.01
            state.rate_due()
            if action == "drain":
                if running:
                    state.finished(running[0])
                pop()
        gate.validate()
        running = [i for i in range(n) if state.state[i] == RUNNING]
        assert gate.in_use[0] == sum(gate.uses[i].count(0) for i in running)
        assert gate.in_use[0] <= limit
        for i in range(n):  # a ready task is queued or waits in the gate
            if state.state[i] == READY:
                assert i in gate.waits_on or any(e[1] == i for e in state.ready_cpu)
    assert state.all_finished
    if rate:
        # starts keep to a grid 1/rate apart: a start that came late lets
        # the next catch up with the grid, never more, so any window of t
        # seconds holds at most rate*t + 2 starts (rate*t + 1 when on time)
        for k in range(len(starts)):
            for m in range(k + 1, len(starts)):
                assert starts[m] - starts[k] >= (m - k - 1) / rate - 1e-9, (k, m, starts)


def test_the_gate_alone_refuses_nothing_it_does_not_gate():
    gate = ResourceGate(["api"], [(), (0,)], [1], [None], [0, 0])
    assert gate.gated == [False, True]
    assert gate.blocked(1, 0.0) is None


# -- end to end, every local runner ------------------------------------------------


def spans(results):
    return [(s, e) for s, e, *_ in results]


def hold(seconds):
    def task(*_):
        start = time.time()
        time.sleep(seconds)
        return start, time.time(), os.getpid()

    return task


def hold_async(seconds):
    async def task(*_):
        start = time.time()
        await asyncio.sleep(seconds)
        return start, time.time(), os.getpid()

    return task


RUNNERS = {
    "run": lambda g, **kw: taskmap.run(g, **kw),
    "run_async": lambda g, **kw: taskmap.run_async(g, **kw),
    "run_parallel": lambda g, **kw: taskmap.run_parallel(g, ncores=2, **kw),
    "run_parallel_async": lambda g, **kw: taskmap.run_parallel_async(g, ncores=2, **kw),
}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_a_limit_holds_and_is_reached_on_every_runner(runner):
    n, limit = 12, 3
    names = [f"t{k}" for k in range(n)]
    free = [f"free{k}" for k in range(4)]
    funcs = {t: hold_async(0.08) for t in names} | {t: hold_async(0.08) for t in free}
    graph = taskmap.create_graph(
        funcs, {t: [] for t in names + free}, io_bound=names + free, uses={t: "api" for t in names}
    )
    graph = RUNNERS[runner](graph, limits={"api": limit})
    used = max_overlap(spans(graph.results[t] for t in names))
    if runner == "run":
        assert used == 1  # one task at a time anyway
    else:
        assert used == limit  # never more, and reached
        # tasks using nothing are not held back
        assert max_overlap(spans(graph.results[t] for t in names + free)) > limit


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_rated_starts_are_spaced_on_every_runner(runner):
    # (10 a second, not 20: the bound below allows one timer's lateness, and
    # a slot of 50 ms was shorter than a stall of the run's thread in a full
    # suite once -- 3 starts in 49 ms, the late one and two catching up with
    # the grid; 0 of 160 runs alone)
    rate, n = 10.0, 12
    names = [f"t{k}" for k in range(n)]
    graph = taskmap.create_graph(
        {t: hold_async(0.0) for t in names}, {t: [] for t in names}, io_bound=names, uses={t: "api" for t in names}
    )
    graph = RUNNERS[runner](graph, rates={"api": rate})
    starts = sorted(s for s, _, _ in graph.results.values())
    # in any window of t seconds at most rate*t + 1 starts, give or take one
    # timer's lateness (a late start lets the next catch up to the grid)
    for k in range(n):
        for m in range(k + 1, n):
            window = starts[m] - starts[k]
            assert m - k + 1 <= rate * window + 2, (k, m, window)
    achieved = (n - 1) / (starts[-1] - starts[0])
    assert achieved == pytest.approx(rate, rel=0.1)  # the ceiling is reached


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_priorities_order_starts_under_a_limit_of_one(runner):
    names = [f"t{k}" for k in range(6)]
    graph = taskmap.create_graph(
        {t: hold(0.02) for t in names},
        {t: [] for t in names},
        uses={t: "db" for t in names},
        priority={"t4": 10, "t1": 5, "t5": -1},
    )
    graph = RUNNERS[runner](graph, limits={"db": 1})
    order = [t for t, _ in sorted(graph.results.items(), key=lambda kv: kv[1][0])]
    assert order[:2] == ["t4", "t1"] and order[-1] == "t5"
    assert max_overlap(spans(graph.results.values())) == 1


def crash_once(marker):
    def task(*_):
        start = time.time()
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        time.sleep(0.05)
        return start, time.time(), os.getpid()

    return task


def too_slow(*_):
    time.sleep(5)


@pytest.mark.parametrize("runner", ["run_parallel", "run_parallel_async"])
def test_crashes_timeouts_and_retries_under_a_limit_leak_no_unit(runner, tmp_path):
    names = [f"t{k}" for k in range(6)]
    funcs = {t: hold(0.05) for t in names}
    funcs["crash"] = crash_once(str(tmp_path / "crashed"))
    funcs["flaky"] = functools.partial(fail_once, str(tmp_path / "failed"))
    funcs["slow"] = too_slow
    every = [*names, "crash", "flaky", "slow"]
    graph = taskmap.create_graph(funcs, {t: [] for t in every}, uses={t: "db" for t in every})
    graph = RUNNERS[runner](graph, limits={"db": 2}, retries={None: 1, "slow": 0}, timeout={"slow": 0.3})
    assert isinstance(graph.results["slow"], taskmap.TaskTimeoutError)
    ok = [t for t in every if t != "slow"]
    for t in ok:
        assert not isinstance(graph.results[t], BaseException), (t, graph.results[t])
    assert graph.attempts["crash"] == 2 and graph.attempts["flaky"] == 2
    # every task after the faults still got a unit: none leaked, none extra
    assert max_overlap(spans(graph.results[t] for t in ok)) <= 2
    assert sorted(graph.done) == sorted(every)


def test_the_summary_shows_each_resources_peak_and_wait():
    names = [f"t{k}" for k in range(6)]
    graph = taskmap.create_graph({t: hold(0.03) for t in names}, {t: [] for t in names}, uses={t: "api" for t in names})
    graph = taskmap.run_parallel_async(graph, ncores=2, limits={"api": 1}, rates={"api": 100})
    summary = taskmap.summarize(graph)
    api = summary.resources["api"]
    assert api["peak"] == 1 and api["limit"] == 1 and api["rate"] == pytest.approx(100)
    # five tasks waited about 0.03 .. 0.15 s each behind a limit of one
    assert 0.2 < api["waited"] < 5
    text = str(summary)
    assert "resource" in text and "api" in text


PIPELINE = """
import time

def call(*_):
    start = time.time()
    time.sleep(0.05)
    return start, time.time()

funcs = {f"t{k}": call for k in range(6)}
dependencies = {t: [] for t in funcs}
io_bound = list(funcs)
uses = {t: "api" for t in funcs}
"""


def test_the_cli_takes_limits_and_rates(tmp_path):
    import subprocess
    import sys

    (tmp_path / "pipe.py").write_text(
        PIPELINE
        + """
import taskmap
graph = taskmap.create_graph(funcs, dependencies, io_bound=io_bound, uses=uses)
"""
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskmap",
            "run",
            "pipe.py:graph",
            "--runner",
            "async",
            "--limit",
            "api=2",
            "--rate",
            "api=50",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "api" in done.stdout and "peak" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "taskmap", "run", "pipe.py:graph", "--runner", "async", "--limit", "apj=2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "'apj'" in bad.stderr


def test_the_progress_bar_counts_tasks_waiting_for_a_resource():
    import io as _io

    from taskmap.observe.progress import ProgressBar

    seen = []

    class Peek(taskmap.Observer):
        def run_started(self, graph, info):
            self.info = info

        def task_finished(self, event):
            seen.append(self.info.waiting_for_resources())

    names = [f"t{k}" for k in range(4)]
    bar = ProgressBar(file=_io.StringIO())
    graph = taskmap.create_graph(
        {t: hold(0.01) for t in names}, {t: [] for t in names}, io_bound=names, uses={t: "db" for t in names}
    )
    taskmap.run_async(graph, limits={"db": 1}, observers=[Peek(), bar])
    assert seen[0] >= 1 and seen[-1] == 0  # the others waited behind the first
    assert "waiting=0" in bar.postfix()


def test_the_trace_shows_each_wait_for_a_resource(tmp_path):
    import json

    names = [f"t{k}" for k in range(4)]
    graph = taskmap.create_graph({t: hold(0.03) for t in names}, {t: [] for t in names}, uses={t: "db" for t in names})
    path = tmp_path / "trace.json"
    taskmap.run_parallel_async(graph, ncores=2, limits={"db": 1}, trace=str(path))
    events = json.loads(path.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    begins = [e for e in events if e.get("cat") == "resource wait" and e["ph"] == "b"]
    ends = {e["id"]: e for e in events if e.get("cat") == "resource wait" and e["ph"] == "e"}
    # three tasks waited behind the first (under a limit of one), each once
    assert len(begins) == 3 and {e["args"]["resource"] for e in begins} == {"db"}
    for b in begins:
        assert ends[b["id"]]["ts"] >= b["ts"]
    waits = graph.last_run.resource_waits
    assert sorted(t for t, *_ in waits) == sorted(e["args"]["task"] for e in begins)
