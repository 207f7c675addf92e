"""Unit tests of the pure scheduling state (no runner, no I/O)."""

from __future__ import annotations

import random

import pytest

from taskmap.scheduling.state import (
    IllegalTransition,
    SchedulingState,
    TaskState,
    ancestor_failed_message,
    critical_path_priority,
    topological_order,
)


def make(deps, io_bound=(), done=(), durations=None) -> SchedulingState:
    return SchedulingState(deps, io_bound, done, durations)


def drain(state: SchedulingState) -> list:
    """Pop everything ready, in order, by name (without finishing anything)."""
    out = []
    while (i := state.pop_ready()) is not None:
        out.append(state.names[i])
    return out


def run_to_end(state: SchedulingState, fail=()) -> list:
    """Simulate a one-at-a-time runner; returns names in the order started."""
    order = []
    state.start()
    while (i := state.pop_ready()) is not None:
        state.started(i)
        order.append(state.names[i])
        if state.names[i] in fail:
            state.failed(i)
        else:
            state.finished(i)
    return order


def test_numbering_and_indices():
    deps = {"c": ["a", "b"], "b": ["a"], "a": []}
    s = make(deps)
    assert s.names == ["c", "b", "a"]
    assert s.index == {"c": 0, "b": 1, "a": 2}
    assert s.parents == [(2, 1), (2,), ()]  # (tuples: smaller than lists)
    assert s.children == [[], [0], [0, 1]]
    assert s.remaining == [2, 1, 0]
    assert s.unfinished == 3
    assert not s.all_finished
    assert list(s.state) == [TaskState.WAITING] * 3


def test_nothing_ready_before_start():
    s = make({"a": [], "b": []})
    assert s.pop_ready() is None and not s.has_ready()
    s.start()
    assert s.has_ready()
    assert s.state[0] == TaskState.READY


def test_io_first_in_arrival_order():
    deps = {"c1": [], "i1": [], "c2": [], "i2": [], "i3": ["c1"]}
    s = make(deps, io_bound=["i2", "i1", "i3"])
    s.start()
    assert s.pop_io() == s.index["i1"]
    assert s.pop_ready() == s.index["i2"]
    assert s.pop_io() is None
    assert s.pop_ready() in (s.index["c1"], s.index["c2"])


def test_io_by_priority_when_the_graph_gives_priorities():
    """create_graph(priority=...) with io tasks: the io queue is a heap, higher
    first, ties in arrival order (it once stayed a deque and crashed)."""
    deps = {"i1": [], "i2": [], "i3": [], "c": []}
    s = SchedulingState(deps, ["i1", "i2", "i3"], (), None, {"i3": 5, "c": 9})
    s.start()
    assert [s.names[s.pop_io()] for _ in range(3)] == ["i3", "i1", "i2"]
    assert s.pop_io() is None


def test_cpu_by_critical_path_chain_head_before_lone_task():
    deps = {"lone": [], "head": [], "mid": ["head"], "tail": ["mid"]}
    s = make(deps)
    s.start()
    assert drain(s) == ["head", "lone"]


def test_cpu_priority_counts_longest_chain_not_fan_out():
    # "wide" has 5 children (depth 2); "deep" heads a chain of 4
    deps = {"wide": [], **{f"w{i}": ["wide"] for i in range(5)}, "deep": [], "d1": ["deep"], "d2": ["d1"], "d3": ["d2"]}
    s = make(deps)
    s.start()
    assert drain(s) == ["deep", "wide"]


def test_cpu_ties_keep_graph_order():
    deps = {f"t{i}": [] for i in range(10)}
    s = make(deps)
    s.start()
    assert drain(s) == [f"t{i}" for i in range(10)]


def test_io_before_higher_priority_cpu():
    deps = {"head": [], "m": ["head"], "t": ["m"], "io": []}
    s = make(deps, io_bound=["io"])
    s.start()
    assert drain(s) == ["io", "head"]


def test_child_ready_only_when_last_parent_finishes():
    deps = {"a": [], "b": [], "c": [], "child": ["a", "b", "c"], "other": ["a"]}
    s = make(deps)
    s.start()
    assert sorted(drain(s)) == ["a", "b", "c"]
    for name in ("a", "b", "c"):
        s.started(s.index[name])
    assert s.finished(s.index["b"]) == 0
    assert s.pop_ready() is None
    assert s.finished(s.index["a"]) == 1  # "other"
    assert drain(s) == ["other"]
    assert s.state[s.index["child"]] == TaskState.WAITING
    assert s.finished(s.index["c"]) == 1
    assert drain(s) == ["child"]


def test_duplicate_parent_counts_twice_consistently():
    deps = {"a": [], "b": ["a", "a"]}
    s = make(deps)
    s.start()
    assert drain(s) == ["a"]
    s.started(0)
    assert s.finished(0) == 1
    assert drain(s) == ["b"]


def test_finished_twice_raises_and_changes_nothing():
    # (it used to be ignored: a second report of one task is a runner's bug,
    # and ignoring it hid one that hung a run, see b211764)
    deps = {"a": [], "b": ["a"], "c": ["a", "b"]}
    s = make(deps)
    s.start()
    s.started(s.pop_ready())
    assert s.finished(0) == 1
    with pytest.raises(IllegalTransition, match="'a': finished is illegal in state DONE"):
        s.finished(0)
    assert s.remaining[s.index["c"]] == 1
    assert s.unfinished == 2
    with pytest.raises(IllegalTransition, match="failed is illegal in state DONE"):
        s.failed(0)
    assert s.state[0] == TaskState.DONE


def test_transitions_from_the_wrong_state_raise():
    s = make({"a": [], "b": ["a"]})
    s.start()
    a, b = s.index["a"], s.index["b"]
    with pytest.raises(IllegalTransition, match="finished is illegal in state READY"):
        s.finished(a)  # never started
    with pytest.raises(IllegalTransition, match="unstart is illegal in state READY"):
        s.unstart(a)
    with pytest.raises(IllegalTransition, match="requeue is illegal in state READY"):
        s.requeue(a)
    s.started(s.pop_ready())
    with pytest.raises(IllegalTransition, match="started is illegal in state RUNNING"):
        s.started(a)
    s.failed(a)
    assert s.state[b] == TaskState.SKIPPED
    for event in (s.started, s.finished, s.failed, s.requeue, s.unstart):
        with pytest.raises(IllegalTransition):
            event(b)


def test_failed_skips_every_descendant_and_counts_them_finished():
    deps = {"a": [], "f": ["a"], "g": ["f"], "h": ["g", "a"], "i": ["h", "f"], "w": [], "x": ["w"]}
    s = make(deps)
    s.start()
    a, f, w = s.index["a"], s.index["f"], s.index["w"]
    assert s.pop_ready() == a
    s.started(a)
    s.finished(a)
    assert s.pop_ready() == f
    s.started(f)
    skipped = s.failed(f)
    assert sorted(s.names[i] for i in skipped) == ["g", "h", "i"]
    assert len(skipped) == len(set(skipped))
    assert s.state[f] == TaskState.FAILED
    for name in "ghi":
        assert s.state[s.index[name]] == TaskState.SKIPPED
    assert s.unfinished == 2  # w and x
    assert s.pop_ready() == w
    s.started(w)
    s.finished(w)
    assert drain(s) == ["x"]
    s.started(s.index["x"])
    s.finished(s.index["x"])
    assert s.all_finished
    with pytest.raises(IllegalTransition):
        s.failed(f)  # a second report is a bug


def test_failure_of_unrelated_task_does_not_block_others():
    deps = {"bad": [], "good": [], "after_good": ["good"], "after_bad": ["bad"]}
    order = run_to_end(make(deps), fail={"bad"})
    assert order == ["bad", "good", "after_good"]


def test_failed_leaves_started_descendants_alone():
    # "b" was done before the run, so "c" (child of b) may start before "a"
    # (parent of b) fails; "c" keeps running, its own child "d" is skipped
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["c"], "e": ["b"]}
    s = make(deps, done=["b"])
    s.start()
    started = drain(s)
    assert sorted(started) == ["a", "c", "e"]
    c, e = s.index["c"], s.index["e"]
    s.started(c)
    s.started(s.index["a"])
    skipped = s.failed(s.index["a"])
    # "e" is ready but was never started: it is skipped; "c" is running
    assert sorted(s.names[i] for i in skipped) == ["d", "e"]
    assert s.state[c] == TaskState.RUNNING
    assert s.state[s.index["b"]] == TaskState.DONE
    assert s.state[e] == TaskState.SKIPPED
    assert not s.all_finished
    assert s.finished(c) == 0  # "d" was skipped, it does not become ready
    assert s.all_finished


def test_failure_skips_ready_task_and_pop_never_returns_it():
    deps = {"a": [], "b": ["a"], "c": ["b"], "z": []}
    s = make(deps, done=["b"])
    s.start()  # c (only parent b is done) and a and z are ready
    a, c = s.index["a"], s.index["c"]
    first = s.pop_ready()
    assert s.names[first] == "a"  # longest chain below it
    s.started(first)
    assert s.failed(a) == [c]
    assert drain(s) == ["z"]


def test_done_at_creation():
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": []}
    s = make(deps, done=["a", "d"])
    assert s.unfinished == 2
    assert s.remaining == [0, 0, 1, 0]
    s.start()
    assert drain(s) == ["b"]
    assert s.state[0] == TaskState.DONE and s.state[3] == TaskState.DONE


def test_all_done_at_creation():
    deps = {"a": [], "b": ["a"]}
    s = make(deps, done=["a", "b"])
    assert s.all_finished
    s.start()
    assert s.pop_ready() is None


def test_all_finished_after_run():
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    s = make(deps)
    order = run_to_end(s)
    assert order[0] == "a" and order[-1] == "d"
    assert s.all_finished and s.unfinished == 0


def test_requeue():
    deps = {"a": [], "b": ["a"]}
    s = make(deps, io_bound=["a"])
    s.start()
    assert s.pop_ready() == 0
    s.started(0)
    assert s.pop_ready() is None
    s.requeue(0)
    assert s.state[0] == TaskState.READY
    assert s.pop_io() == 0
    assert s.pop_ready() is None
    s.started(0)
    assert s.finished(0) == 1
    assert drain(s) == ["b"]


def test_requeue_cpu_task_keeps_priority():
    deps = {"lone": [], "head": [], "m": ["head"]}
    s = make(deps)
    s.start()
    head = s.pop_ready()
    assert s.names[head] == "head"
    s.started(head)
    s.requeue(head)
    assert drain(s) == ["head", "lone"]


def test_ancestor_failed_message():
    assert ancestor_failed_message("d") == "Ancestor task d failed; task not run"
    assert ancestor_failed_message(3) == "Ancestor task 3 failed; task not run"


# -- critical path and topological order ---------------------------------------


def indices(deps):
    s = make(deps)
    return s.parents, s.children, s.names


def test_critical_path_without_durations_counts_tasks():
    deps = {"a": [], "b": ["a"], "c": ["b"], "x": ["a"], "lone": []}
    parents, children, names = indices(deps)
    assert critical_path_priority(parents, children, names) == [3.0, 2.0, 1.0, 1.0, 1.0]
    assert critical_path_priority(parents, children, names, {}) == [3.0, 2.0, 1.0, 1.0, 1.0]


def test_critical_path_with_durations():
    deps = {"a": [], "b": ["a"], "c": ["b"], "x": ["a"], "lone": []}
    parents, children, names = indices(deps)
    durations = {"a": 1.0, "b": 0.5, "c": 0.25, "x": 10.0, "lone": 2.0}
    assert critical_path_priority(parents, children, names, durations) == [11.0, 0.75, 0.25, 10.0, 2.0]


def test_critical_path_unknown_durations_get_the_mean():
    deps = {"a": [], "b": ["a"], "new": ["a"]}
    parents, children, names = indices(deps)
    prio = critical_path_priority(parents, children, names, {"a": 1.0, "b": 3.0})
    assert prio == [4.0, 3.0, 2.0]  # "new" weighs the mean of 1 and 3


def test_durations_change_pop_order():
    deps = {"short": [], "long": []}
    s = make(deps, durations={"short": 0.1, "long": 5.0})
    s.start()
    assert drain(s) == ["long", "short"]
    s = make(deps)
    s.start()
    assert drain(s) == ["short", "long"]


def test_topological_order():
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(1, 30)
        deps = {i: rng.sample(range(i), rng.randint(0, min(i, 3))) for i in range(n)}
        items = list(deps.items())
        rng.shuffle(items)
        deps = dict(items)
        parents, children, names = indices(deps)
        order = topological_order(parents, children)
        assert sorted(order) == list(range(n))
        position = {task: k for k, task in enumerate(order)}
        for child, ps in enumerate(parents):
            for p in ps:
                assert position[p] < position[child]


def test_topological_order_rejects_cycle():
    parents = [[1], [0], []]
    children = [[1], [0], []]
    with pytest.raises(ValueError, match="cycle"):
        topological_order(parents, children)


def test_random_graphs_run_to_completion_in_dependency_order():
    rng = random.Random(11)
    for _ in range(30):
        n = rng.randint(1, 40)
        deps = {f"t{i}": [f"t{j}" for j in rng.sample(range(i), rng.randint(0, min(i, 3)))] for i in range(n)}
        io = [t for t in deps if rng.random() < 0.3]
        fail = {t for t in deps if rng.random() < 0.1}
        s = make(deps, io_bound=io)
        order = run_to_end(s, fail=fail)
        assert s.all_finished
        seen = set()
        for t in order:
            assert all(p in seen for p in deps[t])
            seen.add(t)
        # exactly the descendants of failed tasks were not run
        not_run = set(deps) - set(order)
        for t in not_run:
            assert s.state[s.index[t]] == TaskState.SKIPPED
            assert any(p in fail or p in not_run for p in deps[t])


def test_requeue_waits_for_a_parent_that_has_to_run_again():
    # "b" was handed out ahead of "a" (pinned behind it); the worker died
    # with a's result: both go back, and b is ready only once a finishes
    s = make({"a": [], "b": ["a"]})
    s.start()
    a, b = s.index["a"], s.index["b"]
    assert s.pop_ready() == a
    s.started(a)
    s.started(b)  # sent ahead
    s.requeue(b)
    s.requeue(a)
    assert drain(s) == ["a"]
    assert s.state[b] == TaskState.WAITING
    s.started(a)
    assert s.finished(a) == 1
    assert drain(s) == ["b"]


def test_requeue_of_a_task_whose_parents_finished_makes_it_ready():
    s = make({"a": [], "b": ["a"]})
    s.start()
    a, b = s.index["a"], s.index["b"]
    s.started(s.pop_ready())
    s.finished(a)
    s.started(s.pop_ready())
    s.requeue(b)  # a retry
    assert drain(s) == ["b"]
