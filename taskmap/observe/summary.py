"""What a run did, in numbers: :func:`summarize` and the :class:`Summary`
it returns, which prints as a table.

Where the numbers come from (see :mod:`taskmap.observe.record`):

* every run leaves a run-level record in ``graph.last_run`` (runner, cores,
  wall time, which tasks it finished) at no cost per task;
* a run with ``summary=True`` (or ``trace=...``) also records each task's
  start, end and worker: then the summary has everything, including busy
  time per worker;
* otherwise the parallel runners' own per-task measurements
  (``graph.durations``, kept for critical-path scheduling) give the task
  times, the critical path and the core utilisation, but not the split per
  worker; after ``run``/``run_async`` without ``summary=True`` only the counts
  and the wall time are known.

Recording every task on every run was measured and rejected: 8-13% of the
throughput of ``run_parallel_async`` on trivial tasks (28% for ``run``),
against a budget of 2%.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskmap.observe.observers import CPU, IO
from taskmap.observe.record import RunRecord, TaskRecord
from taskmap.observe.status import DONE, FAILED, NOT_RUN, SKIPPED, STATUSES, statuses
from taskmap.runtime.capture import tail_lines
from taskmap.scheduling.state import topological_order

if TYPE_CHECKING:
    from taskmap.graph import Graph

# failed tasks whose output tail the table shows, at most, and how much of each
FAILED_OUTPUTS_SHOWN = 5
FAILED_TAIL_LINES = 20
FAILED_TAIL_CHARS = 2000

# detail levels of a summary
PER_TASK = "per task"  # TaskRecords: times, lanes and workers
DURATIONS = "durations"  # the parallel runners' graph.durations
COUNTS_ONLY = "counts only"


@dataclass(frozen=True, slots=True)
class TaskTime:
    """How long one task of the run took."""

    name: Any
    seconds: float
    lane: str  # "io" or "cpu"
    status: str  # "done" or "failed"
    worker: int | None = None  # None when not recorded per task


@dataclass(frozen=True, slots=True)
class WorkerTime:
    """Time one worker process spent running tasks.  io tasks overlap, so
    ``io_seconds`` (their summed durations) can exceed the wall time."""

    pid: int
    cpu_seconds: float
    io_seconds: float
    tasks: int


@dataclass(slots=True)
class Summary:
    """The numbers of a graph's last run.

    ``counts``: tasks by status over the whole graph (``done``, ``failed``,
    ``skipped``, ``not run``); ``finished``: how many of them this run
    finished; ``wall``: seconds from the start of the run to its end;
    ``cpu_seconds``/``io_seconds``: summed run time of the run's cpu/io
    tasks; ``utilisation``: ``cpu_seconds / (wall * ncores)``;
    ``workers``: busy time per worker process (only when recorded per task);
    ``slowest``: the longest tasks, longest first; ``critical_path``: the
    chain of dependent tasks with the largest summed run time, first to last,
    and ``critical_path_seconds`` that sum (a lower bound of the wall time
    on any number of cores).  ``first_start``: seconds from the start of the
    run to the first task's start (in a fresh process, mostly the worker
    processes starting), when recorded per task; ``unfinished``: tasks still
    running when the run ended (it raised or was interrupted), when recorded
    per task.  ``failed_output``: failed task -> the tail of what it wrote
    (its last lines, from ``graph.output``), for failed tasks that wrote
    something.  ``detail`` says which of the module
    docstring's sources was available; numbers that need a richer source are
    None or empty.  ``str(summary)`` is a printable table.
    """

    graph: str
    runner: str | None
    ncores: int | None
    counts: dict[str, int]
    finished: int | None
    wall: float | None
    cpu_seconds: float | None
    io_seconds: float | None
    utilisation: float | None
    workers: list[WorkerTime] = field(default_factory=list)
    slowest: list[TaskTime] = field(default_factory=list)
    critical_path: list = field(default_factory=list)
    critical_path_seconds: float | None = None
    retried: int | None = None
    first_start: float | None = None  # run start -> first task's start (recorded runs)
    unfinished: list = field(default_factory=list)  # still running when the run ended
    detail: str = COUNTS_ONLY
    error: str | None = None
    # resource -> {"peak", "waited", "limit", "rate"} when the run bounded any
    resources: dict = field(default_factory=dict)
    failed_output: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return format_summary(self)


def summarize(graph: Graph, top: int = 5) -> Summary:
    """The :class:`Summary` of ``graph``'s last run (``top``: how many of the
    slowest tasks to list).  Call it right after the run: it reads
    ``graph.done`` and ``graph.results`` as the run left them.  A graph never
    run gives the counts only."""
    status = statuses(graph)
    counts = dict.fromkeys(STATUSES, 0)  # every status present, maybe 0
    for st in status.values():
        counts[st] += 1
    outputs = getattr(graph, "output", None) or {}
    failed_output = {
        task: tail_lines(outputs[task], FAILED_TAIL_LINES, FAILED_TAIL_CHARS)
        for task, st in status.items()
        if st == FAILED and outputs.get(task)
    }
    if outputs and getattr(graph, "expand", None):
        # an expanded task never runs itself: the output is its failed elements'
        from taskmap.expand import Element

        for task in graph.expand:
            values = graph.results.get(task)
            for k, value in enumerate(values if isinstance(values, list) else ()):
                element = Element(task, k)
                if isinstance(value, BaseException) and outputs.get(element):
                    failed_output[element] = tail_lines(outputs[element], FAILED_TAIL_LINES, FAILED_TAIL_CHARS)
    record = graph.last_run if isinstance(graph.last_run, RunRecord) else None
    if record is None:
        return Summary(str(graph.name), None, None, counts, None, None, None, None, None, failed_output=failed_output)

    finished = len(graph.done) - record.done_before
    times, workers, detail, retried = _task_times(graph, record, status)
    wall = record.wall
    cpu = io = utilisation = None
    path: list = []
    path_seconds = None
    if detail != COUNTS_ONLY:
        cpu = sum(t.seconds for t in times if t.lane == CPU)
        io = sum(t.seconds for t in times if t.lane == IO)
        if wall:
            utilisation = cpu / (wall * max(1, record.ncores))
        path, path_seconds = critical_path(graph, {t.name: t.seconds for t in times})
    slowest = sorted(times, key=lambda t: t.seconds, reverse=True)[:top]
    first_start = None
    if record.tasks:
        starts = [t.start for t in record.tasks if t.start is not None]
        first_start = min(starts) - record.started if starts else None
    return Summary(
        graph=str(graph.name),
        runner=record.runner,
        ncores=record.ncores,
        counts=counts,
        finished=finished,
        wall=wall,
        cpu_seconds=cpu,
        io_seconds=io,
        utilisation=utilisation,
        workers=workers,
        slowest=slowest,
        critical_path=path,
        critical_path_seconds=path_seconds,
        retried=retried,
        first_start=first_start,
        unfinished=[t.name for t in record.unfinished or ()],
        detail=detail,
        error=record.error,
        resources=dict(record.resources or {}),
        failed_output=failed_output,
    )


def _task_times(
    graph: Graph, record: RunRecord, status: dict
) -> tuple[list[TaskTime], list[WorkerTime], str, int | None]:
    """Per-task times of the run, busy time per worker, the detail level and
    how many tasks needed more than one attempt."""
    if record.tasks is not None:
        return (*_from_records(record.tasks), PER_TASK, sum(1 for t in record.tasks if t.attempts > 1))
    # (a record pickled before the flag existed has none: counts only)
    if not getattr(record, "measures_durations", False):
        return [], [], COUNTS_ONLY, None
    # graph.durations also holds earlier runs' times: take only tasks this
    # run finished, and only done ones (a task whose worker crashed has no
    # fresh measurement)
    io = set(graph.io_bound)
    durations = graph.durations
    ran = graph.done[record.done_before :]
    times = [
        TaskTime(name, durations[name], IO if name in io else CPU, DONE)
        for name in ran
        if status.get(name) == DONE and name in durations
    ]
    retried = sum(1 for name in ran if graph.attempts.get(name, 1) > 1)
    return times, [], DURATIONS, retried


def _from_records(records: list[TaskRecord]) -> tuple[list[TaskTime], list[WorkerTime]]:
    times = []
    per_worker: dict[int, list[float]] = {}
    for t in records:
        seconds = t.seconds
        if seconds is None or t.worker is None:
            continue  # skipped: never ran
        times.append(TaskTime(t.name, seconds, t.lane, t.status, t.worker))
        busy = per_worker.setdefault(t.worker, [0.0, 0.0, 0])
        busy[0 if t.lane == CPU else 1] += seconds
        busy[2] += 1
    workers = [WorkerTime(pid, cpu, io, int(n)) for pid, (cpu, io, n) in per_worker.items()]
    workers.sort(key=lambda w: -w.cpu_seconds - w.io_seconds)
    return times, workers


def critical_path(graph: Graph, seconds: dict) -> tuple[list, float | None]:
    """The chain of dependent tasks with the largest sum of ``seconds``
    (task -> measured run time; tasks missing from it weigh 0 and are left
    out of the returned chain), first to last, and that sum.  Linear in
    tasks + edges.  ``([], None)`` when nothing was measured."""
    if not seconds:
        return [], None
    names = list(graph.dependencies)
    index = {name: i for i, name in enumerate(names)}
    parents = [[index[p] for p in graph.dependencies[name]] for name in names]
    children: list[list[int]] = [[] for _ in names]
    for i, ps in enumerate(parents):
        for p in ps:
            children[p].append(i)
    weight = [float(seconds.get(name, 0.0)) for name in names]
    longest = [0.0] * len(names)  # heaviest chain ending at i, i included
    via = [-1] * len(names)
    for i in topological_order(parents, children):
        best, best_parent = 0.0, -1
        for p in parents[i]:
            if longest[p] > best:
                best, best_parent = longest[p], p
        longest[i] = best + weight[i]
        via[i] = best_parent
    end = max(range(len(names)), key=longest.__getitem__)
    chain = []
    i = end
    while i >= 0:
        if names[i] in seconds:
            chain.append(names[i])
        i = via[i]
    chain.reverse()
    return chain, longest[end]


# -- the table --------------------------------------------------------------------


def _seconds(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def _chain_text(chain: list, limit: int = 12, sep: str = " -> ") -> str:
    names = [str(n) for n in chain]
    if len(names) > limit:
        names = [*names[: limit // 2], f"... {len(names) - limit} more ...", *names[-limit // 2 :]]
    return sep.join(names)


def format_summary(s: Summary) -> str:
    """The table ``str(summary)`` prints, and under it the output tails of
    failed tasks."""
    return _format_table(s) + _format_failed_output(s)


def _format_failed_output(s: Summary) -> str:
    if not s.failed_output:
        return ""
    rows = []
    shown = list(s.failed_output.items())[:FAILED_OUTPUTS_SHOWN]
    for task, tail in shown:
        rows += ["", f"  output of failed task {task} (its last lines):"]
        rows += [f"    {line}" for line in tail.splitlines()]
    more = len(s.failed_output) - len(shown)
    if more:
        rows += ["", f"  ... and {more} more failed {'task' if more == 1 else 'tasks'} with output (graph.output)"]
    return "\n".join(rows) + "\n"


def _format_table(s: Summary) -> str:
    where = f"{s.runner}, {s.ncores} {'worker' if s.ncores == 1 else 'workers'}" if s.runner else "not run"
    c = s.counts
    tasks = f"{c[DONE]} done, {c[FAILED]} failed, {c[SKIPPED]} skipped, {c[NOT_RUN]} not run"
    extra = []
    if s.finished is not None:
        extra.append(f"{s.finished} finished in this run")
    if s.retried:
        extra.append(f"{s.retried} retried")
    if extra:
        tasks += f" ({', '.join(extra)})"
    rows = [
        f"taskmap summary: {s.graph} ({where})",
        f"  tasks          {tasks}",
        f"  wall time      {_seconds(s.wall)}"
        + (
            f" (the first task started at {_seconds(s.first_start)})"
            if s.first_start is not None and s.wall and s.first_start > 0.1 * s.wall
            else ""
        ),
    ]
    if s.error:
        rows.append(f"  run stopped by {s.error}")
    if s.unfinished:
        rows.append(f"  still running  {_chain_text(s.unfinished, sep=', ')}")
    if s.resources:
        rows += ["", f"  {'resource':<12} {'limit':>6} {'rate/s':>7} {'peak':>5} {'waited s':>9}"]
        for name, r in s.resources.items():
            limit = "-" if r["limit"] is None else str(r["limit"])
            rate = "-" if r["rate"] is None else f"{r['rate']:g}"
            rows.append(f"  {name:<12} {limit:>6} {rate:>7} {r['peak']:>5} {r['waited']:>9.3f}")
        rows.append("")
    if s.detail == COUNTS_ONLY:
        if s.runner:
            rows.append("  task times     not recorded (run with summary=True to record them)")
        return "\n".join(rows) + "\n"
    rows.append(f"  task time      cpu {_seconds(s.cpu_seconds)}, io {_seconds(s.io_seconds)} (summed over tasks)")
    if s.utilisation is not None:
        rows.append(
            f"  core use       {s.utilisation:.0%} of {s.ncores} "
            f"{'core' if s.ncores == 1 else 'cores'} (cpu task time / (wall time x cores))"
        )
    if s.critical_path:
        n = len(s.critical_path)
        rows.append(
            f"  critical path  {_seconds(s.critical_path_seconds)}, "
            f"{n} {'task' if n == 1 else 'tasks'}: {_chain_text(s.critical_path)}"
        )
    if s.workers:
        rows += ["", f"  {'worker':<10} {'cpu s':>8} {'io s':>8} {'tasks':>6} {'cpu busy':>9}"]
        for w in s.workers:
            busy = f"{w.cpu_seconds / s.wall:.0%}" if s.wall else "n/a"
            rows.append(f"  {w.pid:<10} {w.cpu_seconds:>8.3f} {w.io_seconds:>8.3f} {w.tasks:>6} {busy:>9}")
    elif s.detail == DURATIONS:
        rows.append("  per worker     not recorded (run with summary=True to record it)")
    if s.slowest:
        width = max(13, *(len(str(t.name)) for t in s.slowest))
        rows += ["", f"  {'slowest tasks':<{width}} {'seconds':>8}  lane  status  worker"]
        for t in s.slowest:
            worker = "" if t.worker is None else str(t.worker)
            rows.append(f"  {t.name!s:<{width}} {t.seconds:>8.3f}  {t.lane:<4}  {t.status:<6}  {worker}")
    return "\n".join(rows) + "\n"
