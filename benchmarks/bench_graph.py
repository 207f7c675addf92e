"""Time and memory to build, validate and run large graphs of trivial tasks.

For random DAGs of 10^4, 10^5 and 10^6 tasks (each task depends on 0-3
distinct earlier tasks, chosen uniformly), measures

- ``create_graph`` (copying the dependencies and every validation, cycle
  check included),
- ``run`` (the in-process runner: scheduling state, critical-path priority,
  bookkeeping; the tasks themselves do nothing; one task in 10,000, among the
  last 1%, raises so the failure and skip paths are exercised too),
- the peak resident memory the two add, per task,

and on the biggest graph ``get_ready_tasks``, ``get_all_children`` of the
first task and ``reset_failed_tasks``.  Each size runs in a fresh process so
that its peak memory is its own.  The growth ratios ``time(10n) / time(n)``
are about 10 when the work is linear.

    python benchmarks/bench_graph.py            # 10^4, 10^5, 10^6
    python benchmarks/bench_graph.py --quick    # 10^3, 10^4, 10^5
    python benchmarks/bench_graph.py --no-gc    # with the cyclic GC paused
    python benchmarks/bench_graph.py --local 1000   # parents close by (cache friendly)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import itertools  # noqa: E402

import taskmap  # noqa: E402


def trivial(*args):
    return 1


def failing(*args):
    raise ValueError("planned failure")


def random_dag(n: int, seed: int = 1, window: int | None = None) -> dict:
    """Task i depends on 0-3 distinct tasks among 0..i-1, chosen uniformly
    (or among the ``window`` tasks just before it)."""
    rand = random.Random(seed).random
    deps = {}
    for i in range(n):
        k = int(rand() * 4) if i else 0
        w = i if window is None else min(i, window)
        if k == 0:
            deps[i] = []
        elif k == 1:
            deps[i] = [i - 1 - int(rand() * w)]
        else:
            deps[i] = list({i - 1 - int(rand() * w) for _ in range(k)})
    return deps


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure_one(n: int, helpers: bool, gc_off: bool, window: int | None) -> dict:
    deps = random_dag(n, window=window)
    rng = random.Random(2)
    # failing tasks among the last 1% so that few tasks are skipped: the run
    # measures running tasks, with the failure path exercised
    failures = set(rng.sample(range(n - n // 100, n), max(1, n // 10_000)))
    funcs = {t: (failing if t in failures else trivial) for t in deps}
    edges = sum(len(p) for p in deps.values())
    gc.collect()
    if gc_off:
        gc.disable()
    base = rss_bytes()

    t0, c0 = time.perf_counter(), time.process_time()
    graph = taskmap.create_graph(funcs, deps)
    t1, c1 = time.perf_counter(), time.process_time()
    taskmap.run(graph)
    t2, c2 = time.perf_counter(), time.process_time()
    peak = peak_rss_bytes()
    out = {
        "n": n,
        "edges": edges,
        "create": t1 - t0,
        "run": t2 - t1,
        "create_cpu": c1 - c0,
        "run_cpu": c2 - c1,
        "peak_bytes": max(0, peak - base),
        "failed": sum(isinstance(r, Exception) for r in graph.results.values()),
        "skipped": sum(isinstance(r, str) for r in graph.results.values()),
    }
    assert len(graph.done) == n and len(graph.results) == n

    # baseline: a plain random lookup in a dict of n lists, the access
    # pattern a uniformly random DAG forces; it slows as n outgrows the caches
    table = {i: [i] for i in range(n)}
    keys = [int(rng.random() * n) for _ in range(500_000)]
    c = time.process_time()
    total = 0
    for k in keys:
        total += table[k][0]
    out["lookup_ns"] = (time.process_time() - c) / len(keys) * 1e9
    del table, keys

    if helpers:
        t = time.perf_counter()
        taskmap.get_all_children(graph, 0)
        out["get_all_children"] = time.perf_counter() - t
        t = time.perf_counter()
        taskmap.reset_failed_tasks(graph)
        out["reset_failed_tasks"] = time.perf_counter() - t
        out["reset_count"] = n - len(graph.done)
        t = time.perf_counter()
        ready = taskmap.get_ready_tasks(graph)
        out["get_ready_tasks"] = time.perf_counter() - t
        out["ready_count"] = len(ready)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 10^3, 10^4, 10^5")
    parser.add_argument("--no-gc", action="store_true", help="pause the cyclic garbage collector while measuring")
    parser.add_argument("--local", type=int, metavar="W", help="parents among the W tasks before each task (locality)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--helpers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure_one(args.one, args.helpers, args.no_gc, args.local)))
        return 0

    sizes = [10**3, 10**4, 10**5] if args.quick else [10**4, 10**5, 10**6]
    print(
        f"taskmap graph benchmark, Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"gc {'paused' if args.no_gc else 'on'}; random DAGs, fan-in 0-3, parents "
        f"{f'among the {args.local} tasks before' if args.local else 'uniform over all earlier tasks'}; "
        "each size in a fresh process"
    )
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n)]
        if n == sizes[-1]:
            cmd.append("--helpers")
        if args.no_gc:
            cmd.append("--no-gc")
        if args.local:
            cmd += ["--local", str(args.local)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout))

    header = (
        f"{'tasks':>9} {'edges':>9} {'create s':>9} {'run s':>8} {'create us/t':>12} "
        f"{'run us/t':>9} {'cpu create':>10} {'cpu run':>9} {'peak MB':>8} {'bytes/t':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        n = r["n"]
        print(
            f"{n:>9,} {r['edges']:>9,} {r['create']:>9.3f} {r['run']:>8.3f} "
            f"{r['create'] / n * 1e6:>12.2f} {r['run'] / n * 1e6:>9.2f} "
            f"{r['create_cpu'] / n * 1e6:>10.2f} {r['run_cpu'] / n * 1e6:>9.2f} "
            f"{r['peak_bytes'] / 2**20:>8.1f} {r['peak_bytes'] / n:>8.0f}"
        )
    print("  (wall-clock seconds and microseconds per task; 'cpu create'/'cpu run': the process's cpu")
    print("   time per task in microseconds, which other load on a shared machine inflates less)")
    print("\ngrowth ratios time(10n) / time(n)  (about 10 = linear)")
    for small, big in itertools.pairwise(rows):
        wall = (big["create"] + big["run"]) / (small["create"] + small["run"])
        cpu = (big["create_cpu"] + big["run_cpu"]) / (small["create_cpu"] + small["run_cpu"])
        print(
            f"  {small['n']:>9,} -> {big['n']:>9,}: create x{big['create'] / small['create']:.1f}, "
            f"run x{big['run'] / small['run']:.1f}, create+run x{wall:.1f} wall, x{cpu:.1f} cpu"
        )
    print("\nbaseline: one random lookup in a dict of n lists (cpu ns); growth beyond x10 above")
    print("that tracks this is the memory hierarchy, not the algorithm")
    for r in rows:
        print(f"  {r['n']:>9,}: {r['lookup_ns']:.0f} ns  (x{r['lookup_ns'] / rows[0]['lookup_ns']:.1f})")
    big = rows[-1]
    print(f"\nhelpers on {big['n']:,} tasks ({big['failed']} failed, {big['skipped']:,} skipped in the run):")
    print(f"  get_all_children(first task)  {big['get_all_children']:.3f} s")
    print(f"  reset_failed_tasks            {big['reset_failed_tasks']:.3f} s  ({big['reset_count']:,} tasks reset)")
    print(f"  get_ready_tasks               {big['get_ready_tasks']:.3f} s  ({big['ready_count']:,} ready)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
