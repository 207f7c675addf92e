"""Run-time fan-out (create_graph(expand=...)) end to end on the runners:
elements, element-wise chains, failures, empty and refused results, reset
of failed elements, retries per element."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

import taskmap
from taskmap import Element

RUNNERS = [taskmap.run, taskmap.run_async, taskmap.run_parallel, taskmap.run_parallel_async]
PARALLEL = [taskmap.run_parallel, taskmap.run_parallel_async]


def ids(runner):
    return runner.__name__


def run(runner, graph, **options):
    if runner in PARALLEL:
        options.setdefault("ncores", 2)
    return runner(graph, **options)


# -- task functions (module level: they reach worker processes by reference) --

CALLS = "TASKMAP_TEST_EXPAND_CALLS"


def note_call(what: str) -> None:
    """Leave a file per call in the folder the test names (counts calls
    across processes)."""
    folder = os.environ.get(CALLS)
    if folder:
        with open(os.path.join(folder, f"{what}-{uuid.uuid4().hex}"), "w"):
            pass


def calls(folder, what: str) -> int:
    return sum(1 for f in os.listdir(folder) if f.rsplit("-", 1)[0] == what)


def list_files():
    return ["a", "b", "c", "d"]


def config():
    return "!"


def parse(f, c):
    note_call(f"parse-{f}")
    if f == "c" and not os.environ.get("TASKMAP_TEST_EXPAND_FIXED"):
        raise ValueError("bad " + f)
    return f.upper() + c


def clean(p):
    note_call(f"clean-{p}")
    return p.lower()


def total(cs):
    note_call("total")
    return "|".join(cs)


def etl(source=list_files, **kwargs):
    funcs = {"list_files": source, "config": config, "parse": parse, "clean": clean, "total": total}
    deps = {
        "list_files": [],
        "config": [],
        "parse": ["list_files", "config"],
        "clean": ["parse"],
        "total": ["clean"],
    }
    return taskmap.create_graph(funcs, deps, expand={"parse": "list_files", "clean": "parse"}, **kwargs)


@pytest.fixture(autouse=True)
def validating(monkeypatch):
    """Every parallel run here checks the ledger's invariants after each event."""
    monkeypatch.setenv("TASKMAP_VALIDATE", "1")


@pytest.fixture
def call_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CALLS, str(tmp_path))
    return tmp_path


# -- semantics ------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_a_failed_element_fails_its_task_and_skips_only_what_depends_on_it(runner, call_folder):
    graph = run(runner, etl())
    results = graph.results
    assert results["list_files"] == ["a", "b", "c", "d"]  # the mapped result is left as it is
    assert results["parse"][:2] == ["A!", "B!"] and results["parse"][3] == "D!"
    error = results["parse"][2]
    assert isinstance(error, ValueError) and error.args == ("bad c",)
    message = "Ancestor task parse[2] failed; task not run"
    assert results["clean"] == ["a!", "b!", message, "d!"]
    assert results["total"] == message
    assert set(graph.done) == {"list_files", "config", "parse", "clean", "total"}
    assert calls(call_folder, "clean-A!") == 1 and calls(call_folder, "total") == 0


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_reset_failed_tasks_reruns_exactly_the_failed_elements_and_what_depends_on_them(
    runner, call_folder, monkeypatch
):
    graph = run(runner, etl())
    taskmap.reset_failed_tasks(graph)
    # done elements keep their results; the positions to rerun hold None
    assert graph.results["parse"] == ["A!", "B!", None, "D!"]
    assert graph.results["clean"] == ["a!", "b!", None, "d!"]
    assert graph.results["total"] is None
    monkeypatch.setenv("TASKMAP_TEST_EXPAND_FIXED", "1")
    run(runner, graph)
    assert graph.results["parse"] == ["A!", "B!", "C!", "D!"]
    assert graph.results["total"] == "a!|b!|c!|d!"
    assert calls(call_folder, "parse-a") == 1 and calls(call_folder, "parse-c") == 2
    assert calls(call_folder, "clean-A!") == 1 and calls(call_folder, "clean-C!") == 1
    assert calls(call_folder, "total") == 1
    assert not graph.elements  # every expanded task is done: no record left


def empty():
    return []


def a_string():
    return "abc"


def a_mapping():
    return {"a": 1}


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_an_empty_result_gives_zero_elements_and_empty_lists(runner):
    graph = run(runner, etl(empty))
    assert graph.results["parse"] == [] and graph.results["clean"] == []
    assert graph.results["total"] == ""  # total got the empty list of clean


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
@pytest.mark.parametrize("source", [a_string, a_mapping])
def test_a_string_or_mapping_fails_the_expanding_task_with_a_type_error(runner, source):
    graph = run(runner, etl(source))
    error = graph.results["parse"]
    assert isinstance(error, TypeError)
    assert "parse" in str(error) and "non-string iterable" in str(error)
    assert graph.results["list_files"] == source()  # the dependency itself succeeded
    assert graph.results["clean"] == "Ancestor task parse failed; task not run"
    assert graph.results["total"] == "Ancestor task parse failed; task not run"


def items_with_none():
    return (1, None, 3)  # a tuple: any non-string iterable (that crosses processes)


def show(*args):
    return args


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_items_in_place_of_the_mapped_dependency_none_left_out(runner):
    funcs = {"items": items_with_none, "before": lambda: "b", "after": lambda: None, "show": show}
    deps = {"items": [], "before": [], "after": [], "show": ["before", "items", "after"]}
    graph = taskmap.create_graph(funcs, deps, expand={"show": "items"})
    run(runner, graph)
    assert graph.results["show"] == [("b", 1), ("b",), ("b", 3)]


def test_expand_must_name_one_of_the_tasks_dependencies():
    deps = {"a": [], "b": [], "c": ["a"]}
    funcs = dict.fromkeys(deps, show)
    with pytest.raises(ValueError, match="one of the task's dependencies"):
        taskmap.create_graph(funcs, deps, expand={"c": "b"})
    with pytest.raises(ValueError, match="not tasks"):
        taskmap.create_graph(funcs, deps, expand={"x": "a"})


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_raise_errors_names_the_failed_element(runner):
    with pytest.raises(taskmap.TaskFailedError, match=r"parse\[2\]"):
        run(runner, etl(), raise_errors=True)


# -- no barrier: clean[0] starts before parse[last] ends ---------------------------


def signal_folder():
    return os.environ["TASKMAP_TEST_EXPAND_SIGNALS"]


async def slow_parse(k):
    """The last element waits for clean[0]'s signal: with a barrier between
    parse and clean it would never come (and the element says so)."""
    if k == 3:
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(signal_folder(), "clean-0")):
            if time.monotonic() > deadline:
                return "barrier"
            await asyncio.sleep(0.005)
    return k


async def signalling_clean(k):
    with open(os.path.join(signal_folder(), f"clean-{k}"), "w"):
        pass
    return k * 10


# (not taskmap.run: it runs one task at a time, so parse[3] cannot wait for clean[0])
@pytest.mark.parametrize("runner", RUNNERS[1:], ids=ids)
def test_element_wise_chains_have_no_barrier(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("TASKMAP_TEST_EXPAND_SIGNALS", str(tmp_path))
    funcs = {"keys": lambda: range(4), "parse": slow_parse, "clean": signalling_clean}
    deps = {"keys": [], "parse": ["keys"], "clean": ["parse"]}
    graph = taskmap.create_graph(funcs, deps, io_bound=["parse", "clean"], expand={"parse": "keys", "clean": "parse"})
    run(runner, graph, summary=True)
    assert graph.results["parse"] == [0, 1, 2, 3]  # parse[3] saw clean[0]'s signal
    assert graph.results["clean"] == [0, 10, 20, 30]
    times = {str(t.name): t for t in graph.last_run.tasks}
    assert times["clean[0]"].start < times["parse[3]"].end


# -- per element: retries, names ----------------------------------------------------


def flaky(k):
    """Fails the first attempt of element 1 (a marker file remembers it)."""
    marker = os.path.join(signal_folder(), f"tried-{k}")
    if k == 1 and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise RuntimeError("first attempt")
    return k


@pytest.mark.parametrize("runner", PARALLEL, ids=ids)
def test_retries_apply_per_element(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("TASKMAP_TEST_EXPAND_SIGNALS", str(tmp_path))
    funcs = {"keys": lambda: [0, 1, 2], "work": flaky}
    graph = taskmap.create_graph(funcs, {"keys": [], "work": ["keys"]}, expand={"work": "keys"})
    run(runner, graph, retries={"work": 1})
    assert graph.results["work"] == [0, 1, 2]
    assert graph.attempts[Element("work", 1)] == 2 and graph.attempts[Element("work", 0)] == 1


def test_element_names_read_as_task_and_index():
    e = Element("parse", 2)
    assert str(e) == repr(e) == "parse[2]"
    assert e == Element("parse", 2) and e != ("parse", 2) and hash(e) == hash(Element("parse", 2))


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_elements_are_named_in_observer_events(runner):
    seen = []

    class Names(taskmap.Observer):
        def task_finished(self, event):
            seen.append((str(event.name), event.status))

    run(runner, etl(), observers=[Names()])
    assert ("parse[0]", "done") in seen and ("parse[2]", "failed") in seen
    assert ("clean[2]", "skipped") in seen and ("parse", "failed") in seen


# -- the store: one row per element -------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_a_resumed_run_reruns_only_the_elements_that_did_not_finish(runner, call_folder, tmp_path, monkeypatch):
    store = tmp_path / "run.db"
    run(runner, etl(checkpoint=store))
    # a new graph over the same store, as a new process would build it
    graph = etl(checkpoint=store)
    assert graph.checkpoint.statuses(graph)["parse"] == "failed"
    monkeypatch.setenv("TASKMAP_TEST_EXPAND_FIXED", "1")
    run(runner, graph)
    assert graph.results["total"] == "a!|b!|c!|d!"
    assert calls(call_folder, "parse-a") == 1 and calls(call_folder, "parse-c") == 2
    assert calls(call_folder, "clean-A!") == 1 and calls(call_folder, "clean-C!") == 1
    graph.checkpoint.close()
    # and once done whole, the expanded task is restored whole
    again = etl(checkpoint=store)
    run(runner, again)
    assert again.results["parse"] == ["A!", "B!", "C!", "D!"] and calls(call_folder, "parse-c") == 2
    again.checkpoint.close()


def test_an_expanded_task_with_a_failed_element_reads_as_failed_in_the_summary_and_pictures():
    from taskmap.observe.status import statuses

    graph = taskmap.run(etl(), summary=True)
    assert statuses(graph) == {
        "list_files": "done",
        "config": "done",
        "parse": "failed",
        "clean": "failed",  # one of its elements was skipped
        "total": "skipped",
    }
    assert "class n2 failed" in taskmap.to_mermaid(graph)
    assert "parse[2]" in str(taskmap.summarize(graph))


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_the_progress_bar_counts_the_elements(runner):
    import io

    from taskmap.observe.progress import ProgressBar

    bar = ProgressBar(file=io.StringIO())
    run(runner, etl(), observers=[bar])
    # 5 tasks and 8 elements, each finished once
    assert bar.total + bar.added == 13 == bar.done + bar.failed + bar.skipped


def test_pictures_draw_an_expanded_task_as_a_stack_with_its_count_after_a_run():
    graph = etl()
    assert "st-rect" not in taskmap.to_mermaid(graph) and "box3d" not in taskmap.to_dot(graph)
    taskmap.run(graph)
    mermaid = taskmap.to_mermaid(graph)
    assert '@{ shape: st-rect, label: "parse \u00d74" }' in mermaid and "class n2 failed" in mermaid
    dot = taskmap.to_dot(graph)
    assert 'label="clean \u00d74", shape=box3d' in dot
