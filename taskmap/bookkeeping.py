"""Applying task outcomes to the graph: the one place every runner records a
result, a failure and the skipped descendants of a failure.

It joins the pure :class:`~taskmap.state.SchedulingState` (numbers) and the
user's :class:`~taskmap.graph.Graph` (names, results, ``done``), and calls the
run's observers (logging; later progress and trace) at each event.
"""

from __future__ import annotations

from .errors import TaskFailedError
from .graph import Graph
from .logs import RunLog
from .state import SchedulingState, TaskState, ancestor_failed_message


class Bookkeeper:
    """Records outcomes of one run into ``graph`` and ``state``.

    With ``raise_errors`` the first failure is recorded, then raised as a
    :class:`TaskFailedError` chained to the task's own exception.
    """

    __slots__ = ("graph", "state", "log", "raise_errors", "names", "results", "done")

    def __init__(self, graph: Graph, state: SchedulingState, raise_errors: bool = False) -> None:
        self.graph = graph
        self.state = state
        self.log = RunLog(graph.name)
        self.raise_errors = raise_errors
        self.names = state.names
        self.results = graph.results
        self.done = graph.done

    def args(self, i: int) -> list:
        """The arguments of task i: its parents' results in order, None left out."""
        results, names = self.results, self.names
        out = []
        for p in self.state.parents[i]:
            value = results.get(names[p])
            if value is not None:
                out.append(value)
        return out

    def start(self) -> None:
        """Start the scheduling state and log the tasks it queued."""
        state = self.state
        state.start()
        if self.log.manager_on:
            self.log.queueing(
                state.names[i] for i in list(state.ready_io) + sorted(i for _, i in state.ready_cpu)
            )

    def succeeded(self, i: int, value, pid: int | None = None) -> None:
        name = self.names[i]
        self.results[name] = value
        self.done.append(name)
        became = self.state.finished(i)
        self.log.finished(name, pid)
        if became and self.log.manager_on:
            state, names = self.state, self.names
            self.log.queueing(
                names[c] for c in state.children[i] if state.state[c] == TaskState.READY
            )

    def failed(self, i: int, error: BaseException, pid: int | None = None) -> None:
        """Record task i's failure and skip its descendants; raise if asked."""
        name = self.names[i]
        self.results[name] = error
        self.done.append(name)
        skipped = self.state.failed(i)
        self.log.failed(name, error, pid)
        if skipped:
            message = ancestor_failed_message(name)
            names, results, done = self.names, self.results, self.done
            for s in skipped:
                results[names[s]] = message
                done.append(names[s])
            self.log.skipped(name, (names[s] for s in skipped))
        if self.raise_errors:
            raise TaskFailedError(name, error) from error
