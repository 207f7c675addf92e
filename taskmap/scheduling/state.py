"""The pure scheduling state every runner shares: no I/O, no processes.

In the manner of ``graphlib.TopologicalSorter`` and dask's worker state
machine, runners feed events in (``finished``, ``failed``, ``started``) and get
instructions out (the tasks that became ready, the tasks to skip).  Tasks are
numbered ``0..n-1`` in the order of ``graph.dependencies``; names are kept only
at the edges.

Ready tasks wait in two queues: io-bound tasks in arrival order (they only
wait, so they always go first), cpu-bound tasks in a heap ordered by critical
path priority, the longest chain of work below the task (counted in tasks, or
in measured seconds when durations from an earlier run are known).  Finding
ready tasks never scans the graph: each task keeps a count of unfinished
dependencies, decremented as they finish.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any


class TaskState(IntEnum):
    """The closed set of states a task is in during a run.

    Every runner's scheduling state moves each task through these, checked:
    WAITING -> READY -> RUNNING -> DONE or FAILED (a retry goes from RUNNING
    back to READY), or WAITING/READY -> SKIPPED when an ancestor fails; any
    other move raises ``IllegalTransition``.  An int enum, so its members
    compare with the plain ints the hot paths store.
    """

    WAITING = 0  # some dependency has not finished
    """Some dependency has not finished."""
    READY = 1  # all dependencies finished; queued, not yet handed out
    """Every dependency finished; queued, not yet handed out."""
    RUNNING = 2  # handed to an executor
    """Handed to an executor (a worker, a thread, the event loop)."""
    DONE = 3  # finished with a result (or was done before the run)
    """Finished with a result (or was done before the run)."""
    FAILED = 4  # raised, crashed or timed out; its result is the error
    """Raised, crashed or timed out; its result is the error."""
    SKIPPED = 5  # an ancestor failed; result is the ancestor string
    """An ancestor failed; its result is the ancestor string."""
    EXPANDED = 6  # an expanded task: runs as elements, some not finished (scheduling.expansion)
    """An expanded task (``create_graph(expand=...)``) whose elements have not all finished."""


# The same states as plain ints, for the paths a run takes several times per
# task: comparing a bytearray item with an IntEnum member goes through the
# class attribute and int's subclass path (~140 ns against ~25 ns).
WAITING, READY, RUNNING, DONE, FAILED, SKIPPED, EXPANDED = (int(s) for s in TaskState)
FINISHED = frozenset((DONE, FAILED, SKIPPED))


_STATE_NAMES = tuple(s.name for s in TaskState)


class IllegalTransition(RuntimeError):
    """A runner asked for a transition the task's state does not allow (a
    second ``finished``, finishing a task that is not running, ...): a bug
    in the runner's bookkeeping, raised at once instead of ignored (as
    ``graphlib`` raises for a node marked done twice)."""

    def __init__(self, task, event: str, state: int) -> None:
        super().__init__(f"task {task!r}: {event} is illegal in state {_STATE_NAMES[state]}")
        self.task = task
        self.event = event
        self.state = state


def ancestor_failed_message(task) -> str:
    """The result given to every descendant of a failed task."""
    return f"Ancestor task {task} failed; task not run"


class SchedulingState:
    """Which tasks are ready, given which have finished.

    ``names``: task names by number; ``parents[i]``: numbers of task i's
    dependencies in argument order; ``children[i]``: tasks depending on i.
    """

    __slots__ = (
        "children",
        "clock",
        "gate",
        "index",
        "io_by_priority",
        "io_seq",
        "is_io",
        "names",
        "parents",
        "priority",
        "ready_cpu",
        "ready_io",
        "remaining",
        "state",
        "unfinished",
    )

    # whether tasks may be added during the run (create_graph(expand=...):
    # taskmap.scheduling.expansion.ExpandingState); static graphs pay nothing
    expanding = False

    def __init__(
        self,
        dependencies: Mapping,
        io_bound: Iterable = (),
        done: Iterable = (),
        durations: Mapping | None = None,
        user_priority: Mapping | None = None,
    ) -> None:
        names = list(dependencies)
        index = {name: i for i, name in enumerate(names)}
        n = len(names)
        # a tuple per task: built in C, and 40 bytes smaller than a list
        lookup = index.__getitem__
        parents = [tuple(map(lookup, dependencies[name])) for name in names]
        children: list[list[int]] = [[] for _ in range(n)]
        for i, ps in enumerate(parents):
            for p in ps:
                children[p].append(i)
        self.names = names
        self.index = index
        self.parents = parents
        self.children = children
        # (loops over the io and done names, not over every task: a run
        # builds this state before its first task can start)
        self.is_io = bytearray(n)
        for name in io_bound:
            k = index.get(name)  # (a name no longer in the graph is no task)
            if k is not None:
                self.is_io[k] = 1
        self.state = state = bytearray(n)  # all WAITING
        for name in done:
            state[index[name]] = DONE
        self.unfinished = n - state.count(DONE)
        if self.unfinished == n:
            self.remaining = [len(ps) for ps in parents]
        else:
            self.remaining = [sum(1 for p in ps if state[p] != DONE) for ps in parents]
        self.priority = critical_path_priority(parents, children, names, durations)
        # create_graph(priority=...): higher first among ready tasks of a
        # lane, ties by critical path (folded into one number per task)
        self.io_by_priority = bool(user_priority)
        if user_priority:
            scale = max(self.priority, default=0.0) + 1.0
            for name, p in user_priority.items():
                k = index.get(name)
                if k is not None:
                    self.priority[k] += p * scale
        # io tasks in arrival order (a deque), or by priority when the graph
        # gives some (a heap of (-priority, arrival, task): a list)
        self.ready_io: deque[int] = [] if self.io_by_priority else deque()  # type: ignore[assignment]
        self.io_seq = 0
        self.ready_cpu: list[tuple[float, int]] = []
        # limits and rates (taskmap.scheduling.resources), attached by the runner
        self.gate: Any = None
        self.clock = time.monotonic

    # -- events in -------------------------------------------------------

    def start(self) -> None:
        """Queue every task whose dependencies are all done already."""
        state, remaining = self.state, self.remaining
        for i in range(len(state)):
            if state[i] == WAITING and remaining[i] == 0:
                self._make_ready(i)

    def _illegal(self, i: int, event: str) -> IllegalTransition:
        return IllegalTransition(self.names[i], event, self.state[i])

    def started(self, i: int) -> None:
        """Task i was handed to an executor: it was ready, or waits for the
        one parent it was sent to run behind (see the coordinator's pinning)."""
        if self.state[i] > READY:
            raise self._illegal(i, "started")
        self.state[i] = RUNNING

    def finished(self, i: int) -> int:
        """Task i finished with a result; queue the children that became
        ready.  Returns how many became ready.  Only a running task can."""
        if self.state[i] != RUNNING:
            raise self._illegal(i, "finished")
        self.state[i] = DONE
        self.unfinished -= 1
        if self.gate is not None:
            self._release(i)
        became = 0
        remaining, state = self.remaining, self.state
        for c in self.children[i]:
            remaining[c] -= 1
            if remaining[c] == 0 and state[c] == WAITING:
                self._make_ready(c)
                became += 1
        return became

    def failed(self, i: int) -> list[int]:
        """Task i failed.  Every descendant that has not started is skipped
        (and counts as finished); returns those descendants.  Descendants
        that already started or finished, possible only through tasks that
        were done before the run, are left alone.  Only a running task can
        fail."""
        if self.state[i] != RUNNING:
            raise self._illegal(i, "failed")
        self.state[i] = FAILED
        self.unfinished -= 1
        gate = self.gate
        if gate is not None:
            self._release(i)
        skipped = []
        state, children = self.state, self.children
        stack = list(children[i])
        seen = set()
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            s = state[c]
            if s == WAITING or s == READY:
                if s == READY and gate is not None:
                    self._release(c)  # (out of the gate's line, or its units back)
                state[c] = SKIPPED
                self.unfinished -= 1
                skipped.append(c)
            elif s == SKIPPED:
                continue  # its descendants were skipped with it
            stack.extend(children[c])
        return skipped

    def unstart(self, i: int) -> None:
        """Task i was handed out ahead of its last dependency, which then
        failed: it waits again (and ``failed`` will skip it); or a task to
        retry after a delay waits for its timer."""
        if self.state[i] != RUNNING:
            raise self._illegal(i, "unstart")
        self.state[i] = WAITING
        if self.gate is not None:
            self._release(i)

    def requeue(self, i: int) -> None:
        """Put a started task back (for a retry, or its worker died): in its
        ready queue, or, when a parent has to run again first (a worker died
        with that parent's result), waiting for it like any other task.  A
        task waiting for a retry delay is requeued when its timer fires."""
        if self.state[i] != RUNNING and self.state[i] != WAITING:
            raise self._illegal(i, "requeue")
        self.state[i] = WAITING
        if self.gate is not None:
            self._release(i)  # (a retry takes its units again when it is ready)
        if self.remaining[i] == 0:
            self._make_ready(i)

    # -- instructions out ------------------------------------------------

    def pop_io(self) -> int | None:
        """The next ready io-bound task, or None.  A task that may not start
        now for want of a unit or a rate slot goes to wait in the gate."""
        q = self.ready_io
        gate = self.gate
        while q:
            i = heapq.heappop(q)[2] if self.io_by_priority else q.popleft()  # type: ignore[arg-type]
            if self.state[i] == READY:
                if gate is not None and gate.gated[i] and not self._admit(i):
                    continue
                return i
        return None

    def _admit(self, i: int) -> bool:
        """Take task i's units now, or park it in the gate."""
        gate = self.gate
        # (the clock matters to rates and to the time tasks wait, only)
        now = self.clock() if gate.rated else 0.0
        r = gate.blocked(i, now)
        if r is None:
            gate.take(i, now)
            return True
        gate.park(i, r, self.clock())
        return False

    def queued_io(self) -> list[int]:
        """The io tasks in the io queue (for checks)."""
        return [e[2] for e in self.ready_io] if self.io_by_priority else list(self.ready_io)  # type: ignore[index]

    def peek_cpu(self) -> int | None:
        """The task ``pop_cpu`` would return, left in the queue (tasks that
        may not start now go to wait in the gate)."""
        h = self.ready_cpu
        gate = self.gate
        while h:
            i = h[0][1]
            if self.state[i] != READY:
                heapq.heappop(h)
                continue
            if gate is not None and gate.gated[i]:
                r = gate.blocked(i, self.clock() if gate.rated else 0.0)
                if r is not None:
                    heapq.heappop(h)
                    gate.park(i, r, self.clock())
                    continue
            return i
        return None

    def pop_cpu(self) -> int | None:
        """The ready cpu-bound task with the longest chain below it, or None."""
        h = self.ready_cpu
        gate = self.gate
        while h:
            _, i = heapq.heappop(h)
            if self.state[i] == READY:
                if gate is not None and gate.gated[i] and not self._admit(i):
                    continue
                return i
        return None

    def pop_ready(self) -> int | None:
        """The next ready task of either kind, io-bound first."""
        i = self.pop_io()
        return self.pop_cpu() if i is None else i

    @property
    def all_finished(self) -> bool:
        return self.unfinished == 0

    def has_ready(self) -> bool:
        return bool(self.ready_io or self.ready_cpu)

    def _make_ready(self, i: int) -> None:
        self.state[i] = READY
        self._queue(i)

    def _queue(self, i: int) -> None:
        if self.is_io[i]:
            if self.io_by_priority:
                self.io_seq += 1
                heapq.heappush(self.ready_io, (-self.priority[i], self.io_seq, i))  # type: ignore[arg-type]
            else:
                self.ready_io.append(i)
        else:
            heapq.heappush(self.ready_cpu, (-self.priority[i], i))

    # -- resources (taskmap.scheduling.resources) ------------------------------------

    def attach_gate(self, gate: Any) -> None:
        """Enforce ``gate``'s limits and rates from now on (before start)."""
        gate.rank = [-p for p in self.priority]
        self.gate = gate

    def _release(self, i: int) -> None:
        gate = self.gate
        now = self.clock() if gate.waits_on or gate.rated else 0.0
        for j in gate.release(i, now):
            if self.state[j] == READY:
                self._queue(j)

    def rate_due(self) -> int:
        """Queue again the tasks whose rate slot has come; how many."""
        retry = self.gate.due(self.clock())
        for j in retry:
            if self.state[j] == READY:
                self._queue(j)
        return len(retry)

    def next_rate_slot(self) -> float | None:
        """When the next task waiting for a rate may start (``clock`` time),
        or None."""
        return None if self.gate is None else self.gate.next_wakeup()

    def expected_remaining(self, i: int) -> int:
        """What ``remaining[i]`` must be: the parents of task i not done
        (for checks)."""
        state = self.state
        return sum(1 for p in self.parents[i] if state[p] != DONE)

    def waiting_in_gate(self) -> int:
        return 0 if self.gate is None else self.gate.waiting_count


def topological_order(parents: Sequence[Sequence[int]], children: Sequence[Sequence[int]]) -> list[int]:
    """Kahn's algorithm: tasks ordered so every task follows its parents."""
    indeg = [len(ps) for ps in parents]
    order = [i for i, d in enumerate(indeg) if d == 0]
    k = 0
    while k < len(order):
        for c in children[order[k]]:
            indeg[c] -= 1
            if indeg[c] == 0:
                order.append(c)
        k += 1
    if len(order) != len(parents):
        raise ValueError("graph has a cycle")
    return order


def critical_path_priority(
    parents: Sequence[Sequence[int]],
    children: Sequence[Sequence[int]],
    names: list,
    durations: Mapping | None = None,
) -> list[float]:
    """Length of the longest chain of work starting at each task, itself
    included.  Weights are measured durations where known (the mean of known
    ones for the rest), else 1 per task.  Linear in tasks + edges."""
    n = len(parents)
    if durations:
        known = [durations[name] for name in names if name in durations]
        default = (sum(known) / len(known)) if known else 1.0
        weight = [float(durations.get(name, default)) for name in names]
    else:
        weight = [1.0] * n
    longest = [0.0] * n
    for i in reversed(topological_order(parents, children)):
        below = 0.0
        for c in children[i]:
            if longest[c] > below:
                below = longest[c]
        longest[i] = weight[i] + below
    return longest
