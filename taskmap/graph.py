"""The graph model: what a taskmap graph is, how it is built and validated,
and the helpers the original package exposes on it.

A graph is two dicts (task -> function, task -> tasks it depends on) plus the
record of a run (``done``, ``results``).  Every helper here is linear in
tasks + edges; the original package was quadratic or worse in several.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Self

from taskmap.expand import Element, check_expand, element_descendants
from taskmap.observe.logs import setup_loggers

Task = Hashable


class DoneList(list[Task]):
    """The ``done`` list of a graph: a plain list with a set index beside it.

    It compares equal to a list (``graph.done == ['w']``) and keeps the order
    in which tasks were done, but membership tests are O(1) so that marking
    tasks one at a time stays linear over a whole graph.
    """

    __slots__ = ("_index",)

    def __init__(self, items: Iterable[Task] = ()) -> None:
        super().__init__()
        self._index: set = set()
        self.extend(items)

    def __contains__(self, task: object) -> bool:
        return task in self._index

    def append(self, task: Task) -> None:
        if task not in self._index:
            self._index.add(task)
            super().append(task)

    def extend(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            self.append(task)

    def extend_new(self, tasks: list[Task]) -> None:
        """Append ``tasks`` (distinct), in one pass of C code when none is
        here yet: a runner records a batch of outcomes."""
        if self._index.isdisjoint(tasks):
            self._index.update(tasks)
            super().extend(tasks)
        else:
            self.extend(tasks)

    # (list's own __iadd__ takes any iterable too; mypy holds it to list's
    # overloaded __add__, which only takes lists)
    def __iadd__(self, tasks: Iterable[Task]) -> Self:  # type: ignore[misc]
        self.extend(tasks)
        return self

    def insert(self, i: int, task: Task) -> None:  # type: ignore[override]
        if task not in self._index:
            self._index.add(task)
            super().insert(i, task)

    def remove(self, task: Task) -> None:
        super().remove(task)
        self._index.discard(task)

    def remove_many(self, tasks: set) -> None:
        """Remove every task of ``tasks`` in one pass (linear)."""
        if tasks & self._index:
            kept = [t for t in self if t not in tasks]
            super().clear()
            super().extend(kept)
            self._index -= tasks

    def pop(self, i: int = -1) -> Task:  # type: ignore[override]
        task = super().pop(i)
        self._index.discard(task)
        return task

    def clear(self) -> None:
        super().clear()
        self._index.clear()

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self._reindex()

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self._reindex()

    def _reindex(self) -> None:
        self._index = set(self)

    def __reduce__(self):
        return (DoneList, (list(self),))


class Graph:
    """A task graph and the record of its runs.

    Attributes mirror the original package's namedtuple: ``funcs`` (task ->
    callable), ``dependencies`` (task -> list of tasks, in argument order),
    ``done`` (list of finished tasks, failed ones included), ``results``
    (task -> value, exception, or the ancestor-failed string), ``in_progress``,
    ``io_bound`` (list), ``name``.  ``attempts`` counts how often each task was
    started in the last run and ``durations`` keeps the measured run time of
    each task (seconds), used to order cpu tasks by critical path next time.
    ``checkpoint`` is the durable result store, if any; ``last_run`` the
    record of the last run (for the summary), if any.  ``output`` holds what
    each task wrote (printed or logged) when it last ran, for the tasks that
    wrote something (:mod:`taskmap.observe.output`).
    """

    __slots__ = (
        "_done",
        "attempts",
        "checkpoint",
        "dependencies",
        "durations",
        "elements",
        "expand",
        "funcs",
        "in_progress",
        "io_bound",
        "last_run",
        "lock",
        "name",
        "output",
        "priority",
        "results",
        "uses",
    )

    def __init__(
        self,
        funcs: dict,
        dependencies: dict,
        done: Iterable[Task] = (),
        results: dict | None = None,
        io_bound: Iterable[Task] = (),
        name: str = "taskmap",
    ) -> None:
        self.funcs = funcs
        self.dependencies = dependencies
        self._done = DoneList(done)
        self.results = {} if results is None else results
        self.in_progress: list = []
        self.io_bound = list(io_bound)
        self.name = name
        self.lock = 0  # kept for compatibility with the original namedtuple
        self.attempts: dict = {}
        self.durations: dict = {}
        # a durable result store (taskmap.checkpoint), or None
        self.checkpoint: Any = None
        # the record of the last run, for taskmap's summary, or None
        self.last_run: Any = None
        # task -> resource names it takes a unit of (taskmap.scheduling.resources)
        self.uses: dict = {}
        # task -> int, higher first among ready tasks (default 0)
        self.priority: dict = {}
        # task -> the text it wrote when it last ran (absent: it wrote nothing)
        self.output: dict = {}
        # expanded task -> the dependency it maps over (taskmap.expand)
        self.expand: dict = {}
        # expanded task not done -> a flag per element, 1 where the element
        # finished (a rerun runs the others)
        self.elements: dict = {}

    @property
    def done(self) -> DoneList:
        return self._done

    @done.setter
    def done(self, tasks: Iterable[Task]) -> None:
        self._done = tasks if isinstance(tasks, DoneList) else DoneList(tasks)

    def __repr__(self) -> str:
        return f"<taskmap.Graph {self.name!r}: {len(self.dependencies)} tasks, {len(self._done)} done>"

    def __getstate__(self):
        return {slot: getattr(self, slot) for slot in self.__slots__}

    def __setstate__(self, state) -> None:
        self.uses, self.priority, self.output = {}, {}, {}  # (a graph pickled before they existed)
        self.expand, self.elements = {}, {}
        for slot, value in state.items():
            setattr(self, slot, value)


def create_graph(
    funcs: Mapping[Task, Callable[..., Any]],
    dependencies: Mapping[Task, Iterable[Task]],
    io_bound: Iterable[Task] | None = None,
    done: Iterable[Task] | None = None,
    results: dict | None = None,
    name: str = "taskmap",
    logging_config: Mapping[str, Any] | None = None,
    checkpoint: Any = None,
    uses: Mapping[Task, str | Iterable[str]] | None = None,
    priority: Mapping[Task, int] | None = None,
    expand: Mapping[Task, Task] | None = None,
) -> Graph:
    """Build and validate a graph.

    ``dependencies`` defines the set of tasks; each task's function receives
    the results of its dependencies, in the order listed, as positional
    arguments (``None`` results left out).  Tasks in ``done`` are not run, and
    their entries in ``results`` are fed to their children.

    Raises ``ValueError`` naming the offenders for a dependency that is not a
    key of ``dependencies``, a task with no function, names in
    ``io_bound``/``done``/``results`` that are not tasks, and a cycle (shown as
    its path, ``a -> b -> a``); ``TypeError`` for a function that is not
    callable.  Linear in tasks + edges.

    ``logging_config`` keys: ``level`` (default ``logging.DEBUG``), ``write``
    (write a log file named after the graph, default False), ``stderr`` (print
    the log lines to stderr as the original package did, default False).

    ``checkpoint``: a path (``str`` or ``os.PathLike``) or a store from
    :func:`taskmap.open_checkpoint`.  Every run then restores the results the
    store holds for unchanged tasks first and records each outcome as it
    happens (see :mod:`taskmap.checkpoint`); :class:`taskmap.CheckpointError`
    if the file is not a usable store.

    ``uses``: task -> a resource name or a list of names, each use one unit;
    a run's ``limits={name: n}`` and ``rates={name: per_second}`` then bound
    how many tasks hold a resource at once and how often they start (see
    :mod:`taskmap.scheduling.resources`).  ``priority``: task -> int (default 0): among
    ready tasks of a lane, and among tasks waiting for a resource, higher
    first, ties by critical path.  Names that are not tasks: ``ValueError``.

    ``expand``: task -> the one of its dependencies it maps over (else
    ``ValueError``).  When that dependency finishes with n items, the task
    runs as n elements ``task[0]`` .. ``task[n-1]``, element i getting the
    dependencies' results with the mapped one replaced by its i-th item; a
    task expanding over an expanded task pairs elements (no barrier); a task
    depending on an expanded task otherwise gets the list of element
    results, and ``graph.results[task]`` is that list (see
    :mod:`taskmap.expand`).
    """
    setup_loggers(name, logging_config or {})

    deps = {task: list(parents) for task, parents in dependencies.items()}
    io_bound = list(io_bound or [])
    done = list(done or [])
    results = {} if results is None else results

    _check_dependencies_present(deps)
    _check_functions(funcs, deps)
    _check_names("io_bound", io_bound, deps)
    _check_names("done", done, deps)
    _check_names("results", results, deps)
    _check_acyclic(deps)
    from taskmap.scheduling.resources import normalise_uses

    task_uses = normalise_uses(uses, deps)
    priorities = dict(priority or {})
    _check_names("priority", priorities, deps)
    for task, p in priorities.items():
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"priority[{task!r}] must be an int, not {p!r}")

    graph = Graph(
        funcs=funcs if isinstance(funcs, dict) else dict(funcs),
        dependencies=deps,
        done=done,
        results=results,
        io_bound=io_bound,
        name=name,
    )
    graph.uses = task_uses
    graph.priority = {t: p for t, p in priorities.items() if p}
    graph.expand = check_expand(expand, deps)
    if checkpoint is not None:
        from taskmap.checkpoint import as_store  # (imports the codec: only when asked for)

        graph.checkpoint = as_store(checkpoint)
    return graph


def _preview(names: Iterable, limit: int = 10) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return shown + more


def _check_dependencies_present(deps: dict) -> None:
    missing: dict = {}
    for task, parents in deps.items():
        for parent in parents:
            if parent not in deps:
                missing.setdefault(parent, task)
    if missing:
        detail = "; ".join(f"{m!r} (needed by {t!r})" for m, t in list(missing.items())[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ValueError(
            f"Tasks {_preview(missing)} are depended upon, but are not present as keys "
            f"in the dependencies dictionary: {detail}{more}"
        )


def _check_functions(funcs: Mapping, deps: dict) -> None:
    absent = [task for task in deps if task not in funcs]
    if absent:
        raise ValueError(
            f"Tasks {_preview(absent)} are listed in the dependencies dict, but do not "
            "correspond to functions in the funcs dict"
        )
    not_callable = [task for task in deps if not callable(funcs[task])]
    if not_callable:
        kinds = ", ".join(f"{t!r} is a {type(funcs[t]).__name__}" for t in not_callable[:10])
        raise TypeError(f"The functions of tasks {_preview(not_callable)} are not callable: {kinds}")


def _check_names(what: str, names: Iterable, deps: dict) -> None:
    unknown = [n for n in names if n not in deps]
    if unknown:
        raise ValueError(f"Names in {what} that are not tasks of the graph: {_preview(unknown)}")


def _check_acyclic(deps: dict) -> None:
    """Raise ValueError with a cycle's path if the graph has one (iterative DFS)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(deps, WHITE)
    for root in deps:
        if colour[root] != WHITE:
            continue
        colour[root] = GREY
        path = [root]
        stack = [iter(deps[root])]
        while stack:
            for parent in stack[-1]:
                c = colour[parent]
                if c == WHITE:
                    colour[parent] = GREY
                    path.append(parent)
                    stack.append(iter(deps[parent]))
                    break
                if c == GREY:
                    cycle = [*path[path.index(parent) :], parent]
                    # path runs child -> parent; show it in the direction work flows
                    cycle.reverse()
                    raise ValueError("Cyclic dependency: " + _cycle_text(cycle))
            else:
                colour[path.pop()] = BLACK
                stack.pop()


CYCLE_SHOWN = 20  # tasks of a cycle named in its error at most (a huge one is elided)


def _cycle_text(cycle: list) -> str:
    """``a -> b -> c -> a``; a cycle longer than CYCLE_SHOWN tasks shows
    its first and last tasks and how many are left out, not megabytes."""
    names = [str(t) for t in cycle]
    if len(names) > CYCLE_SHOWN + 1:
        half = CYCLE_SHOWN // 2
        left_out = len(names) - 2 * half
        names = [*names[:half], f"... ({left_out} more tasks) ...", *names[-half:]]
    return " -> ".join(names)


def children_index(graph_or_deps) -> dict:
    """Map each task to the list of tasks that depend on it directly."""
    deps = getattr(graph_or_deps, "dependencies", graph_or_deps)
    children: dict = {task: [] for task in deps}
    for task, parents in deps.items():
        for parent in parents:
            children[parent].append(task)
    return children


def descendants(children: Mapping, roots: Iterable[Task]) -> set:
    """Every task reachable from ``roots`` through ``children``, roots excluded
    unless reachable from another root."""
    seen: set = set()
    queue: deque = deque()
    for root in roots:
        queue.extend(children.get(root, ()))
    while queue:
        task = queue.popleft()
        if task not in seen:
            seen.add(task)
            queue.extend(children[task])
    return seen


def get_all_children(graph: Graph, task: Task) -> set:
    """All descendants of ``task`` (children, their children, ...), as a set
    of task names, without ``task`` itself; linear in tasks + edges.  These
    are the tasks a failure of ``task`` skips and :func:`reset_tasks` reruns."""
    return descendants(children_index(graph), [task])


def get_ready_tasks(graph: Graph, reverse: bool = True) -> list:
    """Tasks not done and not in progress whose dependencies are all done.

    io-bound tasks come first (``reverse=False`` puts them last, as in the
    original); otherwise in the order of ``graph.dependencies``.
    """
    done = graph.done
    in_progress = set(graph.in_progress)
    io = set(graph.io_bound)
    ready = [
        task
        for task, parents in graph.dependencies.items()
        if task not in done and task not in in_progress and all(parent in done for parent in parents)
    ]
    first = [t for t in ready if t in io]
    last = [t for t in ready if t not in io]
    return first + last if reverse else last + first


def _as_list(tasks) -> list:
    if isinstance(tasks, str) or not isinstance(tasks, Iterable):
        return [tasks]
    return list(tasks)


def mark_as_done(graph: Graph, tasks) -> Graph:
    """Add ``tasks`` (one task or an iterable of tasks) to ``graph.done``, so
    the next run does not run them; their results (``graph.results``, or
    ``create_graph(results=...)``) are fed to their children.  Returns the graph."""
    graph.done.extend(_as_list(tasks))
    return graph


def mark_as_done_except(graph: Graph, tasks) -> Graph:
    """Mark every task as done except ``tasks`` (one task or an iterable), as
    :func:`mark_as_done` does: the next run runs only ``tasks``.  Returns the graph."""
    keep = set(_as_list(tasks))
    graph.done.extend(t for t in graph.dependencies if t not in keep)
    return graph


def reset_tasks(graph: Graph, tasks) -> Graph:
    """Mark ``tasks`` and all their descendants as not done and clear their
    results and output, so the next run reruns exactly them.  With a checkpoint store,
    their stored outcomes are deleted too.

    An element (``taskmap.Element(task, i)``) resets only itself, the
    elements paired with it below (``clean[i]`` under ``parse[i]``) and what
    takes their tasks' lists; the other elements keep their results (the
    positions to rerun hold None until the rerun)."""
    tasks = set(_as_list(tasks))
    elements = {t for t in tasks if type(t) is Element}
    tasks -= elements
    rerun = descendants(children_index(graph), tasks) | tasks
    partly: dict = {}
    if elements:
        partly, whole = element_descendants(graph, elements)
        rerun |= whole
        partly = {t: ix for t, ix in partly.items() if t not in rerun}
    graph.done.remove_many(rerun | set(partly))
    cleared = set(rerun)
    for task in rerun:
        if task in graph.expand and isinstance(graph.results.get(task), list):
            # (so a store does not bring its elements back)
            cleared.update(Element(task, k) for k in range(len(graph.results[task])))
            for k in range(len(graph.results[task])):
                graph.output.pop(Element(task, k), None)
        if task in graph.results:
            graph.results[task] = None
        graph.output.pop(task, None)
        graph.elements.pop(task, None)
    for task, indices in partly.items():
        values = graph.results.get(task)
        if not isinstance(values, list):
            continue  # (never expanded: it runs whole anyway)
        flags = graph.elements.setdefault(task, bytearray(b"\x01" * len(values)))
        for i in indices:
            if i < len(values):
                values[i] = None
                flags[i] = 0
                cleared.add(Element(task, i))
                graph.output.pop(Element(task, i), None)
    if graph.checkpoint is not None:
        graph.checkpoint.clear(cleared)
        # (an expanded task reset whole that this process never ran: its
        # elements are known to the store only)
        graph.checkpoint.clear_elements_of(t for t in rerun if t in graph.expand)
    return graph


def reset_failed_tasks(graph: Graph) -> Graph:
    """Reset every task whose result is an exception, and its descendants.

    With a checkpoint store, the tasks whose stored outcome is a failure are
    reset as well (so this works in a new process, before any run)."""
    failed: list = [t for t, r in graph.results.items() if isinstance(r, Exception)]
    for task in graph.expand:
        values = graph.results.get(task)
        if isinstance(values, list):
            failed.extend(Element(task, i) for i, v in enumerate(values) if isinstance(v, Exception))
    if graph.checkpoint is not None:
        deps = graph.dependencies
        failed.extend(t for t in graph.checkpoint.failed_tasks() if t in deps)
    return reset_tasks(graph, failed)
