"""``taskmap.start``: a run as a handle, on the four local runners (run_dask's
in tests/test_dask_runner.py).  Tasks that must be running when a test acts
say so through a file (``started``), never by a sleep of the test."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
import time

import pytest

import taskmap

psutil = pytest.importorskip("psutil")

from _leaks import compare, snapshot, use_every_worker  # noqa: E402

LOCAL = ["run", "run_async", "run_parallel", "run_parallel_async"]
PARALLEL = ["run_parallel", "run_parallel_async"]


async def nap(seconds, *_):
    await asyncio.sleep(seconds)
    return seconds


def fails(*_):
    raise ValueError("boom")


def ok(*args):
    return len(args)


def wait_for_file(path, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def started_then_sleep(mark, seconds, *_):
    open(mark, "w").close()
    time.sleep(seconds)
    return "slept"


async def started_then_nap(mark, seconds, *_):
    open(mark, "w").close()
    await asyncio.sleep(seconds)
    return "napped"


def staggered_graph():
    """io tasks that end 0.15 s apart in a known order, a failure and the
    task it skips, and a task that depends on two of them."""
    order = ["d", "b", "e", "a", "c"]  # finishing order of the naps
    # (0.15 s apart: a busy machine may delay a result by tens of ms)
    funcs = {t: functools.partial(nap, 0.15 * (k + 1)) for k, t in enumerate(order)}
    funcs |= {"bad": fails, "skipped": ok, "sum": ok}
    deps = {t: [] for t in order} | {"bad": [], "skipped": ["bad"], "sum": ["a", "c"]}
    return taskmap.create_graph(funcs, deps, io_bound=order)


def check_completions(graph, items):
    names = [t for t, _ in items]
    assert sorted(names) == sorted(graph.funcs), names  # every task, once
    naps = [t for t in names if t in "dbeac"]
    assert naps == ["d", "b", "e", "a", "c"]  # in finishing order
    assert names.index("sum") > names.index("c")  # after what it needs
    assert names.index("skipped") > names.index("bad")
    results = dict(items)
    assert isinstance(results["bad"], ValueError)
    assert results["skipped"] == "Ancestor task bad failed; task not run"
    assert results == {t: graph.results[t] for t in graph.funcs}


@pytest.mark.parametrize("runner", LOCAL)
def test_as_completed_yields_every_task_once_in_finishing_order(runner):
    run = taskmap.start(staggered_graph(), runner)
    first = list(run.as_completed())
    graph = run.wait()
    assert graph is run.graph and run.done()
    check_completions(graph, first)
    assert list(run.as_completed()) == first  # each call from the start of the run


@pytest.mark.parametrize("runner", LOCAL)
def test_awaiting_a_run_leaves_the_loop_responsive(runner):
    """A ticker on the same loop keeps ticking every 10 ms while the run is
    awaited (and while ``async for`` takes its results)."""

    async def main():
        run = taskmap.start(staggered_graph(), runner)
        gaps = []

        async def ticker():
            last = time.monotonic()
            while not run.done():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        items = [item async for item in run.as_completed()]
        graph = await run
        await ticking
        return graph, items, gaps

    graph, items, gaps = asyncio.run(main())
    check_completions(graph, items)
    assert len(gaps) >= 10 and max(gaps) < 0.2, (len(gaps), max(gaps))


@pytest.mark.parametrize("runner", PARALLEL)
def test_cancel_from_another_thread_kills_cpu_tasks_keeps_results_and_leaks_nothing(runner, tmp_path):
    use_every_worker()
    before = snapshot()
    marks = [str(tmp_path / f"m{k}") for k in range(3)]
    funcs = {
        "quick": ok,
        "cpu0": functools.partial(started_then_sleep, marks[0], 60),
        "cpu1": functools.partial(started_then_sleep, marks[1], 60),
        "io": functools.partial(started_then_nap, marks[2], 60),
        "after": ok,
    }
    deps = {"quick": [], "cpu0": ["quick"], "cpu1": ["quick"], "io": [], "after": ["cpu0"]}
    run = taskmap.start(taskmap.create_graph(funcs, deps, io_bound=["io"]), runner, ncores=2)
    for mark in marks:
        wait_for_file(mark)
    cancelled_at = time.monotonic()
    threading.Thread(target=run.cancel).start()
    with pytest.raises(taskmap.RunCancelled):
        run.wait(timeout=10)
    assert time.monotonic() - cancelled_at < 1.0
    run.cancel()  # again: nothing happens
    graph = run.graph
    assert graph.results["quick"] == 0 and graph.done == ["quick"]
    assert sorted(graph.in_progress) == ["cpu0", "cpu1", "io"]
    with pytest.raises(taskmap.RunCancelled):
        run.wait()  # every later wait says so too
    with pytest.raises(taskmap.RunCancelled):
        list(run.as_completed())
    # the killed workers were replaced; nothing else is left
    use_every_worker()
    compare(before, snapshot(), same_workers=False)


@pytest.mark.parametrize("runner", ["run", "run_async"])
def test_cancel_stops_an_in_process_run_at_its_io_task(runner, tmp_path):
    mark = str(tmp_path / "m")
    funcs = {"quick": ok, "io": functools.partial(started_then_nap, mark, 60), "after": ok}
    deps = {"quick": [], "io": ["quick"], "after": ["io"]}
    run = taskmap.start(taskmap.create_graph(funcs, deps, io_bound=["io"]), runner)
    wait_for_file(mark)
    cancelled_at = time.monotonic()
    run.cancel()
    with pytest.raises(taskmap.RunCancelled):
        run.wait(timeout=10)
    assert time.monotonic() - cancelled_at < 1.0
    assert run.graph.done == ["quick"] and run.graph.in_progress == ["io"]
    assert not [t for t in threading.enumerate() if t.name == "taskmap-run"]


@pytest.mark.parametrize("runner", LOCAL)
def test_cancelling_the_awaiting_task_cancels_the_run_and_leaks_nothing(runner, tmp_path):
    use_every_worker()
    before = snapshot()
    mark = str(tmp_path / "m")
    funcs = {"quick": ok, "io": functools.partial(started_then_nap, mark, 60), "after": ok}
    graph = taskmap.create_graph(funcs, {"quick": [], "io": [], "after": ["io"]}, io_bound=["io"])
    kwargs = {"ncores": 2} if runner in PARALLEL else {}
    run = taskmap.start(graph, runner, **kwargs)

    async def main():
        waiting = asyncio.create_task(_await(run))
        await asyncio.sleep(0)  # it awaits the run (a task cancelled before its first step never runs)
        while not os.path.exists(mark):
            await asyncio.sleep(0.005)
        cancelled_at = time.monotonic()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return run.done(), time.monotonic() - cancelled_at

    stopped, took = asyncio.run(main())
    assert stopped  # the CancelledError came once the run had stopped
    assert took < 1.0
    with pytest.raises(taskmap.RunCancelled):
        run.wait()
    assert graph.in_progress == ["io"] and "after" not in graph.results
    use_every_worker()
    compare(before, snapshot(), same_workers=None)  # (the io task's worker was replaced)


async def _await(run):
    return await run


@pytest.mark.parametrize("runner", LOCAL)
def test_wait_with_a_timeout_raises_and_the_run_goes_on(runner):
    run = taskmap.start(staggered_graph(), runner)
    with pytest.raises(TimeoutError):
        run.wait(timeout=0.01)
    assert not run.done()
    check_completions(run.wait(timeout=30), list(run.as_completed()))


def test_two_runs_at_once_overlap_on_workers_of_their_own(tmp_path):
    """Two graphs awaited together with asyncio.gather: each task of one
    waits until a task of the other has started, so they finish only if both
    run at the same time; they run on different workers, and their big
    results (shared memory) do not meet."""
    import numpy as np

    def graph(me, other):
        funcs = {
            "meet": functools.partial(meet, str(tmp_path / me), str(tmp_path / other)),
            "big": functools.partial(big_array, 1 if me == "x" else 2),
        }
        return taskmap.create_graph(funcs, {"meet": [], "big": []})

    async def main():
        return await asyncio.gather(
            taskmap.start(graph("x", "y"), "run_parallel_async", ncores=1),
            taskmap.start(graph("y", "x"), "run_parallel", ncores=1),
        )

    gx, gy = asyncio.run(main())
    assert gx.results["meet"] != gy.results["meet"]  # two worker processes
    assert np.all(gx.results["big"] == 1) and np.all(gy.results["big"] == 2)


def meet(me, other):
    open(me, "w").close()
    wait_for_file(other, seconds=20)
    return os.getpid()


def big_array(value):
    import numpy as np

    return np.full(1 << 20, value, dtype=np.uint8)  # 1 MiB: through shared memory


def test_ctrl_c_during_wait_cancels_the_run_and_raises_keyboard_interrupt(tmp_path):
    mark = str(tmp_path / "m")
    funcs = {"cpu": functools.partial(started_then_sleep, mark, 60)}
    run = taskmap.start(taskmap.create_graph(funcs, {"cpu": []}), "run_parallel", ncores=1)
    wait_for_file(mark)
    main = threading.main_thread().ident
    # Ctrl-C raises KeyboardInterrupt, as in a terminal, even when pytest was
    # started with SIGINT ignored (a job in the background of a script, as CI)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            run.wait(timeout=30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert run.done() and run.graph.in_progress == ["cpu"]
    with pytest.raises(taskmap.RunCancelled):
        run.wait()


def test_raise_errors_ends_as_completed_with_the_failure():
    run = taskmap.start(staggered_graph(), "run_parallel_async", ncores=2, raise_errors=True)
    with pytest.raises(taskmap.TaskFailedError):
        for _ in run.as_completed():
            pass
    with pytest.raises(taskmap.TaskFailedError):
        run.wait()


def test_options_are_checked_before_anything_runs():
    graph = staggered_graph()
    with pytest.raises(ValueError, match="runner must be one of"):
        taskmap.start(graph, "run_fast")
    with pytest.raises(TypeError, match="ncores"):
        taskmap.start(graph, "run", ncores=2)
    with pytest.raises(TypeError, match="timeout"):
        taskmap.start(graph, "run", timeout=1)
    with pytest.raises(TypeError, match="client"):
        taskmap.start(graph, "run_parallel", address="tcp://127.0.0.1:1")
    assert graph.results == {}


def test_a_graph_being_run_is_refused_a_second_start(tmp_path):
    mark = str(tmp_path / "m")
    graph = taskmap.create_graph({"io": functools.partial(started_then_nap, mark, 60)}, {"io": []}, io_bound=["io"])
    run = taskmap.start(graph, "run_async")
    wait_for_file(mark)
    with pytest.raises(RuntimeError, match="being run"):
        taskmap.start(graph, "run_async")
    run.cancel()
    with pytest.raises(taskmap.RunCancelled):
        run.wait(timeout=10)
    # once it ended, the graph may run again
    graph.funcs["io"] = ok
    assert taskmap.start(graph, "run_async").wait().results["io"] == 0


EXIT_WITH_A_LIVE_RUN = """
import os, sys, time, taskmap

def sleeper(*_):
    open(os.path.join(sys.argv[1], "started" + str(os.getpid())), "w").close()
    time.sleep(60)

graph = taskmap.create_graph({"a": sleeper, "b": sleeper}, {"a": [], "b": []})
run = taskmap.start(graph, "run_parallel", ncores=2)
while len(os.listdir(sys.argv[1])) < 2:
    time.sleep(0.01)
print("PID", os.getpid(), flush=True)
"""


def test_a_process_that_exits_during_a_run_cancels_it_and_leaves_nothing(tmp_path):
    """The run's thread is a daemon: at exit the run is cancelled before the
    pools shut down, no replacement worker is started, nothing is printed."""
    import subprocess
    import sys

    script = tmp_path / "exit_live.py"
    script.write_text(EXIT_WITH_A_LIVE_RUN)
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script), str(marks)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stdout.startswith("PID"), proc.stderr
    assert proc.stderr == ""  # (a replacement worker started at exit would print a broken pipe here)
    workers = [int(m.name[len("started") :]) for m in marks.iterdir()]
    _, alive = psutil.wait_procs([psutil.Process(p) for p in workers if psutil.pid_exists(p)], timeout=10)
    assert not alive


class _FailsAtStart(taskmap.Observer):
    def run_started(self, graph, info):
        raise RuntimeError("observer broke")


@pytest.mark.parametrize("runner", LOCAL)
def test_an_observer_that_raises_at_the_start_ends_the_run_cleanly(runner):
    """(Found with the live page: ``run`` started its bookkeeping outside
    its ``try``, leaving the output capture installed and the cancel's
    waker registered.)"""
    import sys

    use_every_worker()
    stdout, before = sys.stdout, snapshot()
    kwargs = {"ncores": 2} if runner in PARALLEL else {}
    run = taskmap.start(staggered_graph(), runner, observers=[_FailsAtStart()], **kwargs)
    with pytest.raises(RuntimeError, match="observer broke"):
        run.wait(timeout=30)
    assert sys.stdout is stdout  # the capture is undone
    use_every_worker()
    compare(before, snapshot(), same_workers=True)  # no thread, descriptor or process left
