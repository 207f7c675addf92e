"""Run-time fan-out (create_graph(expand=...)) end to end on the runners:
elements, element-wise chains, failures, empty and refused results, reset
of failed elements, retries per element."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- faults: a worker crash among the elements; a SIGKILL halfway, then resume ----


def crash_on_two(k):
    if k == 2:
        os._exit(3)  # the worker dies in the middle of the elements
    return k * 10


@pytest.mark.parametrize("runner", PARALLEL, ids=ids)
def test_a_worker_crash_in_the_middle_of_the_elements_fails_only_its_element(runner):
    funcs = {"keys": lambda: list(range(6)), "work": crash_on_two, "total": lambda xs: len(xs)}
    deps = {"keys": [], "work": ["keys"], "total": ["work"]}
    graph = run(runner, taskmap.create_graph(funcs, deps, expand={"work": "keys"}))
    values = graph.results["work"]
    assert isinstance(values[2], taskmap.WorkerCrashedError) and "work[2]" in str(values[2])
    assert [v for k, v in enumerate(values) if k != 2] == [0, 10, 30, 40, 50]
    assert graph.results["total"] == "Ancestor task work[2] failed; task not run"


PIPELINE = """
import os, time

def keys():
    return list(range(6))

async def work(k):
    import asyncio
    folder = os.environ["EXPAND_FOLDER"]
    with open(os.path.join(folder, f"ran-{k}-{time.monotonic_ns()}"), "w"):
        pass
    while k >= 3 and not os.path.exists(os.path.join(folder, "go")):
        await asyncio.sleep(0.01)
    return k * 10
"""

MAIN = """
import sys, taskmap
sys.path.insert(0, sys.argv[1])
import expand_pipeline as p
graph = taskmap.create_graph({"keys": p.keys, "work": p.work}, {"keys": [], "work": ["keys"]},
                             io_bound=["work"], expand={"work": "keys"}, checkpoint=sys.argv[2])
taskmap.run_parallel_async(graph, ncores=2)
"""


def test_a_run_killed_halfway_through_the_elements_resumes_with_the_unfinished_ones(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    (tmp_path / "expand_pipeline.py").write_text(PIPELINE)
    store = tmp_path / "run.db"
    monkeypatch.setenv("EXPAND_FOLDER", str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, str(tmp_path), str(store)], start_new_session=True, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 30
        while sum(1 for f in os.listdir(tmp_path) if f.startswith("ran-")) < 6:  # 0-2 done, 3-5 waiting
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(0.3)  # (the store commits every few milliseconds)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers
        proc.wait()
    ran = lambda k: sum(1 for f in os.listdir(tmp_path) if f.startswith(f"ran-{k}-"))  # noqa: E731
    assert [ran(k) for k in range(6)] == [1] * 6
    monkeypatch.syspath_prepend(str(tmp_path))
    import expand_pipeline as p

    (tmp_path / "go").touch()
    graph = taskmap.create_graph(
        {"keys": p.keys, "work": p.work},
        {"keys": [], "work": ["keys"]},
        io_bound=["work"],
        expand={"work": "keys"},
        checkpoint=store,
    )
    taskmap.run_parallel_async(graph, ncores=2)
    assert graph.results["work"] == [0, 10, 20, 30, 40, 50]
    # only the elements that had not finished ran again
    assert [ran(k) for k in range(6)] == [1, 1, 1, 2, 2, 2]
    graph.checkpoint.close()


# -- expanded against the equivalent static graph ----------------------------------


def maybe_fail(x):
    if x < 0:
        raise ValueError(f"negative {x}")
    return x * 2


def plus_one(x):
    return x + 1


def as_list(*xs):
    return list(xs)


@settings(max_examples=40, deadline=None)
@given(items=st.lists(st.integers(-3, 20), max_size=8), runner=st.sampled_from([taskmap.run, taskmap.run_async]))
def test_an_expanded_graph_gives_what_the_same_graph_written_out_gives(items, runner):
    funcs = {"items": lambda: items, "double": maybe_fail, "inc": plus_one, "total": sum}
    deps = {"items": [], "double": ["items"], "inc": ["double"], "total": ["inc"]}
    expanded = runner(taskmap.create_graph(funcs, deps, expand={"double": "items", "inc": "double"}))
    static_funcs = {"total": lambda *xs: sum(xs)}
    static_deps: dict = {"total": []}
    for i, x in enumerate(items):
        static_funcs[f"item_{i}"] = lambda x=x: x
        static_funcs[f"double_{i}"] = maybe_fail
        static_funcs[f"inc_{i}"] = plus_one
        static_deps.update({f"item_{i}": [], f"double_{i}": [f"item_{i}"], f"inc_{i}": [f"double_{i}"]})
        static_deps["total"].append(f"inc_{i}")
    static = runner(taskmap.create_graph(static_funcs, static_deps))

    def same(a, b):
        if isinstance(a, Exception):
            return type(a) is type(b) and a.args == b.args
        if isinstance(a, str):  # an ancestor string: the element's name against the task's
            return a == b.replace("double_", "double[").replace(" failed", "] failed", 1)
        return a == b

    for task in ("double", "inc"):
        got, want = expanded.results[task], [static.results[f"{task}_{i}"] for i in range(len(items))]
        assert len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True)), (got, want)
    want_total = static.results["total"]
    if isinstance(want_total, str):  # skipped for the first failure either saw
        assert expanded.results["total"].startswith("Ancestor task double[")
    else:
        assert expanded.results["total"] == want_total


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_a_run_handle_yields_each_element_and_then_its_task(runner):
    options = {"ncores": 2} if runner in PARALLEL else {}
    handle = taskmap.start(etl(), runner=runner.__name__, **options)
    order = [str(task) for task, _ in handle.as_completed()]
    handle.wait()
    assert sorted(order) == sorted(
        [
            "list_files",
            "config",
            "total",
            "parse",
            "clean",
            *(f"{t}[{i}]" for t in ("parse", "clean") for i in range(4)),
        ]
    )
    assert order.index("parse") > max(order.index(f"parse[{i}]") for i in range(4))


async def nap(k):
    await asyncio.sleep(0.05)
    return k


async def hang_on_one(k):
    await asyncio.sleep(30 if k == 1 else 0)
    return k


@pytest.mark.parametrize("runner", RUNNERS[1:], ids=ids)
def test_a_limit_holds_per_element(runner):
    funcs = {"keys": lambda: list(range(4)), "fetch": nap}
    graph = taskmap.create_graph(
        funcs, {"keys": [], "fetch": ["keys"]}, io_bound=["fetch"], expand={"fetch": "keys"}, uses={"fetch": "api"}
    )
    run(runner, graph, limits={"api": 1}, summary=True)
    assert graph.results["fetch"] == [0, 1, 2, 3]
    spans = sorted((t.start, t.end) for t in graph.last_run.tasks if str(t.name).startswith("fetch["))
    assert len(spans) == 4
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("runner", PARALLEL, ids=ids)
def test_a_time_limit_holds_per_element(runner):
    funcs = {"keys": lambda: [0, 1, 2], "work": hang_on_one}
    graph = taskmap.create_graph(funcs, {"keys": [], "work": ["keys"]}, io_bound=["work"], expand={"work": "keys"})
    run(runner, graph, timeout={"work": 0.5})
    values = graph.results["work"]
    assert values[0] == 0 and values[2] == 2
    assert isinstance(values[1], taskmap.TaskTimeoutError) and "work[1]" in str(values[1])


def _prints_and_fails_on_two(x):
    print(f"parsing {x}")
    if x == 2:
        raise ValueError("bad 2")
    return x


@pytest.mark.parametrize("runner", ["run", "run_parallel_async"])
def test_each_element_has_its_output_and_a_failed_one_shows_it_in_the_summary(runner):
    graph = taskmap.create_graph(
        {"files": lambda: [1, 2, 3], "parse": _prints_and_fails_on_two},
        {"files": [], "parse": ["files"]},
        expand={"parse": "files"},
    )
    kwargs = {"ncores": 2} if runner != "run" else {}
    graph = getattr(taskmap, runner)(graph, output="capture", **kwargs)
    assert {str(k): v for k, v in graph.output.items()} == {f"parse[{k}]": f"parsing {k + 1}\n" for k in range(3)}
    text = str(taskmap.summarize(graph))
    assert "output of failed task parse[1]" in text and "parsing 2" in text
    assert "parsing 1" not in text
