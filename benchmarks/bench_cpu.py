#!/usr/bin/env python3
"""cpu time per run of two source trees of taskmap, in ABBA order.

    python benchmarks/bench_cpu.py /path/to/tree_a /path/to/tree_b --workload dag --runs 40 --rounds 2

Wall-clock A/B pairs on a machine whose speed drifts (this VM's can change 2x
within minutes) read as a change in whichever side ran last; cpu time is less
sensitive to other processes, and ABBA order (A B B A, repeated) cancels a
linear drift.  Each sample is a fresh process running ``--runs`` runs of the
workload on ``run_parallel_async(ncores=2)`` with a warm pool; it reports
the coordinator's thread cpu time per run and the workers' (``perf stat -e
task-clock`` on the worker pids when perf works, else /proc's clock ticks,
10 ms granularity).  A tree is a checkout of this repository (a git worktree
at a commit); its own ``taskmap`` package is imported, with this script's
workload definitions (``benchmarks/_baselines.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, os, re, shutil, signal, subprocess, sys, time
tree, workload, n, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, tree)
sys.path.insert(0, sys.argv[5])  # _baselines
import _baselines as B
import taskmap
from taskmap.runtime.pool import get_pool

def build():
    funcs, deps, io = B.build({"workload": workload, "n": n, "seed": 3}, "ours")
    return taskmap.create_graph(funcs, deps, io_bound=io)

for _ in range(2):
    taskmap.run_parallel_async(build(), ncores=2)
pids = [w.pid for w in get_pool().workers]
graphs = [build() for _ in range(runs)]

def ticks():
    total = 0
    for p in pids:
        fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total

perf = None
if shutil.which("perf"):
    perf = subprocess.Popen(["perf", "stat", "-e", "task-clock", "-p", ",".join(map(str, pids))],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
t0 = ticks()
c = time.thread_time()
for g in graphs:
    taskmap.run_parallel_async(g, ncores=2)
coordinator = (time.thread_time() - c) / runs * 1e3
workers = (ticks() - t0) * 1e3 / os.sysconf("SC_CLK_TCK") / runs
if perf is not None:
    time.sleep(0.1)
    perf.send_signal(signal.SIGINT)
    err = perf.communicate()[1]
    m = re.search(r"([\d.,]+)\s+msec task-clock", err)
    if m:
        workers = float(m.group(1).replace(",", "")) / runs
print(json.dumps({"coordinator_ms": coordinator, "workers_ms": workers}))
"""


def sample(tree: Path, args: argparse.Namespace) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), args.workload, str(args.n), str(args.runs), str(HERE)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("--workload", default="dag", help="a workload of benchmarks/_baselines.py (dag, chain, ...)")
    parser.add_argument("--n", type=int, default=2000, help="tasks")
    parser.add_argument("--runs", type=int, default=40, help="runs per sample")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (4 samples each)")
    args = parser.parse_args()
    print(f"cpu per run, ms ({'perf task-clock' if shutil.which('perf') else '/proc ticks'} for the workers)")
    got: dict[str, list[dict]] = {"A": [], "B": []}
    for _ in range(args.rounds):
        for side in "ABBA":
            s = sample(args.tree_a if side == "A" else args.tree_b, args)
            got[side].append(s)
            print(f"  {side}  coordinator {s['coordinator_ms']:7.2f}  workers {s['workers_ms']:7.2f}", flush=True)
    for key in ("coordinator_ms", "workers_ms"):
        a = statistics.mean(s[key] for s in got["A"])
        b = statistics.mean(s[key] for s in got["B"])
        print(f"{key[:-3]:12s} A {a:7.2f}  B {b:7.2f}  B/A {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
