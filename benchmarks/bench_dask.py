"""The same graphs on the local runtime and on a two-worker Dask LocalCluster.

Uses the workloads and the harness of ``bench_runtime.py`` (the mixed ETL
graph of ``_baselines.py``, its spinners that measure how much slower two
busy cores run than one, its load meter) and prints, as ratios measured in
the same run, medians of several repetitions:

  1. the mixed ETL graph (200 tasks: half io 20-80 ms, half cpu 5-15 ms of
     pure Python): makespan / lower bound for ``run_parallel_async``
     (ncores=2) and for ``run_dask`` on two LocalClusters of 2 worker
     processes -- laid out as run_dask's own (2 threads and one unit of the
     taskmap-cpu resource each) and plain single-threaded workers -- and
     dask / local.  The lower bound is bench_runtime's:
     max(critical path, total cpu time x s / 2), with the cpu durations
     re-calibrated before every repetition;
  2. the cost of the machinery itself: a chain of trivial tasks (per hop)
     and a random DAG of trivial tasks (tasks per second), both runners.

Both runners get the same task functions (plain cpu functions, coroutine io
functions).  The cluster and the local pool are started before measuring and
kept warm, as a user who runs graphs repeatedly would keep them.

    python benchmarks/bench_dask.py             # about a minute
    python benchmarks/bench_dask.py --reps 9    # more repetitions
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _baselines as B  # noqa: E402
import bench_runtime as R  # noqa: E402  (puts the repository on sys.path)

import taskmap  # noqa: E402

NCORES = R.NCORES  # 2: local worker processes, and Dask workers


def start_cluster(cpu_resource: bool):
    """A LocalCluster of NCORES worker processes on loopback: with
    ``cpu_resource`` set up as run_dask's own (two threads, one unit of the
    taskmap-cpu resource: io tasks start at once), else one thread each."""
    import distributed

    from taskmap.dask.runner import CPU_RESOURCE

    layout = {"threads_per_worker": 2, "resources": {CPU_RESOURCE: 1}} if cpu_resource else {"threads_per_worker": 1}
    cluster = distributed.LocalCluster(
        n_workers=NCORES,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.CRITICAL,
        **layout,
    )
    client = distributed.Client(cluster)
    client.wait_for_workers(NCORES)
    return cluster, client


def run_dask(spec: dict, client) -> float:
    """One run of a fresh graph on the cluster; seconds of the run call."""
    funcs, deps, io = B.build(spec, "ours")
    graph = taskmap.create_graph(funcs, deps, io_bound=io)
    start = time.perf_counter()
    taskmap.run_dask(graph, client=client)
    took = time.perf_counter() - start
    errors = [v for v in graph.results.values() if isinstance(v, BaseException)]
    if len(graph.done) != len(deps) or errors:
        raise RuntimeError(f"{spec['workload']}: run_dask failed: {errors[:1]!r}")
    return took


def etl_lower_bound(e: dict, s: float, drift: float) -> float:
    """bench_runtime's bound: max(critical path, cpu total x s / NCORES),
    the cpu durations scaled by ``drift`` (1 = as calibrated at start)."""
    seconds = {t: (v * drift if e["kind"][t] == "cpu" else v) for t, v in e["seconds"].items()}
    cpu_total = sum(v for t, v in seconds.items() if e["kind"][t] == "cpu")
    return max(B.critical_path(e["deps"], seconds), cpu_total * s / NCORES)


def bench_etl(reps: int, rate: float, clients: dict) -> list[str]:
    """ETL makespans of the local runtime and of each Dask cluster, every
    repetition against a lower bound measured just before it."""
    spec = {"workload": "etl", "n": 200, "seed": 1, "rate": rate}
    e = B.etl_spec(200, 1, rate)
    probe = int(rate * 0.2)
    times: dict[str, list[float]] = {"local": [], **{name: [] for name in clients}}
    bounds, ss = [], []
    spinners = R.Spinners()
    try:
        with R.LoadMeter() as load:
            R.run_ours(spec)  # warm: every runtime has run the graph once
            for client in clients.values():
                run_dask(spec, client)
            for _ in range(reps):
                alone = spinners.alone(probe)
                s = spinners.together(probe) / alone
                bounds.append(etl_lower_bound(e, s, alone / (probe / rate)))
                ss.append(s)
                times["local"].append(R.run_ours(spec)[0])
                for name, client in clients.items():
                    times[name].append(run_dask(spec, client))
    finally:
        spinners.close()
    ratio = {name: R.median([t / b for t, b in zip(ts, bounds)]) for name, ts in times.items()}
    lines = ["ETL 200 tasks, makespan / lower bound: " + ", ".join(f"{name} {r:.3f}" for name, r in ratio.items())]
    for name in clients:
        per_rep = R.median([d / loc for d, loc in zip(times[name], times["local"])])
        lines.append(
            f"  RATIO {name} / local: {ratio[name] / ratio['local']:.2f} "
            f"(median of the per-repetition ratios {per_rep:.2f})"
        )
    spans = ", ".join(f"{name} {R.median(ts):.3f} s ({min(ts):.3f}..{max(ts):.3f})" for name, ts in times.items())
    lines.append(
        f"  makespans: {spans}; lower bound {R.median(bounds):.3f} s (s {min(ss):.2f}..{max(ss):.2f}); "
        f"{reps} reps; other load {fmt_load(load)} cores"
    )
    return lines


def bench_overhead(reps: int, client) -> list[str]:
    chain = {"workload": "chain", "n": 100}
    dag = {"workload": "dag", "n": 500, "seed": 1}
    with R.LoadMeter() as load:
        R.run_ours(chain)
        run_dask(chain, client)
        chain_local = R.median([R.run_ours(chain)[0] for _ in range(reps)]) / chain["n"]
        chain_dask = R.median([run_dask(chain, client) for _ in range(reps)]) / chain["n"]
        dag_local = dag["n"] / R.median([R.run_ours(dag)[0] for _ in range(reps)])
        dag_dask = dag["n"] / R.median([run_dask(dag, client) for _ in range(reps)])
    return [
        (
            f"chain of {chain['n']} trivial tasks, per hop: local {chain_local * 1e3:.3f} ms, "
            f"dask {chain_dask * 1e3:.2f} ms; RATIO dask / local {chain_dask / chain_local:.0f}"
        ),
        (
            f"random DAG of {dag['n']} trivial tasks: local {dag_local:,.0f} tasks/s, dask {dag_dask:,.0f} tasks/s; "
            f"RATIO local / dask {dag_local / dag_dask:.0f}; other load {fmt_load(load)} cores"
        ),
    ]


def fmt_load(load) -> str:
    return "?" if load.cores is None else f"{load.cores:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions per measurement (default 7)")
    args = parser.parse_args()
    try:
        import distributed
    except ImportError:
        print("distributed is not installed: pip install 'taskmap[dask]'")
        return 1
    t0 = time.perf_counter()
    rate = B.calibrate()
    print(
        f"taskmap {taskmap.__version__} run_parallel_async(ncores={NCORES}) vs run_dask on LocalClusters of "
        f"{NCORES} worker processes (distributed {distributed.__version__}); "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; reps {args.reps}",
        flush=True,
    )
    R.warm()
    clusters = {name: start_cluster(resource) for name, resource in (("dask", True), ("dask-1thread", False))}
    clients = {name: client for name, (_, client) in clusters.items()}
    try:
        lines = bench_etl(args.reps, rate, clients) + bench_overhead(args.reps, clients["dask"])
    finally:
        # newest first: a LocalCluster restores, on close, the log level it
        # found at its start (the other cluster would then log at INFO)
        for cluster, client in reversed(list(clusters.values())):
            client.close()
            cluster.close()
    print("\n".join(lines))
    print(
        "  dask: 2 workers x (2 threads, 1 unit of the taskmap-cpu resource), as run_dask's own cluster: an io task"
        " starts at once; dask-1thread: 2 workers x 1 thread, no resource: an io task waits for a free slot to start"
    )
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
