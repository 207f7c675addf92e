#!/usr/bin/env python3
"""Huge graphs: 10^5 to 10^6 trivial tasks through run_parallel_async.

    python stress/huge_graph.py                          # 100,000 and 1,000,000 tasks
    python stress/huge_graph.py --sizes 300000 --shape chains --io-share 0.5

For each size (each in a fresh Python process, so that peak memory is that
size's own) it builds a seeded random graph of trivial tasks, runs it, and
prints: the time to build and validate the graph, the time of the run and
tasks per second, and the coordinator's memory per task (the graph as built,
and the peak during the run, both over the RSS before the graph existed).

Shapes: ``dag`` (each task depends on 0-3 of the previous 1,000 tasks),
``chains`` (independent chains of 100), ``wide`` (no dependencies), ``layers``
(layers of 1,000, each task depending on 2 tasks of the layer above).

Checked (any miss: FAIL, exit status 1): every task is done exactly once,
every result equals a sequential evaluation (arguments in order), and no
child process other than the pool's workers is left.  A size that does not
finish within --max-seconds is a FAIL (exit status 2).  Timings are reported,
never judged: this machine may be shared and slow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time

M = 1_000_003


# -- tasks (imported by the workers as ``huge_graph``) ---------------------------


def step(*xs):
    acc = 1
    for x in xs:
        acc = (acc * 31 + x) % M
    return acc


async def io_step(*xs):
    return step(*xs)


# -- graph ------------------------------------------------------------------------


def make_deps(n: int, shape: str, rng: random.Random) -> dict:
    names = [f"t{i}" for i in range(n)]
    deps = {}
    if shape == "wide":
        return {name: [] for name in names}
    if shape == "chains":
        return {name: ([names[i - 1]] if i % 100 else []) for i, name in enumerate(names)}
    if shape == "layers":
        width = 1000
        for i, name in enumerate(names):
            if i < width:
                deps[name] = []
            else:
                base = (i // width - 1) * width
                a, b = rng.randrange(width), rng.randrange(width)
                deps[name] = [names[base + a]] if a == b else [names[base + a], names[base + b]]
        return deps
    for i, name in enumerate(names):
        k = rng.randint(0, 3) if i else 0
        lo = max(0, i - 1000)
        deps[name] = list(dict.fromkeys(names[rng.randrange(lo, i)] for _ in range(k)))
    return deps


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_size(args) -> dict:
    """Build, run and check one graph; the measurements as a dict."""
    import taskmap

    from taskmap.runtime.pool import get_pool

    rng = random.Random(args.seed)
    # warm the pool first, so the run measures the graph, not process start-up
    warm = taskmap.create_graph({"w": step}, {"w": []})
    taskmap.run_parallel_async(warm, ncores=args.ncores)
    base = rss()
    t0 = time.perf_counter()
    deps = make_deps(args.size, args.shape, rng)
    names = list(deps)
    io = {name for name in names if rng.random() < args.io_share}
    funcs = {name: (io_step if name in io else step) for name in names}
    t1 = time.perf_counter()
    graph = taskmap.create_graph(funcs, deps, io_bound=io, name="huge-graph")
    t2 = time.perf_counter()
    built = rss()

    fired, done = threading.Event(), threading.Event()

    def watch():
        if not done.wait(args.max_seconds):
            fired.set()
            while True:  # again until it lands (Python may swallow one in a gc callback)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                if done.wait(5):
                    break

    threading.Thread(target=watch, daemon=True).start()
    try:
        taskmap.run_parallel_async(graph, ncores=args.ncores)
    except KeyboardInterrupt:
        if fired.is_set():
            return {"hung": True, "done": len(graph.done), "size": args.size}
        raise
    finally:
        done.set()
    t3 = time.perf_counter()
    peak = peak_rss()

    # check against a sequential evaluation (names are in topological order)
    problems = []
    if len(graph.done) != len(names) or len(set(graph.done)) != len(names):
        problems.append(
            f"graph.done has {len(graph.done)} entries ({len(set(graph.done))} distinct) for {len(names)} tasks"
        )
    expected = {}
    results = graph.results
    wrong = 0
    for name in names:
        want = expected[name] = step(*[expected[p] for p in deps[name]])
        got = results.get(name)
        if got != want or type(got) is not int:
            wrong += 1
            if wrong <= 5:
                problems.append(f"{name}: expected {want}, got {got!r:.100}")
    if wrong:
        problems.append(f"{wrong} wrong or missing results")
    pool_pids = {w.pid for w in get_pool().workers}
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            if child.pid not in pool_pids and "resource_tracker" not in " ".join(child.cmdline()):
                problems.append(f"stray child process {child.pid}")
    except ImportError:  # pragma: no cover
        pass
    return {
        "size": args.size,
        "edges": sum(len(d) for d in deps.values()),
        "io": len(io),
        "make_dicts_s": t1 - t0,
        "create_graph_s": t2 - t1,
        "run_s": t3 - t2,
        "tasks_per_s": args.size / (t3 - t2),
        "graph_bytes_per_task": (built - base) / args.size,
        "peak_bytes_per_task": (peak - base) / args.size,
        "peak_mib": peak / 2**20,
        "problems": problems,
    }


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated task counts")
    p.add_argument("--shape", choices=("dag", "chains", "wide", "layers"), default="dag")
    p.add_argument("--io-share", type=float, default=0.3, help="share of io-bound (coroutine) tasks")
    p.add_argument("--ncores", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=600, help="per size; longer counts as hung")
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)  # one size, in this process
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.size is not None:
        print(json.dumps(one_size(args)), flush=True)
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    problems, lines = [], []
    for size in sizes:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--size",
            str(size),
            "--shape",
            args.shape,
            "--io-share",
            str(args.io_share),
            "--ncores",
            str(args.ncores),
            "--seed",
            str(args.seed),
            "--max-seconds",
            str(args.max_seconds),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        try:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            print(proc.stderr[-2000:], file=sys.stderr)
            print(f"FAIL: the {size}-task run exited with status {proc.returncode} and no measurement")
            return 1
        if r.get("hung"):
            print(f"FAIL: the {size}-task run did not finish within {args.max_seconds:g} s ({r['done']} done)")
            return 2
        line = (
            f"{size:>9,} tasks ({r['edges']:,} edges, {r['io']:,} io): graph built in "
            f"{r['make_dicts_s'] + r['create_graph_s']:.1f} s (create_graph {r['create_graph_s']:.2f} s), "
            f"run {r['run_s']:.1f} s = {r['tasks_per_s']:,.0f} tasks/s; coordinator memory "
            f"{r['graph_bytes_per_task']:,.0f} B/task for the graph, peak {r['peak_bytes_per_task']:,.0f} B/task "
            f"({r['peak_mib']:.0f} MiB)"
        )
        print(line, flush=True)
        lines.append(f"{size:,}: {r['tasks_per_s']:,.0f} tasks/s, peak {r['peak_bytes_per_task']:,.0f} B/task")
        problems += [f"{size:,} tasks: {p}" for p in r["problems"]]
    for p in problems[:20]:
        print("  problem:", p)
    shape = f"shape {args.shape}, io share {args.io_share:g}, ncores {args.ncores}, seed {args.seed}"
    if problems:
        print(f"FAIL: {len(problems)} problems ({shape}); " + "; ".join(lines))
        return 1
    print(f"OK: every result correct ({shape}); " + "; ".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import huge_graph

    sys.exit(huge_graph.main())
