"""Big values through shared memory: a chain of 4 tasks passing a 256 MB array.

The graph: ``t0`` makes a float64 array of 256 MB (``np.full``), ``t1``..``t3``
each return ``a + 1`` (a new array: the arguments a task receives are
read-only views over shared memory, so "add one in place" is "add one to a
copy", and ``a + 1`` is exactly that).  Only ``t3``'s result is kept
(``gather=['t3']``; Dask: ``get(dsk, ['t3'])``), as a pipeline that keeps its
output, not its intermediates, would ask.  The chain runs in one worker
(each task is sent ahead behind its parent), and since nothing but the next
task reads an intermediate, it is handed over in-process, never copied; the
last result is written once to shared memory and mapped by the caller.

Two more lines, without goals: keeping every result (``gather=True``: each
intermediate is written to a segment and mapped by the caller and by the
next task's worker, and the tree holds the 4 kept arrays at the end), and
``t1``..``t3`` as io tasks (never sent ahead, so every hop goes through a
segment that the next task maps and releases before writing its own).

Measured in one run, medians of ``--reps`` repetitions, each configuration
in a fresh process of its own (so the heap one leaves behind is not counted
against the next) and warmed up first (pool started, first touches paid):

  * taskmap ``run_parallel`` (ncores=2), shared memory on (the default);
  * the same with ``shm_threshold=None``: every value through the pipes;
  * Dask's local process scheduler (``dask.multiprocessing.get``, 2 worker
    processes, a warm pool), where every value goes through the caller.

Peak memory of the whole process tree, sampled every few milliseconds while
the graph runs: the anonymous memory of this process and of all its
descendants (``Anonymous`` in ``/proc/<pid>/smaps_rollup``: heap, arrays,
copy-on-write pages) plus the growth of the machine's shared memory
(``Shmem`` in ``/proc/meminfo``: every /dev/shm segment, mapped or not, also
ones unlinked but still mapped).  RSS would hide a segment no process maps
and count one mapped twice twice.  Reported as peak / array size, both as
the whole (including the ~3 idle interpreters) and as the growth over the
idle tree before the run.

    python benchmarks/bench_shm.py            # about a minute
    python benchmarks/bench_shm.py --reps 5 --mb 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

import taskmap  # noqa: E402
from taskmap.runtime import shm  # noqa: E402

NCORES = 2
GOAL_SPEEDUP = 5.0
GOAL_PEAK = 3.0


# -- the graph ------------------------------------------------------------------


def make(n: int) -> np.ndarray:
    return np.full(n, 1.0)


def add_one(a: np.ndarray) -> np.ndarray:
    return a + 1


def graph_parts(n: int):
    funcs = {"t0": lambda: make(n), "t1": add_one, "t2": add_one, "t3": add_one}
    deps = {"t0": [], "t1": ["t0"], "t2": ["t1"], "t3": ["t2"]}
    return funcs, deps


def check(result, n: int) -> None:
    if not (isinstance(result, np.ndarray) and result.shape == (n,) and result[0] == 4.0 and result[-1] == 4.0):
        raise RuntimeError(f"wrong result: {result!r:.200}")


# -- memory of the process tree ---------------------------------------------------


def _anonymous_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _shmem_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    return 0


def tree_bytes(shmem_base_kb: int) -> int:
    me = psutil.Process()
    pids = [me.pid] + [p.pid for p in me.children(recursive=True)]
    return (sum(_anonymous_kb(p) for p in pids) + _shmem_kb() - shmem_base_kb) * 1024


class PeakSampler:
    """Samples :func:`tree_bytes` in a thread until stopped; keeps the peak."""

    def __init__(self, period: float = 0.003) -> None:
        self.period = period
        self.shmem_base = _shmem_kb()
        self.idle = tree_bytes(self.shmem_base)
        self.peak = self.idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, tree_bytes(self.shmem_base))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_bytes(self.shmem_base))


# -- the three runners ------------------------------------------------------------


def run_taskmap(n: int, shm_threshold, gather=("t3",), io_bound=()) -> tuple[float, PeakSampler]:
    funcs, deps = graph_parts(n)
    graph = taskmap.create_graph(funcs, deps, io_bound=list(io_bound))
    with PeakSampler() as sampler:
        start = time.perf_counter()
        taskmap.run_parallel(graph, ncores=NCORES, gather=gather, shm_threshold=shm_threshold)
        took = time.perf_counter() - start
    check(graph.results["t3"], n)
    del graph
    return took, sampler


_dask_pool = None


def run_dask(n: int) -> tuple[float, PeakSampler]:
    import dask.multiprocessing as dmp

    global _dask_pool
    if _dask_pool is None:
        sys.path.insert(0, str(HERE))
        import _baselines

        _dask_pool = _baselines._dask_pool(NCORES)
    funcs, deps = graph_parts(n)
    dsk = {t: (funcs[t], *deps[t]) for t in deps}
    with PeakSampler() as sampler:
        start = time.perf_counter()
        (result,) = dmp.get(dsk, ["t3"], num_workers=NCORES, pool=_dask_pool)
        took = time.perf_counter() - start
    check(result, n)
    del result
    return took, sampler


CONFIGS = {
    "taskmap, shared memory": lambda n: run_taskmap(n, "auto"),
    "taskmap, pipes (shm off)": lambda n: run_taskmap(n, None),
    "dask local processes": lambda n: run_dask(n),
    # for comparison, no goal: every intermediate kept in graph.results, so
    # each one is written to a segment and mapped by the caller (4 arrays
    # kept: at least 4x the array by definition)
    "taskmap, shm, all 4 kept": lambda n: run_taskmap(n, "auto", gather=True),
    # no goal either: t1..t3 as io tasks, which are not sent ahead behind
    # their parent, so every hop goes through a segment (written by one task,
    # mapped and released by the next) and through the coordinator
    "taskmap, shm, every hop": lambda n: run_taskmap(n, "auto", io_bound=("t1", "t2", "t3")),
}


def hop_graph(nbytes: int, hops: int = 8):
    """t0 makes an array of ``nbytes``, t1..t<hops> each add one; io tasks,
    so none is sent ahead behind its parent: every hop goes through the
    coordinator (and, with shared memory on, through a segment)."""
    funcs = {"t0": lambda: make(nbytes // 8)}
    deps = {"t0": []}
    for k in range(1, hops + 1):
        funcs[f"t{k}"] = add_one
        deps[f"t{k}"] = [f"t{k - 1}"]
    return taskmap.create_graph(funcs, deps, io_bound=[f"t{k}" for k in range(1, hops + 1)])


def sweep(reps: int) -> None:
    """Per-hop time with shared memory (threshold 1 byte) and without, for
    values around the default threshold: where shared memory starts to pay."""
    hops = 8
    print(f"per hop, a chain of {hops} io tasks (each through the coordinator), medians of {reps}:")
    taskmap.run_parallel_async(hop_graph(1 << 16), ncores=NCORES)  # warm
    for nbytes in (16 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20, 4 << 20):
        per_hop = {}
        for label, threshold in (("shm", 1), ("pipes", None)):
            times = []
            for _ in range(reps):
                graph = hop_graph(nbytes, hops)
                start = time.perf_counter()
                taskmap.run_parallel_async(graph, ncores=NCORES, shm_threshold=threshold, gather=[f"t{hops}"])
                times.append(time.perf_counter() - start)
            per_hop[label] = statistics.median(times) / hops
        print(
            f"  {nbytes >> 10:5d} KiB: shared memory {per_hop['shm'] * 1e3:6.2f} ms, "
            f"pipes {per_hop['pipes'] * 1e3:6.2f} ms, pipes / shm {per_hop['pipes'] / per_hop['shm']:5.2f}"
        )
    print(f"  (the default threshold is {shm.DEFAULT_THRESHOLD >> 10} KiB)")


def child(name: str, n: int, reps: int) -> None:
    """One configuration in this (fresh) process: warm up, then ``reps``
    measurements; prints one JSON line.  Each configuration has a process
    tree of its own, so what one leaves behind (Dask's caller keeps ~360 MB
    of heap after receiving its results) is not counted against another."""
    fn = CONFIGS[name]
    fn(n)  # warm-up: pool started, first-touch costs paid
    out = {"times": [], "peaks": [], "idle": []}
    for _ in range(reps):
        took, sampler = fn(n)
        out["times"].append(took)
        out["peaks"].append(sampler.peak)
        out["idle"].append(sampler.idle)
    if _dask_pool is not None:
        _dask_pool.shutdown()
    print(json.dumps(out), flush=True)


def measure(name: str, n: int, reps: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, "--n", str(n), "--reps", str(reps)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per configuration (default 3)")
    parser.add_argument("--mb", type=int, default=256, help="array size in MiB (default 256)")
    parser.add_argument("--no-dask", action="store_true", help="skip Dask")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="instead: per-hop time with and without shared memory for 16 KiB-4 MiB values",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.reps)
        return 0
    if not shm.available():
        print("no /dev/shm on this machine: shared memory is off")
        return 1
    if args.sweep:
        sweep(max(args.reps, 5))
        return 0
    size = args.mb << 20
    n = size // 8
    names = [k for k in CONFIGS if not (args.no_dask and k.startswith("dask"))]
    load = os.getloadavg()
    print(
        f"bench_shm: chain of 4 tasks passing a {args.mb} MiB float64 array, ncores={NCORES}, "
        f"reps {args.reps}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    results = {name: measure(name, n, args.reps) for name in names}
    print()
    print(
        f"{'configuration':28} {'median s':>9} {'min s':>7} {'max s':>7} {'peak/array':>11} "
        f"{'growth/array':>13} {'idle MiB':>9}"
    )
    for name, r in results.items():
        t = r["times"]
        growth = max(p - i for p, i in zip(r["peaks"], r["idle"]))
        print(
            f"{name:28} {statistics.median(t):9.3f} {min(t):7.3f} {max(t):7.3f} "
            f"{max(r['peaks']) / size:11.2f} {growth / size:13.2f} {max(r['idle']) / 2**20:9.0f}"
        )
    shm_t = statistics.median(results["taskmap, shared memory"]["times"])
    pipe_t = statistics.median(results["taskmap, pipes (shm off)"]["times"])
    speedup = pipe_t / shm_t
    peak = max(results["taskmap, shared memory"]["peaks"]) / size
    print()
    print("peak/array: the whole process tree (anonymous memory of every process + shared memory)")
    print("at its peak during the run, over the array size; growth/array: the same above the idle tree.")
    print(
        f"speedup of shared memory over pipes: {speedup:.2f}x (goal >= {GOAL_SPEEDUP:.0f}x) "
        f"{'ok' if speedup >= GOAL_SPEEDUP else 'MISSED'}"
    )
    print(
        f"peak memory of the process tree with shared memory: {peak:.2f}x the array "
        f"(goal < {GOAL_PEAK:.0f}x) {'ok' if peak < GOAL_PEAK else 'MISSED'}"
    )
    if "dask local processes" in results:
        d = results["dask local processes"]
        dask_t = statistics.median(d["times"])
        print(
            f"dask local processes / taskmap shared memory: {dask_t / shm_t:.2f}x the time, "
            f"{max(d['peaks']) / size:.2f}x the array at peak"
        )
    return 0 if speedup >= GOAL_SPEEDUP and peak < GOAL_PEAK else 1


if __name__ == "__main__":
    sys.exit(main())
