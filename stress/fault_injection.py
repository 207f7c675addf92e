#!/usr/bin/env python3
"""Fault injection: a large seeded random DAG with crashes, hangs, exceptions,
slow tasks and flaky tasks that need retries, run in parallel and checked
against a sequential evaluation of the same graph under the same fault plan.

    python stress/fault_injection.py                 # defaults: ~1-2 minutes
    python stress/fault_injection.py --seed 7 --tasks 5000 --runner parallel

What is checked (any miss is a FAIL and exit status 1; a run that does not
finish within --max-seconds is a FAIL and exit status 2):

* every task is in ``graph.done`` exactly once and the run returned normally;
* every task that should succeed has exactly the value (and type) the
  sequential evaluation gives, arguments in order and ``None`` left out;
* every planned fault appears exactly where planned: ``error`` tasks hold
  their own ``InjectedError``, ``crash`` tasks a ``WorkerCrashedError`` with
  the planned exit code or signal, ``hang`` tasks a ``TaskTimeoutError`` with
  their limit, each after exactly ``--fault-retries`` + 1 attempts; ``flaky``
  tasks (fail once by exception or crash) end with their correct value;
* descendants of a failure hold ``'Ancestor task <t> failed; task not run'``
  naming a failed ancestor;
* no failure appears anywhere else, except the documented collateral of a
  crash: a task running in the same worker process when a planned crash
  killed it (verified: its WorkerCrashedError names the pid that the crashing
  task recorded, and the task had started in that process -- every task
  notes where it starts; one sent there but not started must have been
  requeued, not failed); innocent tasks get ``--retries``
  retries to absorb collateral failures;
* afterwards the pool has --ncores live workers and no other child process
  is left.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter

M = 1_000_003

KINDS = ("ok", "none", "slow", "error", "crash", "hang", "flaky")
CRASH_WAYS = ("exit", "sigkill", "segv", "abort")


class InjectedError(Exception):
    """The planned exception of an ``error`` task (args: task, execution no.)."""


# -- the tasks (this module is imported by the workers by name) ------------


def num(x) -> int:
    """The number inside any of the value shapes the tasks return."""
    if isinstance(x, int):
        return x
    if isinstance(x, tuple):
        return x[0]
    if isinstance(x, str):
        return int(x[1:])
    if isinstance(x, bytes):
        return int(x.decode())
    if isinstance(x, dict):
        return x["v"]
    raise TypeError(f"unexpected argument {x!r}")


def value_of(i: int, args, big: int = 0) -> object:
    """Task i's result from its arguments (order matters); with ``big``, the
    number as ``big`` bytes (space-padded), a value for shared memory."""
    acc = i
    for x in args:
        acc = (acc * 31 + num(x)) % M
    if big:
        return str(acc).encode().ljust(big)
    shape = i % 5
    if shape == 0:
        return acc
    if shape == 1:
        return (acc, "t")
    if shape == 2:
        return f"s{acc}"
    if shape == 3:
        return str(acc).encode()
    return {"v": acc}


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _record(log_dir: str, name: str) -> int:
    """Append this execution (pid) to the task's log; return its number."""
    path = os.path.join(log_dir, name)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        return sum(1 for _ in f)


def _crash(way: str, code: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if way == "exit":
        os._exit(code)
    if way == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if way == "segv":
        ctypes.string_at(0)
    if way == "abort":
        os.abort()
    time.sleep(60)


def _journal_start(log_dir: str, name: str) -> None:
    """Note in this process's journal that the task began: one append to a
    descriptor opened once per process, so another thread's crash cannot fall
    between opening a file and writing to it (the old evidence, a file per
    task, lost starts that way).  The descriptor lives on ``sys``: these
    functions travel by value, each with its own copy of this module's
    globals."""
    pid = os.getpid()
    held = getattr(sys, "_fault_journal", None)
    if held is None or held[0] != pid:
        fd = os.open(os.path.join(log_dir, f"journal-{pid}"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        sys._fault_journal = held = (pid, fd)
    os.write(held[1], f"{name}\n".encode())


def _fault_before(spec) -> None:
    """Everything a task does before computing its value, in the worker."""
    name, i, kind, is_io, param, log_dir, big = spec
    _journal_start(log_dir, name)
    if kind in ("ok", "none", "slow"):
        if kind == "slow" and not is_io:
            _spin(param)
        return
    n = _record(log_dir, name)
    if kind == "error":
        raise InjectedError(name, n)
    if kind == "crash":
        _crash(*param)
    if kind == "hang" and not is_io:
        _spin(3600)
    if kind == "flaky" and n == 1:
        way = param
        if way == "error":
            raise ConnectionError(f"{name}: transient failure")
        _crash("exit", 99)


def _result(spec, args):
    name, i, kind, is_io, param, log_dir, big = spec
    if kind == "none":
        return None
    return value_of(i, args, big)


def cpu_task(spec, *args):
    _fault_before(spec)
    return _result(spec, args)


async def io_task(spec, *args):
    name, i, kind, is_io, param, log_dir, big = spec
    _fault_before(spec)
    if kind == "slow":
        await asyncio.sleep(param)
    elif kind == "hang":
        await asyncio.sleep(3600)
    else:
        await asyncio.sleep(0)
    return _result(spec, args)


def plain_io_task(spec, *args):
    # a plain function marked io-bound runs in a worker thread (never planned
    # to hang: a thread cannot be stopped)
    name, i, kind, is_io, param, log_dir, big = spec
    _fault_before(spec)
    if kind == "slow":
        time.sleep(param)
    return _result(spec, args)


# -- graph and plan -----------------------------------------------------------


def make_graph(rng: random.Random, n: int, group: int, max_parents: int, cross: float):
    """Tasks in topological order, in pipelines of ``group`` tasks: parents
    are drawn within the pipeline, and with probability ``cross`` from any
    earlier task (so a failure skips much of its pipeline, not the world)."""
    names = [f"t{i}" for i in range(n)]
    deps = {}
    for i in range(n):
        lo = i - i % group
        k = 0 if i == lo or rng.random() < 0.05 else rng.randint(1, max_parents)
        parents = set()
        for _ in range(k):
            if rng.random() < cross or i == lo:
                parents.add(rng.randrange(0, i)) if i else None
            else:
                parents.add(rng.randrange(lo, i))
        parents = sorted(parents)
        rng.shuffle(parents)  # argument order is part of what is checked
        deps[names[i]] = [names[p] for p in parents]
    return names, deps


def make_plan(rng: random.Random, names, args):
    rates = {
        "error": args.error_rate,
        "crash": args.crash_rate,
        "hang": args.hang_rate,
        "flaky": args.flaky_rate,
        "slow": args.slow_rate,
        "none": args.none_rate,
    }
    plan, io_kind = {}, {}
    for name in names:
        r = rng.random()
        kind = "ok"
        for k, rate in rates.items():
            if r < rate:
                kind = k
                break
            r -= rate
        lane = rng.random()
        io_kind[name] = "io" if lane < args.io_rate else ("plain" if lane < args.io_rate + 0.05 else "cpu")
        if kind == "hang" and io_kind[name] == "plain":
            io_kind[name] = "io"
        if kind == "slow":
            param = rng.uniform(0.01, 0.1) if io_kind[name] != "cpu" else rng.uniform(0.002, 0.03)
        elif kind == "crash":
            way = rng.choice(CRASH_WAYS)
            param = (way, rng.randint(3, 90))
        elif kind == "flaky":
            param = rng.choice(("error", "crash"))
        else:
            param = None
        plan[name] = (kind, param)
    return plan, io_kind


def expected_exit(param) -> int:
    way, code = param
    return {"exit": code, "sigkill": -signal.SIGKILL, "segv": -signal.SIGSEGV, "abort": -signal.SIGABRT}[way]


# -- checking -------------------------------------------------------------------


def crash_pid_owners(log_dir: str, plan) -> dict[int, str]:
    """pid of each worker process a planned crash (or a flaky task's one
    crash) killed -> the task that killed it.  Crashing tasks die at once on
    entry, so each such pid has exactly one owner."""
    owners = {}
    for name, (kind, param) in plan.items():
        if kind == "crash" or (kind == "flaky" and param == "crash"):
            try:
                with open(os.path.join(log_dir, name)) as f:
                    pids = [int(p) for p in f.read().split()]
            except FileNotFoundError:
                continue
            for pid in pids[:1] if kind == "flaky" else pids:
                owners[pid] = name
    return owners


def read_journals(log_dir: str) -> dict[str, list[int]]:
    """Task -> the pid of each process where it began, from every worker's
    journal (see _journal_start)."""
    starts: dict[str, list[int]] = {}
    for entry in os.listdir(log_dir):
        if entry.startswith("journal-"):
            pid = int(entry[len("journal-") :])
            with open(os.path.join(log_dir, entry)) as f:
                for name in f.read().split():
                    starts.setdefault(name, []).append(pid)
    return starts


def ran_in(starts: dict, name: str) -> set[int]:
    """pids of the worker processes where the task started."""
    return set(starts.get(name, ()))


def executions(starts: dict, name: str) -> int:
    return len(starts.get(name, ()))


def diagnose(name: str, got, deps, value, big: int = 0) -> str:
    """Say so when a wrong value is what the task computes with one of its
    arguments left out (a task run before its parent finished)."""
    i = int(name[1:])
    args = [(p, value[p]) for p in deps[name] if value[p] is not None]
    for k, (parent, _) in enumerate(args):
        try:
            if value_of(i, [v for j, (_, v) in enumerate(args) if j != k], big) == got:
                return f" -- i.e. it ran without the argument from {parent}"
        except Exception:  # noqa: BLE001
            pass
    return ""


def check(graph, names, deps, plan, args, log_dir, taskmap) -> tuple[list[str], Counter]:
    problems: list[str] = []
    stats: Counter = Counter()
    results, attempts = graph.results, graph.attempts
    owners = crash_pid_owners(log_dir, plan)
    starts = read_journals(log_dir)

    def collateral(name, got) -> bool:
        """Killed, on its last attempt, with a worker another task's planned
        crash took down (documented: a crash fails the tasks the worker was
        running).  It must have started there: one that had not is requeued."""
        if not (isinstance(got, taskmap.WorkerCrashedError) and owners.get(got.pid, name) != name):
            return False
        if got.pid in ran_in(starts, name):
            return True
        problems.append(
            f"{name}: failed with a WorkerCrashedError for worker {got.pid} (killed by "
            f"{owners[got.pid]}'s planned crash), but it never started in that worker"
        )
        stats["failed by a crash in a worker where they never started"] += 1
        return True

    def ran_before_parents_failed(name, got) -> bool:
        """Failed as collateral of a crash in a worker where it did start,
        although a parent ended without a value: possible only when that
        parent ran first (its result lost with a worker, still batched
        there), so it executed again, or was skipped on its requeue."""
        if not (isinstance(got, taskmap.WorkerCrashedError) and got.pid in ran_in(starts, name)):
            return False
        for p in deps[name]:
            if p in failed:
                if executions(starts, p) < 2:
                    return False
            elif failed_above[p] and executions(starts, p) < 1:
                return False
        return True

    done = Counter(graph.done)
    if set(done) != set(names) or any(c != 1 for c in done.values()):
        missing = sorted(set(names) - set(done), key=lambda s: int(s[1:]))
        twice = [t for t, c in done.items() if c != 1]
        problems.append(f"graph.done: {len(missing)} missing (e.g. {missing[:5]}), {len(twice)} listed twice")
    value: dict[str, object] = {}
    failed_above: dict[str, frozenset] = {}
    failed: set[str] = set()
    for name in names:  # names are in topological order
        above = frozenset().union(*(failed_above[p] | ({p} if p in failed else set()) for p in deps[name]))
        failed_above[name] = above
        got = results.get(name, "<missing>")
        kind, param = plan[name]
        if above and ran_before_parents_failed(name, got):
            # it ran, with its parents' values, in a worker that then died;
            # a parent's result was lost with a worker, and that parent's
            # rerun failed later: the child's own crash failure stands
            stats["crash failures before a parent's rerun failed"] += 1
            failed.add(name)
            continue
        if above:
            stats["skipped"] += 1
            ok = isinstance(got, str) and any(got == f"Ancestor task {t} failed; task not run" for t in above)
            if not ok:
                problems.append(
                    f"{name}: expected the ancestor string naming one of {sorted(above)[:3]}, got {got!r:.120}"
                )
            continue
        if collateral(name, got):
            stats[f"collateral failures of {kind} tasks"] += 1
            failed.add(name)
            continue
        if kind in ("error", "crash", "hang"):
            failed.add(name)
            stats[kind] += 1
            want_attempts = args.fault_retries + 1
            if kind == "error":
                good = type(got) is InjectedError and got.args[0] == name
            elif kind == "crash":
                good = (
                    isinstance(got, taskmap.WorkerCrashedError)
                    and got.task == name
                    and got.exitcode == expected_exit(param)
                    and owners.get(got.pid) == name
                )
            else:
                good = isinstance(got, taskmap.TaskTimeoutError) and got.task == name and got.limit == args.hang_timeout
            if not good:
                problems.append(f"{name}: planned {kind} {param or ''}, got {got!r:.160}")
            elif attempts.get(name, 0) < want_attempts:
                problems.append(f"{name}: planned {kind}, {attempts.get(name)} attempts instead of {want_attempts}")
            elif attempts[name] > want_attempts:
                # a rerun beyond the retries: the worker died with this
                # task's outcome still batched (or its submission unsent)
                stats["planned failures with extra attempts"] += 1
            continue
        big = args.big.get(name, 0)
        want = (
            None
            if kind == "none"
            else value_of(int(name[1:]), [value[p] for p in deps[name] if value[p] is not None], big)
        )
        value[name] = want
        stats["flaky recovered" if kind == "flaky" else "succeeded"] += 1
        if type(got) is not type(want) or got != want:
            note = diagnose(name, got, deps, value, big)
            if not note and attempts.get(name, 0) > executions(starts, name):
                note = (
                    f" -- graph.attempts {attempts[name]}, but it started only {executions(starts, name)} "
                    "time(s): the other attempts were spent in crashed workers where it never started"
                )
            problems.append(f"{name}: planned {kind}, expected {want!r:.60}, got {got!r:.160}{note}")
        elif kind == "flaky" and attempts.get(name, 0) < 2:
            runs = executions(starts, name)
            problems.append(
                f"{name}: flaky task (fails its first execution) succeeded with graph.attempts "
                f"{attempts.get(name)}, though it ran {runs} times"
            )
        elif kind != "flaky" and attempts.get(name, 1) > 1:
            stats["innocent reruns"] += 1
    return problems, stats


def leftover_processes(taskmap, ncores: int) -> list[str]:
    import psutil

    from taskmap.runtime.pool import get_pool

    problems = []
    workers = get_pool().workers
    if len(workers) != ncores or not all(w.process.is_alive() for w in workers):
        problems.append(
            f"pool has {len(workers)} workers, {sum(w.process.is_alive() for w in workers)} alive, not {ncores}"
        )
    pool_pids = {w.pid for w in workers}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                problems.append(f"zombie child {child.pid}")
                continue
            if child.pid not in pool_pids and "resource_tracker" not in " ".join(child.cmdline()):
                problems.append(f"stray child process {child.pid}: {' '.join(child.cmdline())[:80]}")
        except psutil.NoSuchProcess:
            pass
    return problems


# -- main ---------------------------------------------------------------------------


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tasks", type=int, default=60000, help="number of tasks (default 60000)")
    p.add_argument("--group", type=int, default=50, help="tasks per pipeline (parents are drawn within it)")
    p.add_argument("--cross", type=float, default=0.02, help="chance that a parent comes from anywhere before")
    p.add_argument("--max-parents", type=int, default=3)
    p.add_argument("--ncores", type=int, default=2)
    p.add_argument("--runner", choices=("async", "parallel"), default="async")
    p.add_argument(
        "--io-rate", type=float, default=0.35, help="share of io-bound coroutine tasks (+5%% plain io functions)"
    )
    p.add_argument("--error-rate", type=float, default=0.005)
    p.add_argument("--crash-rate", type=float, default=0.002)
    p.add_argument("--hang-rate", type=float, default=0.0015)
    p.add_argument("--flaky-rate", type=float, default=0.006)
    p.add_argument("--slow-rate", type=float, default=0.05)
    p.add_argument("--none-rate", type=float, default=0.03)
    p.add_argument("--hang-timeout", type=float, default=1.0, help="time limit of the tasks planned to hang (s)")
    p.add_argument("--task-timeout", type=float, default=60.0, help="time limit of every other task (s)")
    p.add_argument("--fault-retries", type=int, default=1, help="retries of tasks planned to fail")
    p.add_argument(
        "--retries",
        type=int,
        default=10,
        help="retries of every other task: a crash fails every task its worker held, "
        "io tasks not yet started included, and those rerun",
    )
    p.add_argument("--retry-delay", type=float, default=0.01)
    p.add_argument(
        "--big-rate",
        type=float,
        default=0.03,
        help="share of tasks whose value is --big-size bytes, through shared memory (parallel runners)",
    )
    p.add_argument("--shm-threshold", type=int, default=4096, help="the runners' shm_threshold (bytes)")
    p.add_argument("--big-size", type=int, default=12288, help="bytes of a big value (default 3 x 4 KiB)")
    p.add_argument("--max-seconds", type=float, default=900, help="a run longer than this counts as hung")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import taskmap

    rng = random.Random(args.seed)
    names, deps = make_graph(rng, args.tasks, args.group, args.max_parents, args.cross)
    plan, lane = make_plan(rng, names, args)
    # a separate generator, so that a seed's graph and fault plan stay what they were
    big_rng = random.Random(args.seed * 7919 + 1)
    args.big = {n: args.big_size for n in names if big_rng.random() < args.big_rate}
    log_dir = tempfile.mkdtemp(prefix="taskmap-faults-")
    funcs, io_bound = {}, []
    for i, name in enumerate(names):
        kind, param = plan[name]
        is_io = lane[name] != "cpu"
        spec = (name, i, kind, is_io, param, log_dir, args.big.get(name, 0))
        body = {"cpu": cpu_task, "io": io_task, "plain": plain_io_task}[lane[name]]
        funcs[name] = functools.partial(body, spec)
        if is_io:
            io_bound.append(name)
    planned = Counter(kind for kind, _ in plan.values())
    faulty = [n for n, (k, _) in plan.items() if k in ("error", "crash", "hang")]
    hangs = [n for n, (k, _) in plan.items() if k == "hang"]
    timeout = {None: args.task_timeout, **{n: args.hang_timeout for n in hangs}}
    retries = {None: args.retries, **{n: args.fault_retries for n in faulty}}
    retries.update({n: max(1, args.retries) for n, (k, _) in plan.items() if k == "flaky"})
    print(
        f"fault_injection: seed {args.seed}, {args.tasks} tasks, {sum(len(d) for d in deps.values())} edges, "
        f"{len(io_bound)} io-bound, runner {args.runner}, ncores {args.ncores}; planned "
        + ", ".join(f"{planned[k]} {k}" for k in KINDS if planned[k])
        + f"; {len(args.big)} big values of {args.big_size} bytes (shm_threshold {args.shm_threshold})",
        flush=True,
    )
    graph = taskmap.create_graph(funcs, deps, io_bound=io_bound, name="fault-injection")
    runner = taskmap.run_parallel_async if args.runner == "async" else taskmap.run_parallel

    fired = threading.Event()
    finished = threading.Event()

    def watchdog():
        if not finished.wait(args.max_seconds):
            fired.set()
            while True:  # again until it lands (Python may swallow one in a gc callback)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                if finished.wait(5):
                    break

    threading.Thread(target=watchdog, daemon=True).start()
    start = time.monotonic()
    try:
        runner(
            graph,
            ncores=args.ncores,
            timeout=timeout,
            retries=retries,
            retry_delay=args.retry_delay,
            shm_threshold=args.shm_threshold,
        )
    except KeyboardInterrupt:
        if fired.is_set():
            print(
                f"FAIL: the run did not finish within {args.max_seconds:g} s ({len(graph.done)}/{args.tasks} tasks done)"
            )
            return 2
        raise
    except BaseException as exc:  # noqa: BLE001 - the verdict says what happened
        print(f"FAIL: the run raised {type(exc).__name__}: {exc}")
        return 1
    finally:
        finished.set()
    elapsed = time.monotonic() - start
    problems, stats = check(graph, names, deps, plan, args, log_dir, taskmap)
    problems += leftover_processes(taskmap, args.ncores)
    # the rarer kinds of problem first, then up to 20 in all
    common = "never started in that worker"
    shown = [p for p in problems if common not in p][:15]
    shown += [p for p in problems if common in p][: 20 - len(shown)]
    for p in shown:
        print("  problem:", p)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(stats.items()))
    if problems:
        print(f"FAIL: {len(problems)} problems in {args.tasks} tasks (seed {args.seed}, {elapsed:.1f} s): {summary}")
        return 1
    print(f"OK: {args.tasks} tasks, every result and fault as planned (seed {args.seed}, {elapsed:.1f} s): {summary}")
    return 0


if __name__ == "__main__":
    # Run as this module's importable self, so that workers unpickle the task
    # functions by reference (``fault_injection.cpu_task``), not by value.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fault_injection

    sys.exit(fault_injection.main())
