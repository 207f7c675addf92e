"""End-to-end tests of the parallel runtime through the public API."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from _tasks import a, b, c

import taskmap
from taskmap.runtime.pool import get_pool

RUNNERS = [taskmap.run_parallel, taskmap.run_parallel_async]


def boom():
    raise ValueError("boom", 42)


async def aio_sleep(seconds=0.3):
    await asyncio.sleep(seconds)
    return seconds


def busy(seconds):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return os.getpid()


@pytest.mark.parametrize("runner", RUNNERS)
def test_arguments_in_order_none_skipped(runner):
    funcs = {
        "a": a,
        "none": lambda: None,
        "b": b,
        "c": c,
        "t": lambda *xs: tuple(xs),
    }
    deps = {"a": [], "none": [], "b": ["a", "none"], "c": ["b", "a"], "t": ["none", "c", "b", "a"]}
    graph = runner(taskmap.create_graph(funcs, deps), ncores=2)
    assert graph.results == {"a": 5, "none": None, "b": 15, "c": 40, "t": (40, 15, 5)}
    assert sorted(graph.done) == sorted(deps)


@pytest.mark.parametrize("runner", RUNNERS)
def test_failure_is_the_exception_and_descendants_skip(runner):
    funcs = {"bad": boom, "child": b, "grandchild": b, "other": a, "other2": b}
    deps = {"bad": [], "child": ["bad"], "grandchild": ["child"], "other": [], "other2": ["other"]}
    graph = runner(taskmap.create_graph(funcs, deps), ncores=2)
    err = graph.results["bad"]
    assert type(err) is ValueError and err.args == ("boom", 42)
    assert "in boom" in err.remote_traceback
    assert isinstance(err.__cause__, taskmap.RemoteTraceback)
    assert graph.results["child"] == "Ancestor task bad failed; task not run"
    assert graph.results["grandchild"] == "Ancestor task bad failed; task not run"
    assert graph.results["other2"] == 15
    assert len(graph.done) == 5


def test_raise_errors_async_runner():
    funcs = {"bad": boom, "slow": lambda: time.sleep(30)}
    graph = taskmap.create_graph(funcs, {"bad": [], "slow": []})
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="check your logs") as info:
        taskmap.run_parallel_async(graph, ncores=2, raise_errors=True)
    assert time.monotonic() - start < 10
    assert "'bad'" in str(info.value) and "boom" in str(info.value)
    assert type(info.value.__cause__) is ValueError


def test_raise_errors_run_parallel_names_task_and_message():
    graph = taskmap.create_graph({"bad": boom}, {"bad": []})
    with pytest.raises(taskmap.TaskFailedError, match="boom") as info:
        taskmap.run_parallel(graph, ncores=1, raise_errors=True)
    assert info.value.task == "bad"


def test_lambdas_and_closures_reach_workers():
    k = 7
    funcs = {"x": lambda: k, "y": (lambda n: lambda v: v * n)(3)}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, {"x": [], "y": ["x"]}), ncores=2)
    assert graph.results == {"x": 7, "y": 21}


def test_done_and_given_results_are_fed_to_children():
    funcs = {"a": boom, "b": b}
    graph = taskmap.create_graph(funcs, {"a": [], "b": ["a"]}, done=["a"], results={"a": 1})
    taskmap.run_parallel_async(graph, ncores=1)
    assert graph.results == {"a": 1, "b": 11}


def test_rerun_failed_tasks_only():
    calls_file_free = {"a": a, "bad": boom, "child": b}
    graph = taskmap.create_graph(calls_file_free, {"a": [], "bad": [], "child": ["bad"]})
    taskmap.run_parallel_async(graph, ncores=2)
    taskmap.reset_failed_tasks(graph)
    assert graph.done == ["a"]
    graph.funcs["bad"] = lambda: 1
    taskmap.run_parallel_async(graph, ncores=2)
    assert graph.results == {"a": 5, "bad": 1, "child": 11}


def test_does_not_poll():
    # sleep=5 is ignored: a 20-task chain would take >= 100 s if it slept
    funcs = {f"t{i}": (a if i == 0 else b) for i in range(20)}
    deps = {f"t{i}": ([f"t{i - 1}"] if i else []) for i in range(20)}
    for runner in RUNNERS:
        graph = taskmap.create_graph(funcs, deps)
        start = time.monotonic()
        runner(graph, sleep=5, ncores=2)
        assert time.monotonic() - start < 2.5
        assert graph.results["t19"] == 5 + 19 * 10


def test_io_tasks_overlap_their_waits():
    funcs = {f"io{i}": aio_sleep for i in range(40)}
    graph = taskmap.create_graph(funcs, {k: [] for k in funcs}, io_bound=list(funcs))
    taskmap.run_parallel_async(graph, ncores=2)  # warm the pool
    taskmap.reset_tasks(graph, list(funcs))
    start = time.monotonic()
    taskmap.run_parallel_async(graph, ncores=2)
    assert time.monotonic() - start < 1.5  # 40 x 0.3 s if they did not overlap


def pid_once_all_run(path, n, seconds=20):
    """Note this task's start in ``path``, wait (at most ``seconds``) until
    ``n`` tasks started, return this worker's pid."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(path) as f:
            if f.read().count("\n") >= n:
                break
        time.sleep(0.005)
    return os.getpid()


def test_cpu_tasks_spread_over_workers(tmp_path):
    # each waits until both run: at the same time, so in two workers (with a
    # sleep instead, a second worker still starting -- the pool had one
    # worker in the test before -- let the first worker run both in turn)
    path = str(tmp_path / "started")
    funcs = {"x": lambda: pid_once_all_run(path, 2), "y": lambda: pid_once_all_run(path, 2)}
    graph = taskmap.create_graph(funcs, {"x": [], "y": []})
    taskmap.run_parallel(graph, ncores=2)
    assert graph.results["x"] != graph.results["y"]  # two different pids


def test_pool_stays_warm_across_runs():
    graph = taskmap.create_graph({"p": os.getpid}, {"p": []})
    taskmap.run_parallel(graph, ncores=1)
    first = graph.results["p"]
    taskmap.reset_tasks(graph, ["p"])
    taskmap.run_parallel(graph, ncores=1)
    assert graph.results["p"] == first != os.getpid()


def test_plain_io_functions_run_in_threads_and_overlap():
    funcs = {f"s{i}": (lambda: time.sleep(0.3) or 1) for i in range(20)}
    graph = taskmap.create_graph(funcs, {k: [] for k in funcs}, io_bound=list(funcs))
    taskmap.run_parallel_async(graph, ncores=1)
    taskmap.reset_tasks(graph, list(funcs))
    start = time.monotonic()
    taskmap.run_parallel_async(graph, ncores=1)
    assert time.monotonic() - start < 1.5
    assert set(graph.results.values()) == {1}


def _die(code):
    os._exit(code)


def test_worker_exit_fails_only_its_task():
    funcs = {"die": lambda: _die(3), "child": b, "ok": lambda: busy(0.2), "ok2": b}
    deps = {"die": [], "child": ["die"], "ok": [], "ok2": ["ok"]}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2)
    err = graph.results["die"]
    assert isinstance(err, taskmap.WorkerCrashedError)
    assert err.exitcode == 3 and "'die'" in str(err) and "exit code 3" in str(err)
    assert graph.results["child"] == "Ancestor task die failed; task not run"
    assert isinstance(graph.results["ok2"], int)


def test_worker_killed_by_signal_is_named():
    funcs = {"kill": lambda: os.kill(os.getpid(), signal.SIGKILL), "ok": a}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, {"kill": [], "ok": []}), ncores=2)
    err = graph.results["kill"]
    assert isinstance(err, taskmap.WorkerCrashedError)
    assert err.signal_name == "SIGKILL" and "SIGKILL" in str(err)
    assert graph.results["ok"] == 5
    # the pool replaced the worker and keeps working
    taskmap.reset_tasks(graph, ["ok"])
    taskmap.run_parallel(graph, ncores=2)
    assert graph.results["ok"] == 5


class Unpicklable:
    def __reduce__(self):
        raise TypeError("no pickling for you")


def test_unserialisable_result_fails_only_that_task():
    funcs = {"bad": Unpicklable, "child": lambda x: x, "ok": a}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, {"bad": [], "child": ["bad"], "ok": []}), ncores=1)
    err = graph.results["bad"]
    assert isinstance(err, taskmap.SerializationError)
    assert "'bad'" in str(err) and "Unpicklable" in str(err)
    assert graph.results["child"].startswith("Ancestor task bad failed")
    assert graph.results["ok"] == 5


def test_unsendable_function_is_reported_before_the_run():
    import threading

    lock = threading.Lock()
    graph = taskmap.create_graph({"t": lambda: lock, "u": a}, {"t": [], "u": []})
    with pytest.raises(taskmap.SerializationError, match="'t'"):
        taskmap.run_parallel(graph, ncores=1)
    assert graph.results == {}


def test_big_arguments_and_results_cross_without_deadlock():
    size = 50 * 1024 * 1024

    def make():
        return b"x" * size

    def echo(blob):
        return blob + b"y"

    funcs = {"m0": make, "m1": make, "e0": echo, "e1": echo}
    deps = {"m0": [], "m1": [], "e0": ["m0"], "e1": ["m1"]}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2)
    assert len(graph.results["e0"]) == size + 1 and len(graph.results["e1"]) == size + 1


async def _ticker(seconds):
    """Measure the worst gap between 1 ms ticks of the worker's loop."""
    loop = asyncio.get_running_loop()
    worst, last, end = 0.0, loop.time(), loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(0.001)
        now = loop.time()
        worst = max(worst, now - last)
        last = now
    return worst


def test_long_cpu_task_does_not_freeze_io_loop():
    # the same ticker alone on the same worker first: what this machine's
    # load alone does to it (a busy machine may not run the worker for a while)
    alone = taskmap.run_parallel_async(
        taskmap.create_graph({"tick": lambda: _ticker(0.8)}, {"tick": []}, io_bound=["tick"]), ncores=1
    ).results["tick"]
    funcs = {"cpu": lambda: busy(1.0), "tick": lambda: _ticker(0.8)}
    graph = taskmap.create_graph(funcs, {"cpu": [], "tick": []}, io_bound=["tick"])
    taskmap.run_parallel_async(graph, ncores=1)
    # the worker's switch interval bounds the stall; 1 s if it froze
    assert graph.results["tick"] < 0.1 + 2 * alone, (graph.results["tick"], alone)


def test_ncores_and_nprocs_aliases():
    graph = taskmap.create_graph({"a": a}, {"a": []})
    taskmap.run_parallel(graph, nprocs=1)
    assert graph.results == {"a": 5}
    with pytest.raises(ValueError):
        taskmap.run_parallel(graph, ncores=1, nprocs=2)


def test_pool_shutdown_leaves_no_process():
    psutil = pytest.importorskip("psutil")
    graph = taskmap.create_graph({"a": a}, {"a": []})
    taskmap.run_parallel(graph, ncores=2)
    pids = [w.pid for w in get_pool().workers]
    assert pids and all(psutil.pid_exists(p) for p in pids)
    taskmap.runtime.pool.shutdown_pool()
    for p in pids:
        assert not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE


# -- chains sent ahead to one worker (pinned tasks) ---------------------------


def inc(x=0):
    return x + 1


def fail_at(x):
    if x == 5:
        raise KeyError("five")
    return x + 1


def _chain(n, func=inc, first=inc):
    funcs = {f"t{i}": (first if i == 0 else func) for i in range(n)}
    deps = {f"t{i}": ([f"t{i - 1}"] if i else []) for i in range(n)}
    return funcs, deps


@pytest.mark.parametrize("runner", RUNNERS)
def test_long_chain_gives_the_sequential_result(runner):
    funcs, deps = _chain(500)
    graph = runner(taskmap.create_graph(funcs, deps), ncores=2)
    assert [graph.results[f"t{i}"] for i in range(500)] == list(range(1, 501))
    assert len(graph.done) == 500


def test_failure_inside_a_pinned_chain_skips_the_rest():
    funcs, deps = _chain(40, func=fail_at)
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2)
    assert [graph.results[f"t{i}"] for i in range(5)] == [1, 2, 3, 4, 5]
    assert type(graph.results["t5"]) is KeyError
    for i in range(6, 40):
        assert graph.results[f"t{i}"] == "Ancestor task t5 failed; task not run"
    assert len(graph.done) == 40


def crash_at(x):
    if x == 5:
        os._exit(7)
    return x + 1


def test_crash_inside_a_pinned_chain_fails_that_task_and_skips_the_rest():
    funcs, deps = _chain(30, func=crash_at)
    funcs["side"] = lambda: busy(0.05)
    deps["side"] = []
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2)
    assert [graph.results[f"t{i}"] for i in range(5)] == [1, 2, 3, 4, 5]
    err = graph.results["t5"]
    assert isinstance(err, taskmap.WorkerCrashedError) and err.exitcode == 7
    for i in range(6, 30):
        assert graph.results[f"t{i}"] == "Ancestor task t5 failed; task not run"
    assert isinstance(graph.results["side"], int)


def test_pinned_chain_with_none_results_and_side_inputs():
    funcs = {
        "side": lambda: 100,
        "n0": lambda: None,
        "n1": lambda *xs: xs,  # gets () : None is left out
        "n2": lambda xs, side: (xs, side),
        "n3": lambda side, prev: [side, prev],
    }
    deps = {"side": [], "n0": [], "n1": ["n0"], "n2": ["n1", "side"], "n3": ["side", "n2"]}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2)
    assert graph.results["n1"] == ()
    assert graph.results["n2"] == ((), 100)
    assert graph.results["n3"] == [100, ((), 100)]


# -- random graphs against a plain topological evaluation --------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def node(i, fails):
    def task(*xs):
        if fails:
            raise ArithmeticError(i)
        return (i * 7 + sum(x if isinstance(x, int) else 1 for x in xs)) % 1000

    return task


async def anode(i, fails, *xs):
    await asyncio.sleep(0.001)
    return node(i, fails)(*xs)


def sequential(deps, fails):
    results = {}
    for name in sorted(deps, key=lambda n: int(n[1:])):
        if any(isinstance(results[p], (Exception, tuple)) for p in deps[name]):
            results[name] = ("skip",)  # some ancestor failed
            continue
        i = int(name[1:])
        results[name] = ArithmeticError(i) if i in fails else node(i, False)(*[results[p] for p in deps[name]])
    return results


@st.composite
def random_dags(draw):
    n = draw(st.integers(1, 40))
    deps = {}
    for i in range(n):
        parents = draw(st.lists(st.integers(0, max(i - 1, 0)), max_size=3, unique=True)) if i else []
        deps[f"t{i}"] = [f"t{p}" for p in parents]
    io = draw(st.sets(st.sampled_from(sorted(deps))))
    fails = draw(st.sets(st.integers(0, n - 1), max_size=3))
    return deps, io, fails


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags(), st.sampled_from(RUNNERS))
def test_random_graphs_match_sequential_evaluation(dag, runner):
    import functools

    deps, io, fails = dag
    funcs = {}
    for name in deps:
        i = int(name[1:])
        funcs[name] = functools.partial(anode, i, i in fails) if name in io else node(i, i in fails)
    graph = runner(taskmap.create_graph(funcs, deps, io_bound=io), ncores=2)
    expected = sequential(deps, fails)
    assert sorted(graph.done) == sorted(deps)
    for name, want in expected.items():
        got = graph.results[name]
        if isinstance(want, Exception):
            assert type(got) is type(want) and got.args == want.args, name
        elif isinstance(want, tuple) and want[0] == "skip":
            assert isinstance(got, str) and got.startswith("Ancestor task "), (name, got)
        else:
            assert got == want, name


# -- logging costs nothing unless asked; scheduling order; big messages -------


def test_no_log_record_per_task_when_nobody_listens(monkeypatch):
    import logging

    made = []
    make_record = logging.Logger.makeRecord

    def spy(self, *args, **kwargs):
        made.append(self.name)
        return make_record(self, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "makeRecord", spy)
    saved = logging.root.handlers[:]
    logging.root.handlers.clear()  # pytest's capture handler listens otherwise
    try:
        funcs = {f"t{i}": (boom if i % 10 == 0 else a) for i in range(200)}
        graph = taskmap.create_graph(funcs, {k: [] for k in funcs}, name="quiet-parallel")
        taskmap.run_parallel_async(graph, ncores=2)
    finally:
        logging.root.handlers[:] = saved
    assert isinstance(graph.results["t0"], ValueError)
    assert [n for n in made if n.startswith("quiet-parallel")] == []


def stamp(*_):
    busy(0.02)
    return time.monotonic()


def test_cpu_tasks_go_by_critical_path_not_fifo():
    funcs = {f"lone{i}": stamp for i in range(5)}
    funcs.update({f"c{i}": stamp for i in range(4)})
    deps = {f"lone{i}": [] for i in range(5)}  # listed first: FIFO would run them first
    deps.update({f"c{i}": ([f"c{i - 1}"] if i else []) for i in range(4)})
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=1)
    assert graph.results["c0"] < min(graph.results[f"lone{i}"] for i in range(5))


async def gate_io(seconds=0.05):
    await asyncio.sleep(seconds)


def jump_graph(critical=stamp):
    # ncores=1: 'long' runs, 'lone0' is sent ahead to wait behind it (more
    # cpu tasks are ready than workers); 50 ms in, 'gate' makes 'c0' ready,
    # the head of a chain of 3 (more critical than 'lone0')
    funcs = {"long": lambda: busy(0.4), "lone0": stamp, "lone1": stamp, "gate": gate_io}
    funcs.update({"c0": critical, "c1": stamp, "c2": stamp})
    deps = {"long": [], "lone0": [], "lone1": [], "gate": [], "c0": ["gate"], "c1": ["c0"], "c2": ["c1"]}
    return taskmap.create_graph(funcs, deps, io_bound=["gate"])


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_more_critical_task_goes_ahead_of_one_waiting_at_the_worker(runner):
    graph = runner(jump_graph(), ncores=1)
    # c0 (and its chain) ran before lone0, which was waiting at the worker
    # before c0 was ready: it did not wait for both 'long' and 'lone0'
    assert graph.results["c0"] < graph.results["c1"] < graph.results["c2"] < graph.results["lone0"]
    assert graph.results["lone0"] < graph.results["lone1"]
    assert graph.attempts.get("lone0", 1) == 1


def test_io_loop_keeps_serving_while_a_big_message_arrives():
    # the same ticker alone first: what this machine's load alone does to it
    alone = taskmap.run_parallel_async(
        taskmap.create_graph({"tick": lambda: _ticker(1.0)}, {"tick": []}, io_bound=["tick"]), ncores=1
    ).results["tick"]
    big = b"x" * (200 * 1024 * 1024)
    copy = _copy_seconds(big)
    funcs = {
        "tick": lambda: _ticker(2.0),
        "gate": lambda: busy(0.3),
        "big": lambda: None,
        "use": lambda blob, _gate: len(blob),
    }
    deps = {"tick": [], "gate": [], "big": [], "use": ["big", "gate"]}
    graph = taskmap.create_graph(funcs, deps, io_bound=["tick"], done=["big"], results={"big": big})
    taskmap.run_parallel_async(graph, ncores=1)
    assert graph.results["use"] == len(big)
    copy = max(copy, _copy_seconds(big))
    # Reading the 200 MB off the pipe happens in the reader thread, with the GIL
    # released; what still stalls the loop is copying the value out of the
    # message into fresh memory (under the GIL; about 0.2-0.5 s here, where one
    # copy of 200 MB measured in this process takes 0.16 s, and twice as long in
    # the machine's slow spells: the bound moves with it).  Reading it on the
    # loop thread would add the whole transfer (over 1.2 s measured here).
    assert graph.results["tick"] < alone + 0.45 + 2 * copy, (graph.results["tick"], alone, copy)


def _copy_seconds(value: bytes) -> float:
    """How long one copy of ``value`` into fresh memory takes here now."""
    start = time.perf_counter()
    copied = bytearray(value)
    took = time.perf_counter() - start
    del copied
    return took


async def raises_cancelled():
    raise asyncio.CancelledError("given up")


async def awaits_a_cancelled_future():
    fut = asyncio.get_running_loop().create_future()
    fut.cancel()
    await fut


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "runner",
    # (the in-process runners too: there it escaped the runner)
    [*RUNNERS, taskmap.run, taskmap.run_async],
    ids=lambda r: r.__name__,
)
@pytest.mark.parametrize("io", [False, True], ids=["cpu", "io"])
def test_a_task_that_raises_cancelled_error_fails_like_any_other(runner, io):
    # CancelledError is a BaseException: an io task that raised it used to
    # vanish in the worker (taken for a cancellation) and the run hung
    funcs = {"own": raises_cancelled, "awaited": awaits_a_cancelled_future, "child": lambda x: x, "ok": lambda: 5}
    deps = {"own": [], "awaited": [], "child": ["own"], "ok": []}
    graph = taskmap.create_graph(funcs, deps, io_bound=["own", "awaited"] if io else [])
    runner(graph, **({"ncores": 1} if runner in RUNNERS else {}))
    assert isinstance(graph.results["own"], asyncio.CancelledError)
    assert graph.results["own"].args == ("given up",)
    assert isinstance(graph.results["awaited"], asyncio.CancelledError)
    assert graph.results["child"] == "Ancestor task own failed; task not run"
    assert graph.results["ok"] == 5


async def _collector_settings():
    import gc

    return gc.get_threshold()[0], gc.get_freeze_count() > 0


def test_a_worker_collects_young_objects_less_often_and_freezes_its_imports():
    # (thousands of io tasks in flight are walked at every young collection)
    from taskmap.runtime.worker import GC_YOUNG

    graph = taskmap.create_graph({"gc": _collector_settings}, {"gc": []}, io_bound=["gc"])
    taskmap.run_parallel_async(graph, ncores=1)
    assert graph.results["gc"] == (GC_YOUNG, True)
