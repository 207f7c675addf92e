"""Unit tests of the graph model: validation, ``DoneList`` and the helpers
the original package exposes (DESIGN §2)."""

from __future__ import annotations

import copy
import gc
import pickle
import random
import re

import pytest
from _tasks import a, b, c

import taskmap
from taskmap.graph import DoneList, Graph


def noop(*args):
    return None


def funcs_for(deps):
    return dict.fromkeys(deps, noop)


def parse_cycle(message: str) -> list:
    match = re.search(r"Cyclic dependency: (.*)$", message)
    assert match, f"no cycle path in {message!r}"
    return match.group(1).split(" -> ")


def assert_is_cycle_path(path: list, deps: dict) -> None:
    """``path`` is ``x0 -> x1 -> ... -> x0`` in the direction work flows:
    each task depends on the one before it."""
    assert len(path) >= 2
    assert path[0] == path[-1]
    for before, after in zip(path, path[1:]):
        assert before in [str(p) for p in deps[after]], f"{after} does not depend on {before} in {path}"


# -- create_graph: validation ----------------------------------------------


def test_valid_graph_keeps_everything():
    deps = {"c": ("a", "b"), "b": {"a"}, "a": []}
    funcs = {"a": a, "b": b, "c": c, "extra": a}
    graph = taskmap.create_graph(funcs, deps, io_bound=["a"], done=["a"], results={"a": 5}, name="g")
    assert isinstance(graph, Graph)
    assert graph.dependencies == {"c": ["a", "b"], "b": ["a"], "a": []}
    assert all(type(v) is list for v in graph.dependencies.values())
    assert graph.funcs is funcs
    assert graph.io_bound == ["a"]
    assert graph.done == ["a"]
    assert graph.results == {"a": 5}
    assert graph.in_progress == []
    assert graph.name == "g"
    assert "g" in repr(graph)


def test_defaults():
    graph = taskmap.create_graph({"a": a}, {"a": []})
    assert graph.done == [] and graph.results == {} and graph.io_bound == []
    assert graph.name == "taskmap"


def test_empty_graph():
    graph = taskmap.create_graph({}, {})
    assert taskmap.get_ready_tasks(graph) == []
    assert taskmap.run(graph).results == {}


def test_cycle_message_shows_path():
    # work flows a -> b -> c -> a: b needs a, c needs b, a needs c
    deps = {"a": ["c"], "b": ["a"], "c": ["b"]}
    with pytest.raises(ValueError) as info:
        taskmap.create_graph(funcs_for(deps), deps)
    assert "Cyclic dependency: a -> b -> c -> a" in str(info.value)


def test_cycle_inside_larger_graph_names_only_the_cycle():
    deps = {
        "root": [],
        "x": ["root"],
        "p": ["x", "r"],
        "q": ["p"],
        "r": ["q"],
        "leaf": ["r", "root"],
        "other": ["root"],
    }
    with pytest.raises(ValueError) as info:
        taskmap.create_graph(funcs_for(deps), deps)
    path = parse_cycle(str(info.value))
    assert_is_cycle_path(path, deps)
    assert set(path) == {"p", "q", "r"}
    assert len(path) == 4


def test_original_cycle_example():
    deps = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    with pytest.raises(ValueError) as info:
        taskmap.create_graph({"a": a, "b": b, "c": c}, deps)
    path = parse_cycle(str(info.value))
    assert_is_cycle_path(path, deps)
    assert set(path) == {"a", "b", "c"}


def test_self_loop():
    deps = {"a": [], "s": ["a", "s"]}
    with pytest.raises(ValueError) as info:
        taskmap.create_graph(funcs_for(deps), deps)
    assert "Cyclic dependency: s -> s" in str(info.value)


def test_non_string_task_names_in_cycle():
    deps = {1: [3], 2: [1], 3: [2], 4: []}
    with pytest.raises(ValueError) as info:
        taskmap.create_graph(funcs_for(deps), deps)
    path = parse_cycle(str(info.value))
    assert sorted(path[:-1]) == ["1", "2", "3"]


def test_missing_dependency_names_it_and_who_needs_it():
    deps = {"a": ["b", "ghost"], "b": [], "c": ["phantom"]}
    with pytest.raises(ValueError) as info:
        taskmap.create_graph(funcs_for(deps), deps)
    message = str(info.value)
    assert "'ghost' (needed by 'a')" in message
    assert "'phantom' (needed by 'c')" in message
    assert "'b'" not in message.split(":", 1)[0]


def test_original_absent_tasks_example():
    with pytest.raises(ValueError, match="'b'.*'c'|'c'.*'b'"):
        taskmap.create_graph({"a": a, "b": b, "c": c}, {"a": {"b", "c"}})


def test_many_missing_dependencies_are_summarised():
    deps = {"a": [f"m{i}" for i in range(25)]}
    with pytest.raises(ValueError) as info:
        taskmap.create_graph(funcs_for(deps), deps)
    message = str(info.value)
    assert "'m0'" in message and "and 15 more" in message
    assert len(message) < 2000


def test_task_without_function():
    deps = {"d": ["a"], "a": [], "e": []}
    with pytest.raises(ValueError) as info:
        taskmap.create_graph({"a": a, "b": b}, deps)
    message = str(info.value)
    assert "'d'" in message and "'e'" in message
    assert "'a'" not in message
    assert "do not correspond to functions" in message


def test_non_callable_function_is_type_error():
    deps = {"a": [], "b": ["a"], "c": []}
    with pytest.raises(TypeError) as info:
        taskmap.create_graph({"a": a, "b": 42, "c": "not a function"}, deps)
    message = str(info.value)
    assert "'b' is a int" in message
    assert "'c' is a str" in message
    assert "'a'" not in message


@pytest.mark.parametrize("what", ["io_bound", "done", "results"])
def test_unknown_names(what):
    deps = {"a": [], "b": ["a"]}
    value = {"a": 1, "nope": 2, "nada": 3} if what == "results" else ["a", "nope", "nada"]
    with pytest.raises(ValueError) as info:
        taskmap.create_graph(funcs_for(deps), deps, **{what: value})
    message = str(info.value)
    assert what in message
    assert "'nope'" in message and "'nada'" in message
    assert "'a'" not in message


def test_validation_does_not_mutate_inputs():
    deps = {"a": {"b"}, "b": set()}
    deps_before = copy.deepcopy(deps)
    taskmap.create_graph(funcs_for(deps), deps)
    assert deps == deps_before


# -- DoneList ---------------------------------------------------------------


def test_done_list_is_a_list():
    done = DoneList(["a", "b", "a"])
    assert isinstance(done, list)
    assert done == ["a", "b"]
    assert ["a", "b"] == done
    assert done != ["b", "a"]
    assert list(done) == ["a", "b"]
    assert len(done) == 2
    assert done[0] == "a" and done[-1] == "b"
    assert sorted(DoneList(["b", "a"])) == ["a", "b"]


def test_done_list_membership():
    done = DoneList(["a", ("t", 1), 3])
    assert "a" in done and ("t", 1) in done and 3 in done
    assert "z" not in done
    done.remove("a")
    assert "a" not in done
    done.pop()
    assert 3 not in done
    done.clear()
    assert ("t", 1) not in done and done == []


def test_done_list_append_extend_dedupe():
    done = DoneList()
    done.append("a")
    done.append("a")
    done.extend(["b", "a", "c", "b"])
    done += ["c", "d"]
    done.insert(0, "d")
    done.insert(0, "e")
    assert done == ["e", "a", "b", "c", "d"]


def test_done_list_remove():
    done = DoneList(["a", "b", "c"])
    done.remove("b")
    assert done == ["a", "c"] and "b" not in done
    with pytest.raises(ValueError):
        done.remove("b")
    done.append("b")
    assert done == ["a", "c", "b"]
    done.remove_many({"a", "b", "zz"})
    assert done == ["c"] and "a" not in done and "c" in done


def test_done_list_item_assignment_keeps_index():
    done = DoneList(["a", "b", "c"])
    done[1] = "x"
    assert "x" in done and "b" not in done
    del done[0]
    assert "a" not in done and done == ["x", "c"]


def test_done_list_pickles_and_copies():
    done = DoneList(["a", "b"])
    for clone in (pickle.loads(pickle.dumps(done)), copy.copy(done), copy.deepcopy(done)):
        assert type(clone) is DoneList
        assert clone == ["a", "b"]
        assert "a" in clone and "z" not in clone
        clone.append("a")
        assert clone == ["a", "b"]
        clone.append("c")
        assert "c" in clone
    assert done == ["a", "b"]


def test_graph_pickles_with_done_index():
    graph = taskmap.create_graph({"a": a, "b": b}, {"a": [], "b": ["a"]}, done=["a"], results={"a": 5})
    clone = pickle.loads(pickle.dumps(graph))
    assert clone.done == ["a"] and "a" in clone.done
    assert clone.results == {"a": 5}
    assert clone.dependencies == graph.dependencies
    assert taskmap.run(clone).results == {"a": 5, "b": 15}


def test_graph_done_setter_accepts_plain_list():
    graph = taskmap.create_graph(funcs_for({"a": [], "b": ["a"]}), {"a": [], "b": ["a"]})
    graph.done = ["a", "a"]
    assert type(graph.done) is DoneList
    assert graph.done == ["a"] and "a" in graph.done
    assert taskmap.get_ready_tasks(graph) == ["b"]


# -- get_ready_tasks ----------------------------------------------------------


ORIGINAL_DEPS = {"a": {"b", "c"}, "b": {"c"}, "c": set()}


def test_ready_tasks_basic():
    graph = taskmap.create_graph({"a": a, "b": b, "c": c}, ORIGINAL_DEPS)
    assert taskmap.get_ready_tasks(graph) == ["c"]
    taskmap.mark_as_done(graph, "c")
    assert taskmap.get_ready_tasks(graph) == ["b"]
    taskmap.mark_as_done(graph, ["b"])
    assert taskmap.get_ready_tasks(graph) == ["a"]
    taskmap.mark_as_done(graph, "a")
    assert taskmap.get_ready_tasks(graph) == []


def test_ready_tasks_io_first_and_reverse_false():
    deps = {"c1": [], "i1": [], "c2": [], "i2": [], "w": ["c1"]}
    graph = taskmap.create_graph(funcs_for(deps), deps, io_bound=["i2", "i1"])
    assert taskmap.get_ready_tasks(graph) == ["i1", "i2", "c1", "c2"]
    assert taskmap.get_ready_tasks(graph, reverse=True) == ["i1", "i2", "c1", "c2"]
    assert taskmap.get_ready_tasks(graph, reverse=False) == ["c1", "c2", "i1", "i2"]


def test_ready_tasks_skip_in_progress():
    deps = {"a": [], "b": [], "c": ["a"]}
    graph = taskmap.create_graph(funcs_for(deps), deps)
    graph.in_progress.append("a")
    assert taskmap.get_ready_tasks(graph) == ["b"]


def test_ready_tasks_with_done_at_creation():
    graph = taskmap.create_graph({"a": a, "b": b}, {"a": ["b"], "b": []}, done=["b"])
    assert taskmap.get_ready_tasks(graph) == ["a"]


# -- get_all_children ---------------------------------------------------------


def test_get_all_children():
    deps = {"d": ["a"], "c": ["b"], "b": ["a"], "a": [], "e": ["c", "d"], "lone": []}
    graph = taskmap.create_graph(funcs_for(deps), deps)
    assert taskmap.get_all_children(graph, "a") == {"b", "c", "d", "e"}
    assert taskmap.get_all_children(graph, "b") == {"c", "e"}
    assert taskmap.get_all_children(graph, "e") == set()
    assert taskmap.get_all_children(graph, "lone") == set()


def test_get_all_children_diamond_counts_once():
    deps = {"top": [], "l": ["top"], "r": ["top"], "bottom": ["l", "r"]}
    graph = taskmap.create_graph(funcs_for(deps), deps)
    assert taskmap.get_all_children(graph, "top") == {"l", "r", "bottom"}


# -- mark_as_done / mark_as_done_except ---------------------------------------


def test_mark_as_done_single_string_is_one_task():
    deps = {"abc": [], "x": ["abc"]}
    graph = taskmap.create_graph(funcs_for(deps), deps)
    result = taskmap.mark_as_done(graph, "abc")
    assert result is graph
    assert graph.done == ["abc"]
    taskmap.mark_as_done(graph, "abc")
    assert graph.done == ["abc"]


def test_mark_as_done_list_and_non_string_task():
    deps = {1: [], 2: [1], "three": [2]}
    graph = taskmap.create_graph(funcs_for(deps), deps)
    taskmap.mark_as_done(graph, 1)
    taskmap.mark_as_done(graph, [2, "three", 2])
    assert graph.done == [1, 2, "three"]


def test_mark_as_done_except():
    graph = taskmap.create_graph({"a": a, "b": b, "c": c}, ORIGINAL_DEPS)
    result = taskmap.mark_as_done_except(graph, ["c"])
    assert result is graph
    assert sorted(graph.done) == ["a", "b"]
    assert taskmap.get_ready_tasks(graph) == ["c"]


def test_mark_as_done_except_single_string_and_existing_done():
    deps = {"ab": [], "b": [], "c": ["ab"]}
    graph = taskmap.create_graph(funcs_for(deps), deps, done=["c"])
    taskmap.mark_as_done_except(graph, "ab")
    assert graph.done == ["c", "b"]
    assert taskmap.get_ready_tasks(graph) == ["ab"]


# -- reset_tasks / reset_failed_tasks -----------------------------------------


def chain_graph():
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": []}
    funcs = {"a": a, "b": b, "c": lambda x: x * 2, "d": b, "e": a}
    return taskmap.create_graph(funcs, deps)


def test_reset_tasks_resets_descendants():
    graph = taskmap.run(chain_graph())
    assert graph.results == {"a": 5, "b": 15, "c": 30, "d": 15, "e": 5}
    result = taskmap.reset_tasks(graph, ["b"])
    assert result is graph
    assert sorted(graph.done) == ["a", "d", "e"]
    assert graph.results["b"] is None and graph.results["c"] is None
    assert graph.results["a"] == 5 and graph.results["d"] == 15
    assert taskmap.get_ready_tasks(graph) == ["b"]


def test_reset_tasks_single_string_and_rerun():
    graph = taskmap.run(chain_graph())
    taskmap.reset_tasks(graph, "a")
    assert graph.done == ["e"]
    graph.funcs["a"] = lambda: 100
    taskmap.run(graph)
    assert graph.results == {"a": 100, "b": 110, "c": 220, "d": 110, "e": 5}


def test_reset_tasks_not_done_is_harmless():
    graph = chain_graph()
    taskmap.mark_as_done(graph, ["a", "e"])
    taskmap.reset_tasks(graph, ["c"])
    assert graph.done == ["a", "e"]


def test_reset_failed_tasks():
    def fail(x):
        raise ValueError("nope")

    deps = {"a": [], "f": ["a"], "g": ["f"], "h": ["g", "a"], "w": [], "x": ["w"]}
    funcs = {"a": a, "f": fail, "g": b, "h": c, "w": a, "x": b}
    graph = taskmap.run(taskmap.create_graph(funcs, deps))
    assert isinstance(graph.results["f"], ValueError)
    assert graph.results["g"] == "Ancestor task f failed; task not run"
    assert sorted(graph.done) == sorted(deps)

    result = taskmap.reset_failed_tasks(graph)
    assert result is graph
    assert sorted(graph.done) == ["a", "w", "x"]
    assert graph.results["f"] is None and graph.results["g"] is None and graph.results["h"] is None
    assert graph.results["a"] == 5 and graph.results["x"] == 15
    assert taskmap.get_ready_tasks(graph) == ["f"]


def test_reset_failed_tasks_with_no_failure_changes_nothing():
    graph = taskmap.run(chain_graph())
    done_before = list(graph.done)
    results_before = dict(graph.results)
    taskmap.reset_failed_tasks(graph)
    assert graph.done == done_before
    assert graph.results == results_before


# -- scale: a million tasks -----------------------------------------------------
#
# These tests check that validation and the helpers are iterative and linear,
# not how fast they are (timings belong in benchmarks/bench_graph.py).  The
# cyclic garbage collector is paused while they build millions of lists: it
# would only slow the test down by rescanning them.


N = 1_000_000


@pytest.fixture
def no_gc():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def random_dag(n: int, seed: int = 7, window: int = 1000) -> dict:
    """Task i depends on up to 3 distinct tasks among the ``window`` before it."""
    rand = random.Random(seed).random
    deps = {}
    for i in range(n):
        k = int(rand() * 4)
        w = min(i, window)
        if k == 0 or w == 0:
            deps[i] = []
        elif k == 1:
            deps[i] = [i - 1 - int(rand() * w)]
        else:
            deps[i] = list({i - 1 - int(rand() * w) for _ in range(k)})
    return deps


def test_million_task_random_dag(no_gc):
    deps = random_dag(N)
    funcs = dict.fromkeys(deps, noop)
    graph = taskmap.create_graph(funcs, deps)
    assert len(graph.dependencies) == N

    ready = taskmap.get_ready_tasks(graph)
    assert ready == [t for t, ps in deps.items() if not ps]

    children = taskmap.get_all_children(graph, 0)
    assert 0 not in children
    assert len(children) > N // 10  # task 0 is an ancestor of much of the graph
    some_child = min(children)
    assert 0 in deps[some_child]

    taskmap.mark_as_done_except(graph, [])
    assert len(graph.done) == N
    taskmap.reset_tasks(graph, [0])
    assert len(graph.done) == N - len(children) - 1
    assert 0 not in graph.done and some_child not in graph.done
    assert graph.results == {}


def test_million_task_chain_validates_without_recursion(no_gc):
    # task i depends on i + 1: the depth-first search from task 0 walks the
    # whole chain, a million levels deep
    chain = {i: [i + 1] for i in range(N - 1)}
    chain[N - 1] = []
    funcs = dict.fromkeys(chain, noop)
    graph = taskmap.create_graph(funcs, chain)
    assert taskmap.get_ready_tasks(graph) == [N - 1]

    chain[N - 1] = [0]  # close it into a cycle of a million tasks
    with pytest.raises(ValueError, match="Cyclic dependency") as info:
        taskmap.create_graph(funcs, chain)
    # the path has N + 1 entries (it ends where it starts); the message names
    # its first and last 10 and says how many it leaves out
    message = str(info.value)
    assert len(message) < 300, len(message)
    path = message.split(": ", 1)[1].split(" -> ")
    assert path[10] == f"... ({N + 1 - 20} more tasks) ..."
    shown = path[:10] + path[11:]
    assert len(shown) == 20 and shown[0] == shown[-1] == "0"
    assert shown[:3] == ["0", str(N - 1), str(N - 2)]  # in the direction work flows
