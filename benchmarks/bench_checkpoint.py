"""What the checkpoint store costs a run: the same workloads with and without
a store, as RATIOS measured in one run (the machine is shared and noisy).

  1. the mixed ETL graph of bench_runtime.py (200 tasks: half io 20-80 ms,
     half cpu 5-15 ms of pure Python), run_parallel_async, ncores=2:
     makespan with a store / without               goal <= 1.05
  2. 2,000 trivial tasks in a random DAG (bench_runtime.py's workload 3):
     tasks/s with a store / without                goal >= 0.5
  3. for context: the same with synchronous="full" (an fsync per commit),
     the time to restore a finished 2,000-task store, and how long an outcome
     waits for its commit (what a crash at that moment would lose).

Every repetition runs the variants back to back in a rotating order, each
with a fresh graph and, for the store, a fresh file (a store that already
holds the results would restore them and run nothing).  A ratio is the median
over the repetitions of the ratio within each repetition.

    python benchmarks/bench_checkpoint.py            # about a minute
    python benchmarks/bench_checkpoint.py --reps 21  # steadier on a busy machine
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import _baselines as B  # noqa: E402
import bench_runtime as R  # noqa: E402  (its workloads, warm-up and load meter)

import taskmap  # noqa: E402

ETL_GOAL = 1.05
TRIVIAL_GOAL = 0.5
VARIANTS = ("none", "normal", "full")  # no store; the default synchronous="normal"; "full"


class Files:
    """Fresh store files in a scratch folder, removed at the end."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="taskmap-bench-ckpt-"))
        self.count = 0

    def new(self) -> Path:
        self.count += 1
        return self.root / f"run{self.count}.db"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def run_once(spec: dict, variant: str, files: Files) -> float:
    """One run of a fresh graph; the seconds of the run call (opening the
    store is not counted: it happens once per pipeline, not per task)."""
    funcs, deps, io = B.build(spec, "ours")
    graph = taskmap.create_graph(funcs, deps, io_bound=io)
    store = None
    if variant != "none":
        store = taskmap.open_checkpoint(files.new(), synchronous=variant)
        graph.checkpoint = store
    try:
        t = time.perf_counter()
        taskmap.run_parallel_async(graph, ncores=R.NCORES)
        took = time.perf_counter() - t
    finally:
        if store is not None:
            store.close()
    if len(graph.done) != len(deps) or any(isinstance(v, BaseException) for v in graph.results.values()):
        raise RuntimeError(f"{spec['workload']} ({variant}): the run did not finish cleanly")
    return took


def measure(spec: dict, reps: int, files: Files) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for v in VARIANTS:  # one unmeasured run each: warm pool, caches, page cache
        run_once(spec, v, files)
    for r in range(reps):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
        for v in order:
            times[v].append(run_once(spec, v, files))
    return times


def restore_time(n: int, seed: int, reps: int, files: Files) -> float:
    """Seconds to open a finished n-task store and restore it into a new graph."""
    spec = {"workload": "dag", "n": n, "seed": seed}
    path = files.new()
    funcs, deps, io = B.build(spec, "ours")
    with taskmap.open_checkpoint(path) as store:
        graph = taskmap.create_graph(funcs, deps, io_bound=io, checkpoint=store)
        taskmap.run_parallel_async(graph, ncores=R.NCORES)
    took = []
    for _ in range(reps):
        t = time.perf_counter()
        with taskmap.open_checkpoint(path) as store:
            graph = taskmap.create_graph(funcs, deps, io_bound=io, checkpoint=store)
            store.restore(graph)
        took.append(time.perf_counter() - t)
        if len(graph.done) != n:
            raise RuntimeError("restore did not bring back every result")
    return R.median(took)


def lag(spec: dict, synchronous: str, files: Files) -> tuple[float, float, int]:
    """How long an outcome waits before it is committed, i.e. what a crash at
    that moment would lose: a reader polls the file every millisecond for
    new rows; for each, the time it was first seen minus the time the task's
    outcome was recorded (``finished``).  Returns (median, max, rows)."""
    import sqlite3

    path = files.new()
    funcs, deps, io = B.build(spec, "ours")
    store = taskmap.open_checkpoint(path, synchronous=synchronous)
    graph = taskmap.create_graph(funcs, deps, io_bound=io, checkpoint=store)
    waits: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        reader = sqlite3.connect(str(path))
        last = 0
        try:
            while not stop.is_set():
                rows = reader.execute(
                    "SELECT rowid, finished FROM tasks WHERE rowid > ? ORDER BY rowid", (last,)
                ).fetchall()
                now = time.time()
                for rowid, finished in rows:
                    waits.append(now - finished)
                    last = rowid
                time.sleep(0.001)
        finally:
            reader.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        taskmap.run_parallel_async(graph, ncores=R.NCORES)
        time.sleep(0.01)  # the last commit is seen too
    finally:
        stop.set()
        sampler.join()
        store.close()
    if not waits:
        return float("nan"), float("nan"), 0
    return R.median(waits), max(waits), len(waits)


def paired(times: dict[str, list[float]], variant: str) -> float:
    """Median over the repetitions of (time of ``variant`` / time without a store)."""
    return R.median([t / base for t, base in zip(times[variant], times["none"], strict=True)])


def _cores(meter) -> str:
    return "n/a" if meter.cores is None else f"{meter.cores:.2f} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reps",
        type=int,
        default=11,
        help="repetitions of the ETL graph per variant (default 11; of the trivial graph, 3x)",
    )
    args = parser.parse_args()
    reps = args.reps
    seed = 1
    load0 = os.getloadavg()
    print(
        f"taskmap checkpoint benchmark: Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"ncores={R.NCORES}, reps {reps}, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}",
        flush=True,
    )
    rate = B.calibrate()
    files = Files()
    try:
        R.warm()
        with R.LoadMeter() as load_etl:
            etl = measure({"workload": "etl", "n": 200, "seed": seed, "rate": rate}, reps, files)
        with R.LoadMeter() as load_dag:
            dag = measure({"workload": "dag", "n": 2000, "seed": seed}, reps * 3, files)
        restore_s = restore_time(2000, seed, reps, files)
        lags = {
            (what, s): lag(spec, s, files)
            for what, spec in (
                ("ETL 200 tasks", {"workload": "etl", "n": 200, "seed": seed, "rate": rate}),
                ("20,000 trivial tasks", {"workload": "dag", "n": 20000, "seed": seed}),
            )
            for s in ("normal", "full")
        }
    finally:
        files.close()

    med = {k: R.median(v) for k, v in etl.items()}
    rate_of = {k: 2000 / R.median(v) for k, v in dag.items()}
    # the ratios are medians of the ratios within each repetition, whose runs
    # were back to back: steadier than a ratio of medians when the load drifts
    etl_ratio = paired(etl, "normal")
    dag_ratio = 1 / paired(dag, "normal")
    print()
    print(f"{'workload':44} {'no store':>12} {'store':>12} {'ratio':>7} {'goal':>7}  met")
    print(
        f"{'1  ETL 200 tasks: makespan (s)':44} {med['none']:12.3f} {med['normal']:12.3f} "
        f"{etl_ratio:7.3f} {'<= ' + str(ETL_GOAL):>7}  {'yes' if etl_ratio <= ETL_GOAL else 'NO'}"
    )
    print(
        f"{'2  2,000 trivial tasks: tasks/s':44} {rate_of['none']:12,.0f} {rate_of['normal']:12,.0f} "
        f"{dag_ratio:7.3f} {'>= ' + str(TRIVIAL_GOAL):>7}  {'yes' if dag_ratio >= TRIVIAL_GOAL else 'NO'}"
    )
    print()
    print('  "store" is the default, synchronous="normal" (a commit survives a killed process, not a power cut).')
    print(
        f'  synchronous="full" (each commit also fsyncs: survives a power cut): ETL ratio '
        f"{paired(etl, 'full'):.3f}, trivial ratio {1 / paired(dag, 'full'):.3f}."
    )
    print(
        f"  ratios of the medians instead: ETL {med['normal'] / med['none']:.3f}, "
        f"trivial {rate_of['normal'] / rate_of['none']:.3f}."
    )
    print(
        "  ETL makespans min..max: "
        + ", ".join(f"{v} {min(etl[v]):.3f}..{max(etl[v]):.3f} s" for v in VARIANTS)
        + f"; cpu used by other processes meanwhile: {_cores(load_etl)} (ETL), {_cores(load_dag)} (trivial)."
    )
    print(f"  restore of a finished 2,000-task store into a new graph: {restore_s * 1e3:.1f} ms.")
    print("  time from an outcome to its commit (what a crash then loses; a reader polls every 1 ms):")
    for (what, s), (m, worst, n) in lags.items():
        print(f"    {what}, synchronous={s!r}: median {m * 1e3:.1f} ms, worst {worst * 1e3:.1f} ms ({n} rows)")
    met = etl_ratio <= ETL_GOAL and dag_ratio >= TRIVIAL_GOAL
    print()
    print(f"goals met {int(etl_ratio <= ETL_GOAL) + int(dag_ratio >= TRIVIAL_GOAL)}/2")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
