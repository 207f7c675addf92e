"""Load mode's pure parts: the arrival schedule, the instance state (slots
recycled), the report and the --fail-if thresholds.  No process."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmap.loadmode import thresholds
from taskmap.loadmode.report import LoadReport
from taskmap.loadmode.schedule import Schedule, make_schedule
from taskmap.scheduling.instances import InstanceState, shape_of
from taskmap.scheduling.state import DONE, READY, RUNNING, SKIPPED

# -- the schedule -----------------------------------------------------------------


def test_constant_rate_arrivals_are_exact_multiples():
    s = make_schedule(rate=250, duration=60)
    assert s.count == 15_000
    # computed from k alone: no drift after thousands of arrivals
    for k in (0, 1, 999, 14_999):
        assert s.time_of(k) == pytest.approx(k / 250, abs=1e-9)
    assert s.time_of(s.count - 1) < 60


def test_ramp_rises_linearly_then_holds():
    s = make_schedule(rate=100, duration=10, ramp=2)
    assert s.count == 900  # 100 during the ramp (its triangle), 800 after
    assert s.time_of(0) == 0
    assert s.time_of(100) == pytest.approx(2.0)
    assert s.time_of(50) == pytest.approx(math.sqrt(2.0))  # N(t) = 25 t^2 during the ramp
    assert s.rate_at(1.0) == pytest.approx(50.0)
    assert s.time_of(101) == pytest.approx(2.01)


def test_stages_as_k6_ramping_arrival_rate():
    s = make_schedule(stages=[(5, 0), (10, 100), (0, 10), (5, 10)])
    assert s.duration == 20
    assert s.count == 550
    assert s.time_of(0) == 5.0  # nothing arrives while the rate is 0
    assert s.rate_at(10.0) == pytest.approx(50.0)
    assert s.rate_at(16.0) == pytest.approx(10.0)  # a stage of 0 s jumps


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0, "duration": 1},
        {"rate": 10},
        {"rate": 10, "duration": 1, "ramp": 2},
        {"rate": 10, "duration": 1, "stages": [(1, 1)]},
        {"stages": [(1, -1)]},
        {"stages": []},
        {"stages": [(0, 5)]},
    ],
)
def test_bad_schedules_raise(kwargs):
    with pytest.raises(ValueError):
        make_schedule(**kwargs)


stage = st.tuples(st.floats(0, 5), st.floats(0, 300))


@settings(max_examples=100, deadline=None)
@given(st.lists(stage, min_size=1, max_size=5).filter(lambda ss: sum(s for s, _ in ss) > 0.01))
def test_schedule_inverts_the_expected_count(stages):
    s = Schedule(stages)
    times = [s.time_of(k) for k in range(s.count)]
    assert times == sorted(times)
    assert all(0 <= t < s.duration for t in times)
    for k, t in enumerate(times):
        assert s.expected(t) == pytest.approx(k, abs=1e-6 * max(1, k))
    # every arrival due before the end is in the schedule, none after it
    assert s.count == max(0, math.ceil(s.expected(s.duration) - 1e-9)) or s.time_of(s.count) >= s.duration


# -- the instance state ---------------------------------------------------------------


SHAPE = shape_of({"login": [], "browse": ["login"], "search": ["login"], "checkout": ["browse", "search"]}, ["login"])


def _run_task(state: InstanceState, i: int) -> None:
    state.started(i)
    state.finished(i)


def test_instances_reuse_slots_and_the_tables_stay_small():
    state = InstanceState()
    for k in range(200):
        slots = state.add(k, SHAPE)
        state.start_instance(k)
        assert [state.names[e] for e in slots] == [(k, n) for n in SHAPE.names]
        login, browse, search, checkout = slots
        assert state.state[login] == READY and state.parents[checkout] == (browse, search)
        for e in (login, browse, search, checkout):
            _run_task(state, e)
        assert state.completed == [k]
        state.completed.clear()
        state.retire(k)
        state.validate_instances()
    assert len(state.names) == 4 and len(state.index) == 0
    assert state.unfinished == 0


def test_a_failure_skips_its_instance_only_and_completes_it():
    state = InstanceState()
    a = state.add(0, SHAPE)
    b = state.add(1, SHAPE)
    state.start_instance(0)
    state.start_instance(1)
    _run_task(state, a[0])
    _run_task(state, b[0])
    state.started(a[1])
    skipped = state.failed(a[1])
    assert skipped == [a[3]]
    assert state.state[a[2]] == READY  # (search still runs)
    _run_task(state, a[2])
    assert state.completed == [0]
    state.completed.clear()
    state.retire(0)
    state.validate_instances()
    assert state.state[b[1]] == READY and state.in_flight == 1
    # instance 2 takes instance 0's slots
    c = state.add(2, SHAPE)
    assert sorted(c) == sorted(a)
    state.validate_instances()


def test_a_skipped_ready_task_leaves_no_stale_queue_entry():
    shape = shape_of({"a": [], "b": [], "c": ["a", "b"]}, ["a", "b", "c"])
    state = InstanceState()
    x = state.add(0, shape)
    state.start_instance(0)
    # a fails while b still waits in the io queue: b is not skipped (no
    # parent failed), but c is; then b runs
    state.pop_io()
    state.started(x[0])
    state.failed(x[0])
    assert state.state[x[2]] == SKIPPED
    i = state.pop_io()
    state.started(i)
    state.finished(i)
    state.retire(0)
    y = state.add(1, shape)
    state.start_instance(1)
    popped = []
    while (i := state.pop_io()) is not None:
        popped.append(i)
        state.started(i)
    assert sorted(popped) == sorted(y[:2])
    assert all(state.state[e] == RUNNING for e in y[:2])


def test_retire_refuses_an_unfinished_instance():
    state = InstanceState()
    state.add(0, SHAPE)
    with pytest.raises(ValueError):
        state.retire(0)
    assert state.state[0] != DONE


SHAPES = [
    SHAPE,
    shape_of({"a": [], "b": [], "c": ["a", "b"]}, ["a", "b", "c"]),  # io, joining
    shape_of({"x": [], "y": ["x"], "z": ["y"]}, []),  # a cpu chain
    shape_of({"one": []}, []),
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 99)), min_size=1, max_size=120))
def test_any_interleaving_of_arrivals_outcomes_and_retirement_keeps_the_instances_apart(steps):
    # arrivals of random shapes, tasks taken from either queue and ended
    # (done or failed, skipping their descendants), completed instances
    # retired at any point: every task of every instance ends exactly once,
    # in its own instance, and a slot is reused only once it is free
    state = InstanceState()
    ended: dict[tuple, str] = {}
    running: list[int] = []
    shape_of_instance: dict[int, object] = {}
    next_k = 0
    peak = 0

    def end(i: int, ok: bool) -> None:
        name = state.names[i]
        assert name not in ended, name
        if ok:
            ended[name] = "done"
            state.finished(i)
        else:
            ended[name] = "failed"
            for s in state.failed(i):
                assert state.names[s][0] == name[0]  # (skips stay in their instance)
                assert state.names[s] not in ended
                ended[state.names[s]] = "skipped"

    for action, n in steps + [(4, 0)] * 400:  # (then drain: run everything, retire)
        if action == 0 and next_k < 40:
            live = {e for slots in state.slots_of.values() for e in slots}
            slots = state.add(next_k, SHAPES[n % len(SHAPES)])
            assert not live & set(slots)  # a slot in use is never handed out again
            shape_of_instance[next_k] = SHAPES[n % len(SHAPES)]
            state.start_instance(next_k)
            next_k += 1
            # (live at once now, before this step's retirements below)
            peak = max(peak, sum(len(slots) for slots in state.slots_of.values()))
        elif action in (1, 2):
            i = state.pop_io() if action == 1 else state.pop_cpu()
            if i is not None:
                state.started(i)
                running.append(i)
        elif action == 3 and running:
            end(running.pop(n % len(running)), ok=n % 5 != 0)
        elif action == 4:
            i = state.pop_io()
            if i is None:
                i = state.pop_cpu()
            if i is not None:
                state.started(i)
                running.append(i)
            elif running:
                end(running.pop(), ok=True)
        for k in list(state.completed):
            if n % 3 == 0 or action == 4:
                state.completed.remove(k)
                state.retire(k)
        peak = max(peak, sum(len(slots) for slots in state.slots_of.values()))
        state.validate_instances()
    assert not running and state.unfinished == 0 and state.in_flight == 0
    for k, shape in shape_of_instance.items():
        assert {ended[(k, name)] for name in shape.names} <= {"done", "failed", "skipped"}
        assert all((k, name) in ended for name in shape.names), k
    assert len(state.names) <= peak  # (the tables never outgrow the most live at once)


# -- the report and thresholds ------------------------------------------------------


def _report() -> LoadReport:
    r = LoadReport(target_rate=100, duration=10, scheduled=1000, started=990, dropped=10, completed=990)
    for k in range(990):
        r.scenario.ok(0.050 + k * 1e-4)
        r.task("login").ok(0.020)
    for _ in range(10):
        r.scenario.failed("ClientResponseError", "500", None, 3)
        r.task("checkout").failed("ClientResponseError", "500", "line\n" * 1000, 3)
    return r


def test_report_summary_and_json(tmp_path):
    r = _report()
    s = r.summary
    assert set(s) == {"login", "checkout", "scenario"}
    assert s["scenario"]["count"] == 1000 and s["scenario"]["errors"] == 10
    assert s["login"]["p50"] == pytest.approx(0.020, rel=1e-3)
    assert s["scenario"]["p50"] == pytest.approx(0.050 + 495e-4, rel=2e-3)
    assert s["scenario"]["max"] == pytest.approx(0.050 + 989e-4, rel=2e-3)
    assert s["checkout"]["p50"] is None  # nothing succeeded
    assert r.achieved_rate == 99.0
    assert r.errors() == {"checkout": {"ClientResponseError": 10}, "scenario": {"ClientResponseError": 10}}
    examples = r.examples()["checkout"]
    assert len(examples) == 3 and len(examples[0]["output_tail"]) == 2000
    path = tmp_path / "out.json"
    r.to_json(path)
    data = json.loads(path.read_text())
    assert data["summary"]["scenario"]["p99"] == pytest.approx(s["scenario"]["p99"])
    assert data["dropped"] == 10 and data["achieved_rate"] == 99.0
    assert "scenario" in r.table()


@pytest.mark.parametrize(
    ("text", "violated"),
    [
        ("scenario.p99<250ms", False),
        ("p99<100ms", True),
        ("login.p50<=20.1ms", False),
        ("login.p50<19ms", True),
        ("errors<1%", True),
        ("errors<=1%", False),
        ("errors<11", False),
        ("checkout.errors<1", True),
        ("checkout.p50<1s", True),  # never succeeded: not measured
        ("rate>=99", False),
        ("rate>100", True),
        ("dropped<1%", True),
        ("dropped<=10", False),
        ("max < 0.2", False),
        ("api.count>0", True),
    ],
)
def test_thresholds(text, violated):
    assert bool(thresholds.violations([thresholds.parse(text)], _report())) == violated


@pytest.mark.parametrize("text", ["p99", "p99<", "p98<1s", "p99<5%", "rate<5%", "login.rate>1", "errors<5ms"])
def test_bad_thresholds_raise(text):
    with pytest.raises(ValueError):
        thresholds.parse(text)
