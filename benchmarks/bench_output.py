"""What capturing task output costs: lines a second a task can print, per
worker, in each ``output=`` mode.

A task prints 100-character lines (``print`` of a 99-character string) for
about a second; the figure is lines per second of the run (the worker's
printing, the OUTPUT messages, the coordinator keeping the text and showing
it).  With ``--ncores 2`` two such tasks run at once, one per worker, and the
figure is per worker.  What taskmap shows goes to a StringIO (``pass`` and
``prefix``), so the terminal's speed is not measured.  Goal (issue 20): at
least 100,000 lines a second per worker.

What tasks that print nothing pay is measured by ``bench_runtime.py`` (its
``dag`` and ``chain`` rows) before and after, in interleaved runs.

    python benchmarks/bench_output.py              # ~20 s
    python benchmarks/bench_output.py --reps 5 --ncores 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import taskmap
from taskmap.runtime.pool import shutdown_pool

GOAL = 100_000  # lines a second per worker
LINE = "x" * 99


def printer(lines: int) -> int:
    for _ in range(lines):
        print(LINE)
    return lines


def measure(runner, mode: str, lines: int, ncores: int) -> float:
    """Lines a second per worker for one run."""
    funcs = {f"p{k}": (lambda k=k: printer(lines)) for k in range(ncores)}
    graph = taskmap.create_graph(funcs, {name: [] for name in funcs})
    shown = io.StringIO()
    kw = {"ncores": ncores} if runner is not taskmap.run else {}
    with contextlib.redirect_stdout(shown):
        start = time.perf_counter()
        runner(graph, output=mode, **kw)
        seconds = time.perf_counter() - start
    assert all(graph.results[name] == lines for name in funcs), graph.results
    assert all(len(text) <= 1 << 20 for text in graph.output.values())
    if mode != "capture":
        assert shown.getvalue().count("\n") == lines * ncores
    return lines / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--lines", type=int, default=200_000, help="lines each task prints")
    parser.add_argument("--ncores", type=int, default=1, help="workers, each running one printing task")
    args = parser.parse_args()
    # warm the pool: worker start-up is not what is measured
    taskmap.run_parallel(taskmap.create_graph({"w": int}, {"w": []}), ncores=args.ncores)
    print(f"taskmap output benchmark: {args.lines:,} lines of 100 characters per task, {args.reps} reps, medians")
    print(f"{'runner':<24} {'mode':<8} {'lines/s per worker':>20}  goal >= {GOAL:,}")
    met = True
    runners = [("run (in-process)", taskmap.run, 1), (f"run_parallel ncores={args.ncores}", taskmap.run_parallel, 0)]
    for label, runner, fixed in runners:
        for mode in ("capture", "pass", "prefix"):
            rates = [measure(runner, mode, args.lines, fixed or args.ncores) for _ in range(args.reps)]
            rate = statistics.median(rates)
            ok = rate >= GOAL
            met = met and (ok or runner is taskmap.run)
            print(f"{label:<24} {mode:<8} {rate:>20,.0f}  {'ok' if ok else 'MISS'}")
    shutdown_pool()
    print("SUMMARY:", "the goal is met in every mode on the workers" if met else "the goal is missed")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
