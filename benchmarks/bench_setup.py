"""What keeping warm workers fresh costs (issue 25): a run whose setup did
not change must cost what it cost before.

Measures, on a warm pool of two workers:
- ``snapshot``: the caller's per-run look at its cwd, environment, sys.path
  and user modules, unchanged and after a change (microseconds per call);
- ``dag``: 2,000 trivial tasks in a random DAG (tasks/s, median), and the
  ratio of its run time to in-process ``taskmap.run`` on the same graph,
  measured in the same process (this VM's speed drifts: the ratio is the
  figure to compare between two versions);
- ``small``: a 4-task scenario graph run again and again (ms per run), with
  its ratio to in-process ``run``;
- with ``--changing``, the same while an environment variable changes before
  every run (each run then sends a SETUP message to each worker).

An A/B against another checkout, interleaved (the numbers of one process
alone mean little here)::

    for k in 1 2 3; do
        PYTHONPATH=/path/to/other/checkout python benchmarks/bench_setup.py --json
        python benchmarks/bench_setup.py --json
    done

(The other checkout need not have ``taskmap.runtime.process_setup``: the snapshot
line is then left out.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _baselines as B

import taskmap

NCORES = 2


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def graph_of(spec: dict):
    funcs, deps, io = B.build(spec, "ours")
    return taskmap.create_graph(funcs, deps, io_bound=io)


def run_once(runner, spec: dict, **kw) -> float:
    graph = graph_of(spec)
    t = time.perf_counter()
    graph = runner(graph, **kw)
    took = time.perf_counter() - t
    if len(graph.done) != len(graph.dependencies):
        raise RuntimeError("not every task finished")
    return took


def scenario():
    """4 io tasks in a diamond, each trivial: the shape of a stress script's
    scenario graph, where the per-run fixed cost dominates."""

    async def login():
        return "token"

    async def browse(token):
        return token + "b"

    async def search(token):
        return token + "s"

    async def checkout(b, s):
        return b + s

    funcs = {"login": login, "browse": browse, "search": search, "checkout": checkout}
    deps = {"login": [], "browse": ["login"], "search": ["login"], "checkout": ["browse", "search"]}
    return taskmap.create_graph(funcs, deps, io_bound=list(funcs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--changing", action="store_true", help="change an environment variable before every run")
    parser.add_argument("--json", action="store_true", help="one JSON line (for interleaved A/B runs)")
    args = parser.parse_args()

    counter = iter(range(10**9))

    def maybe_change():
        if args.changing:
            os.environ["TASKMAP_BENCH_SETUP"] = str(next(counter))

    out: dict = {"version": getattr(taskmap, "__file__", "?")}
    try:
        from taskmap.runtime import process_setup
    except ImportError:
        process_setup = None
    if process_setup is not None:
        process_setup.snapshot()
        n = 2000
        t = time.perf_counter()
        for _ in range(n):
            process_setup.snapshot()
        out["snapshot_unchanged_us"] = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for k in range(n):
            os.environ["TASKMAP_BENCH_SETUP"] = str(k)
            process_setup.snapshot()
        out["snapshot_changed_us"] = (time.perf_counter() - t) / n * 1e6
        os.environ.pop("TASKMAP_BENCH_SETUP", None)

    spec = {"workload": "dag", "n": 2000, "seed": 1}
    for _ in range(3):  # warm pool, both workers up
        run_once(taskmap.run_parallel_async, spec, ncores=NCORES)
        time.sleep(0.2)
    par, ref = [], []
    for _ in range(args.reps):  # interleaved with the in-process reference
        maybe_change()
        par.append(run_once(taskmap.run_parallel_async, spec, ncores=NCORES))
        ref.append(run_once(taskmap.run, spec))
    out["dag_tasks_per_s"] = 2000 / statistics.median(par)
    out["dag_ratio_to_run"] = statistics.median(par) / statistics.median(ref)

    small, small_ref = [], []
    for _ in range(args.reps * 10):
        maybe_change()
        g = scenario()
        t = time.perf_counter()
        taskmap.run_parallel_async(g, ncores=NCORES)
        small.append(time.perf_counter() - t)
        g = scenario()
        t = time.perf_counter()
        taskmap.run_async(g)
        small_ref.append(time.perf_counter() - t)
    out["small_ms_per_run"] = statistics.median(small) * 1e3
    out["small_ratio_to_run_async"] = statistics.median(small) / statistics.median(small_ref)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:28} {value:,.3f}" if isinstance(value, float) else f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
