"""What an element of an expanded task costs against a static task.

Two graphs of N trivial tasks each, run by ``run_parallel_async`` (ncores=2)
in one process, interleaved: ``static``, a source task and N tasks
``work_0..work_{N-1}`` that depend on it, built before the run; and
``expand``, a source task returning ``range(N)`` and one task expanded over
it, so its N elements are created during the run.  Reported: tasks per second
of the run (the runner call; the static graph's ``create_graph`` is not in
it, the expansion is), and bytes per task, the peak of Python allocations in
the calling process (tracemalloc, in separate runs: it slows the run down)
over N, during the run alone and during ``create_graph`` and the run (the
static graph's names and tables are made before its run, an expanded
graph's elements during it), and the ratio expand / static of each.

    python benchmarks/bench_expand.py            # N = 100,000, 3 repetitions
    python benchmarks/bench_expand.py --n 20000 --reps 2
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc

import taskmap


def source():
    return 0


def numbers(n):
    return range(n)


def work(x):
    return x


def static_graph(n: int) -> taskmap.Graph:
    funcs = {"source": source, **{f"work_{i}": work for i in range(n)}}
    deps = {"source": [], **{f"work_{i}": ["source"] for i in range(n)}}
    return taskmap.create_graph(funcs, deps)


def expand_graph(n: int) -> taskmap.Graph:
    import functools

    funcs = {"source": functools.partial(numbers, n), "work": work}
    return taskmap.create_graph(funcs, {"source": [], "work": ["source"]}, expand={"work": "source"})


def timed(make, n: int) -> float:
    graph = make(n)
    gc.collect()
    start = time.perf_counter()
    taskmap.run_parallel_async(graph, ncores=2)
    took = time.perf_counter() - start
    assert len(graph.done) == (n + 1 if make is static_graph else 2)
    return n / took


def peak_bytes(make, n: int, with_build: bool) -> float:
    """Peak Python allocations over the run (and the graph's construction,
    ``with_build``), per task."""
    graph = None if with_build else make(n)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    if graph is None:
        graph = make(n)
    taskmap.run_parallel_async(graph, ncores=2)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    n = args.n
    taskmap.run_parallel_async(static_graph(100), ncores=2)  # (warm the pool)
    kinds = (("static", static_graph), ("expand", expand_graph))
    rates: dict[str, list[float]] = {"static": [], "expand": []}
    for _ in range(args.reps):
        for name, make in kinds:
            rates[name].append(timed(make, n))
    run_only = {name: peak_bytes(make, n, with_build=False) for name, make in kinds}
    with_build = {name: peak_bytes(make, n, with_build=True) for name, make in kinds}
    rate = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{n:,} trivial tasks, run_parallel_async(ncores=2); tasks/s: median of {args.reps} interleaved runs")
    print(f"{'':8} {'tasks/s':>10} {'bytes/task, run':>16} {'bytes/task, build + run':>24}")
    for name, _ in kinds:
        print(f"{name:8} {rate[name]:10,.0f} {run_only[name]:16,.0f} {with_build[name]:24,.0f}")
    ratios = (
        rate["expand"] / rate["static"],
        run_only["expand"] / run_only["static"],
        with_build["expand"] / with_build["static"],
    )
    print(f"{'ratio':8} {ratios[0]:10.2f} {ratios[1]:16.2f} {ratios[2]:24.2f}   (expand / static)")


if __name__ == "__main__":
    main()
