"""Consecutive parallel runs in one process leak nothing.

After a warm-up, N runs of a small mixed io/cpu graph leave the calling
process with the same number of child processes (zombies included), threads,
open file descriptors and /dev/shm entries, and its RSS roughly flat; the warm
pool's workers are the same processes with the same fds and threads.  The
same holds across runs in which a worker crashes every time (each replaced).
The full count (200 runs) is ``stress/soak.py``.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import taskmap

psutil = pytest.importorskip("psutil")

from _leaks import compare, snapshot, use_every_worker  # noqa: E402

RUNS = 30
CRASH_RUNS = 30


def cpu(*xs):
    n = sum(x for x in xs if isinstance(x, int))
    for i in range(2000):
        n = (n * 31 + i) % 1000003
    return n


async def io(*xs):
    await asyncio.sleep(0.001)
    return sum(x for x in xs if isinstance(x, int)) + 1


def plain_io(*xs):
    time.sleep(0.001)
    return len(xs)


def fails(*xs):
    raise ValueError("expected failure", len(xs))


def crash(*xs):
    os._exit(3)


def mixed_graph(with_crash: bool = False):
    """~20 tasks: fan-out, fan-in, a chain, io and cpu, one failure."""
    funcs, deps = {}, {}
    funcs["root"], deps["root"] = io, []
    for i in range(6):
        funcs[f"io{i}"], deps[f"io{i}"] = io, ["root"]
        funcs[f"cpu{i}"], deps[f"cpu{i}"] = cpu, [f"io{i}"]
    funcs["plain"], deps["plain"] = plain_io, ["root"]
    funcs["join"], deps["join"] = cpu, [f"cpu{i}" for i in range(6)] + ["plain"]
    for i in range(4):
        funcs[f"chain{i}"], deps[f"chain{i}"] = cpu, [f"chain{i - 1}" if i else "join"]
    funcs["bad"], deps["bad"] = fails, ["root"]
    funcs["after_bad"], deps["after_bad"] = cpu, ["bad"]
    if with_crash:
        # after every io task is done, so that the crash takes only itself
        funcs["crash"], deps["crash"] = crash, ["join"]
        funcs["after_crash"], deps["after_crash"] = cpu, ["crash"]
    io_bound = ["root", "plain"] + [f"io{i}" for i in range(6)]
    return taskmap.create_graph(funcs, deps, io_bound=io_bound)


def check_results(graph, with_crash: bool = False) -> None:
    r = graph.results
    assert len(graph.done) == len(graph.dependencies)
    assert r["root"] == 1 and all(r[f"io{i}"] == 2 for i in range(6))
    assert r["plain"] == 1 and r["chain3"] == cpu(cpu(cpu(cpu(r["join"]))))
    assert type(r["bad"]) is ValueError
    assert r["after_bad"] == "Ancestor task bad failed; task not run"
    if with_crash:
        assert isinstance(r["crash"], taskmap.WorkerCrashedError) and r["crash"].exitcode == 3
        assert r["after_crash"] == "Ancestor task crash failed; task not run"


def runs(n: int, with_crash: bool) -> None:
    for k in range(n):
        graph = mixed_graph(with_crash)
        runner = taskmap.run_parallel_async if k % 2 else taskmap.run_parallel
        runner(graph, ncores=2)
        check_results(graph, with_crash)


@pytest.mark.timeout(120)
def test_consecutive_runs_leak_nothing():
    runs(5, with_crash=False)  # warm-up: pool started, worker threads and caches grown
    use_every_worker()
    before = snapshot()
    runs(RUNS, with_crash=False)
    use_every_worker()
    after = snapshot()
    compare(before, after, same_workers=True)


@pytest.mark.timeout(180)
def test_runs_with_a_crash_each_leak_nothing():
    runs(3, with_crash=True)
    use_every_worker()
    before = snapshot()
    runs(CRASH_RUNS, with_crash=True)
    use_every_worker()
    after = snapshot()
    compare(before, after, same_workers=False)
