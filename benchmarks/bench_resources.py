"""What resources cost and whether a rate holds (issue 18).

1. The 2,000-task DAG (warm pool, two workers): plain, then with every task
   using a resource whose limit never binds (so every task goes through the
   gate), interleaved in one process; the ratio of their medians is the cost.
2. A rate of R starts a second held for D seconds: R*D io tasks that use the
   rated resource; the achieved rate (starts - 1) / (last start - first
   start), from the tasks' own start times, against R.

    python benchmarks/bench_resources.py [--reps 15] [--rate 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _baselines as B

import taskmap


def dag(gated: bool):
    funcs, deps, io = B.build({"workload": "dag", "n": 2000, "seed": 1}, "ours")
    uses = {t: "pool" for t in deps} if gated else None
    return taskmap.create_graph(funcs, deps, io_bound=io, uses=uses)


async def stamp(*_):
    return time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    for _ in range(3):
        taskmap.run_parallel_async(dag(False), ncores=2)
        time.sleep(0.2)
    plain, gated = [], []
    for _ in range(args.reps):
        g = dag(False)
        t = time.perf_counter()
        taskmap.run_parallel_async(g, ncores=2)
        plain.append(time.perf_counter() - t)
        g = dag(True)
        t = time.perf_counter()
        taskmap.run_parallel_async(g, ncores=2, limits={"pool": 10_000})
        gated.append(time.perf_counter() - t)
    ratio = statistics.median(gated) / statistics.median(plain)
    print(f"1. 2,000-task DAG: plain {2000 / statistics.median(plain):,.0f} tasks/s, every task through "
          f"the gate {2000 / statistics.median(gated):,.0f} tasks/s; gated/plain time {ratio:.3f} "
          f"(medians of {args.reps} interleaved pairs)")

    n = int(args.rate * args.seconds) + 1
    names = [f"call{k}" for k in range(n)]
    graph = taskmap.create_graph({t: stamp for t in names}, {t: [] for t in names}, io_bound=names,
                                 uses={t: "api" for t in names})
    graph = taskmap.run_parallel_async(graph, ncores=2, rates={"api": args.rate})
    starts = sorted(graph.results.values())
    achieved = (n - 1) / (starts[-1] - starts[0])
    worst = max(sum(1 for s in starts if a <= s < a + 1.0) for a in starts)
    print(f"2. rate {args.rate:g}/s over {starts[-1] - starts[0]:.2f} s: achieved {achieved:.2f}/s "
          f"= {achieved / args.rate:.4f} of the rate; most starts in any 1 s window: {worst} "
          f"(ceiling {args.rate + 1:g})")
    ok = ratio <= 1.05 and abs(achieved / args.rate - 1) <= 0.01
    print(f"VERDICT: {'OK' if ok else 'MISS'} (goals: gated/plain <= 1.05 in noise; rate within 1%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
