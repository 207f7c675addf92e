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
import functools
import gc
import os
import tempfile
import threading
import time

import pytest

import taskmap
from taskmap.runtime.pool import get_pool

psutil = pytest.importorskip("psutil")

RUNS = 30
CRASH_RUNS = 30
RSS_SLACK = 24 << 20  # generous: allocator noise, lazily grown caches
WORKER_THREAD_SLACK = 3  # a leak of one per run would be +30


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


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


def _held_by_others(name: str, ours: set[int]) -> bool:
    """Whether a /dev/shm entry is open or mapped by a process outside our
    process tree (another program on a shared machine made it)."""
    path = f"/dev/shm/{name}"
    for proc in psutil.process_iter():
        if proc.pid in ours:
            continue
        try:
            if any(f.path == path for f in proc.open_files()):
                return True
            if any(m.path == path for m in proc.memory_maps(grouped=True)):
                return True
        except (psutil.Error, OSError):
            continue
    return False


def snapshot() -> dict:
    gc.collect()
    me = psutil.Process()
    kids = me.children(recursive=True)
    pool = get_pool()
    workers = {}
    for w in pool.workers:
        try:
            p = psutil.Process(w.pid)
            workers[w.pid] = (p.num_fds(), p.num_threads())
        except psutil.Error:
            workers[w.pid] = None
    return {
        "children": len(kids),
        "zombies": sum(1 for k in kids if k.status() == psutil.STATUS_ZOMBIE),
        "threads": me.num_threads(),
        "py_threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "shm": shm_entries(),
        "rss": me.memory_info().rss,
        "workers": workers,
    }


def compare(before: dict, after: dict, same_workers: bool) -> None:
    for key in ("children", "zombies", "threads", "py_threads", "fds"):
        assert after[key] == before[key], f"{key}: {before[key]} before, {after[key]} after"
    new_shm = after["shm"] - before["shm"]
    # a segment's name says whose it is: another coordinator's, being written
    # or read on a shared machine (held by nobody between the two), is not ours
    new_shm = {n for n in new_shm if not n.startswith("taskmap-") or n.startswith(f"taskmap-{os.getpid()}-")}
    if new_shm:
        ours = {os.getpid()} | {k.pid for k in psutil.Process().children(recursive=True)}
        new_shm = {n for n in new_shm if not _held_by_others(n, ours)}
    assert not new_shm, f"/dev/shm entries left behind: {sorted(new_shm)}"
    growth = after["rss"] - before["rss"]
    assert growth < RSS_SLACK, f"RSS grew by {growth / 2**20:.1f} MiB"
    if same_workers:
        # the same processes; their fds unchanged, their threads bounded (a
        # worker's thread pools start threads lazily, up to a fixed size)
        assert set(after["workers"]) == set(before["workers"]), "workers were replaced"
        for pid, (fds, threads) in after["workers"].items():
            fds0, threads0 = before["workers"][pid]
            assert fds == fds0, f"worker {pid}: {fds0} fds before, {fds} after"
            assert threads <= threads0 + WORKER_THREAD_SLACK, (
                f"worker {pid}: {threads0} threads before, {threads} after"
            )
    else:
        assert len(after["workers"]) == len(before["workers"])
        assert not set(after["workers"]) & set(before["workers"]), "crashed workers still in the pool"


def pid_once_all_run(path, n, seconds=20):
    """Note this task's start in ``path``, wait (at most ``seconds``) until
    ``n`` tasks started, return this worker's pid."""
    with open(path, "a") as f:
        f.write("x")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(path) as f:
            if len(f.read()) >= n:
                break
        time.sleep(0.002)
    return os.getpid()


def use_every_worker(ncores: int = 2) -> None:
    """Until each worker has run a task: a worker the pool is still starting
    (after a resize or a crash) has fewer fds and threads than it will.  Each
    of the ``ncores`` tasks waits until all run, so they run in different
    workers (a sleep instead let one worker run two in turn)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "started")
        funcs = {f"p{i}": functools.partial(pid_once_all_run, path, ncores) for i in range(ncores)}
        graph = taskmap.run_parallel(taskmap.create_graph(funcs, {k: [] for k in funcs}), ncores=ncores)
    assert len(set(graph.results.values())) == ncores, "the pool's workers never all took a task"


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
