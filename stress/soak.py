#!/usr/bin/env python3
"""Soak: many consecutive parallel runs in one process leak nothing.

    python stress/soak.py                    # 200 runs of 1000 tasks, about a minute
    python stress/soak.py --runs 1000 --tasks 500 --seed 3

Each run builds a fresh random graph (seeded) of io-bound coroutines, plain
io functions, cpu tasks, a failing task, a 1 MB value, an io task past its
time limit and a flaky task that needs a retry; every --crash-every runs one
task kills its worker (os._exit, SIGKILL or a segfault) and every
--resize-every runs uses one worker instead of --ncores (the pool shrinks and
grows).  The runners alternate between run_parallel and run_parallel_async.

Checked (any miss: FAIL, exit status 1; a run that does not finish within
--max-run-seconds: FAIL, exit status 2):

* every result of every run equals a sequential evaluation of its graph;
* after the warm-up and after the last run, the calling process has the
  same number of child processes (zombies counted), threads and open file
  descriptors, /dev/shm holds the same semaphores (sem.*) and other entries,
  and its RSS grew by less than --rss-slack MiB;
* no worker that lived through the soak gained file descriptors, and none
  gained more than a few threads (its thread pools fill up lazily);
* no child process other than the pool's workers (and loky's resource
  tracker) is left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import gc
import os
import random
import signal
import sys
import threading
import time


# -- the tasks (imported by the workers as ``soak``) ------------------------------


def combine(i, *xs):
    acc = i
    for x in xs:
        acc = (acc * 31 + (x if isinstance(x, int) else len(x))) % 1_000_003
    return acc


def cpu(i, *xs):
    n = combine(i, *xs)
    for k in range(500):
        n = (n * 7 + k) % 1_000_003
    return n


async def io(i, *xs):
    await asyncio.sleep(0.001)
    return combine(i, *xs)


def plain_io(i, *xs):
    time.sleep(0.001)
    return combine(i, *xs)


def big(i, *xs):
    return bytes(1 << 20)


def fails(i, *xs):
    raise ValueError("planned failure", i)


async def hangs(i, *xs):
    await asyncio.sleep(3600)


def flaky(path, i, *xs):
    with open(path, "a+") as f:
        f.seek(0)
        n = len(f.read())
        f.write("x")
    if n == 0:
        raise ConnectionError("transient")
    return combine(i, *xs)


def crash(way, i, *xs):
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if way == "exit":
        os._exit(7)
    if way == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    ctypes.string_at(0)


def expected_value(kind, i, args):
    if kind in ("cpu",):
        return cpu(i, *args)
    if kind in ("io", "plain", "flaky"):
        return combine(i, *args)
    if kind == "big":
        return bytes(1 << 20)
    raise AssertionError(kind)


FAILING = ("fails", "hangs", "crash")


def make_run(rng: random.Random, n: int, with_crash: bool, tmp: str, k: int, flaky_task: bool = True):
    names = [f"r{k}t{i}" for i in range(n)]
    kinds = {}
    deps = {}
    for i, name in enumerate(names):
        kinds[name] = rng.choices(("cpu", "io", "plain"), (0.5, 0.4, 0.1))[0]
        lo = max(0, i - 30)
        deps[name] = sorted({names[rng.randrange(lo, i)] for _ in range(rng.randint(0, 3))}) if i else []
    special = rng.sample(range(n // 2, n), 5)
    kinds[names[special[0]]] = "fails"
    kinds[names[special[1]]] = "hangs"
    kinds[names[special[2]]] = "big"
    if flaky_task:
        kinds[names[special[3]]] = "flaky"
    if with_crash:
        kinds[names[special[4]]] = "crash"
    funcs, io_bound = {}, []
    for i, name in enumerate(names):
        kind = kinds[name]
        if kind == "flaky":
            funcs[name] = functools.partial(flaky, os.path.join(tmp, name), i)
        elif kind == "crash":
            funcs[name] = functools.partial(crash, rng.choice(("exit", "kill", "segv")), i)
        else:
            body = {"cpu": cpu, "io": io, "plain": plain_io, "big": big, "fails": fails, "hangs": hangs}[kind]
            funcs[name] = functools.partial(body, i)
        if kind in ("io", "plain", "hangs"):
            io_bound.append(name)
    return names, kinds, deps, funcs, io_bound


def check_run(graph, names, kinds, deps, taskmap, crash_run: bool) -> list[str]:
    problems = []
    failed = {}
    for i, name in enumerate(names):
        got = graph.results.get(name, "<missing>")
        bad_parents = [p for p in deps[name] if p in failed]
        above = set().union(*(failed[p] for p in bad_parents)) if bad_parents else set()
        if above:
            failed[name] = above
            if not (isinstance(got, str) and any(got == f"Ancestor task {t} failed; task not run" for t in above)):
                problems.append(f"{name}: expected the ancestor string, got {got!r:.100}")
            continue
        kind = kinds[name]
        if kind in FAILING:
            failed[name] = {name}
            want_type = {"fails": ValueError, "hangs": taskmap.TaskTimeoutError, "crash": taskmap.WorkerCrashedError}[
                kind
            ]
            # in a crash run, what the crashing worker held fails with it
            collateral = crash_run and isinstance(got, taskmap.WorkerCrashedError)
            if not (isinstance(got, want_type) or collateral):
                problems.append(f"{name}: planned {kind}, got {got!r:.100}")
            continue
        args = [graph.results[p] for p in deps[name] if graph.results[p] is not None]
        want = expected_value(kind, i, args)
        if type(got) is not type(want) or got != want:
            problems.append(f"{name}: planned {kind}, expected {want!r:.40}, got {got!r:.100}")
    if len(graph.done) != len(names) or set(graph.done) != set(names):
        problems.append(f"graph.done has {len(graph.done)} entries for {len(names)} tasks")
    return problems


# -- measuring --------------------------------------------------------------------


def shm() -> tuple[set, set]:
    try:
        entries = set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        entries = set()
    sems = {e for e in entries if e.startswith("sem.")}
    return sems, entries - sems


def held_by_others(path: str, ours: set[int]) -> bool:
    import psutil

    for proc in psutil.process_iter():
        if proc.pid in ours:
            continue
        try:
            if any(f.path == path for f in proc.open_files()) or any(
                m.path == path for m in proc.memory_maps(grouped=True)
            ):
                return True
        except (psutil.Error, OSError):
            continue
    return False


def busy_pid():
    time.sleep(0.2)
    return os.getpid()


def use_every_worker(taskmap, ncores: int) -> None:
    """Until each worker has run a task: one the pool is still starting
    (after a crash or a resize) has fewer fds and threads than it will."""
    for _ in range(50):
        funcs = {f"p{i}": busy_pid for i in range(ncores)}
        graph = taskmap.run_parallel(taskmap.create_graph(funcs, {k: [] for k in funcs}), ncores=ncores)
        if len(set(graph.results.values())) == ncores:
            return


def snapshot() -> dict:
    import psutil

    from taskmap.runtime.pool import get_pool

    gc.collect()
    me = psutil.Process()
    kids = me.children(recursive=True)
    sems, other = shm()
    workers = {}
    for w in get_pool().workers:
        try:
            p = psutil.Process(w.pid)
            workers[w.pid] = (p.num_fds(), p.num_threads(), p.memory_info().rss)
        except psutil.Error:
            pass
    return {
        "children": len(kids),
        "zombies": sum(1 for k in kids if k.status() == psutil.STATUS_ZOMBIE),
        "threads": me.num_threads(),
        "fds": len(os.listdir("/proc/self/fd")),
        "sems": sems,
        "shm": other,
        "rss": me.memory_info().rss,
        "workers": workers,
    }


def compare(before: dict, after: dict, rss_slack: int) -> list[str]:
    import psutil

    problems = []
    for key in ("children", "zombies", "threads", "fds"):
        if after[key] != before[key]:
            problems.append(f"{key}: {before[key]} after the warm-up, {after[key]} at the end")
    ours = {os.getpid()} | {k.pid for k in psutil.Process().children(recursive=True)}
    for key, what in (("sems", "semaphores"), ("shm", "/dev/shm entries")):
        new = {e for e in after[key] - before[key] if not held_by_others(f"/dev/shm/{e}", ours)}
        if new:
            problems.append(f"{what} left behind: {sorted(new)[:5]}")
    growth = after["rss"] - before["rss"]
    if growth > rss_slack:
        problems.append(f"RSS grew by {growth / 2**20:.1f} MiB")
    for pid, (fds, threads, _rss) in after["workers"].items():
        if pid in before["workers"]:
            fds0, threads0, _ = before["workers"][pid]
            if fds != fds0:
                problems.append(f"worker {pid}: {fds0} fds after the warm-up, {fds} at the end")
            if threads > threads0 + 3:
                problems.append(f"worker {pid}: {threads0} threads after the warm-up, {threads} at the end")
    return problems


def stray_children() -> list[str]:
    import psutil

    from taskmap.runtime.pool import get_pool

    pool = {w.pid for w in get_pool().workers}
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in pool and "resource_tracker" not in " ".join(child.cmdline()):
                out.append(f"stray child process {child.pid} ({child.status()})")
        except psutil.NoSuchProcess:
            pass
    return out


# -- main -------------------------------------------------------------------------


@contextlib.contextmanager
def watchdog(seconds: float):
    """SIGINT the main thread if the block runs past ``seconds`` (a hung
    run: taskmap stops its workers and raises KeyboardInterrupt)."""
    fired, done = threading.Event(), threading.Event()

    def watch():
        if not done.wait(seconds):
            fired.set()
            while True:  # again until it lands (Python may swallow one in a gc callback)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                if done.wait(5):
                    break

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield fired
    finally:
        done.set()
        t.join()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10, help="runs before the first measurement")
    p.add_argument("--tasks", type=int, default=1000, help="tasks per run")
    p.add_argument("--ncores", type=int, default=2)
    p.add_argument("--crash-every", type=int, default=10, help="a run with a worker crash every N runs (0: never)")
    p.add_argument("--resize-every", type=int, default=25, help="a run on one worker every N runs (0: never)")
    p.add_argument("--rss-slack", type=float, default=32, help="allowed RSS growth of the caller, MiB")
    p.add_argument("--hang-timeout", type=float, default=0.05)
    p.add_argument("--no-flaky", action="store_true", help="leave out the flaky task (no retry after a failure)")
    p.add_argument("--max-run-seconds", type=float, default=60, help="a run longer than this counts as hung")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import tempfile

    import taskmap

    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="taskmap-soak-")
    problems: list[str] = []
    before = None
    rss_first = None
    start = time.monotonic()
    total = args.warmup + args.runs
    for k in range(total):
        crash_run = bool(args.crash_every) and k % args.crash_every == args.crash_every - 1
        ncores = 1 if args.resize_every and k % args.resize_every == args.resize_every - 1 else args.ncores
        names, kinds, deps, funcs, io_bound = make_run(rng, args.tasks, crash_run, tmp, k, not args.no_flaky)
        graph = taskmap.create_graph(funcs, deps, io_bound=io_bound, name="soak")
        runner = taskmap.run_parallel_async if k % 2 else taskmap.run_parallel
        hang = [n for n in names if kinds[n] == "hangs"]
        # retries absorb the collateral of a crash (every task the crashing
        # worker held fails with it) and let the flaky task succeed
        retries = {None: 5, **{n: 0 for n in names if kinds[n] in FAILING}}
        try:
            with watchdog(args.max_run_seconds) as fired:
                runner(graph, ncores=ncores, timeout={n: args.hang_timeout for n in hang}, retries=retries)
        except KeyboardInterrupt:
            if not fired.is_set():
                raise
            stuck = sorted(graph.in_progress)[:5]
            print(
                f"FAIL: run {k} did not finish within {args.max_run_seconds:g} s (still running: {stuck}, "
                f"{len(graph.done)}/{len(names)} done)"
            )
            return 2
        bad = check_run(graph, names, kinds, deps, taskmap, crash_run)
        problems += [f"run {k}: {p}" for p in bad]
        if k == args.warmup - 1:
            use_every_worker(taskmap, args.ncores)
            before = snapshot()
            rss_first = before["rss"]
        if k >= args.warmup and (k - args.warmup) % 50 == 49:
            now = snapshot()
            print(
                f"  run {k + 1 - args.warmup}/{args.runs}: fds {now['fds']}, threads {now['threads']}, "
                f"children {now['children']}, RSS {now['rss'] / 2**20:.1f} MiB "
                f"({(now['rss'] - rss_first) / 2**20:+.1f}), {time.monotonic() - start:.0f} s",
                flush=True,
            )
        del graph
    use_every_worker(taskmap, args.ncores)
    after = snapshot()
    if before is None:
        before = after
    problems += compare(before, after, int(args.rss_slack * 2**20))
    problems += stray_children()
    elapsed = time.monotonic() - start
    for p in problems[:20]:
        print("  problem:", p)
    facts = (
        f"{args.runs} runs of {args.tasks} tasks after {args.warmup} warm-up runs, seed {args.seed}, "
        f"{elapsed:.1f} s; fds {before['fds']}->{after['fds']}, threads {before['threads']}->{after['threads']}, "
        f"children {before['children']}->{after['children']}, sem {len(before['sems'])}->{len(after['sems'])}, "
        f"/dev/shm {len(before['shm'])}->{len(after['shm'])}, RSS {(after['rss'] - before['rss']) / 2**20:+.1f} MiB"
    )
    if problems:
        print(f"FAIL: {len(problems)} problems; {facts}")
        return 1
    print(f"OK: nothing lost, wrong or leaked; {facts}")
    return 0


if __name__ == "__main__":
    # Run as the importable module ``soak``, so that workers unpickle the
    # task functions by reference.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import soak

    sys.exit(soak.main())
