"""What the live page (``dashboard=True``) costs a run, as RATIOS measured in
one run (the machine is shared and noisy).

  1. 2,000 trivial tasks in a random DAG (bench_runtime.py's workload 3),
     run_parallel_async, ncores=2: wall time with the page / without
     goal <= 1.02 (DESIGN section 12)
  2. for context, on the same graph: a no-op observer (what the runners'
     per-task observer calls cost before the page does anything: the floor of
     any observer), the page with a viewer reading its event stream (a child
     process), and the same on ``run`` (in-process, one task at a time)
  3. 100,000 trivial tasks (two functions), ``run``: with the page and a
     viewer / without, and the largest message the viewer received

Every repetition runs the variants back to back in a rotating order, each on
a fresh graph; a ratio is the median over the repetitions of the ratio within
each repetition.

    python benchmarks/bench_dashboard.py            # about two minutes
    python benchmarks/bench_dashboard.py --reps 41  # steadier on a busy machine

Each ratio is printed with the 95% bootstrap interval of its median: the
same graph run twice in a row differs by a few percent here, so a 2% goal
is met when the interval's upper end is at or below it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import _baselines as B  # noqa: E402

import taskmap  # noqa: E402

GOAL = 1.02
NCORES = 2

# a viewer in a child process: says when it has the first message, reads
# the event stream until the end, prints how many bytes and the largest message
VIEWER = textwrap.dedent(
    """
    import sys, urllib.request
    url = sys.argv[1].replace("/?", "/events?", 1)
    total = largest = current = 0
    said = False
    with urllib.request.urlopen(url, timeout=120) as stream:
        for line in stream:
            total += len(line)
            current += len(line)
            if line == b"\\n":
                largest, current = max(largest, current), 0
                if not said:
                    print("connected", flush=True)
                    said = True
            if line.startswith(b"event: end"):
                break
    print(total, largest)
    """
)


class Viewer:
    """Starts a viewer process as soon as the page is up and waits until it
    has the page's first message (``waited`` seconds, taken off the run's
    time: a 2,000-task run is over before a process starts); its report
    after the run."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.waited = 0.0

    def open(self, url: str) -> None:
        t = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-c", VIEWER, url], stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "connected":
            raise RuntimeError("the viewer could not read the page's stream")
        self.waited = time.perf_counter() - t

    def report(self) -> tuple[int, int]:
        assert self.process is not None
        out, _ = self.process.communicate(timeout=120)
        total, largest = out.split()
        return int(total), int(largest)


class Nop(taskmap.Observer):
    """An observer that does nothing: the floor of any observer's cost."""


def dashboard_with_viewer(viewer: Viewer) -> dict:
    from taskmap.observe.dashboard import Dashboard

    page = Dashboard(0, announce=None)
    page.on_url.append(viewer.open)
    return {"observers": [page]}


def dag_graph(n: int = 2000) -> taskmap.Graph:
    funcs, deps, io = B.build({"workload": "dag", "n": n, "seed": 3}, "ours")
    return taskmap.create_graph(funcs, deps, io_bound=io, logging_config={"level": "WARNING"})


def wide_graph(n: int) -> taskmap.Graph:
    funcs: dict = {}
    deps: dict = {}
    for i in range(n // 2):
        funcs[f"a{i}"] = B.trivial
        deps[f"a{i}"] = []
        funcs[f"b{i}"] = len
        deps[f"b{i}"] = [f"a{i}"]
    return taskmap.create_graph(funcs, deps, logging_config={"level": "WARNING"})


def timed(run: Callable[..., object], graph: taskmap.Graph, options: dict) -> tuple[float, float]:
    """Wall seconds and this process's cpu seconds (the coordinator and the
    page's threads; the workers are other processes) of one run."""
    t, c = time.perf_counter(), time.process_time()
    run(graph, **options)
    took, cpu = time.perf_counter() - t, time.process_time() - c
    if len(graph.done) != len(graph.dependencies):
        raise RuntimeError("the run did not finish every task")
    return took, cpu


def quiet_dashboard() -> dict:
    from taskmap.observe.dashboard import Dashboard

    return {"observers": [Dashboard(0, announce=None)]}


def measure(
    runner: Callable[..., object], reps: int, make: Callable[[], taskmap.Graph]
) -> dict[str, list[tuple[float, float]]]:
    """Per variant, its (wall, cpu) over those without anything, per repetition."""
    variants: dict[str, Callable[[], dict]] = {
        "none": dict,
        "nop observer": lambda: {"observers": [Nop()]},
        # (as dashboard=True, without the line on stderr)
        "dashboard": quiet_dashboard,
    }
    ratios: dict[str, list[tuple[float, float]]] = {v: [] for v in variants if v != "none"}
    names = list(variants)
    for name in names:  # one unmeasured run each: warm pool, caches
        timed(runner, make(), variants[name]())
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        took = {name: timed(runner, make(), variants[name]()) for name in order}
        for name in ratios:
            ratios[name].append((took[name][0] / took["none"][0], took[name][1] / took["none"][1]))
    return ratios


def with_viewer(
    runner: Callable[..., object], reps: int, make: Callable[[], taskmap.Graph]
) -> tuple[list[tuple[float, float]], int]:
    """The page with a viewer / without: (wall, cpu) ratio per repetition;
    the largest message the viewer received."""
    ratios, largest = [], 0
    for r in range(reps):
        viewer = Viewer()
        order = [True, False] if r % 2 else [False, True]
        took = {}
        for watched in order:
            took[watched] = timed(runner, make(), dashboard_with_viewer(viewer) if watched else {})
        wall = took[True][0] - viewer.waited
        largest = max(largest, viewer.report()[1])
        ratios.append((wall / took[False][0], took[True][1] / took[False][1]))
    return ratios, largest


def interval(values: list[float]) -> str:
    """The 95% bootstrap interval of the median: on this machine two runs
    of the same graph differ by a few percent, so a ratio is read with it."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(1000))
    return f"{medians[25]:.3f}-{medians[974]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=61)
    parser.add_argument("--big", type=int, default=100_000, help="tasks of row 3")
    args = parser.parse_args()

    def parallel(graph: taskmap.Graph, **options: object) -> None:
        taskmap.run_parallel_async(graph, ncores=NCORES, **options)

    rows: list[tuple[str, list[tuple[float, float]]]] = []
    for label, runner in (("run_parallel_async", parallel), ("run", taskmap.run)):
        for name, values in measure(runner, args.reps, dag_graph).items():
            rows.append((f"2,000-task DAG, {label}: {name} / none", values))
    ratios, largest = with_viewer(parallel, max(5, args.reps // 3), dag_graph)
    rows.append(("2,000-task DAG, run_parallel_async: dashboard + a viewer / none", ratios))
    big, big_largest = with_viewer(taskmap.run, 3, lambda: wide_graph(args.big))
    rows.append((f"{args.big:,}-task graph, run: dashboard + a viewer / none", big))

    print(f"{'ratio: median over repetitions [95% bootstrap interval]':<68} {'wall':>21} {'cpu':>21}")
    summary = {}
    for label, values in rows:
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        summary[label] = (statistics.median(walls), statistics.median(cpus))
        print(
            f"{label:<68} {statistics.median(walls):>6.3f} [{interval(walls)}]"
            f" {statistics.median(cpus):>6.3f} [{interval(cpus)}]"
        )
    wall, cpu = summary["2,000-task DAG, run_parallel_async: dashboard / none"]
    floor = summary["2,000-task DAG, run_parallel_async: nop observer / none"]
    print(
        f"\ngoal (DESIGN 12): dashboard / none <= {GOAL} on 2,000 trivial tasks: wall {wall:.3f}, cpu {cpu:.3f} "
        f"({'met' if wall <= GOAL else 'NOT met'}); a no-op observer alone: wall {floor[0]:.3f}, cpu {floor[1]:.3f}"
    )
    print(f"largest message a viewer received: {largest:,} bytes (2,000 tasks), {big_largest:,} bytes ({args.big:,})")


if __name__ == "__main__":
    main()
