"""End-to-end tests of the in-process runners ``run`` and ``run_async``
through the public API (DESIGN §2)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from _tasks import a, b, c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskmap
from taskmap.observe.logs import setup_loggers

RUNNERS = [taskmap.run, taskmap.run_async]
REPO = Path(__file__).resolve().parent.parent


def ids(runner):
    return runner.__name__


async def async_a():
    await asyncio.sleep(0)
    return 5


async def async_b(x):
    await asyncio.sleep(0.001)
    return x + 10


ERROR = RuntimeError("some error", 7)


def raise_error(*args):
    raise ERROR


async def async_raise_error(*args):
    await asyncio.sleep(0)
    raise ERROR


_names = itertools.count()


@pytest.fixture
def log_name():
    """A graph name of its own; taskmap's handlers for it are removed after."""
    name = f"tm-test-{os.getpid()}-{next(_names)}"
    yield name
    setup_loggers(name, {})


@contextlib.contextmanager
def nobody_listening():
    """No handler anywhere: pytest's own log capture, which it attaches to the
    root logger while the test body runs, is taken away meanwhile."""
    saved = logging.root.handlers[:]
    logging.root.handlers.clear()
    try:
        yield
    finally:
        logging.root.handlers[:] = saved


# -- semantics ------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_arguments_in_dependency_order_with_none_left_out(runner):
    funcs = {
        "a": a,
        "none": lambda: None,
        "b": b,
        "c": c,
        "t": lambda *xs: xs,
        "empty": lambda *xs: xs,
    }
    deps = {
        "a": [],
        "none": [],
        "b": ["none", "a"],
        "c": ["b", "a"],
        "t": ["none", "c", "b", "a", "none"],
        "empty": ["none"],
    }
    graph = taskmap.create_graph(funcs, deps)
    returned = runner(graph)
    assert returned is graph
    assert graph.results == {"a": 5, "none": None, "b": 15, "c": 40, "t": (40, 15, 5), "empty": ()}
    assert sorted(graph.done) == sorted(deps)
    assert isinstance(graph.done, list)


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_original_example_graphs(runner):
    deps = {"c": ["a", "b"], "b": ["a"], "a": []}
    graph = runner(taskmap.create_graph({"a": a, "b": b, "c": c}, deps))
    assert graph.results == {"a": 5, "b": 15, "c": 40}


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
@pytest.mark.parametrize("io", [False, True], ids=["cpu", "io"])
def test_sync_and_coroutine_functions_mix(runner, io):
    funcs = {"a": async_a, "b": b, "c": async_b, "d": c, "e": a}
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["c", "e"], "e": []}
    graph = taskmap.create_graph(funcs, deps, io_bound=list(deps) if io else [])
    runner(graph)
    assert graph.results == {"a": 5, "b": 15, "c": 25, "d": 50, "e": 5}


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_task_names_of_any_hashable_type(runner):
    deps = {1: [], (2, "x"): [1], "three": [(2, "x"), 1]}
    funcs = {1: a, (2, "x"): b, "three": c}
    graph = runner(taskmap.create_graph(funcs, deps))
    assert graph.results == {1: 5, (2, "x"): 15, "three": 40}


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
@pytest.mark.parametrize("failing", [raise_error, async_raise_error], ids=["sync", "async"])
@pytest.mark.parametrize("io", [False, True], ids=["cpu", "io"])
def test_failure_result_is_the_exception_and_descendants_are_skipped(runner, failing, io):
    calls = []

    def record(name, value):
        def f(*args):
            calls.append(name)
            return value

        return f

    funcs = {
        "up": record("up", 1),
        "d": failing,
        "child": record("child", 2),
        "grandchild": record("grandchild", 3),
        "mixed": record("mixed", 4),
        "unrelated": record("unrelated", 5),
        "after_unrelated": record("after_unrelated", 6),
    }
    deps = {
        "up": [],
        "d": ["up"],
        "child": ["d"],
        "grandchild": ["child", "up"],
        "mixed": ["unrelated", "grandchild"],
        "unrelated": [],
        "after_unrelated": ["unrelated"],
    }
    graph = taskmap.create_graph(funcs, deps, io_bound=["d"] if io else [])
    runner(graph)

    error = graph.results["d"]
    assert error is ERROR
    assert error.__class__ is RuntimeError and error.args == ("some error", 7)
    assert error.__context__ is None  # no stray exception from the runner
    message = "Ancestor task d failed; task not run"
    for skipped in ("child", "grandchild", "mixed"):
        assert graph.results[skipped] == message
    assert graph.results["unrelated"] == 5 and graph.results["after_unrelated"] == 6
    assert graph.results["up"] == 1
    assert sorted(graph.done) == sorted(deps)
    assert sorted(calls) == ["after_unrelated", "unrelated", "up"]


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_two_independent_failures(runner):
    def bad1():
        raise ValueError("one")

    def bad2(x):
        raise KeyError("two")

    deps = {"x": [], "bad1": [], "bad2": ["x"], "k1": ["bad1"], "k2": ["bad2"], "both": ["bad1", "bad2"]}
    funcs = {"x": a, "bad1": bad1, "bad2": bad2, "k1": b, "k2": b, "both": c}
    graph = runner(taskmap.create_graph(funcs, deps))
    assert isinstance(graph.results["bad1"], ValueError)
    assert isinstance(graph.results["bad2"], KeyError)
    assert graph.results["k1"] == "Ancestor task bad1 failed; task not run"
    assert graph.results["k2"] == "Ancestor task bad2 failed; task not run"
    assert graph.results["both"] in (
        "Ancestor task bad1 failed; task not run",
        "Ancestor task bad2 failed; task not run",
    )


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
@pytest.mark.parametrize("failing", [raise_error, async_raise_error], ids=["sync", "async"])
def test_raise_errors(runner, failing):
    ran = []
    deps = {"d": [], "child": ["d"]}
    funcs = {"d": failing, "child": lambda *a: ran.append("child")}
    graph = taskmap.create_graph(funcs, deps)
    with pytest.raises(taskmap.TaskFailedError) as info:
        runner(graph, raise_errors=True)
    exc = info.value
    assert isinstance(exc, RuntimeError)
    assert exc.__cause__ is ERROR
    assert exc.task == "d"
    text = str(exc)
    assert "some error" in text
    assert "'d'" in text
    if runner is taskmap.run_async:
        assert "check your logs" in text
    assert graph.results["d"] is ERROR
    assert ran == []


def test_run_raise_errors_stops_at_first_failure():
    ran = []
    deps = {"first": [], "bad": ["first"], "later": ["first"], "last": ["later"]}
    funcs = {
        "first": lambda: ran.append("first") or 1,
        "bad": raise_error,
        "later": lambda x: ran.append("later"),
        "last": lambda *x: ran.append("last"),
    }
    graph = taskmap.create_graph(funcs, deps)
    with pytest.raises(taskmap.TaskFailedError):
        taskmap.run(graph, raise_errors=True)
    assert len(ran) <= 2  # "bad" or "later" may go first; "last" never runs
    assert "last" not in ran


def test_run_async_raise_errors_stops_promptly():
    async def slow():
        await asyncio.sleep(5)
        return "slow"

    async def failing():
        await asyncio.sleep(0.05)
        raise ValueError("fast failure")

    deps = {"slow": [], "failing": [], "after_slow": ["slow"]}
    funcs = {"slow": slow, "failing": failing, "after_slow": b}
    graph = taskmap.create_graph(funcs, deps, io_bound=["slow", "failing"])
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="check your logs") as info:
        taskmap.run_async(graph, raise_errors=True)
    assert time.perf_counter() - start < 2
    assert isinstance(info.value.__cause__, ValueError)
    assert "fast failure" in str(info.value)
    assert "slow" not in graph.results
    assert graph.in_progress == ["slow"]


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_done_and_results_at_creation_are_honoured(runner):
    calls = []

    def counted(name, f):
        def g(*args):
            calls.append(name)
            return f(*args)

        return g

    deps = {"a": [], "b": ["a"], "c": ["a", "b"], "d": [], "e": ["d"]}
    funcs = {
        "a": counted("a", a),
        "b": counted("b", b),
        "c": counted("c", c),
        "d": counted("d", lambda: "never"),
        "e": counted("e", lambda *args: args),
    }
    # "a" done with a cached result; "d" done with no result: "e" gets nothing
    graph = taskmap.create_graph(funcs, deps, done=["a", "d"], results={"a": 100})
    runner(graph)
    assert sorted(calls) == ["b", "c", "e"]
    assert graph.results == {"a": 100, "b": 110, "c": 230, "e": ()}
    assert sorted(graph.done) == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_nothing_to_do(runner):
    deps = {"a": [], "b": ["a"]}
    graph = taskmap.create_graph({"a": a, "b": b}, deps, done=["a", "b"], results={"a": 1, "b": 2})
    assert runner(graph).results == {"a": 1, "b": 2}


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_rerun_after_reset_failed_tasks_runs_only_what_is_needed(runner):
    calls = []
    broken = {"flag": True}

    def counted(name, f):
        def g(*args):
            calls.append(name)
            return f(*args)

        return g

    def flaky(x):
        if broken["flag"]:
            raise ValueError("flaky")
        return x * 2

    deps = {"a": [], "f": ["a"], "g": ["f"], "h": ["g", "a"], "w": [], "x": ["w"]}
    funcs = {
        "a": counted("a", a),
        "f": counted("f", flaky),
        "g": counted("g", b),
        "h": counted("h", c),
        "w": counted("w", a),
        "x": counted("x", b),
    }
    graph = runner(taskmap.create_graph(funcs, deps))
    assert sorted(calls) == ["a", "f", "w", "x"]
    assert isinstance(graph.results["f"], ValueError)

    calls.clear()
    broken["flag"] = False
    graph = taskmap.reset_failed_tasks(graph)
    assert sorted(graph.done) == ["a", "w", "x"]
    runner(graph)
    assert sorted(calls) == ["f", "g", "h"]
    assert graph.results == {"a": 5, "f": 10, "g": 20, "h": 45, "w": 5, "x": 15}

    calls.clear()
    runner(graph)  # everything done: nothing runs
    assert calls == []

    taskmap.reset_tasks(graph, ["g"])
    runner(graph)
    assert sorted(calls) == ["g", "h"]


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_wrong_argument_count_is_that_tasks_type_error(runner):
    async def one_arg_async(x):
        return x

    deps = {
        "a": [],
        "takes_none": ["a"],
        "async_one": ["a", "a"],
        "io_none": ["a"],
        "child": ["takes_none"],
        "fine": ["a"],
    }
    funcs = {
        "a": a,
        "takes_none": lambda: 1,
        "async_one": one_arg_async,
        "io_none": lambda: 1,
        "child": b,
        "fine": b,
    }
    graph = runner(taskmap.create_graph(funcs, deps, io_bound=["io_none"]))
    for task in ("takes_none", "async_one", "io_none"):
        assert isinstance(graph.results[task], TypeError), task
    assert graph.results["child"] == "Ancestor task takes_none failed; task not run"
    assert graph.results["fine"] == 15


def test_run_async_accepts_and_ignores_sleep():
    async def quick():
        return 1

    deps = {f"t{i}": [] for i in range(20)}
    graph = taskmap.create_graph(dict.fromkeys(deps, quick), deps)
    start = time.perf_counter()
    taskmap.run_async(graph, sleep=1.0)
    taskmap.run_async(taskmap.create_graph(dict.fromkeys(deps, quick), deps), 1.0)
    assert time.perf_counter() - start < 1.0
    assert graph.results == dict.fromkeys(deps, 1)


def test_run_async_overlaps_coroutine_waits():
    async def wait():
        await asyncio.sleep(0.2)
        return "ok"

    deps = {f"t{i}": [] for i in range(10)}
    graph = taskmap.create_graph(dict.fromkeys(deps, wait), deps, io_bound=list(deps)[:5])
    start = time.perf_counter()
    taskmap.run_async(graph)
    elapsed = time.perf_counter() - start
    assert graph.results == dict.fromkeys(deps, "ok")
    assert elapsed < 0.8, f"10 waits of 0.2 s took {elapsed:.2f} s: they did not overlap"


def test_run_async_overlaps_io_bound_plain_functions_in_threads():
    threads = set()

    def blocking():
        threads.add(threading.get_ident())
        time.sleep(0.2)
        return "ok"

    deps = {f"t{i}": [] for i in range(10)}
    graph = taskmap.create_graph(dict.fromkeys(deps, blocking), deps, io_bound=list(deps))
    start = time.perf_counter()
    taskmap.run_async(graph)
    elapsed = time.perf_counter() - start
    assert graph.results == dict.fromkeys(deps, "ok")
    assert elapsed < 0.8, f"10 io-bound sleeps of 0.2 s took {elapsed:.2f} s"
    assert threading.get_ident() not in threads
    assert len(threads) > 1


def test_run_async_io_threads_do_not_block_cpu_tasks():
    order = []

    def io_wait():
        time.sleep(0.3)
        order.append("io")
        return "io"

    def cpu():
        order.append("cpu")
        return "cpu"

    graph = taskmap.create_graph({"io": io_wait, "cpu": cpu}, {"io": [], "cpu": []}, io_bound=["io"])
    taskmap.run_async(graph)
    assert order == ["cpu", "io"]


def test_run_awaits_coroutines_sequentially():
    async def wait():
        await asyncio.sleep(0.05)
        return 1

    deps = {"x": [], "y": ["x"]}
    graph = taskmap.run(taskmap.create_graph({"x": wait, "y": b}, deps))
    assert graph.results == {"x": 1, "y": 11}


def test_run_async_from_inside_a_running_loop():
    deps = {"x": [], "y": ["x"]}
    graph = taskmap.create_graph({"x": async_a, "y": async_b}, deps)

    async def main():
        return taskmap.run_async(graph)

    assert asyncio.run(main()) is graph
    assert graph.results == {"x": 5, "y": 15}


def test_keyboard_interrupt_ends_run_async_and_keeps_finished_results():
    async def interrupt(x):
        await asyncio.sleep(0.05)
        raise KeyboardInterrupt

    async def slow():
        await asyncio.sleep(5)

    deps = {"first": [], "interrupt": ["first"], "slow": []}
    graph = taskmap.create_graph({"first": a, "interrupt": interrupt, "slow": slow}, deps, io_bound=["slow"])
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        taskmap.run_async(graph)
    assert time.perf_counter() - start < 2
    assert graph.results == {"first": 5}
    assert "slow" in graph.in_progress


# -- logging -----------------------------------------------------------------


def graph_with_failure(name, logging_config=None):
    deps = {"a": [], "b": ["a"], "bad": [], "after_bad": ["bad"]}
    funcs = {"a": a, "b": b, "bad": raise_error, "after_bad": b}
    return taskmap.create_graph(funcs, deps, name=name, logging_config=logging_config)


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_nothing_on_stderr_by_default(runner, log_name, capfd):
    with nobody_listening():
        runner(graph_with_failure(log_name))
        runner(graph_with_failure(log_name, {"write": False, "level": logging.INFO}))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_nothing_on_stderr_by_default_in_a_fresh_interpreter(tmp_path):
    script = textwrap.dedent(
        """
        import asyncio, taskmap

        def bad():
            raise RuntimeError("boom")

        async def abad():
            raise RuntimeError("aboom")

        deps = {"a": [], "bad": [], "abad": [], "c": ["bad", "abad"]}
        funcs = {"a": lambda: 1, "bad": bad, "abad": abad, "c": lambda *x: x}
        taskmap.run(taskmap.create_graph(funcs, deps))
        taskmap.run_async(taskmap.create_graph(funcs, deps, io_bound=["a"]))
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
    assert proc.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no log file either


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_stderr_option_prints_the_original_lines(runner, log_name, capfd):
    runner(graph_with_failure(log_name, {"stderr": True}))
    _, err = capfd.readouterr()
    lines = err.splitlines()
    pid = os.getpid()
    for task in ("a", "b", "bad"):
        assert any(line.endswith(f"{log_name}-worker - INFO - pid {pid}: starting task {task}") for line in lines), (
            task,
            err,
        )
    for task in ("a", "b"):
        assert any(line.endswith(f"{log_name}-worker - INFO - pid {pid}: finished task {task}") for line in lines)
    assert any(line.endswith(f"{log_name}-manager - INFO - pid {pid}: queueing task b") for line in lines)
    assert any(line.endswith(f"{log_name}-worker - ERROR - pid {pid}: failed task bad") for line in lines)
    assert "RuntimeError: ('some error', 7)" in err  # the traceback is printed
    assert "marking children ['after_bad'] of failed task bad" in err
    assert "starting task after_bad" not in err
    # lines look like the original's: "<asctime> - <logger> - <LEVEL> - <message>"
    first = lines[0].split(" - ")
    assert len(first) == 4 and first[1].startswith(log_name) and first[2] in ("INFO", "ERROR")


def test_stderr_option_respects_level(log_name, capfd):
    taskmap.run(graph_with_failure(log_name, {"stderr": True, "level": logging.ERROR}))
    _, err = capfd.readouterr()
    assert "starting task" not in err and "queueing" not in err
    assert "ERROR - pid" in err and "failed task bad" in err


def test_latest_logging_config_for_a_name_wins(log_name, capfd):
    taskmap.run(graph_with_failure(log_name, {"stderr": True}))
    capfd.readouterr()
    taskmap.run(graph_with_failure(log_name))  # default config: quiet again
    _, err = capfd.readouterr()
    assert err == ""
    assert not [h for h in logging.getLogger(f"{log_name}-worker").handlers if hasattr(h, "_taskmap_handler")]


def _log_file(tmp_path, name) -> Path:
    files = [Path(p) for p in glob.glob(str(tmp_path / f"{name}*.log"))]
    assert len(files) == 1, list(tmp_path.iterdir())
    return files[0]


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_write_creates_a_log_file_in_progress_can_parse(runner, log_name, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    graph = runner(graph_with_failure(log_name, {"write": True}))
    setup_loggers(log_name, {})  # closes (flushes) the file
    path = _log_file(tmp_path, log_name)
    text = path.read_text()
    assert "starting task a" in text and "finished task b" in text and "failed task bad" in text
    assert taskmap.in_progress(str(path)) == {"in_progress": set(), "queued": set()}
    assert graph.results["b"] == 15
    assert capfd.readouterr().err == ""  # a file was asked for, not stderr


class Crash(BaseException):
    """Stands for the process dying mid-task."""


def test_in_progress_reports_what_run_was_doing_when_it_died(log_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def crash(*args):
        raise Crash

    # cpu order by critical path: "a" (has a child), then "crash", "z"
    deps = {"a": [], "b": ["a"], "crash": [], "z": []}
    funcs = {"a": a, "b": b, "crash": crash, "z": a}
    graph = taskmap.create_graph(funcs, deps, name=log_name, logging_config={"write": True})
    with pytest.raises(Crash):
        taskmap.run(graph)
    setup_loggers(log_name, {})
    report = taskmap.in_progress(str(_log_file(tmp_path, log_name)))
    assert report["in_progress"] == {"crash"}
    assert report["queued"] == {"b", "z"} - set(graph.done)
    assert report["queued"]  # at least one task was waiting


def test_in_progress_reports_what_run_async_was_doing_when_it_died(log_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def crash():
        await asyncio.sleep(0.05)
        raise Crash

    async def slow():
        await asyncio.sleep(5)

    deps = {"slow": [], "crash": [], "after": ["crash"]}
    funcs = {"slow": slow, "crash": crash, "after": b}
    graph = taskmap.create_graph(funcs, deps, name=log_name, logging_config={"write": True}, io_bound=["slow", "crash"])
    with pytest.raises(Crash):
        taskmap.run_async(graph)
    setup_loggers(log_name, {})
    report = taskmap.in_progress(str(_log_file(tmp_path, log_name)))
    assert report["in_progress"] == {"slow", "crash"}
    assert sorted(graph.in_progress) == ["slow"]


def _spy_logging(monkeypatch):
    """Count LogRecords made, and logging checks made, per logger name."""
    records: list[str] = []
    checks: list[str] = []
    make_record = logging.Logger.makeRecord
    is_enabled_for = logging.Logger.isEnabledFor
    has_handlers = logging.Logger.hasHandlers

    def spy_make_record(self, *args, **kwargs):
        records.append(self.name)
        return make_record(self, *args, **kwargs)

    def spy_is_enabled_for(self, level):
        checks.append(self.name)
        return is_enabled_for(self, level)

    def spy_has_handlers(self):
        checks.append(self.name)
        return has_handlers(self)

    monkeypatch.setattr(logging.Logger, "makeRecord", spy_make_record)
    monkeypatch.setattr(logging.Logger, "isEnabledFor", spy_is_enabled_for)
    monkeypatch.setattr(logging.Logger, "hasHandlers", spy_has_handlers)
    return records, checks


def _wide_graph(name, n):
    """n tasks, a tenth of them failing (with children), some coroutines."""
    funcs, deps = {}, {}
    for i in range(n):
        if i % 10 == 0:
            funcs[f"t{i}"] = raise_error
        elif i % 3 == 0:
            funcs[f"t{i}"] = async_a
        else:
            funcs[f"t{i}"] = lambda *args: 1
        deps[f"t{i}"] = [f"t{i - 1}"] if i % 10 == 1 else []
    return taskmap.create_graph(funcs, deps, name=name, io_bound=[f"t{i}" for i in range(0, n, 7)])


@pytest.mark.parametrize("runner", RUNNERS, ids=ids)
def test_no_log_record_per_task_when_nobody_listens(runner, log_name, monkeypatch):
    records, checks = _spy_logging(monkeypatch)
    ours = lambda names: [n for n in names if n.startswith(log_name)]  # noqa: E731

    with nobody_listening():
        small = _wide_graph(log_name, 10)
        runner(small)
        checks_small = len(ours(checks))
        big = _wide_graph(log_name, 500)
        del checks[:]
        runner(big)
        checks_big = len(ours(checks))

    assert isinstance(big.results["t10"], RuntimeError)  # failures happened
    assert ours(records) == []  # not one LogRecord was made
    assert checks_big == checks_small  # a fixed number of checks per run, not per task

    # the spy works: with a handler on the worker logger, records are made per task
    logging.getLogger(f"{log_name}-worker").addHandler(logging.NullHandler())
    try:
        runner(_wide_graph(log_name, 50))
    finally:
        logging.getLogger(f"{log_name}-worker").handlers.clear()
    assert len(ours(records)) >= 50


# -- property: the runners agree with a plain topological evaluation ----------------


def _mix(i: int, args: tuple) -> int:
    h = i + 1
    for x in args:
        h = (h * 1_000_003 + x) % 2_305_843_009_213_693_951
    return h


def _make_func(i: int, kind: str, is_async: bool):
    def compute(*args):
        if kind == "raise":
            raise ValueError(f"t{i}", len(args))
        if kind == "none":
            return None
        return _mix(i, args)

    if is_async:

        async def coro(*args):
            await asyncio.sleep(0)
            return compute(*args)

        return coro
    return compute


@st.composite
def random_graphs(draw):
    n = draw(st.integers(1, 40))
    deps = {}
    specs = {}
    for i in range(n):
        parents = draw(st.lists(st.integers(0, i - 1), max_size=min(i, 4), unique=True)) if i else []
        deps[f"t{i}"] = [f"t{p}" for p in parents]
        kind = draw(st.sampled_from(["value"] * 6 + ["none", "raise"]))
        specs[f"t{i}"] = (i, kind, draw(st.booleans()))
    io_bound = [t for t in deps if draw(st.booleans())]
    order = draw(st.permutations(list(deps)))  # dict order need not be topological
    deps = {t: deps[t] for t in order}
    return deps, specs, io_bound


def _reference(deps: dict, specs: dict) -> tuple[dict, dict]:
    """Plain evaluation in index order (a topological order by construction).
    Returns results (skipped tasks: the set of their failed ancestors)."""
    results: dict = {}
    failed_ancestors: dict = {}
    for name in sorted(deps, key=lambda t: specs[t][0]):
        i, kind, _ = specs[name]
        bad = set()
        for p in deps[name]:
            if isinstance(results[p], Exception):
                bad.add(p)
            bad |= failed_ancestors.get(p, set())
        if bad:
            failed_ancestors[name] = bad
            results[name] = None
            continue
        args = tuple(results[p] for p in deps[name] if results[p] is not None)
        try:
            results[name] = _make_func(i, kind, False)(*args)
        except ValueError as error:
            results[name] = error
    return results, failed_ancestors


def _check_against_reference(graph, deps, specs):
    expected, failed_ancestors = _reference(deps, specs)
    assert sorted(graph.done) == sorted(deps)
    assert set(graph.results) == set(deps)
    for name in deps:
        got = graph.results[name]
        if name in failed_ancestors:
            assert got in {f"Ancestor task {t} failed; task not run" for t in failed_ancestors[name]}, name
        elif isinstance(expected[name], Exception):
            assert type(got) is type(expected[name]) and got.args == expected[name].args, name
        else:
            assert got == expected[name], name


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_runners_agree_with_topological_evaluation(case):
    deps, specs, io_bound = case
    for runner in RUNNERS:
        funcs = {name: _make_func(*specs[name]) for name in deps}
        graph = taskmap.create_graph(funcs, deps, io_bound=io_bound)
        runner(graph)
        _check_against_reference(graph, deps, specs)


# -- one definition of the runners' options (taskmap/options.py) -----------------


def test_every_option_is_documented_once_and_refused_where_it_cannot_apply():
    import inspect as _inspect

    from taskmap import options

    doc = options.__doc__
    for name in options.OPTIONS:
        assert f"``{name}``" in doc or f"``{name}``," in doc, name
    assert set(options.OPTIONS) == set(options.RunnerOptions.__annotations__)
    graph = taskmap.create_graph({"a": lambda: 1}, {"a": []})
    with pytest.raises(TypeError, match=r"run\(\) does not take memory_limit="):
        taskmap.run(graph, memory_limit=1 << 30)
    with pytest.raises(TypeError, match=r"run_async\(\) does not take shm_threshold="):
        taskmap.run_async(graph, shm_threshold=None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'progres'"):
        taskmap.run(graph, progres=True)
    # the runners' signatures carry the options as one typed **options
    for runner in (taskmap.run, taskmap.run_async, taskmap.run_parallel, taskmap.run_parallel_async):
        assert "options" in _inspect.signature(runner).parameters
