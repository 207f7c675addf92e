"""Workloads shared by ``bench_runtime.py`` and the runners of its baselines.

This module never imports ``taskmap`` at module level: the same workload
definitions are used with this project's taskmap, with the ORIGINAL taskmap
0.0.6 (same import name, installed in an isolated folder that a child process
puts first on ``sys.path``) and with Dask's local process scheduler.

Run as a script it is the child process of one measurement::

    python benchmarks/_baselines.py RUNNER 'SPEC_JSON'

with RUNNER one of ``original`` (needs ``--orig-path DIR``), ``dask``,
``dask-fresh``, ``ours-fresh`` and ``ours-memory``; it prints one JSON object
on its last line of stdout.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import sys
import time

# -- pure-Python work ------------------------------------------------------


def spin(n: int) -> int:
    """A fixed amount of pure-Python integer arithmetic (holds the GIL)."""
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def calibrate(seconds: float = 0.05, reps: int = 7) -> float:
    """Iterations of ``spin`` per second of cpu time on one core.

    Timed with the thread's cpu clock, not the wall clock, and the fastest of
    ``reps`` timings kept: on a shared machine the wall clock also counts the
    time other processes held the core, while the cpu clock stays close to
    what a quiet core would take."""
    clock = time.thread_time
    n = 20_000
    while True:  # grow n until one timing is long enough to trust
        t = clock()
        spin(n)
        took = clock() - t
        if took > seconds / 4:
            break
        n *= 2
    n = int(n * seconds / took)
    best = float("inf")
    for _ in range(reps):
        t = clock()
        spin(n)
        best = min(best, clock() - t)
    return n / best


def spinner_main(conn) -> None:
    """A process that times ``spin(n)`` for each n it receives (None: exit)."""
    while True:
        n = conn.recv()
        if n is None:
            return
        t = time.perf_counter()
        spin(n)
        conn.send(time.perf_counter() - t)


# -- task functions (module level: picklable by reference everywhere) --------


def trivial(*args):
    return 1


async def trivial_async(*args):
    return 1


def trivial_of(k, *args):
    """A task per partial: ``functools.partial(trivial_of, k)``."""
    return 1


async def trivial_of_async(k, *args):
    return 1


def closure_of(k, is_async: bool = False):
    """A task per closure (made by a factory, as users write them)."""
    if is_async:

        async def task_async(*args):
            return k and 1

        return task_async

    def task(*args):
        return k and 1

    return task


def cpu_task(n, *args):
    spin(n)
    return 1


async def cpu_task_async(n, *args):
    spin(n)
    return 1


async def io_task(seconds, *args):
    await asyncio.sleep(seconds)
    return 1


def io_task_blocking(seconds, *args):
    time.sleep(seconds)
    return 1


# the seed demo of the README, verbatim
async def io_bound_a():
    await asyncio.sleep(0.2)
    return "io_a"


async def io_bound_b(x):
    await asyncio.sleep(0.2)
    return x + " io_b"


async def cpu_bound_a(x):
    time.sleep(0.2)
    return x + " cpu_a"


async def cpu_bound_b():
    time.sleep(0.2)
    return "cpu_b"


# Dask runs plain functions: the same demo with blocking waits
def io_bound_a_dask():
    time.sleep(0.2)
    return "io_a"


def io_bound_b_dask(x):
    time.sleep(0.2)
    return x + " io_b"


def cpu_bound_a_dask(x):
    time.sleep(0.2)
    return x + " cpu_a"


def cpu_bound_b_dask():
    time.sleep(0.2)
    return "cpu_b"


async def io_gaps(seconds, *args):
    """Loop ``await asyncio.sleep(0.001)`` for ``seconds``; return the worst
    interval between two wake-ups, the 99th and 50th percentiles (seconds)
    and the number of wake-ups."""
    prev = time.perf_counter()
    end = prev + seconds
    gaps = []
    while prev < end:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - prev)
        prev = now
    gaps.sort()
    return [gaps[-1], gaps[int(len(gaps) * 0.99)], gaps[len(gaps) // 2], len(gaps)]


def io_gaps_blocking(seconds, *args):
    return asyncio.run(io_gaps(seconds))


# -- graphs ------------------------------------------------------------------


async def storm_sleep(seconds, *args):
    """One coroutine of an io storm: its wait and nothing else."""
    await asyncio.sleep(seconds)
    return 1


async def scenario_login():
    return "token"


async def scenario_browse(token):
    return token + ":browse"


async def scenario_search(token):
    return token + ":search"


async def scenario_checkout(browsed, searched):
    return len(browsed) + len(searched)


SCENARIO_DEPS = {"login": [], "browse": ["login"], "search": ["login"], "checkout": ["browse", "search"]}


def scenario_funcs() -> dict:
    """A stress-testing script's scenario: log in, then browse and search at
    once, then check out (io coroutines that do no waiting: the per-run cost)."""
    return {
        "login": scenario_login,
        "browse": scenario_browse,
        "search": scenario_search,
        "checkout": scenario_checkout,
    }


def random_dag(n: int, seed: int, max_fanin: int = 3) -> dict:
    """Task ``t<i>`` depends on 0..max_fanin distinct earlier tasks, chosen
    uniformly among all earlier ones."""
    rng = random.Random(seed)
    deps = {}
    for i in range(n):
        k = min(i, rng.randint(0, max_fanin))
        deps[f"t{i}"] = [f"t{j}" for j in sorted(rng.sample(range(i), k))]
    return deps


def chain(n: int) -> dict:
    return {f"t{i}": ([f"t{i - 1}"] if i else []) for i in range(n)}


def etl_spec(n: int, seed: int, rate: float) -> dict:
    """The mixed ETL graph: a random DAG, half the tasks io-bound (waiting
    20-80 ms), half cpu-bound (5-15 ms of ``spin`` at ``rate`` iterations/s).
    Everything derives from ``seed`` and ``rate``, so every process builds the
    same graph."""
    deps = random_dag(n, seed)
    rng = random.Random(seed + 1)
    names = list(deps)
    io = set(rng.sample(names, n // 2))
    kind, seconds, iters = {}, {}, {}
    for t in names:
        if t in io:
            kind[t] = "io"
            seconds[t] = rng.uniform(0.020, 0.080)
        else:
            kind[t] = "cpu"
            seconds[t] = rng.uniform(0.005, 0.015)
            iters[t] = int(seconds[t] * rate)
    return {"deps": deps, "kind": kind, "seconds": seconds, "iters": iters}


def critical_path(deps: dict, seconds: dict) -> float:
    """Longest chain of nominal durations (tasks are listed parents first)."""
    finish = {}
    for t, ps in deps.items():
        finish[t] = seconds[t] + max((finish[p] for p in ps), default=0.0)
    return max(finish.values())


def build(spec: dict, flavour: str, rate: float | None = None):
    """``(funcs, deps, io_bound)`` of a workload for one implementation.

    ``flavour``: ``ours`` (plain cpu functions, coroutine io functions),
    ``original`` (every task a coroutine function, as its async runner
    requires) or ``dask`` (plain functions; io waits are ``time.sleep``)."""
    w = spec["workload"]
    if w == "seed":
        deps = {
            "io_bound_a": [],
            "io_bound_b": ["cpu_bound_b"],
            "cpu_bound_a": ["io_bound_a"],
            "cpu_bound_b": [],
        }
        if flavour == "dask":
            funcs = {
                "io_bound_a": io_bound_a_dask,
                "io_bound_b": io_bound_b_dask,
                "cpu_bound_a": cpu_bound_a_dask,
                "cpu_bound_b": cpu_bound_b_dask,
            }
        else:
            funcs = {
                "io_bound_a": io_bound_a,
                "io_bound_b": io_bound_b,
                "cpu_bound_a": cpu_bound_a,
                "cpu_bound_b": cpu_bound_b,
            }
        return funcs, deps, ["io_bound_a", "io_bound_b"]
    if w in ("dag_partial", "dag_closure"):
        # the graphs users write: one function object per task
        deps = random_dag(spec["n"], spec.get("seed", 3))
        is_async = flavour == "original"
        if w == "dag_partial":
            f = trivial_of_async if is_async else trivial_of
            return {t: functools.partial(f, k) for k, t in enumerate(deps)}, deps, []
        return {t: closure_of(k + 1, is_async) for k, t in enumerate(deps)}, deps, []
    if w in ("dag", "chain", "rss"):
        deps = random_dag(spec["n"], spec.get("seed", 3)) if w != "chain" else chain(spec["n"])
        f = trivial_async if flavour == "original" else trivial
        return {t: f for t in deps}, deps, []
    if w == "etl":
        e = etl_spec(spec["n"], spec["seed"], spec["rate"])
        cpu = cpu_task_async if flavour == "original" else cpu_task
        io = io_task_blocking if flavour == "dask" else io_task
        funcs = {}
        for t in e["deps"]:
            if e["kind"][t] == "io":
                funcs[t] = functools.partial(io, e["seconds"][t])
            else:
                funcs[t] = functools.partial(cpu, e["iters"][t])
        return funcs, e["deps"], [t for t in e["deps"] if e["kind"][t] == "io"]
    if w == "stall":
        n_cpu = spec.get("cpu_tasks", 1)
        cpu = cpu_task_async if flavour == "original" else cpu_task
        gaps = io_gaps_blocking if flavour == "dask" else io_gaps
        funcs = {"io": functools.partial(gaps, spec["io_seconds"])}
        deps = {"io": []}
        for k in range(n_cpu):
            funcs[f"cpu{k}"] = functools.partial(cpu, int(spec["rate"] * spec["cpu_seconds"]))
            deps[f"cpu{k}"] = []
        return funcs, deps, ["io"]
    raise ValueError(f"unknown workload {w!r}")


def to_dask(funcs: dict, deps: dict) -> dict:
    """A legacy dask graph: key -> (function, *dependency keys)."""
    return {t: (funcs[t], *deps[t]) for t in deps}


# -- child runners -------------------------------------------------------------


def _original(spec: dict, orig_path: str) -> dict:
    """The ORIGINAL taskmap 0.0.6, imported from ``orig_path``."""
    sys.path.insert(0, orig_path)
    import logging

    import taskmap  # the original

    where = os.path.dirname(taskmap.__file__)
    if not where.startswith(os.path.abspath(orig_path)):
        raise RuntimeError(f"imported taskmap from {where}, not from {orig_path}")
    ncores = spec.get("ncores", 2)
    times, extra = [], {}
    for r in range(spec["reps"]):
        funcs, deps, io = build(spec, "original")
        # its default (DEBUG to stderr) would print a line per task event;
        # this project prints nothing unless asked, so compare without it
        graph = taskmap.create_graph(
            funcs, deps, io_bound=io, name=f"orig{r}", logging_config={"level": logging.WARNING, "write": False}
        )
        t = time.perf_counter()
        graph = taskmap.run_parallel_async(graph, nprocs=ncores, sleep=spec.get("sleep", 0.001))
        times.append(time.perf_counter() - t)
        if set(graph.done) != set(deps):
            raise RuntimeError("the original did not finish every task")
        if spec["workload"] == "stall":
            extra.setdefault("gap", []).append(graph.results["io"][0])
        bad = [
            v
            for v in graph.results.values()
            if isinstance(v, Exception) or (isinstance(v, str) and v.startswith("Ancestor"))
        ]
        if bad:
            raise RuntimeError(f"the original failed tasks: {bad[:3]}")
    return {"times": times, **extra}


def _dask_pool(n: int):
    from concurrent.futures import ProcessPoolExecutor

    import dask.multiprocessing as dmp

    return ProcessPoolExecutor(n, mp_context=dmp.get_context(), initializer=dmp.initialize_worker_process)


def _dask(spec: dict, fresh: bool) -> dict:
    """Dask's local process scheduler (``dask.multiprocessing.get``) with
    ``num_workers`` processes; a warm pool reused across runs unless fresh."""
    import dask.multiprocessing as dmp

    ncores = spec.get("ncores", 2)
    pool = None
    if not fresh:
        pool = _dask_pool(ncores)
        dmp.get({"a": (trivial,), "b": (trivial, "a")}, ["b"], num_workers=ncores, pool=pool)  # warm
    times, extra = [], {}
    for _ in range(spec["reps"]):
        funcs, deps, _io = build(spec, "dask")
        dsk = to_dask(funcs, deps)
        keys = list(deps)
        t = time.perf_counter()
        values = dmp.get(dsk, keys, num_workers=ncores, pool=pool)
        times.append(time.perf_counter() - t)
        if len(values) != len(keys):
            raise RuntimeError("dask lost results")
    if pool is not None:
        pool.shutdown()
    return {"times": times, **extra}


def _ours_fresh(spec: dict) -> dict:
    """The first run in a fresh process: worker pool start included."""
    t0 = time.perf_counter()
    import taskmap

    t1 = time.perf_counter()
    funcs, deps, io = build(spec, "ours")
    graph = taskmap.create_graph(funcs, deps, io_bound=io)
    t2 = time.perf_counter()
    graph = taskmap.run_parallel_async(graph, ncores=spec.get("ncores", 2))
    t3 = time.perf_counter()
    if len(graph.done) != len(deps) or any(isinstance(v, Exception) for v in graph.results.values()):
        raise RuntimeError(f"run failed: {graph.results}")
    return {"import": t1 - t0, "run": t3 - t2}


def _ours_memory(spec: dict) -> dict:
    """tracemalloc: bytes allocated and kept by create_graph, then by
    building the coordinator's SchedulingState, for a random DAG of n tasks."""
    import gc
    import tracemalloc

    import taskmap
    from taskmap.scheduling.state import SchedulingState

    n = spec["n"]
    deps = random_dag_int(n, spec.get("seed", 5))
    funcs = dict.fromkeys(deps, trivial)
    gc.collect()
    tracemalloc.start()
    m0, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    graph = taskmap.create_graph(funcs, deps)
    t_create = time.perf_counter() - t
    m1, p1 = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    state = SchedulingState(graph.dependencies, graph.io_bound, graph.done, graph.durations or None)
    t_state = time.perf_counter() - t
    m2, p2 = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(state.names) == n
    return {
        "n": n,
        "edges": sum(len(p) for p in deps.values()),
        "create_kept": m1 - m0,
        "create_peak": p1 - m0,
        "state_kept": m2 - m1,
        "state_peak": p2 - m1,
        "create_s_traced": t_create,
        "state_s_traced": t_state,
    }


def random_dag_int(n: int, seed: int) -> dict:
    """As ``random_dag`` with int task names (cheap to build for 10^6 tasks)."""
    rand = random.Random(seed).random
    deps = {}
    for i in range(n):
        k = int(rand() * 4) if i else 0
        deps[i] = list({i - 1 - int(rand() * i) for _ in range(k)}) if k else []
    return deps


def main(argv: list[str]) -> int:
    runner, spec = argv[1], json.loads(argv[2])
    if runner == "original":
        out = _original(spec, argv[argv.index("--orig-path") + 1])
    elif runner in ("dask", "dask-fresh"):
        out = _dask(spec, fresh=runner == "dask-fresh")
    elif runner == "ours-fresh":
        out = _ours_fresh(spec)
    elif runner == "ours-memory":
        out = _ours_memory(spec)
    else:
        raise SystemExit(f"unknown runner {runner!r}")
    sys.stdout.flush()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
