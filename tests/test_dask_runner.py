"""``run_dask`` against a real ``distributed.LocalCluster``: worker processes
on loopback, started and closed by the fixtures (no synchronous stand-in).

Most tests share one module-scoped cluster of two single-threaded workers
(no taskmap-cpu resource: an io task waits for a free slot to start, then
leaves it); the test of run_dask's own cluster covers the layout with the
resource.  The test that kills workers starts a cluster of its own, so that
the workers Dask restarts are reaped before the suite's leak check runs.  Task functions
are module-level (the workers import this module by reference); they count
their calls in files under ``tmp_path``, which the workers share with the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from _tasks import fail_once, max_overlap  # noqa: E402

import taskmap  # noqa: E402
from taskmap.dask.runner import DaskWorkerCrashedError  # noqa: E402

ANCESTOR = "Ancestor task {} failed; task not run"
SKIPPED = re.compile(r"Ancestor task (.+) failed; task not run")


# -- the clusters ------------------------------------------------------------------


def children() -> set:
    """This process's child processes, but multiprocessing's resource
    tracker, which serves the whole session (as in conftest)."""
    import psutil

    return {p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())}


@contextlib.contextmanager
def local_cluster(**scheduler_kwargs):
    """A LocalCluster of two single-threaded worker processes on loopback;
    on exit it is closed and every process that appeared while it ran (the
    workers Dask restarted after a kill included) must have exited."""
    import psutil

    already = children()
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
        # HTTP endpoints on a free port, not 8787 (which another cluster may hold)
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0", **scheduler_kwargs},
    )
    try:
        yield cluster
    finally:
        started = children() - already
        cluster.close()
        _, alive = psutil.wait_procs(started, timeout=15)
        for p in alive:
            p.kill()
        assert not alive, f"the cluster left processes behind: {[p.pid for p in alive]}"


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def module_client(cluster):
    with distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def client(module_client):
    module_client.wait_for_workers(2, timeout=30)
    return module_client


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def left_on_cluster(client, held: set, wait: float = 5.0) -> set:
    """Keys the client still holds beyond ``held``, once Dask has had
    ``wait`` seconds to process the releases (its client drops a key on its
    event loop, shortly after the last future of it is gone)."""
    deadline = time.monotonic() + wait
    while (left := set(client.futures) - held) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


# -- task functions (module level: the workers import them) ------------------------------


def five():
    return 5


def add_ten(x):
    return x + 10


def nothing(*args):
    return None


def collect(*args):
    return args


def fail(*args):
    raise RuntimeError("some error", 7)


async def async_five():
    await asyncio.sleep(0.01)
    return 5


async def async_add_ten(x):
    await asyncio.sleep(0.01)
    return x + 10


async def sleep_async(seconds, *args):
    await asyncio.sleep(seconds)
    return seconds


def sleep_blocking(seconds, *args):
    time.sleep(seconds)
    return seconds


class Counted:
    """Calls ``func`` and appends a line to ``<folder>/<name>`` per call."""

    def __init__(self, folder: Path, name: str, func) -> None:
        self.folder, self.name, self.func = str(folder), name, func

    def __call__(self, *args):
        with open(os.path.join(self.folder, self.name), "a") as f:
            f.write("call\n")
        return self.func(*args)


def calls(folder: Path, name: str) -> int:
    path = folder / name
    return len(path.read_text().splitlines()) if path.exists() else 0


class FailUnlessFile:
    """Raises until the file ``path`` exists, then returns ``value``."""

    def __init__(self, path: Path, value) -> None:
        self.path, self.value = str(path), value

    def __call__(self, *args):
        if not os.path.exists(self.path):
            raise ValueError("not yet", self.path)
        return self.value


class FailFirstTime:
    """Raises on its first call (noted in the file ``path``), then returns ``value``."""

    def __init__(self, path: Path, value) -> None:
        self.path, self.value = str(path), value

    def __call__(self, *args):
        if not os.path.exists(self.path):
            Path(self.path).write_text("failed once\n")
            raise ConnectionError("flaky")
        return self.value


class NeedsTwo(Exception):
    """An exception its own args cannot rebuild (``__init__`` takes two)."""

    def __init__(self, a, b) -> None:
        super().__init__(f"{a}-{b}")


def raise_needs_two():
    raise NeedsTwo("a", "b")


# -- semantics -----------------------------------------------------------------------


def test_arguments_in_order_with_none_left_out(client):
    graph = taskmap.create_graph(
        {"a": five, "n": nothing, "b": add_ten, "c": collect, "d": collect},
        {"a": [], "n": [], "b": ["a"], "c": ["b", "n", "a"], "d": ["n"]},
    )
    held = set(client.futures)
    taskmap.run_dask(graph, client=client)
    assert graph.results == {"a": 5, "n": None, "b": 15, "c": (15, 5), "d": ()}
    assert sorted(graph.done) == ["a", "b", "c", "d", "n"]
    assert left_on_cluster(client, held) == set()  # every value came here; nothing stays there


def test_failure_is_the_result_descendants_skipped_unrelated_carry_on(client):
    graph = taskmap.create_graph(
        {"a": five, "x": fail, "y": add_ten, "z": collect, "u": add_ten, "v": async_add_ten},
        {"a": [], "x": ["a"], "y": ["x"], "z": ["y", "a"], "u": ["a"], "v": ["u"]},
    )
    taskmap.run_dask(graph, client=client)
    error = graph.results["x"]
    assert type(error) is RuntimeError and error.args == ("some error", 7)
    assert "in fail" in error.remote_traceback and "RuntimeError" in error.remote_traceback
    assert isinstance(error.__cause__, taskmap.RemoteTraceback)
    assert graph.results["y"] == ANCESTOR.format("x")
    assert graph.results["z"] == ANCESTOR.format("x")
    assert graph.results["u"] == 15 and graph.results["v"] == 25
    assert set(graph.done) == set(graph.dependencies)


async def raises_cancelled(*args):
    raise asyncio.CancelledError("given up")


@pytest.mark.parametrize("io", [False, True], ids=["cpu", "io"])
def test_a_task_that_raises_cancelled_error_fails_like_any_other(client, io):
    graph = taskmap.create_graph(
        {"own": raises_cancelled, "child": add_ten, "ok": five},
        {"own": [], "child": ["own"], "ok": []},
        io_bound=["own"] if io else [],
    )
    taskmap.run_dask(graph, client=client)
    assert isinstance(graph.results["own"], asyncio.CancelledError)
    assert graph.results["own"].args == ("given up",)
    assert graph.results["child"] == ANCESTOR.format("own")
    assert graph.results["ok"] == 5


def test_an_exception_that_cannot_be_rebuilt_is_a_remote_task_error(client):
    graph = taskmap.create_graph({"e": raise_needs_two}, {"e": []})
    taskmap.run_dask(graph, client=client)
    error = graph.results["e"]
    assert isinstance(error, taskmap.RemoteTaskError)
    assert error.type_name == "NeedsTwo" and error.message == "a-b"
    assert "raise_needs_two" in error.remote_traceback


def sleep_async_10():
    """A plain function returning a coroutine: awaited on the io loop."""
    return sleep_async(10)


def test_raise_errors_stops_the_run_promptly(client):
    graph = taskmap.create_graph(
        {"a": five, "x": fail, "y": add_ten, "slow": sleep_async_10},
        {"a": [], "x": ["a"], "y": ["x"], "slow": []},
        io_bound=["slow"],
    )
    start = time.monotonic()
    with pytest.raises(taskmap.TaskFailedError) as info:
        taskmap.run_dask(graph, client=client, raise_errors=True)
    assert time.monotonic() - start < 5  # not the 10 s of "slow"
    assert isinstance(info.value, RuntimeError)
    assert "'x'" in str(info.value) and "some error" in str(info.value)
    assert "check your logs" in str(info.value)
    assert type(info.value.__cause__) is RuntimeError and info.value.__cause__.args == ("some error", 7)
    assert graph.results["a"] == 5 and graph.results["y"] == ANCESTOR.format("x")
    assert graph.in_progress == ["slow"]


def test_done_and_given_results_are_honoured(client, tmp_path):
    funcs = {
        "a": Counted(tmp_path, "a", five),
        "n": Counted(tmp_path, "n", five),
        "b": Counted(tmp_path, "b", collect),
        "c": Counted(tmp_path, "c", collect),
    }
    graph = taskmap.create_graph(
        funcs,
        {"a": [], "n": [], "b": ["a", "n"], "c": ["b", "a"]},
        done=["a", "n"],
        results={"a": [1, 2, 3], "n": None},
    )
    taskmap.run_dask(graph, client=client)
    assert (calls(tmp_path, "a"), calls(tmp_path, "n")) == (0, 0)
    assert graph.results["b"] == ([1, 2, 3],)
    assert graph.results["c"] == (([1, 2, 3],), [1, 2, 3])


def test_reset_failed_tasks_reruns_only_what_is_needed(client, tmp_path):
    fixed = tmp_path / "fixed"
    funcs = {
        "a": Counted(tmp_path, "a", five),
        "x": Counted(tmp_path, "x", FailUnlessFile(fixed, 1)),
        "y": Counted(tmp_path, "y", collect),
        "z": Counted(tmp_path, "z", collect),
        "u": Counted(tmp_path, "u", add_ten),
    }
    deps = {"a": [], "x": ["a"], "y": ["x", "a"], "z": ["y"], "u": ["a"]}
    graph = taskmap.create_graph(funcs, deps)
    taskmap.run_dask(graph, client=client)
    assert isinstance(graph.results["x"], ValueError)
    assert graph.results["z"] == ANCESTOR.format("x")
    assert {t: calls(tmp_path, t) for t in deps} == {"a": 1, "x": 1, "y": 0, "z": 0, "u": 1}

    fixed.write_text("")
    taskmap.reset_failed_tasks(graph)
    taskmap.run_dask(graph, client=client)
    assert {t: calls(tmp_path, t) for t in deps} == {"a": 1, "x": 2, "y": 1, "z": 1, "u": 1}
    assert graph.results == {"a": 5, "x": 1, "y": (1, 5), "z": ((1, 5),), "u": 15}

    taskmap.reset_tasks(graph, ["y"])
    taskmap.run_dask(graph, client=client)
    assert {t: calls(tmp_path, t) for t in deps} == {"a": 1, "x": 2, "y": 2, "z": 2, "u": 1}
    assert graph.results["z"] == ((1, 5),)


def test_coroutine_and_plain_functions_cpu_and_io(client):
    funcs = {"a": async_five, "b": async_add_ten, "c": add_ten, "d": async_add_ten, "e": collect}
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["c"], "e": ["a", "b", "c", "d"]}
    for io_bound in ([], ["a", "c"], list(deps)):
        graph = taskmap.create_graph(funcs, deps, io_bound=io_bound)
        taskmap.run_dask(graph, client=client)
        assert graph.results == {"a": 5, "b": 15, "c": 25, "d": 35, "e": (5, 15, 25, 35)}, io_bound


def test_io_tasks_do_not_hold_a_worker_slot_while_they_wait(client):
    # 8 io tasks of 0.5 s and one 0.5 s cpu task on two single-thread
    # workers: holding a slot each, they would need >= 9 * 0.5 / 2 = 2.25 s
    funcs, deps = {}, {}
    for k in range(8):
        funcs[f"io{k}"] = sleep_async if k % 2 else sleep_blocking
        deps[f"io{k}"] = ["half"]
    funcs["half"] = half
    funcs["cpu"] = sleep_blocking
    deps["half"] = []
    deps["cpu"] = ["half"]
    graph = taskmap.create_graph(funcs, deps, io_bound=[f"io{k}" for k in range(8)])
    start = time.monotonic()
    taskmap.run_dask(graph, client=client)
    took = time.monotonic() - start
    assert all(graph.results[t] == 0.5 for t in deps if t != "half")
    assert took < 1.5, f"io tasks did not overlap: {took:.2f} s"


def half():
    return 0.5


# -- results stay on the cluster ------------------------------------------------------------


class Tracked:
    """A big payload that writes the pid of every process that unpickles it
    to the file ``log`` (the scheduler and the client share the test's pid)."""

    def __init__(self, log: str, payload: bytes) -> None:
        self.log, self.payload = log, payload

    def __reduce__(self):
        return (_unpickle_tracked, (self.log, self.payload))


def _unpickle_tracked(log: str, payload: bytes) -> Tracked:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return Tracked(log, payload)


class MakeBig:
    def __init__(self, log: Path, size: int) -> None:
        self.log, self.size = str(log), size

    def __call__(self):
        return Tracked(self.log, bytes(self.size))


def payload_size(big: Tracked) -> int:
    return len(big.payload)


def unpicklers(log: Path) -> set[int]:
    return {int(line) for line in log.read_text().split()} if log.exists() else set()


@pytest.mark.timeout(120)
def test_a_big_intermediate_result_stays_on_the_cluster(client, tmp_path):
    log = tmp_path / "unpickled-by"
    size = 50_000_000
    graph = taskmap.create_graph(
        {"big": Counted(tmp_path, "big", MakeBig(log, size)), "size": Counted(tmp_path, "size", payload_size)},
        {"big": [], "size": ["big"]},
    )
    taskmap.run_dask(graph, client=client, gather=["size"])
    assert graph.results["size"] == size
    big = graph.results["big"]
    assert isinstance(big, distributed.Future) and big.status == "finished"
    assert os.getpid() not in unpicklers(log)  # neither the client nor the scheduler got it

    # a rerun of the child takes the parent's future: nothing reruns it or ships it here
    taskmap.reset_tasks(graph, ["size"])
    taskmap.run_dask(graph, client=client, gather=["size"])
    assert graph.results["size"] == size
    assert (calls(tmp_path, "big"), calls(tmp_path, "size")) == (1, 2)
    assert os.getpid() not in unpicklers(log)

    # the check can see the caller: asking for the value brings it here
    assert len(big.result().payload) == size
    assert os.getpid() in unpicklers(log)
    del big, graph


# -- the same outcomes as taskmap.run ---------------------------------------------------------


class Node:
    """A task of a random graph: returns its name with its arguments, or
    None, or raises ValueError(name, number of arguments)."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def __call__(self, *args):
        if self.kind == "raise":
            raise ValueError(self.name, len(args))
        if self.kind == "none":
            return None
        return (self.name, args)


class AsyncNode(Node):
    """The same, as a coroutine (an object whose call returns a coroutine)."""

    async def __call__(self, *args):  # type: ignore[override]
        await asyncio.sleep(0)
        return Node.__call__(self, *args)


def random_graph(seed: int) -> dict:
    """The arguments of create_graph for a random DAG whose dependencies
    dict is not in topological order, with failures, None results, coroutine
    and io-bound tasks, and done tasks with given results."""
    rng = random.Random(seed)
    n = rng.randint(8, 22)
    names = [f"t{k}" for k in range(n)]
    deps = {t: rng.sample(names[:k], min(k, rng.randint(0, 3))) for k, t in enumerate(names)}
    funcs = {}
    for t in names:
        kind = rng.choices(["value", "none", "raise"], [70, 15, 15])[0]
        funcs[t] = (AsyncNode if rng.random() < 0.3 else Node)(t, kind)
    done = [t for t in names if rng.random() < 0.15]
    results = {t: rng.choice([None, ("given", t), [t, 1.5]]) for t in done}
    order = names[:]
    rng.shuffle(order)
    return {
        "funcs": funcs,
        "dependencies": {t: deps[t] for t in order},
        "io_bound": [t for t in names if rng.random() < 0.4],
        "done": done,
        "results": results,
    }


def outcomes(graph) -> dict:
    """Results with exceptions as (class name, args) and ancestor strings as
    'skipped': which failed ancestor a task names depends on which failure
    the run recorded first, which differs between runners (checked apart)."""
    out = {}
    for task, value in graph.results.items():
        if isinstance(value, Exception):
            out[task] = ("failed", type(value).__name__, value.args)
        elif isinstance(value, str) and SKIPPED.fullmatch(value):
            out[task] = "skipped"
        else:
            out[task] = value
    return out


def check_named_ancestors(graph) -> None:
    """Every skipped task names a failed ancestor of its own."""
    for task, value in graph.results.items():
        match = isinstance(value, str) and SKIPPED.fullmatch(value)
        if match:
            ancestor = match.group(1)
            assert isinstance(graph.results[ancestor], Exception), (task, value)
            assert task in taskmap.get_all_children(graph, ancestor), (task, value)


@pytest.mark.parametrize("seed", range(12))
def test_same_outcomes_as_run_on_random_graphs(client, seed):
    local = taskmap.create_graph(**random_graph(seed))
    remote = taskmap.create_graph(**random_graph(seed))
    for _ in range(2):  # a run, then a rerun of the failed tasks
        taskmap.run(local)
        taskmap.run_dask(remote, client=client)
        assert outcomes(remote) == outcomes(local)
        check_named_ancestors(remote)
        assert set(remote.done) == set(local.done) == set(local.dependencies)
        taskmap.reset_failed_tasks(local)
        taskmap.reset_failed_tasks(remote)


# -- observers, limits, errors -------------------------------------------------------------------


class Recorder(taskmap.Observer):
    def __init__(self) -> None:
        self.info = None
        self.started: dict = {}
        self.finished: dict = {}
        self.ended = None

    def run_started(self, graph, info) -> None:
        self.info = info

    def task_started(self, name, worker, lane, when) -> None:
        self.started[name] = (worker, lane, when)

    def task_finished(self, event) -> None:
        self.finished[event.name] = event

    def run_finished(self, graph, error) -> None:
        self.ended = ("finished", error)


def test_observers_hear_every_event_with_worker_pids_and_times(client):
    recorder = Recorder()
    graph = taskmap.create_graph(
        {"a": five, "io": async_add_ten, "x": fail, "y": add_ten},
        {"a": [], "io": ["a"], "x": ["a"], "y": ["x"]},
        io_bound=["io"],
    )
    before = time.monotonic()
    taskmap.run_dask(graph, client=client, observers=[recorder])
    after = time.monotonic()
    assert recorder.info.runner == "run_dask" and recorder.info.ncores == 2
    assert sorted(recorder.info.tasks) == ["a", "io", "x", "y"]
    assert set(recorder.started) == {"a", "io", "x"}
    assert recorder.started["io"][1] == "io" and recorder.started["a"][1] == "cpu"
    pids = worker_pids(client)
    for name in ("a", "io", "x"):
        event = recorder.finished[name]
        assert event.worker in pids, name
        assert before <= event.start <= event.end <= after, name
    assert recorder.finished["a"].status == "done" and recorder.finished["io"].value == 15
    assert recorder.finished["x"].status == "failed"
    skipped = recorder.finished["y"]
    assert skipped.status == "skipped" and skipped.failed_ancestor == "x"
    assert recorder.ended == ("finished", None)
    assert set(graph.durations) >= {"a", "io"}


def test_trace_and_progress_options_reach_their_observers(client, tmp_path):
    path = tmp_path / "run.json"
    graph = taskmap.create_graph(
        {"a": five, "io": async_add_ten, "b": add_ten}, {"a": [], "io": ["a"], "b": ["io"]}, io_bound=["io"]
    )
    taskmap.run_dask(graph, client=client, trace=path, progress=True)
    events = json.loads(path.read_text())["traceEvents"]
    ran = {e["name"]: e["pid"] for e in events if e.get("ph") == "X" and e["name"] in graph.dependencies}
    assert set(ran) == {"a", "io", "b"}
    assert set(ran.values()) <= worker_pids(client)  # one row per Dask worker


def test_time_limits_and_retries(client, tmp_path):
    funcs = {
        "slow_io": functools.partial(sleep_async, 5),
        "slow_cpu": functools.partial(sleep_blocking, 3),
        "flaky": Counted(tmp_path, "flaky", FailFirstTime(tmp_path / "flaked", "ok")),
        "flaky2": FailFirstTime(tmp_path / "flaked2", "ok2"),
        "both": collect,
        "always": Counted(tmp_path, "always", fail),
        "after": add_ten,
        "fast": five,
    }
    deps = {
        "slow_io": [],
        "slow_cpu": [],
        "flaky": [],
        "flaky2": [],
        "both": ["flaky", "flaky2"],
        "always": [],
        "after": ["always"],
        "fast": [],
    }
    # flaky and flaky2 io-bound: they fail together, so their retries are due together
    graph = taskmap.create_graph(funcs, deps, io_bound=["slow_io", "flaky", "flaky2"])
    start = time.monotonic()
    taskmap.run_dask(
        graph,
        client=client,
        timeout={"slow_io": 0.5, "slow_cpu": 0.5},
        retries={"flaky": 1, "flaky2": 1, "always": 2},
        retry_delay=0.3,
    )
    took = time.monotonic() - start
    for name in ("slow_io", "slow_cpu"):
        error = graph.results[name]
        assert isinstance(error, taskmap.TaskTimeoutError), (name, error)
        assert error.task == name and error.limit == 0.5
    assert graph.results["flaky"] == "ok" and graph.attempts["flaky"] == 2
    assert calls(tmp_path, "flaky") == 2
    # a child of two retried tasks waits for both retries, and runs once
    assert graph.results["both"] == ("ok", "ok2") and graph.attempts["both"] == 1
    assert isinstance(graph.results["always"], RuntimeError)
    assert graph.attempts["always"] == 3 and calls(tmp_path, "always") == 3
    assert graph.results["after"] == ANCESTOR.format("always")
    assert graph.results["fast"] == 5
    assert 0.6 <= took < 3  # two delays of 0.3 s; not the 5 s of slow_io


def test_a_function_that_cannot_be_sent_stops_the_run_before_it_starts(client, tmp_path):
    lock = threading.Lock()
    graph = taskmap.create_graph(
        {"ok": Counted(tmp_path, "ok", five), "bad": lambda x: (lock, x)},
        {"ok": [], "bad": ["ok"]},
    )
    with pytest.raises(taskmap.SerializationError) as info:
        taskmap.run_dask(graph, client=client)
    assert info.value.task == "bad"
    assert calls(tmp_path, "ok") == 0 and graph.done == []


def make_lock(*args):
    return threading.Lock()


def test_a_result_that_cannot_reach_the_caller_fails_its_task_only(client):
    graph = taskmap.create_graph(
        {"a": five, "lock": make_lock, "child": collect, "other": add_ten},
        {"a": [], "lock": ["a"], "child": ["lock"], "other": ["a"]},
    )
    taskmap.run_dask(graph, client=client)
    error = graph.results["lock"]
    assert isinstance(error, taskmap.SerializationError)
    assert error.task == "lock" and error.type_name == "lock" and "pickle" in str(error)
    assert graph.results["child"] == ANCESTOR.format("lock")
    assert graph.results["other"] == 15


def test_options_are_checked(client):
    graph = taskmap.create_graph({"a": five}, {"a": []})
    with pytest.raises(ValueError, match="not both"):
        taskmap.run_dask(graph, client=client, address="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="client="):
        taskmap.run_dask(graph, gather=["a"])
    with pytest.raises(ValueError, match="not in the graph"):
        taskmap.run_dask(graph, client=client, gather=["nope"])
    with pytest.raises(TypeError, match="gather"):
        taskmap.run_dask(graph, client=client, gather="a")
    with pytest.raises(ValueError, match="ncores"):
        taskmap.run_dask(graph, client=client, ncores=2)
    assert graph.done == []


def test_by_scheduler_address(cluster):
    graph = taskmap.create_graph({"a": five, "b": add_ten}, {"a": [], "b": ["a"]})
    taskmap.run_dask(graph, address=cluster.scheduler_address)
    assert graph.results == {"a": 5, "b": 15}


def busy_for(seconds: float):
    """A cpu task: (its start, its end) on the machine's monotonic clock."""
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


async def started_at(*args):
    return time.monotonic()


@pytest.mark.timeout(120)
def test_a_cluster_of_its_own_is_started_and_closed():
    # The suite's leak check fails this test if a worker process survives.
    # Its one worker has one cpu slot (the taskmap-cpu resource) and a spare
    # thread: an io task that becomes ready while the slot is busy for 1.5 s
    # starts at once instead of waiting for it.
    graph = taskmap.create_graph(
        {"gate": five, "long": functools.partial(busy_for, 1.5), "io": started_at, "after": add_ten},
        {"gate": [], "long": [], "io": ["gate"], "after": ["gate"]},
        io_bound=["io"],
    )
    taskmap.run_dask(graph, ncores=1)
    _, long_end = graph.results["long"]
    assert graph.results["io"] < long_end - 1.0, "the io task waited for the cpu slot"
    assert graph.results["after"] == 15


# -- workers that die ----------------------------------------------------------------------------


class KillMyWorkerOnce:
    """Kills the worker process running it (SIGKILL) on its first call."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __call__(self, *args):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return "survived"


def kill_my_worker(*args):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_run(tmp_path):
    # allowed-failures 1: a task whose worker dies twice gets KilledWorker
    with local_cluster(allowed_failures=1) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=30)
        _worker_killed_once(client, tmp_path / "killed")
        client.wait_for_workers(2, timeout=60)
        _task_that_always_kills_its_worker(client)


def _worker_killed_once(client, marker: Path) -> None:
    """A worker dies under a task mid-run: Dask reruns that task and the
    others the worker held, and the run ends with every result right."""
    funcs = {"once": KillMyWorkerOnce(marker), "after": collect}
    deps = {"once": ["c0"], "after": ["once", "c2"]}
    for k in range(3):  # a chain of io tasks running beside it
        funcs[f"c{k}"] = functools.partial(sleep_async, 0.2)
        deps[f"c{k}"] = [f"c{k - 1}"] if k else []
    graph = taskmap.create_graph(funcs, deps, io_bound=["c0", "c1", "c2"])
    taskmap.run_dask(graph, client=client)
    assert marker.exists()  # the worker was killed
    assert graph.results["once"] == "survived"
    assert graph.results["after"] == ("survived", 0.2)
    assert [graph.results[f"c{k}"] for k in range(3)] == [0.2] * 3


def _task_that_always_kills_its_worker(client) -> None:
    """KilledWorker fails that task only: its descendants are skipped, its
    ancestors keep their results."""
    graph = taskmap.create_graph(
        {"a": five, "b": add_ten, "killer": kill_my_worker, "child": collect},
        {"a": [], "b": ["a"], "killer": ["a", "b"], "child": ["killer", "b"]},
    )
    taskmap.run_dask(graph, client=client)
    error = graph.results["killer"]
    assert isinstance(error, DaskWorkerCrashedError) and isinstance(error, taskmap.WorkerCrashedError)
    assert error.task == "killer" and "killer" in str(error)
    assert type(error.__cause__).__name__ == "KilledWorker"
    assert graph.results["child"] == ANCESTOR.format("killer")
    assert (graph.results["a"], graph.results["b"]) == (5, 15)


# -- stale code (issue 25) ------------------------------------------------------


def _on_worker_path(directory: str, add: bool) -> None:
    import sys

    if add:
        sys.path.insert(0, directory)
    else:
        sys.path.remove(directory)


def _reload_on_worker(name: str) -> None:
    import importlib
    import sys

    importlib.reload(sys.modules[name])


def test_a_worker_holding_old_code_of_a_reloaded_module_fails_the_task_naming_it(client, tmp_path, monkeypatch):
    """Dask workers run tasks in threads, so taskmap does not reload a
    module under them: a task whose module the caller reloaded fails with a
    StaleCodeError naming the module, never with a stale result; once the
    workers reload it too, the task runs the caller's code."""
    import importlib
    import sys
    import uuid

    name = f"usermod_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    source = "def version(*_):\n    return {!r}\n"
    path.write_text(source.format("v1"))
    monkeypatch.syspath_prepend(str(tmp_path))
    client.run(_on_worker_path, str(tmp_path), True)
    module = importlib.import_module(name)
    try:

        def graph():
            return taskmap.create_graph({"a": module.version, "b": five}, {"a": [], "b": []})

        assert taskmap.run_dask(graph(), client=client).results == {"a": "v1", "b": 5}
        client.run(importlib.import_module, name)  # every worker holds v1 now
        path.write_text(source.format("v22"))
        importlib.reload(module)
        results = taskmap.run_dask(graph(), client=client).results
        assert isinstance(results["a"], taskmap.StaleCodeError), results
        assert name in str(results["a"]) and "client.restart()" in str(results["a"])
        assert results["b"] == 5
        client.run(_reload_on_worker, name)
        assert taskmap.run_dask(graph(), client=client).results == {"a": "v22", "b": 5}
    finally:
        client.run(_on_worker_path, str(tmp_path), False)
        sys.modules.pop(name, None)


# -- resources (issue 18) -----------------------------------------------------------


def _held(*_):
    start = time.time()
    time.sleep(0.15)
    return start, time.time(), os.getpid()


async def _held_async(*_):
    start = time.time()
    await asyncio.sleep(0.15)
    return start, time.time(), os.getpid()


@pytest.mark.parametrize("io", [False, True])
def test_a_limit_holds_across_the_cluster_and_is_reached(client, io):
    """Two worker processes: io tasks under a limit of 2 (unbounded, all 8
    would overlap), cpu tasks under a limit of 1 (unbounded, one per worker
    would): never more run at once anywhere, and the limit is reached."""
    names = [f"t{k}" for k in range(8)]
    graph = taskmap.create_graph(
        {t: _held_async if io else _held for t in names},
        {t: [] for t in names},
        io_bound=names if io else [],
        uses={t: "api" for t in names},
    )
    graph = taskmap.run_dask(graph, client=client, limits={"api": 2 if io else 1})
    assert max_overlap((s, e) for s, e, _ in graph.results.values()) == (2 if io else 1)


async def _stamp(*_):
    return time.time()


def _stamp_cpu(*_):
    return time.time()


@pytest.mark.parametrize("io", [False, True])
def test_a_rate_holds_across_the_cluster(client, io):
    rate, n = 20.0, 16
    names = [f"t{k}" for k in range(n)]
    graph = taskmap.create_graph(
        {t: _stamp if io else _stamp_cpu for t in names},
        {t: [] for t in names},
        io_bound=names if io else [],
        uses={t: "api" for t in names},
    )
    graph = taskmap.run_dask(graph, client=client, rates={"api": rate})
    starts = sorted(graph.results.values())
    for k in range(n):
        for m in range(k + 1, n):
            assert m - k + 1 <= rate * (starts[m] - starts[k]) + 2, (k, m)
    achieved = (n - 1) / (starts[-1] - starts[0])
    assert achieved == pytest.approx(rate, rel=0.15)


def _held_short(*_):
    start = time.time()
    time.sleep(0.03)
    return start, time.time(), os.getpid()


def test_priorities_order_starts_under_a_limit_of_one_and_the_summary_and_trace_show_the_wait(client, tmp_path):
    names = [f"t{k}" for k in range(6)]
    graph = taskmap.create_graph(
        {t: _held_short for t in names},
        {t: [] for t in names},
        uses={t: "db" for t in names},
        priority={"t4": 10, "t1": 5, "t5": -1},
    )
    graph = taskmap.run_dask(graph, client=client, limits={"db": 1}, trace=str(tmp_path / "trace.json"))
    order = [t for t, _ in sorted(graph.results.items(), key=lambda kv: kv[1][0])]
    assert order[:2] == ["t4", "t1"] and order[-1] == "t5"
    starts_and_ends = sorted((s, e) for s, e, _ in graph.results.values())
    assert all(end <= next_start for (_, end), (next_start, _) in zip(starts_and_ends, starts_and_ends[1:]))
    db = taskmap.summarize(graph).resources["db"]
    assert db["peak"] == 1 and db["limit"] == 1
    assert 5 * 0.03 < db["waited"] < 30  # five tasks waited behind the first ones
    assert "db" in str(taskmap.summarize(graph))
    events = json.loads((tmp_path / "trace.json").read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    waited = {e["name"].split()[0] for e in events if e.get("name", "").endswith("waits for db")}
    assert waited == set(names) - {"t4"}  # all but the first to start


def _keys_on_the_scheduler(*_):
    """The task keys the scheduler holds, from inside a running task."""
    start = time.time()
    keys = distributed.get_client().run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks])
    time.sleep(0.02)
    return start, sorted(keys)


def test_a_task_waiting_for_a_unit_is_not_sent_to_the_cluster(client):
    """While a task holds the one unit, the tasks that start after it are
    nowhere on the cluster (no key on the scheduler, no thread on a worker);
    a free task and the child of a gated task are sent as ever."""
    names = [f"gated{k}" for k in range(4)]
    graph = taskmap.create_graph(
        {t: _keys_on_the_scheduler for t in names} | {"child": lambda *_: 5},
        {t: [] for t in names} | {"child": ["gated0"]},
        uses={t: "db" for t in names},
    )
    graph = taskmap.run_dask(graph, client=client, limits={"db": 1})
    assert graph.results["child"] == 5
    starts = {t: graph.results[t][0] for t in names}
    for t in names:
        later = {u for u in names if starts[u] > starts[t]}
        on_cluster = {k.split("-")[0] for k in graph.results[t][1]}
        assert t in on_cluster and not (later & on_cluster), (t, on_cluster, later)


async def _too_slow_async(*_):
    await asyncio.sleep(5)


def test_timeouts_and_retries_under_a_limit_leak_no_unit(client, tmp_path):
    names = [f"t{k}" for k in range(6)]
    funcs = {t: _held_short for t in names}
    funcs["flaky"] = functools.partial(fail_once, str(tmp_path / "failed"))
    funcs["slow"] = _too_slow_async
    every = [*names, "flaky", "slow"]
    graph = taskmap.create_graph(funcs, {t: [] for t in every}, io_bound=["slow"], uses={t: "db" for t in every})
    graph = taskmap.run_dask(
        graph, client=client, limits={"db": 2}, retries={None: 1, "slow": 0}, timeout={"slow": 0.3}
    )
    assert isinstance(graph.results["slow"], taskmap.TaskTimeoutError)
    ok = [t for t in every if t != "slow"]
    assert all(not isinstance(graph.results[t], BaseException) for t in ok), graph.results
    assert graph.attempts["flaky"] == 2
    # every task after the faults still got a unit: none leaked, none extra
    assert max_overlap((s, e) for s, e, _ in (graph.results[t] for t in ok)) <= 2
    assert taskmap.summarize(graph).resources["db"]["peak"] == 2


# -- a run as a handle (issue 21) ---------------------------------------------------


def test_a_started_dask_run_is_awaited_and_yields_results_as_they_finish(client):
    graph = taskmap.create_graph(
        {"a": five, "b": add_ten, "x": fail, "y": add_ten},
        {"a": [], "b": ["a"], "x": [], "y": ["x"]},
    )

    async def main():
        run = taskmap.start(graph, "run_dask", client=client)
        items = [item async for item in run.as_completed()]
        return await run, items

    done, items = asyncio.run(main())
    assert done is graph and dict(items) == graph.results and len(items) == 4
    names = [t for t, _ in items]
    assert names.index("a") < names.index("b") and names.index("x") < names.index("y")
    assert graph.results["b"] == 15 and graph.results["y"] == ANCESTOR.format("x")


def _started_then_wait(path, *_):
    """Until the test releases it: Dask cannot stop a running thread, and a
    thread left sleeping would hold the worker's one slot for later tests."""
    Path(path).touch()
    deadline = time.monotonic() + 60
    while not Path(path + ".release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


async def _started_then_nap(path, *_):
    Path(path).touch()
    await asyncio.sleep(60)


def test_cancel_stops_a_dask_run_and_leaves_nothing_on_the_cluster(client, tmp_path):
    held = set(client.futures)
    marks = [tmp_path / "io", tmp_path / "cpu"]
    graph = taskmap.create_graph(
        {
            "a": five,
            "io": functools.partial(_started_then_nap, str(marks[0])),
            "cpu": functools.partial(_started_then_wait, str(marks[1])),
            "after": add_ten,
        },
        {"a": [], "io": ["a"], "cpu": [], "after": ["io"]},
        io_bound=["io"],
    )
    run = taskmap.start(graph, "run_dask", client=client)
    try:
        deadline = time.monotonic() + 30
        while not all(m.exists() for m in marks) and time.monotonic() < deadline:
            time.sleep(0.01)
        cancelled_at = time.monotonic()
        threading.Thread(target=run.cancel).start()
        with pytest.raises(taskmap.RunCancelled):
            run.wait(timeout=10)
        assert time.monotonic() - cancelled_at < 1.0
        assert graph.results == {"a": 5} and sorted(graph.in_progress) == ["cpu", "io"]
        assert not left_on_cluster(client, held)  # every future of the run released
    finally:
        # (the cpu task's thread runs on: Dask cannot stop a running thread;
        # its worker is not killed, it holds other results)
        Path(str(marks[1]) + ".release").touch()


def test_gather_false_without_a_client_is_refused_saying_why():
    """(It raised "'bool' object is not iterable" before reaching this check.)"""
    graph = taskmap.create_graph({"a": five}, {"a": []})
    with pytest.raises(ValueError, match="need a client"):
        taskmap.run_dask(graph, gather=False)


# -- task output -------------------------------------------------------------------


async def chatty(k: int) -> int:
    """Interleaves with the other coroutines of its worker's io loop."""
    for j in range(4):
        print(f"task {k} line {j}")
        await asyncio.sleep(0.002)
        sys.stdout.write(f"task {k} ")
        await asyncio.sleep(0)
        sys.stdout.write(f"piece {j}\n")
        print(f"task {k} err {j}", file=sys.stderr)
        await asyncio.sleep(0)
    return k


def chatty_expected(k: int) -> str:
    return "".join(f"task {k} line {j}\ntask {k} piece {j}\ntask {k} err {j}\n" for j in range(4))


def threaded_printer(k: int) -> int:
    for j in range(20):
        print(f"thread {k} line {j}")
        time.sleep(0.001)
    return k


def prints_and_fails():
    logger = logging.getLogger("test_dask_runner.task")
    logger.setLevel(logging.INFO)
    print("before the failure")
    logger.info("a record")
    raise ValueError("broken")


def test_each_task_gets_exactly_its_own_output_on_dask_workers(client):
    funcs = {f"co{k}": functools.partial(chatty, k) for k in range(60)}
    funcs.update({f"th{k}": functools.partial(threaded_printer, k) for k in range(8)})
    funcs["bad"] = prints_and_fails
    funcs["quiet"] = five
    io = [name for name in funcs if name.startswith(("co", "th"))]
    graph = taskmap.create_graph(funcs, {name: [] for name in funcs}, io_bound=io)
    taskmap.run_dask(graph, client=client, output="capture")
    assert len(worker_pids(client)) == 2
    for k in range(60):
        assert graph.output[f"co{k}"] == chatty_expected(k), k
    for k in range(8):
        assert graph.output[f"th{k}"] == "".join(f"thread {k} line {j}\n" for j in range(20))
    assert graph.output["bad"] == "before the failure\nINFO:test_dask_runner.task:a record\n"
    assert isinstance(graph.results["bad"], ValueError)
    assert "quiet" not in graph.output


def test_dask_shows_each_line_as_it_is_written_with_its_prefix(client, capsys):
    funcs = {f"co{k}": functools.partial(chatty, k) for k in range(10)}
    graph = taskmap.create_graph(funcs, {name: [] for name in funcs}, io_bound=list(funcs))
    taskmap.run_dask(graph, client=client, output="prefix")
    out, err = "", ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and out.count("\n") < 80:  # (events may trail the results a little)
        time.sleep(0.05)
        shown = capsys.readouterr()
        out, err = out + shown.out, err + shown.err
    assert sorted(out.splitlines()) == sorted(
        f"[co{k}] task {k} {what} {j}" for k in range(10) for j in range(4) for what in ("line", "piece")
    )
    assert all(re.fullmatch(r"\[co(\d+)\] task \1 err \d", line) for line in err.splitlines())
