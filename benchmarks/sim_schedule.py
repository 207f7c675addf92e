"""A model of how the coordinator hands cpu tasks to workers, on the mixed
ETL graph of ``bench_runtime.py``: no processes, only the dispatch rules and
two latencies, to see what the rules cost before paying for a change.

Modelled: io tasks start when ready and run concurrently; each worker runs
one cpu task at a time; the coordinator hands a worker its next cpu task
ROUND_TRIP after the result that made room for it, a task already queued at
the worker starts QUEUED_GAP after the previous one.  Policies:

* ``no-queue``  a worker holds only the task it runs (every start waits a
  round trip);
* ``queue``     a worker may hold one more cpu task while more cpu tasks are
  ready than the workers can take (taskmap's rule until the next one);
* ``jump``      taskmap's rule: as ``queue``, and a ready task whose priority
  beats that of a task waiting at a worker is sent there and runs before it
  (a worker holds at most 3).

Priorities are the critical-path lengths of ``taskmap.scheduling.state`` (counted in
tasks, as on a graph's first run).  ``--cpu-scale`` shortens or lengthens the
cpu tasks against the io waits: below ~0.9 the critical path, not the cpu
total, bounds the makespan (on this VM the spin loop runs up to 25% faster
than at the benchmark's start calibration; that is the regime it is then in).

    python benchmarks/sim_schedule.py [--seeds 1 2 3] [--cpu-scale 0.5 0.8 1.0]

Prints makespan / max(critical path, cpu total / 2) per seed and policy.
"""

from __future__ import annotations

import argparse
import heapq
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _baselines as B

from taskmap.scheduling.state import critical_path_priority

ROUND_TRIP = 0.0004  # result in the coordinator -> next task starts at an idle worker
QUEUED_GAP = 0.0002  # a task queued at a worker starts this long after the previous
MAX_HELD = 3  # cpu tasks a worker may hold under "jump"


def simulate(spec: dict, priority: dict, policy: str, workers: int = 2) -> float:
    """Makespan of one run of the graph ``spec`` (``etl_spec`` form)."""
    deps, kind, seconds = spec["deps"], spec["kind"], spec["seconds"]
    children: dict = {t: [] for t in deps}
    for t, parents in deps.items():
        for p in parents:
            children[p].append(t)
    waiting = {t: len(ps) for t, ps in deps.items()}
    ready: list = []  # (-priority, name) of ready cpu tasks
    events: list = []  # (time, seq, name, worker or None)
    held: list[list] = [[] for _ in range(workers)]  # per worker: running first
    seq = 0

    def push(when: float, name, worker) -> None:
        nonlocal seq
        heapq.heappush(events, (when, seq, name, worker))
        seq += 1

    def became_ready(name, now: float) -> None:
        if kind[name] == "io":
            push(now + ROUND_TRIP + seconds[name], name, None)
        else:
            heapq.heappush(ready, (-priority[name], name))

    def dispatch(now: float) -> None:
        while ready:
            w = min(range(workers), key=lambda k: len(held[k]))
            n = len(held[w])
            may_queue = policy != "no-queue" and n == 1 and len(ready) > workers
            if n >= 1 and not may_queue:
                if policy != "jump":
                    return
                head = ready[0][1]
                beaten = [
                    k
                    for k in range(workers)
                    if 2 <= len(held[k]) < MAX_HELD and min(priority[x] for x in held[k][1:]) < priority[head]
                ]
                if not beaten:
                    return
                w = beaten[0]
                heapq.heappop(ready)
                held[w].append(head)
                held[w][1:] = sorted(held[w][1:], key=lambda x: -priority[x])
                continue
            _, name = heapq.heappop(ready)
            held[w].append(name)
            if n == 0:
                push(now + ROUND_TRIP + seconds[name], name, w)

    for t in deps:
        if not waiting[t]:
            became_ready(t, 0.0)
    dispatch(0.0)
    now = 0.0
    while events:
        now, _, name, w = heapq.heappop(events)
        if w is not None:
            held[w].pop(0)
            if held[w]:
                push(now + QUEUED_GAP + seconds[held[w][0]], held[w][0], w)
        for c in children[name]:
            waiting[c] -= 1
            if not waiting[c]:
                became_ready(c, now + ROUND_TRIP / 2)
        dispatch(now)
    return now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cpu-scale", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    args = parser.parse_args()
    policies = ("no-queue", "queue", "jump")
    print(f"makespan / lower bound; round trip {ROUND_TRIP * 1e3:.1f} ms, queued gap {QUEUED_GAP * 1e3:.1f} ms")
    for scale in args.cpu_scale:
        cells = []
        for seed in args.seeds:
            spec = B.etl_spec(200, seed, 1e7)
            spec["seconds"] = {t: v * scale if spec["kind"][t] == "cpu" else v for t, v in spec["seconds"].items()}
            names = list(spec["deps"])
            index = {t: k for k, t in enumerate(names)}
            parents = [[index[p] for p in spec["deps"][t]] for t in names]
            kids: list[list[int]] = [[] for _ in names]
            for k, ps in enumerate(parents):
                for p in ps:
                    kids[p].append(k)
            priority = dict(zip(names, critical_path_priority(parents, kids, names)))
            cpu = sum(v for t, v in spec["seconds"].items() if spec["kind"][t] == "cpu")
            bound = max(B.critical_path(spec["deps"], spec["seconds"]), cpu / 2)
            ratios = " ".join(f"{p} {simulate(spec, priority, p) / bound:.3f}" for p in policies)
            cells.append(f"seed {seed}: {ratios}")
        print(f"cpu x{scale}: " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
