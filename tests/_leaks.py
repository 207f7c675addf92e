"""Leak accounting shared by the tests that check that runs leave nothing
behind: a snapshot of this process (children, threads, descriptors,
/dev/shm entries, RSS) and of the warm pool's workers, and the comparison of
two snapshots."""

from __future__ import annotations

import functools
import gc
import os
import tempfile
import threading
import time

import psutil

import taskmap
from taskmap.runtime.pool import get_pool

RSS_SLACK = 24 << 20  # generous: allocator noise, lazily grown caches
WORKER_THREAD_SLACK = 3  # a leak of one per run would be +30


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


def _still_there(name: str) -> bool:
    """A leak stays: an entry gone by now was another process's, in use for
    a moment (a semaphore of another test run on a shared machine)."""
    return os.path.exists(f"/dev/shm/{name}")


def _made_by_another_live_process(name: str, ours: set[int]) -> bool:
    """A loky semaphore is named ``sem.loky-<creator pid>-...``: one made by a
    live process outside our tree (another test run on a shared machine) is
    not ours.  (One whose creator is gone may be a dead worker's: ours.)"""
    if not name.startswith("sem.loky-"):
        return False
    try:
        pid = int(name[len("sem.loky-") :].split("-")[0])
    except ValueError:
        return False
    return pid not in ours and psutil.pid_exists(pid)


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


def compare(before: dict, after: dict, same_workers: bool | None) -> None:
    """The process leaked nothing between the snapshots; the pool has the
    same workers (``same_workers``), all of them replaced (False), or as
    many as before, some replaced (None)."""
    for key in ("children", "zombies", "threads", "py_threads", "fds"):
        assert after[key] == before[key], f"{key}: {before[key]} before, {after[key]} after"
    new_shm = after["shm"] - before["shm"]
    # a segment's name says whose it is: another coordinator's, being written
    # or read on a shared machine (held by nobody between the two), is not ours
    new_shm = {n for n in new_shm if not n.startswith("taskmap-") or n.startswith(f"taskmap-{os.getpid()}-")}
    if new_shm:
        ours = {os.getpid()} | {k.pid for k in psutil.Process().children(recursive=True)}
        new_shm = {
            n
            for n in new_shm
            if not _held_by_others(n, ours) and not _made_by_another_live_process(n, ours) and _still_there(n)
        }
    assert not new_shm, f"/dev/shm entries left behind: {sorted(new_shm)}"
    growth = after["rss"] - before["rss"]
    assert growth < RSS_SLACK, f"RSS grew by {growth / 2**20:.1f} MiB"
    if same_workers is None:
        assert len(after["workers"]) == len(before["workers"])
    elif same_workers:
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
