"""The runners' options, written, validated and documented once.

Every runner takes the graph and the original package's positional
parameters (``sleep``, ``ncores``, ``raise_errors``), and these keyword
options; a runner that cannot honour one refuses it with a ``TypeError``
naming the runner (say, ``memory_limit`` on ``run_dask``, whose workers have
their own).

``timeout``
    Seconds for every task, or a mapping task -> seconds (key ``None``: the
    default).  An io task past its limit is cancelled; a cpu task past its
    limit has its worker killed and replaced (on Dask: reported, its thread
    runs on unwatched).  Its result is a :class:`taskmap.TaskTimeoutError`.
    Parallel runners and ``run_dask``.
``retries``, ``retry_delay``
    A count (or a mapping like ``timeout``): a task that raises, times out
    or whose worker dies runs again, ``retry_delay`` seconds later, up to that
    many times before its last error counts; ``graph.attempts[task]`` says how
    often it ran.  Parallel runners and ``run_dask``.
``memory_limit``
    Bytes one worker process may allocate; past it the allocating task fails
    with ``MemoryError`` and the worker lives on.  Parallel runners.
``progress``
    ``True``: a progress bar on stderr (tqdm), redrawn at most 5 times a
    second.  Every runner.
``trace``
    A path: the run's timeline is written there when it ends (also when it
    raises), in the Chrome trace-event format (Perfetto).  Every runner.
``summary``
    ``True``: record each task's start, end and worker in ``graph.last_run``
    for :func:`taskmap.summarize` (implied by ``trace``).  Every runner.
``observers``
    :class:`taskmap.Observer` objects whose hooks are called at the run's
    events, in the calling thread.  Every runner.
``gather``
    Which results come back: ``True`` (all), ``False`` (none) or a
    collection of task names; the others get :class:`taskmap.NotKept` (on
    Dask: their futures).  Refused with a checkpoint store.  Parallel
    runners and ``run_dask``.
``limits``, ``rates``
    ``{resource: n}``: at most n tasks using the resource (``create_graph(uses=...)``)
    run at once; ``{resource: r}``: at most r of them start a second, spaced
    1/r apart.  A waiting task is not sent anywhere (see
    :mod:`taskmap.scheduling.resources`).  A name no task uses is a ``ValueError``.
    Every runner.  On Dask both hold across the cluster (a task is submitted
    only when it may start).
``shm_threshold``
    Bytes from which a result's buffers travel through shared memory;
    ``"auto"`` (``$TASKMAP_SHM_THRESHOLD``, else 256 KiB) or ``None`` (off).
    Parallel runners.
``dashboard``
    ``True`` (a free port) or a port number: a live page of the run is
    served on ``http://127.0.0.1:PORT/?token=...`` while it lasts (a request
    without the token gets 403): the graph coloured by status, a task stream
    per worker lane, counts, rate and ETA, failures, resources in use.  Its
    address is printed on stderr when the run starts and is
    ``Run.dashboard_url`` on :func:`taskmap.start`'s handle; a port that is
    taken leaves the run without its page (a ``RuntimeWarning`` says so)
    (see :mod:`taskmap.observe.dashboard`).  Every runner.
``output``
    What a task writes with ``print``/``sys.stdout``/``sys.stderr`` (and the
    log records emitted while it runs) is kept, per task, in
    ``graph.output`` (bounded at 1 MiB a task: head and tail); this option
    says what taskmap prints of it: ``"pass"`` (default: each complete line
    to the caller's ``sys.stdout``/``sys.stderr``, never torn), ``"prefix"``
    (the same, each line prefixed ``[task] ``) or ``"capture"`` (nothing).
    Every runner (see :mod:`taskmap.observe.output`).
``capture_level``
    The least level of a log record kept as task output (an int or a name
    such as ``"DEBUG"``; default ``logging.INFO``).  A record is kept only
    when its logger emits it: taskmap never lowers a logger's level.  Every
    runner.

With none of ``progress``, ``trace``, ``summary``, ``observers``, ``dashboard`` a run
pays nothing per task for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

from taskmap.cancellation import Cancellation
from taskmap.observe.observers import Observer, Observers, build_observers
from taskmap.observe.output import DEFAULT as DEFAULT_OUTPUT
from taskmap.observe.output import OutputOptions, resolve_output
from taskmap.results import GatherSpec, ThresholdSpec, resolve_gather, resolve_threshold
from taskmap.scheduling.limits import RetrySpec, TaskLimits, TimeoutSpec
from taskmap.scheduling.resources import check_limits_and_rates

if TYPE_CHECKING:
    from taskmap.graph import Graph

IN_PROCESS = frozenset({"run", "run_async"})
PARALLEL = frozenset({"run_parallel", "run_parallel_async"})
DASK = frozenset({"run_dask"})
EVERY = IN_PROCESS | PARALLEL | DASK


class RunnerOptions(TypedDict, total=False):
    """The keyword options of the runners (see :mod:`taskmap.options`)."""

    timeout: TimeoutSpec
    retries: RetrySpec
    retry_delay: float
    memory_limit: int | None
    progress: bool | None
    trace: str | os.PathLike[str] | None
    summary: bool
    observers: Iterable[Observer] | None
    gather: GatherSpec
    shm_threshold: ThresholdSpec
    limits: Mapping[str, int] | None
    rates: Mapping[str, float] | None
    dashboard: bool | int | None
    output: str
    capture_level: int | str


class _Option(NamedTuple):
    default: Any
    runners: frozenset[str]


# name -> default and the runners that take it (the docs: the module docstring)
OPTIONS: dict[str, _Option] = {
    "timeout": _Option(None, PARALLEL | DASK),
    "retries": _Option(0, PARALLEL | DASK),
    "retry_delay": _Option(0.0, PARALLEL | DASK),
    "memory_limit": _Option(None, PARALLEL),
    "progress": _Option(None, EVERY),
    "trace": _Option(None, EVERY),
    "summary": _Option(False, EVERY),
    "observers": _Option(None, EVERY),
    "gather": _Option(True, PARALLEL | DASK),
    "shm_threshold": _Option("auto", PARALLEL),
    "limits": _Option(None, EVERY),
    "rates": _Option(None, EVERY),
    "dashboard": _Option(None, EVERY),
    "output": _Option("pass", EVERY),
    "capture_level": _Option(logging.INFO, EVERY),
}


class RunOptions(NamedTuple):
    """One run's options, checked and resolved against its graph."""

    runner: str
    raise_errors: bool
    limits: TaskLimits
    observers: Observers
    keep: frozenset[Any] | None  # names of the results to keep; None: all
    shm_threshold: int | None
    # (limits, rates) checked against the graph's uses; None: no resource is bounded
    resources: tuple[dict[str, int], dict[str, float]] | None
    given: dict[str, Any]  # every option, defaults filled in (as the caller wrote them)
    output: OutputOptions = DEFAULT_OUTPUT
    # the run's cancel switch (taskmap.start sets one; the blocking runners: None)
    cancel: Cancellation | None = None


def resolve(runner: str, graph: Graph, raise_errors: bool, options: Mapping[str, Any]) -> RunOptions:
    """Check ``options`` for ``runner`` (unknown or unsupported: ``TypeError``
    naming the runner; bad values: ``ValueError``/``TypeError`` from the
    option's own check) and resolve them against ``graph``."""
    given = {}
    for name, value in options.items():
        option = OPTIONS.get(name)
        if option is None:
            raise TypeError(f"{runner}() got an unexpected keyword argument {name!r}")
        if runner not in option.runners:
            takes = ", ".join(sorted(option.runners))
            raise TypeError(f"{runner}() does not take {name}= (it is an option of {takes})")
        given[name] = value
    for name, option in OPTIONS.items():
        if runner in option.runners:
            given.setdefault(name, option.default)
    resources = None
    if given.get("limits") or given.get("rates"):
        resources = check_limits_and_rates(graph.uses, given.get("limits"), given.get("rates"))
    output = resolve_output(given["output"], given["capture_level"])
    names = list(graph.dependencies)
    limits = TaskLimits(
        names,
        given.get("timeout"),
        given.get("retries", 0),
        given.get("retry_delay", 0.0),
        given.get("memory_limit"),
    )
    observers = build_observers(graph, given["progress"], given["trace"], given["observers"], given["summary"])
    if given["dashboard"] is not None and given["dashboard"] is not False:
        # (imported only when asked for: a plain run never loads http.server)
        from taskmap.observe.dashboard import Dashboard, check_port

        port = check_port(given["dashboard"])
        assert port is not None
        observers.add(Dashboard(port, given.get("limits"), given.get("rates")))
    keep = resolve_gather(graph, given["gather"]) if "gather" in given else None
    threshold = resolve_threshold(given["shm_threshold"]) if "shm_threshold" in given else None
    return RunOptions(runner, bool(raise_errors), limits, observers, keep, threshold, resources, given, output)
