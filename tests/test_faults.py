"""Fault tests of the parallel runtime: time limits, retries, interrupts.

Each really kills or interrupts processes; the suite's conftest checks that no
child process survives a test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time

import pytest
from _processes import start_pipeline
from _tasks import a

import taskmap

psutil = pytest.importorskip("psutil")


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return "spun"


async def io_wait(seconds):
    await asyncio.sleep(seconds)
    return "waited"


def test_io_task_past_its_limit_is_cancelled():
    funcs = {"slow": lambda: io_wait(30), "quick": lambda: io_wait(0.05), "child": lambda x: x}
    deps = {"slow": [], "quick": [], "child": ["slow"]}
    graph = taskmap.create_graph(funcs, deps, io_bound=["slow", "quick"])
    start = time.monotonic()
    taskmap.run_parallel_async(graph, ncores=1, timeout={"slow": 0.3})
    assert time.monotonic() - start < 5
    err = graph.results["slow"]
    assert isinstance(err, taskmap.TaskTimeoutError) and isinstance(err, TimeoutError)
    assert err.task == "slow" and err.limit == 0.3 and "'slow'" in str(err)
    assert graph.results["quick"] == "waited"
    assert graph.results["child"] == "Ancestor task slow failed; task not run"


def test_own_timeout_error_is_not_mistaken_for_the_limit():
    async def raises():
        raise TimeoutError("mine")

    graph = taskmap.create_graph({"t": raises}, {"t": []}, io_bound=["t"])
    taskmap.run_parallel_async(graph, ncores=1, timeout=10)
    err = graph.results["t"]
    assert type(err) is TimeoutError and err.args == ("mine",)


def test_cpu_task_past_its_limit_has_its_worker_replaced():
    funcs = {"hang": lambda: spin(60), "ok": lambda: spin(0.1), "after": lambda _: 5}
    deps = {"hang": [], "ok": [], "after": ["ok"]}
    graph = taskmap.create_graph(funcs, deps)
    start = time.monotonic()
    taskmap.run_parallel(graph, ncores=2, timeout=1.0)
    assert time.monotonic() - start < 10
    err = graph.results["hang"]
    assert isinstance(err, taskmap.TaskTimeoutError) and err.limit == 1.0
    assert graph.results["ok"] == "spun" and graph.results["after"] == 5
    # the pool works on with a fresh worker
    taskmap.reset_tasks(graph, ["after"])
    taskmap.run_parallel(graph, ncores=2)
    assert graph.results["after"] == 5


def test_time_limit_counts_from_the_start_not_from_the_queue():
    # three 0.4 s tasks on one worker with a 0.7 s limit each: the last waits
    # 0.8 s in the queue but runs only 0.4 s, so none times out
    funcs = {f"t{i}": (lambda: spin(0.4)) for i in range(3)}
    graph = taskmap.create_graph(funcs, {k: [] for k in funcs})
    taskmap.run_parallel(graph, ncores=1, timeout=0.7)
    assert set(graph.results.values()) == {"spun"}


def test_timed_out_worker_reruns_its_innocent_io_tasks():
    funcs = {"hang": lambda: spin(60), "io": lambda: io_wait(0.5)}
    graph = taskmap.create_graph(funcs, {"hang": [], "io": []}, io_bound=["io"])
    taskmap.run_parallel_async(graph, ncores=1, timeout={"hang": 0.5})
    assert isinstance(graph.results["hang"], taskmap.TaskTimeoutError)
    assert graph.results["io"] == "waited"


def flaky(path, fail_times):
    """Fails the first `fail_times` calls (counted in a file), then succeeds."""
    with open(path, "a+") as f:
        f.seek(0)
        calls = len(f.read())
        f.write("x")
    if calls < fail_times:
        raise ConnectionError(f"attempt {calls + 1}")
    return calls + 1


def test_retries_until_success_and_records_attempts(tmp_path):
    path = str(tmp_path / "calls")
    funcs = {"flaky": lambda: flaky(path, 2), "child": lambda n: n * 10}
    graph = taskmap.create_graph(funcs, {"flaky": [], "child": ["flaky"]})
    taskmap.run_parallel(graph, ncores=1, retries=3)
    assert graph.results == {"flaky": 3, "child": 30}
    assert graph.attempts["flaky"] == 3 and graph.attempts["child"] == 1


def test_retries_exhausted_keep_the_last_error(tmp_path):
    path = str(tmp_path / "calls")
    funcs = {"flaky": lambda: flaky(path, 10)}
    graph = taskmap.create_graph(funcs, {"flaky": []})
    start = time.monotonic()
    taskmap.run_parallel_async(graph, ncores=1, retries={"flaky": 2}, retry_delay=0.2)
    assert time.monotonic() - start >= 0.4  # two delays
    err = graph.results["flaky"]
    assert type(err) is ConnectionError and err.args == ("attempt 3",)
    assert graph.attempts["flaky"] == 3


def crash_once(path):
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(9)
    return "survived"


def test_a_crashed_worker_counts_as_a_failed_attempt(tmp_path):
    path = str(tmp_path / "crashed")
    graph = taskmap.create_graph({"c": lambda: crash_once(path)}, {"c": []})
    taskmap.run_parallel(graph, ncores=1, retries=1)
    assert graph.results["c"] == "survived" and graph.attempts["c"] == 2


def test_bad_limits_are_rejected():
    graph = taskmap.create_graph({"a": a}, {"a": []})
    with pytest.raises(ValueError):
        taskmap.run_parallel(graph, ncores=1, timeout=-1)
    with pytest.raises(ValueError):
        taskmap.run_parallel(graph, ncores=1, retries={"nope": 1})
    with pytest.raises(ValueError):
        taskmap.run_parallel(graph, ncores=1, retries=1.5)


# -- interrupts: in a subprocess, as a user's script would be --------------------

SCRIPT = textwrap.dedent(
    """
    import os, sys, time, json
    import taskmap

    def quick(i):
        return i

    def slow(*_quick_results):
        # tell the test this task runs (the quick ones, ahead of it, are done)
        open(os.path.join(os.environ["MARK_DIR"], f"{os.getpid()}-{time.time()}"), "w").close()
        end = time.perf_counter() + 60
        while time.perf_counter() < end:
            pass

    funcs = {f"q{i}": (lambda i=i: quick(i)) for i in range(5)}
    funcs.update({f"s{i}": slow for i in range(4)})
    # the slow tasks wait for the quick ones: when they run, five results are in
    deps = {k: ([] if k.startswith("q") else [f"q{i}" for i in range(5)]) for k in funcs}
    graph = taskmap.create_graph(funcs, deps)
    print("PID", os.getpid(), flush=True)
    try:
        taskmap.run_parallel_async(graph, ncores=2)
    except KeyboardInterrupt:
        pids = [w.pid for w in taskmap.runtime.pool.get_pool().workers]
        print("INTERRUPTED", json.dumps(sorted(k for k in graph.done)), flush=True)
        sys.exit(130)
    """
)


def _start(tmp_path, **kwargs):
    return start_pipeline(tmp_path, SCRIPT, **kwargs)


def _descendants(pid):
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigint-coordinator", "sigint-group", "sigterm"])
def test_interrupt_stops_every_worker_and_keeps_results(tmp_path, how):
    proc = _start(tmp_path, start_new_session=True)
    workers = _descendants(proc.pid)
    assert workers
    sent = time.monotonic()
    if how == "sigint-coordinator":
        os.kill(proc.pid, signal.SIGINT)
    elif how == "sigint-group":  # what a terminal's Ctrl-C does
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "INTERRUPTED" in out, err
    done = out.split("INTERRUPTED", 1)[1]
    assert all(f'"q{i}"' in done for i in range(5)), out  # finished results kept
    assert time.monotonic() - sent < 5
    gone_by = time.monotonic() + 1.0
    while time.monotonic() < gone_by and any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers
    ):
        time.sleep(0.05)
    alive = [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"workers survived the interrupt: {alive}"


@pytest.mark.timeout(60)
def test_coordinator_killed_leaves_no_orphan(tmp_path):
    proc = _start(tmp_path, start_new_session=True)
    workers = _descendants(proc.pid)
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, f"workers outlived their coordinator: {alive}"


def hog():
    return len(bytearray(2 * 1024**3))


def test_memory_limit_fails_the_allocating_task_only():
    funcs = {"hog": hog, "ok": a, "child": lambda n: n}
    graph = taskmap.create_graph(funcs, {"hog": [], "ok": [], "child": ["hog"]})
    taskmap.run_parallel(graph, ncores=1, memory_limit=512 * 1024**2)
    assert type(graph.results["hog"]) is MemoryError
    assert graph.results["ok"] == 5
    assert graph.results["child"] == "Ancestor task hog failed; task not run"
    # without the limit the pool's workers are restarted unlimited
    taskmap.reset_tasks(graph, ["ok"])
    taskmap.run_parallel(graph, ncores=1)
    assert graph.results["ok"] == 5
