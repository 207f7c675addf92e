"""The parallel runtime against its goals, the original taskmap and Dask.

Every figure is the median of several repetitions, and every comparison is a
RATIO measured in the same run: the machine is shared and noisy, so absolute
numbers mean little.  Workloads (see benchmarks/README.md for details):

  1. the README's seed demo (4 tasks, ideal makespan 0.4 s), warm pool and
     first run in a fresh process
  2. a mixed ETL graph of 200 tasks (half io 20-80 ms, half cpu 5-15 ms of
     pure Python) against max(critical path, total cpu x s / 2)
  3. 2,000 trivial tasks in a random DAG: tasks per second
  4. a chain of 300 trivial tasks: microseconds per hop; 4s: 20,000 io
     coroutines of 50 ms against asyncio.gather in one process; 4r: a 4-task
     scenario graph run 200 times in a row, per run, beside run_async
  5. memory: bytes per task of the scheduling state (10^6 tasks), worker RSS
     growth over 10^5 tasks
  6. a 1 s cpu task beside an io task: the io loop's worst wake-up gap
  7. the same on the ORIGINAL taskmap 0.0.6 and on Dask's process scheduler

    python benchmarks/bench_runtime.py                 # the full run, ~3 min (under 5)
    python benchmarks/bench_runtime.py --quick         # ~1 min, smaller sizes
    python benchmarks/bench_runtime.py --no-baselines  # ours only
    python benchmarks/bench_runtime.py --reps 9        # more repetitions
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import functools
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))

import _baselines as B  # noqa: E402

import taskmap  # noqa: E402
from taskmap.runtime.pool import get_pool  # noqa: E402

try:
    import psutil
except ImportError:  # pragma: no cover - reported in the output
    psutil = None

NCORES = 2
ORIGINAL_VERSION = "0.0.6"
ORIGINAL_PACKAGES = [f"taskmap=={ORIGINAL_VERSION}", "multiprocess", "multiprocessing-logging"]
DASK_MISSING = "dask not installed; pip install 'dask[distributed]'"
CHILD = str(HERE / "_baselines.py")


def median(xs):
    return statistics.median(xs) if xs else None


# -- the machine's load -------------------------------------------------------


class LoadMeter:
    """cpu used by OTHER processes (in cores) while we measure: system-wide
    busy + steal time minus the cpu of this process and its descendants."""

    def __init__(self) -> None:
        self.others = 0.0
        self.wall = 0.0
        self._start = None

    @staticmethod
    def _ours() -> float:
        me = psutil.Process()
        total = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def __enter__(self):
        if psutil is not None:
            self._start = (time.perf_counter(), self._busy(), self._ours())
        return self

    def __exit__(self, *exc):
        if self._start is not None:
            w0, b0, o0 = self._start
            wall = time.perf_counter() - w0
            self.wall += wall
            self.others += max(0.0, (self._busy() - b0) - (self._ours() - o0))
        return False

    @property
    def cores(self) -> float | None:
        return self.others / self.wall if self.wall else None


# -- running our runtime ---------------------------------------------------------


def run_ours(spec: dict, ncores: int = NCORES):
    """One run of a fresh graph; returns (seconds of the run call, graph)."""
    funcs, deps, io = B.build(spec, "ours")
    graph = taskmap.create_graph(funcs, deps, io_bound=io)
    t = time.perf_counter()
    graph = taskmap.run_parallel_async(graph, ncores=ncores)
    took = time.perf_counter() - t
    if len(graph.done) != len(deps):
        raise RuntimeError(f"{spec['workload']}: {len(graph.done)} of {len(deps)} tasks done")
    errors = [v for v in graph.results.values() if isinstance(v, BaseException)]
    if errors:
        raise RuntimeError(f"{spec['workload']}: {len(errors)} tasks failed, e.g. {errors[0]!r}")
    return took, graph


def warm(ncores: int = NCORES) -> None:
    """Make sure the pool has ``ncores`` started workers."""
    run_ours({"workload": "dag", "n": 50}, ncores)


class Spinners:
    """Two idle processes that time ``spin(n)``: one alone, or both at once.
    s = together / alone is how much slower the same pure-Python work runs
    when two copies share this machine's two cores right now."""

    def __init__(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(2):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=B.spinner_main, args=(theirs,), daemon=True)
            p.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(p)
        for c in self.conns:
            c.send(1000)
            c.recv()

    def alone(self, n: int) -> float:
        self.conns[0].send(n)
        return self.conns[0].recv()

    def together(self, n: int) -> float:
        for c in self.conns:
            c.send(n)
        return sum(c.recv() for c in self.conns) / len(self.conns)

    def close(self) -> None:
        for c, p in zip(self.conns, self.procs):
            try:
                c.send(None)
            except OSError:
                pass
            p.join(2)
            if p.is_alive():
                p.kill()


# -- the baselines ----------------------------------------------------------------


class Baselines:
    def __init__(self, enabled: bool, orig_dir: Path, timeout: float) -> None:
        self.enabled = enabled
        self.orig_dir = orig_dir
        self.timeout = timeout
        self.notes: list[str] = []
        self.orig_ok = False
        self.dask_ok = False
        if not enabled:
            return
        self.dask_ok = importlib.util.find_spec("dask") is not None
        if not self.dask_ok:
            print(DASK_MISSING, flush=True)
        self.orig_ok = self._install_original()

    def _install_original(self) -> bool:
        marker = self.orig_dir / ".installed"
        if marker.exists():
            return True
        print(f"installing the original taskmap {ORIGINAL_VERSION} into {self.orig_dir} ...", flush=True)
        self.orig_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="orig-", dir=self.orig_dir.parent))
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
            str(tmp),
            *ORIGINAL_PACKAGES,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            proc = None
        if proc is None or proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            why = "timed out" if proc is None else (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"original taskmap: install failed ({why}); going on without it", flush=True)
            return False
        (tmp / ".installed").write_text(" ".join(ORIGINAL_PACKAGES) + "\n")
        shutil.rmtree(self.orig_dir, ignore_errors=True)
        tmp.rename(self.orig_dir)
        return True

    def child(self, runner: str, spec: dict, timeout: float | None = None, env: dict | None = None) -> dict:
        """Run one measurement in a child process: {'times': [...], ...},
        or {'error': '...'}; '_wall' is the child's whole wall time; ``env``
        adds to the environment."""
        cmd = [sys.executable, CHILD, runner, json.dumps(spec)]
        if runner == "original":
            cmd += ["--orig-path", str(self.orig_dir)]
        env = {**os.environ, **(env or {})}
        env.pop("PYTHONPATH", None)
        limit = timeout or self.timeout
        t = time.perf_counter()
        # a session of its own, so that a timeout ends its whole process group
        # (the original's and Dask's worker processes with it)
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(HERE),
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return {"error": f"timeout after {limit:.0f} s"}
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            lines = (stderr or stdout).strip().splitlines() or [f"exit code {proc.returncode}"]
            return {"error": lines[-1][:160]}
        out = json.loads(stdout.strip().splitlines()[-1])
        out["_wall"] = wall
        return out

    def original(self, spec: dict, timeout: float | None = None) -> dict | None:
        if not (self.enabled and self.orig_ok):
            return None
        return self.child("original", spec, timeout)

    def dask(self, spec: dict, fresh: bool = False, timeout: float | None = None) -> dict | None:
        if not (self.enabled and self.dask_ok):
            return None
        return self.child("dask-fresh" if fresh else "dask", spec, timeout)


# -- the table ---------------------------------------------------------------------


class Row:
    """One line of the table.  ``lower``: lower is better (else higher).
    Values are in the row's unit; ``*_ratio`` overrides ours/other when the
    baseline ran a different size."""

    def __init__(self, key, label, unit, fmt, ours, goal=None, lower=True, goal_text=None, load=None):
        self.key, self.label, self.unit, self.fmt = key, label, unit, fmt
        self.ours, self.goal, self.lower = ours, goal, lower
        self.goal_text = goal_text
        self.load = load
        self.orig = self.dask = None  # value, or str (n/a, error)
        self.orig_ratio = self.dask_ratio = None
        self.orig_mark = self.dask_mark = ""

    def to_goal(self):
        if self.goal is None or not isinstance(self.ours, (int, float)):
            return None
        return self.ours / self.goal if self.lower else self.goal / self.ours

    def met(self):
        r = self.to_goal()
        return None if r is None else r <= 1.0

    def ratio(self, which):
        given = getattr(self, which + "_ratio")
        if given is not None:
            return given
        other = getattr(self, which)
        if isinstance(other, (int, float)) and isinstance(self.ours, (int, float)) and other:
            return self.ours / other
        return None

    def better(self, which):
        r = self.ratio(which)
        return None if r is None else (r < 1.0 if self.lower else r > 1.0)


def fmt_value(fmt, v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return fmt.format(v)


def print_table(rows, bl: Baselines) -> None:
    baselines_on = bl.enabled
    width = max(len(f"{r.label} [{r.unit}]") for r in rows)
    head = [
        ("workload", width),
        ("ours", 10),
        ("goal", 10),
        ("ours/goal", 10),
        ("original", 11),
        ("dask", 10),
        ("ours/orig", 10),
        ("ours/dask", 10),
        ("load", 5),
    ]
    line = " ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(head))
    print(line)
    print("-" * len(line))
    for r in rows:
        tg = r.to_goal()
        tg_s = "-" if tg is None else f"{tg:.2f} {'ok' if tg <= 1 else 'MISS'}"
        goal_s = r.goal_text or ("-" if r.goal is None else ("<= " if r.lower else ">= ") + fmt_value(r.fmt, r.goal))
        ro, rd = r.ratio("orig"), r.ratio("dask")
        cells = [
            f"{r.label} [{r.unit}]",
            fmt_value(r.fmt, r.ours),
            goal_s,
            tg_s,
            "off" if not baselines_on else "missing" if not bl.orig_ok else fmt_value(r.fmt, r.orig) + r.orig_mark,
            "off" if not baselines_on else "missing" if not bl.dask_ok else fmt_value(r.fmt, r.dask) + r.dask_mark,
            "-" if ro is None else f"{ro:.3g}",
            "-" if rd is None else f"{rd:.3g}",
            "-" if r.load is None else f"{r.load:.2f}",
        ]
        print(" ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, (_, w)) in enumerate(zip(cells, head))))


# -- the workloads ------------------------------------------------------------------


def bench_seed(cfg, bl: Baselines, rows, notes) -> None:
    spec = {"workload": "seed"}
    with LoadMeter() as load:
        warm()
        run_ours(spec)
        times = [run_ours(spec)[0] for _ in range(cfg.reps)]
    m = median(times)
    row = Row("seed", "1a seed demo, warm pool: makespan/0.4 s", "x", "{:.3f}", m / 0.4, 1.02, load=load.cores)
    notes.append(
        f"1a: seed demo makespan {m:.4f} s (median of {len(times)}, min {min(times):.4f}, max {max(times):.4f}); ideal 0.4 s"
    )
    o = bl.original({**spec, "reps": cfg.base_reps})
    if o is not None:
        if "error" in o:
            row.orig = o["error"][:11]
            notes.append(f"1a original: {o['error']}")
        else:
            row.orig = median(o["times"]) / 0.4
            row.orig_mark = "^"
    d = bl.dask({**spec, "reps": cfg.reps})
    if d is not None:
        row.dask = d["error"][:10] if "error" in d else median(d["times"]) / 0.4
        notes.append(
            "1a dask: its default chunksize 6 sends the two ready tasks to one worker as one chunk, so they run one"
            " after the other (0.8 s); chunksize=1 would give 0.4 s here but makes its 2,000 trivial tasks about 3x slower"
        )
    rows.append(row)

    # the first run in a fresh process: pool start included.  Measured twice:
    # with taskmap's modules compiled to bytecode, as a pip install leaves them
    # (the figure for the goal), and from source, as an editable install runs
    # where PYTHONDONTWRITEBYTECODE is set (this development machine sets it:
    # then every fresh interpreter, workers included, compiles every module)
    def fresh_runs(env: dict | None) -> tuple[list, list, list]:
        runs, walls, imports = [], [], []
        for _ in range(cfg.fresh):
            out = bl.child("ours-fresh", spec, timeout=60, env=env)
            if "error" in out:
                raise RuntimeError(f"fresh-process seed demo failed: {out['error']}")
            runs.append(out["run"])
            walls.append(out["_wall"])
            imports.append(out["import"])
        return runs, walls, imports

    package = REPO / "taskmap"
    with LoadMeter() as load:
        for cache in package.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
        source_runs, _, _ = fresh_runs({"PYTHONDONTWRITEBYTECODE": "1"})
        compileall.compile_dir(str(package), quiet=1)
        runs, walls, imports = fresh_runs(None)
    row = Row("fresh", "1b seed demo, 1st run in a fresh process", "s", "{:.3f}", median(runs), 0.65, load=load.cores)
    notes.append(
        f"1b: fresh process, {cfg.fresh} processes: run call {median(runs):.3f} s (min {min(runs):.3f}, max {max(runs):.3f}; "
        f"goal 0.4 + 0.25 s), import taskmap {median(imports) * 1e3:.0f} ms, whole process wall time "
        f"{median(walls):.3f} s (interpreter start, imports, run, pool shutdown at exit); the pool's start costs "
        f"about {median(runs) - m:.3f} s (fresh run call - warm makespan).  taskmap's bytecode was compiled first "
        f"(python -m compileall, as pip install does); from source (no bytecode, PYTHONDONTWRITEBYTECODE=1) the run "
        f"call takes {median(source_runs):.3f} s (min {min(source_runs):.3f}, max {max(source_runs):.3f})"
    )
    if bl.enabled and bl.orig_ok:
        outs = [bl.original({**spec, "reps": 1}) for _ in range(cfg.base_fresh)]
        ok = [o for o in outs if "error" not in o]
        if ok:
            row.orig = median([o["times"][0] for o in ok])
            notes.append(
                f"1b original: run call {row.orig:.3f} s, process wall {median([o['_wall'] for o in ok]):.3f} s "
                f"({len(ok)} fresh processes)"
            )
        else:
            row.orig = outs[0]["error"][:11]
    if bl.enabled and bl.dask_ok:
        outs = [bl.dask({**spec, "reps": 1}, fresh=True) for _ in range(cfg.base_fresh)]
        ok = [o for o in outs if "error" not in o]
        if ok:
            row.dask = median([o["times"][0] for o in ok])
            notes.append(
                f"1b dask: dask.multiprocessing.get starting its own pool: run call {row.dask:.3f} s, "
                f"process wall {median([o['_wall'] for o in ok]):.3f} s ({len(ok)} fresh processes)"
            )
        else:
            row.dask = outs[0]["error"][:10]
    rows.append(row)


def bench_etl(cfg, bl: Baselines, rows, notes, rate: float) -> None:
    spec = {"workload": "etl", "n": 200, "seed": cfg.seed, "rate": rate}
    e = B.etl_spec(200, cfg.seed, rate)
    cp = B.critical_path(e["deps"], e["seconds"])
    cpu_total = sum(e["seconds"][t] for t in e["deps"] if e["kind"][t] == "cpu")
    io_total = sum(e["seconds"][t] for t in e["deps"] if e["kind"][t] == "io")
    n_probe = int(rate * 0.2)
    probe_nominal = n_probe / rate

    def bound(s: float, drift: float) -> tuple[float, float]:
        """max(critical path, cpu x s / 2) with the cpu durations scaled by
        ``drift`` (1 = as calibrated at start); io waits stay nominal."""
        secs = {t: (v * drift if e["kind"][t] == "cpu" else v) for t, v in e["seconds"].items()}
        path = B.critical_path(e["deps"], secs)
        return max(path, cpu_total * drift * s / NCORES), path

    spinners = Spinners()
    makespans, ss, ratios, ratios_start, drifts, bounds = [], [], [], [], [], []
    try:
        with LoadMeter() as load:
            warm()
            run_ours(spec)
            for _ in range(cfg.reps):
                alone = spinners.alone(n_probe)
                together = spinners.together(n_probe)
                s = together / alone
                drift = alone / probe_nominal
                took, _ = run_ours(spec)
                lb, _ = bound(s, drift)
                makespans.append(took)
                ss.append(s)
                drifts.append(drift)
                bounds.append(lb)
                ratios.append(took / lb)
                ratios_start.append(took / bound(s, 1.0)[0])
    finally:
        spinners.close()
    s, drift = median(ss), median(drifts)
    lb, path = bound(s, drift)
    lb0, _ = bound(s, 1.0)
    row = Row("etl", "2  ETL 200 tasks: makespan/lower bound", "x", "{:.3f}", median(ratios), 1.05, load=load.cores)
    notes.append(
        f"2: ETL makespan {median(makespans):.3f} s (min {min(makespans):.3f}, max {max(makespans):.3f}); lower bound "
        f"{median(bounds):.3f} s = max(critical path {path:.3f} s, cpu {cpu_total * drift:.3f} s x s {s:.3f} / {NCORES}); "
        f"s per rep {min(ss):.2f}..{max(ss):.2f}; the cpu durations are re-calibrated before every rep: the same spin ran "
        f"at x{drift:.2f} (x{min(drifts):.2f}..x{max(drifts):.2f}) of its time at start (cpu total {cpu_total:.3f} s at start, "
        f"critical path {cp:.3f} s); against the start calibration alone the ratio is {median(ratios_start):.3f} "
        f"(bound {lb0:.3f} s); io waits total {io_total:.2f} s"
    )
    o = bl.original({**spec, "reps": cfg.base_reps_slow}, timeout=cfg.slow_timeout)
    if o is not None:
        if "error" in o:
            row.orig = o["error"][:11]
            notes.append(f"2 original: {o['error']}")
        else:
            row.orig = median(o["times"]) / lb
            notes.append(f"2 original: makespan {median(o['times']):.3f} s")
    d = bl.dask({**spec, "reps": cfg.base_reps_slow}, timeout=cfg.slow_timeout)
    if d is not None:
        if "error" in d:
            row.dask = d["error"][:10]
        else:
            row.dask = median(d["times"]) / lb
            notes.append(f"2 dask: makespan {median(d['times']):.3f} s (io tasks are time.sleep in a worker process)")
    rows.append(row)
    cfg.s = s


def bench_trivial(cfg, bl: Baselines, rows, notes) -> None:
    n = 2000
    spec = {"workload": "dag", "n": n, "seed": cfg.seed}
    fast_reps = cfg.reps * 3
    with LoadMeter() as load:
        warm()
        run_ours(spec)
        times = [run_ours(spec)[0] for _ in range(fast_reps)]
        small = {"workload": "dag", "n": cfg.orig_dag, "seed": cfg.seed}
        run_ours(small)
        times_small = [run_ours(small)[0] for _ in range(fast_reps)]
    rate = n / median(times)
    row = Row(
        "dag", f"3  {n:,} trivial tasks, random DAG", "tasks/s", "{:,.0f}", rate, 50_000, lower=False, load=load.cores
    )
    rate_small = cfg.orig_dag / median(times_small)
    notes.append(
        f"3: run of {n:,} tasks {median(times) * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}; "
        f"{fast_reps} reps); ours on {cfg.orig_dag} tasks: {rate_small:,.0f} tasks/s"
    )
    o = bl.original({**small, "reps": cfg.base_reps_slow}, timeout=cfg.slow_timeout)
    if o is not None:
        if "error" in o:
            row.orig = o["error"][:11]
            notes.append(f"3 original: {o['error']}")
        else:
            row.orig = cfg.orig_dag / median(o["times"])
            row.orig_mark = "*"
            row.orig_ratio = rate_small / row.orig
            notes.append(
                f"3 original (*): capped at {cfg.orig_dag} tasks (it is quadratic): {median(o['times']):.2f} s per run; "
                f"ours/orig compares ours on the same {cfg.orig_dag}-task graph"
            )
    d = bl.dask({**spec, "reps": cfg.reps})
    if d is not None:
        row.dask = d["error"][:10] if "error" in d else n / median(d["times"])
    rows.append(row)


def bench_per_task_functions(cfg, bl: Baselines, rows, notes) -> None:
    """The graphs users write: the 2,000-task DAG with one function object
    per task (a partial, a closure), beside the same graph sharing one
    function, interleaved in one run."""
    n = 2000
    shapes = [
        ("dag", "shared function"),
        ("dag_partial", "one partial per task"),
        ("dag_closure", "one closure per task"),
    ]
    times: dict[str, list[float]] = {w: [] for w, _ in shapes}
    with LoadMeter() as load:
        warm()
        for w, _ in shapes:
            run_ours({"workload": w, "n": n, "seed": cfg.seed})
        for _ in range(cfg.reps * 3):
            for w, _ in shapes:
                times[w].append(run_ours({"workload": w, "n": n, "seed": cfg.seed})[0])
    goals = {"dag": 80_000, "dag_partial": 50_000, "dag_closure": 50_000}
    shared = n / median(times["dag"])
    for key, (w, label) in zip(("3s", "3p", "3c"), shapes):
        rate = n / median(times[w])
        row = Row(
            f"dag-{w}",
            f"{key} {n:,} trivial tasks, {label}",
            "tasks/s",
            "{:,.0f}",
            rate,
            goals[w],
            lower=False,
            load=load.cores,
        )
        if w != "dag":
            d = bl.dask({"workload": w, "n": n, "seed": cfg.seed, "reps": cfg.reps})
            if d is not None:
                row.dask = d["error"][:10] if "error" in d else n / median(d["times"])
        rows.append(row)
        notes.append(f"{key}: {rate:,.0f} tasks/s = {rate / shared:.2f} x the shared-function graph in the same run")


def bench_chain(cfg, bl: Baselines, rows, notes) -> None:
    n = 300
    spec = {"workload": "chain", "n": n}
    fast_reps = cfg.reps * 3
    with LoadMeter() as load:
        warm()
        run_ours(spec)
        times = [run_ours(spec)[0] for _ in range(fast_reps)]
        small = {"workload": "chain", "n": cfg.orig_chain}
        run_ours(small)
        times_small = [run_ours(small)[0] for _ in range(fast_reps)]
    us = median(times) / n * 1e6
    row = Row("chain", f"4  chain of {n} trivial tasks", "us/hop", "{:.1f}", us, 15.0, load=load.cores)
    us_small = median(times_small) / cfg.orig_chain * 1e6
    notes.append(
        f"4: chain run {median(times) * 1e3:.2f} ms (min {min(times) * 1e3:.2f}, max {max(times) * 1e3:.2f}; {fast_reps} reps);"
        f" ours on a chain of {cfg.orig_chain}: {us_small:.1f} us/hop"
    )
    if cfg.orig_chain != n:
        o = bl.original({**small, "reps": cfg.base_reps_slow}, timeout=cfg.slow_timeout)
    else:
        o = bl.original({**spec, "reps": cfg.base_reps_slow}, timeout=cfg.slow_timeout)
    if o is not None:
        if "error" in o:
            row.orig = o["error"][:11]
            notes.append(f"4 original: {o['error']}")
        else:
            row.orig = median(o["times"]) / cfg.orig_chain * 1e6
            if cfg.orig_chain != n:
                row.orig_mark = "*"
                row.orig_ratio = us_small / row.orig
                notes.append(
                    f"4 original (*): capped at a chain of {cfg.orig_chain} ({median(o['times']):.2f} s per run; its cost "
                    f"per hop grows with the chain); ours/orig compares ours on the same chain"
                )
    d = bl.dask({**spec, "reps": cfg.reps})
    if d is not None:
        row.dask = d["error"][:10] if "error" in d else median(d["times"]) / n * 1e6
        row.dask_mark = "f"
        notes.append("4 dask (f): dask's graph optimisation fuses a linear chain into one task before running it")
    rows.append(row)


def bench_io_storm(cfg, bl: Baselines, rows, notes) -> None:
    """20,000 independent io coroutines of 50 ms on the warm pool, against a
    bare ``asyncio.gather`` of the same coroutines in this process, the two
    interleaved: two workers' loops should beat one."""
    n, seconds = (5_000 if cfg.quick else 20_000), 0.05
    names = [f"s{k}" for k in range(n)]
    ours: list[float] = []
    gathered: list[float] = []

    async def gather_all():
        await asyncio.gather(*(B.storm_sleep(seconds) for _ in range(n)))

    with LoadMeter() as load:
        warm()
        for _ in range(max(3, cfg.reps)):
            graph = taskmap.create_graph(
                {t: functools.partial(B.storm_sleep, seconds) for t in names}, {t: [] for t in names}, io_bound=names
            )
            t = time.perf_counter()
            taskmap.run_parallel_async(graph, ncores=NCORES)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            asyncio.run(gather_all())
            gathered.append(time.perf_counter() - t)
    ratio = median(gathered) / median(ours)  # our throughput / gather's
    rows.append(
        Row(
            "storm",
            f"4s {n:,} io coroutines of 50 ms",
            "x gather",
            "{:.2f}",
            ratio,
            1.3,
            lower=False,
            load=load.cores,
        )
    )
    notes.append(
        f"4s: run {median(ours):.3f} s (tasks/s {n / median(ours):,.0f}); asyncio.gather in one process "
        f"{median(gathered):.3f} s; interleaved, {len(ours)} reps each; no baselines (the original package is "
        "quadratic in tasks; Dask runs a coroutine per thread slot)"
    )


def bench_scenario(cfg, bl: Baselines, rows, notes) -> None:
    """A stress-testing script runs a 4-task scenario graph again and again:
    the per-run cost of a small graph on a warm pool, beside run_async on the
    same graph (in this process: no round trips) in the same run."""
    runs = 200
    funcs = B.scenario_funcs()
    io = list(funcs)

    def many(runner, **kw):
        t = time.perf_counter()
        for _ in range(runs):
            graph = runner(taskmap.create_graph(funcs, B.SCENARIO_DEPS, io_bound=io), **kw)
        took = (time.perf_counter() - t) / runs
        assert graph.results["checkout"] == len("token:browse") + len("token:search")
        return took

    ours: list[float] = []
    in_process: list[float] = []
    with LoadMeter() as load:
        warm()
        many(taskmap.run_parallel_async, ncores=NCORES)
        for _ in range(max(3, cfg.reps)):
            ours.append(many(taskmap.run_parallel_async, ncores=NCORES))
            in_process.append(many(taskmap.run_async))
    ms = median(ours) * 1e3
    rows.append(Row("scenario", "4r 4-task scenario graph, per run", "ms/run", "{:.3f}", ms, 0.4, load=load.cores))
    notes.append(
        f"4r: {runs} runs in a row, {len(ours)} reps: {ms:.3f} ms per run (min {min(ours) * 1e3:.3f}); "
        f"run_async on the same graph in the same run {median(in_process) * 1e3:.3f} ms "
        f"(ours / run_async {median(ours) / median(in_process):.2f})"
    )


def bench_memory(cfg, bl: Baselines, rows, notes) -> None:
    n = cfg.mem_n
    with LoadMeter() as load:
        out = bl.child("ours-memory", {"n": n}, timeout=900)
    if "error" in out:
        raise RuntimeError(f"memory measurement failed: {out['error']}")
    label_n = f"10^{len(str(n)) - 1}" if str(n).strip("0") == "1" else f"{n:,}"
    row = Row(
        "mem_state",
        f"5a SchedulingState memory, {label_n} tasks",
        "B/task",
        "{:.0f}",
        out["state_kept"] / n,
        1024,
        load=load.cores,
    )
    row.orig = row.dask = "n/a"
    rows.append(row)
    row2 = Row(
        "mem_create",
        f"5a create_graph memory, {label_n} tasks",
        "B/task",
        "{:.0f}",
        out["create_kept"] / n,
        None,
        goal_text="(info)",
    )
    row2.orig = row2.dask = "n/a"
    rows.append(row2)
    notes.append(
        f"5a: tracemalloc, random DAG of {n:,} tasks / {out['edges']:,} edges, int names, in a fresh process: "
        f"SchedulingState keeps {out['state_kept'] / n:.0f} B/task (peak {out['state_peak'] / n:.0f}), create_graph keeps "
        f"{out['create_kept'] / n:.0f} B/task (peak {out['create_peak'] / n:.0f}); under tracemalloc they took "
        f"{out['state_s_traced']:.1f} s and {out['create_s_traced']:.1f} s"
    )


def bench_rss(cfg, bl: Baselines, rows, notes) -> None:
    if psutil is None:
        row = Row("rss", "5b worker RSS growth", "MiB", "{:.2f}", "no psutil", 1.0)
        rows.append(row)
        notes.append("5b: psutil is not installed (pip install psutil)")
        return
    n = cfg.rss_n
    spec = {"workload": "rss", "n": n, "seed": cfg.seed}
    with LoadMeter() as load:
        warm()
        run_ours({"workload": "rss", "n": 10_000, "seed": cfg.seed + 1})  # steady state: caches, arenas
        procs = [psutil.Process(w.pid) for w in get_pool().workers]
        funcs, deps, io = B.build(spec, "ours")
        graph = taskmap.create_graph(funcs, deps, io_bound=io)

        def rss():
            return [p.memory_info().rss for p in procs]

        before = rss()
        peak = list(before)
        samples = [0]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.02):
                try:
                    now = rss()
                except psutil.Error:
                    return
                samples[0] += 1
                for k, v in enumerate(now):
                    peak[k] = max(peak[k], v)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t = time.perf_counter()
        taskmap.run_parallel_async(graph, ncores=NCORES)
        took = time.perf_counter() - t
        stop.set()
        sampler.join()
        after = rss()
        assert len(graph.done) == n
        # a second run of the same size: a leak grows again, a one-off does not
        graph2 = taskmap.create_graph(*B.build(spec, "ours")[:2])
        taskmap.run_parallel_async(graph2, ncores=NCORES)
        after2 = rss()
    mib = 2**20
    growth = max(a - b for a, b in zip(after, before)) / mib
    growth2 = max(a - b for a, b in zip(after2, after)) / mib
    row = Row("rss", f"5b worker RSS growth, {n:,} tasks", "MiB", "{:.2f}", growth, 1.0, load=load.cores)
    row.orig = row.dask = "n/a"
    rows.append(row)
    notes.append(
        f"5b: worker RSS before {', '.join(f'{b / mib:.1f}' for b in before)} MiB, after {n:,} trivial tasks "
        f"({took:.2f} s, {n / took:,.0f} tasks/s) {', '.join(f'{a / mib:.1f}' for a in after)} MiB, peak during the run "
        f"{', '.join(f'{p / mib:.1f}' for p in peak)} MiB ({samples[0]} samples); growth over a second run of "
        f"{n:,}: {growth2:+.2f} MiB (goal: flat, read as <= 1 MiB)"
    )


def bench_stall(cfg, bl: Baselines, rows, notes, rate: float) -> None:
    spec = {"workload": "stall", "rate": rate, "cpu_seconds": 1.0, "io_seconds": 0.8, "cpu_tasks": 1}
    quiet = {**spec, "cpu_tasks": 0}
    gaps, base, spans = [], [], []
    with LoadMeter() as load:
        warm(1)
        for _ in range(cfg.stall_reps):
            took, g = run_ours(spec, ncores=1)
            gaps.append([x * 1e3 for x in g.results["io"][:3]])
            spans.append(took)
            _, g = run_ours(quiet, ncores=1)
            base.append([x * 1e3 for x in g.results["io"][:3]])
    worst, worst0 = [g[0] for g in gaps], [g[0] for g in base]
    row = Row("stall", "6a io worst gap beside a 1 s cpu task", "ms", "{:.1f}", median(worst), 10.0, load=load.cores)
    row2 = Row(
        "stall0", "6b io worst gap, no cpu task (baseline)", "ms", "{:.1f}", median(worst0), None, goal_text="(ref)"
    )
    notes.append(
        f"6: ncores=1, {cfg.stall_reps} reps: worst gap between wake-ups of `await asyncio.sleep(0.001)` "
        f"beside the cpu task {median(worst):.1f} ms (max {max(worst):.1f}; p99 {median([g[1] for g in gaps]):.1f}, "
        f"p50 {median([g[2] for g in gaps]):.1f}), without it {median(worst0):.1f} ms (max {max(worst0):.1f}; "
        f"p99 {median([g[1] for g in base]):.1f}, p50 {median([g[2] for g in base]):.1f}); run with the cpu task "
        f"{median(spans):.2f} s (io and cpu overlapped if ~1 s)"
    )
    o = bl.original({**spec, "cpu_tasks": 2, "reps": cfg.base_reps_slow}, timeout=cfg.slow_timeout)
    if o is not None:
        if "error" in o:
            row.orig = o["error"][:11]
            notes.append(f"6 original: {o['error']}")
        else:
            row.orig = median(o["gap"]) * 1e3
            row.orig_mark = "w"
            notes.append(
                "6 original (w): its ncores=1 path (run_async) does not run on Python >= 3.10 (asyncio.gather(loop=)); "
                "measured with 2 workers and two 1 s cpu tasks, so every worker holds one, as ours does"
            )
        o0 = bl.original({**quiet, "reps": cfg.base_reps_slow}, timeout=cfg.slow_timeout)
        if o0 is not None and "error" not in o0:
            row2.orig = median(o0["gap"]) * 1e3
    if bl.enabled and bl.dask_ok:
        row.dask = row2.dask = "n/a"
        notes.append("6 dask: n/a, a dask process runs one task at a time: io tasks never share a loop with cpu tasks")
    rows.append(row)
    rows.append(row2)


# -- main ---------------------------------------------------------------------------


class Config:
    def __init__(self, args) -> None:
        q = args.quick
        self.quick = q
        self.reps = args.reps or (3 if q else 7)
        self.seed = 1
        self.fresh = 2 if q else 5
        self.base_fresh = 1 if q else 3
        self.base_reps = 2 if q else 5
        self.base_reps_slow = 1 if q else 2
        self.stall_reps = max(2, self.reps // 2) if q else self.reps
        self.orig_dag = 100 if q else 300
        self.orig_chain = 50 if q else 100
        self.mem_n = 10**5 if q else 10**6
        self.rss_n = 5 * 10**4 if q else 10**5
        self.slow_timeout = 60 if q else 120
        self.s = None


def default_orig_dir() -> Path:
    base = os.environ.get("TASKMAP_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "taskmap-bench"
    )
    return Path(base) / f"taskmap-{ORIGINAL_VERSION}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a minute: fewer reps, smaller sizes")
    parser.add_argument("--no-baselines", action="store_true", help="skip the original taskmap and Dask")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (default 7, --quick 3)")
    parser.add_argument(
        "--only",
        help="comma-separated subset of: seed,etl,dag,functions,chain,storm,scenario,memory,rss,stall (for development)",
    )
    parser.add_argument("--orig-dir", type=Path, default=None, help="where the original taskmap is installed")
    args = parser.parse_args()
    cfg = Config(args)
    only = set(args.only.split(",")) if args.only else None
    t_start = time.perf_counter()
    load0 = os.getloadavg()

    print(
        f"taskmap runtime benchmark: taskmap {taskmap.__version__} ({Path(taskmap.__file__).parent}), "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, ncores={NCORES}, "
        f"{'--quick, ' if cfg.quick else ''}reps {cfg.reps}, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}",
        flush=True,
    )
    bl = Baselines(not args.no_baselines, args.orig_dir or default_orig_dir(), 60 if cfg.quick else 180)
    rate = B.calibrate()
    print(
        f"calibration: spin() runs {rate / 1e6:.2f} M iterations/s on one core; the ETL cpu tasks are "
        f"{int(0.005 * rate):,}-{int(0.015 * rate):,} iterations",
        flush=True,
    )
    rows: list[Row] = []
    notes: list[str] = []
    steps = [
        ("seed", lambda: bench_seed(cfg, bl, rows, notes)),
        ("etl", lambda: bench_etl(cfg, bl, rows, notes, rate)),
        ("dag", lambda: bench_trivial(cfg, bl, rows, notes)),
        ("functions", lambda: bench_per_task_functions(cfg, bl, rows, notes)),
        ("chain", lambda: bench_chain(cfg, bl, rows, notes)),
        ("storm", lambda: bench_io_storm(cfg, bl, rows, notes)),
        ("scenario", lambda: bench_scenario(cfg, bl, rows, notes)),
        ("memory", lambda: bench_memory(cfg, bl, rows, notes)),
        ("rss", lambda: bench_rss(cfg, bl, rows, notes)),
        ("stall", lambda: bench_stall(cfg, bl, rows, notes, rate)),
    ]
    for name, step in steps:
        if only and name not in only:
            continue
        t = time.perf_counter()
        print(f"  {name} ...", end="", flush=True)
        step()
        print(f" {time.perf_counter() - t:.0f} s", flush=True)

    print()
    print_table(rows, bl)
    print(
        "  ours/goal: <= 1.00 meets the goal.  ours/orig, ours/dask: ours divided by theirs, in the row's unit"
        " (for tasks/s higher is better, for everything else lower)."
    )
    print(
        "  load: cores' worth of cpu used by OTHER processes on the machine while we measured"
        f" ({os.cpu_count()} cores; 0 = quiet)."
    )
    if bl.enabled:
        if bl.orig_ok:
            print(
                f"  original = taskmap {ORIGINAL_VERSION} (run_parallel_async, nprocs=2, sleep=0.001, its loggers at"
                " WARNING); it starts its processes in every run (no warm pool): ^ includes that."
            )
        if bl.dask_ok:
            import dask  # only for its version

            print(
                f"  dask = dask {dask.__version__} dask.multiprocessing.get, num_workers=2, a warm pool reused across runs,"
                " default options (chunksize 6, graph fusion)."
            )
        else:
            print(f"  {DASK_MISSING}")
    print()
    for n in notes:
        print("  " + n)
    print()

    met = [r for r in rows if r.met() is not None]
    missed = [r for r in met if not r.met()]
    parts = [f"goals met {len(met) - len(missed)}/{len(met)}"]
    if missed:
        parts[0] += (
            " (missed: "
            + "; ".join(f"{r.key} {fmt_value(r.fmt, r.ours)} vs {fmt_value(r.fmt, r.goal)} {r.unit}" for r in missed)
            + ")"
        )
    for which, name in (("orig", "original"), ("dask", "dask")):
        cmp = [r for r in rows if r.better(which) is not None and r.goal_text != "(ref)"]
        if cmp:
            wins = sum(1 for r in cmp if r.better(which))
            parts.append(f"ours better than {name} on {wins}/{len(cmp)}")
    loads = [r.load for r in rows if r.load is not None]
    if loads:
        parts.append(f"other load up to {max(loads):.2f} cores")
    parts.append(f"{time.perf_counter() - t_start:.0f} s")
    print("SUMMARY: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
