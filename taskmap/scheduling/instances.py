"""The scheduling state of a load run (:func:`taskmap.load`): instances of a
scenario graph added while the run goes, and retired when they finish.  No
I/O.

Like :class:`~taskmap.scheduling.expansion.ExpandingState`, it adds tasks to
a running state; unlike it, what it adds is a whole small graph (an
*instance*: its own names, edges, lanes and priorities), and what finished
goes away again: a load run of 30,000 instances must not keep 30,000
instances' tables.  So task numbers are *slots*, recycled: a retired
instance's slots wait in a free list and the next instance takes them before
any table grows.  The tables are as long as the most tasks ever in flight at
once.  A free slot is a DONE task with no parents and no children, so every
check of the state (``validate``, ``check_invariants``) holds for it as is.

An instance is named by its arrival number ``k``; its task ``name`` is
``(k, name)`` in the state.  The state counts each instance's unfinished
tasks; when the last one finishes (done, failed or skipped) the instance is
appended to :attr:`InstanceState.completed`, for the runner to record and
then :meth:`~InstanceState.retire`.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from taskmap.scheduling.state import (
    DONE,
    READY,
    RUNNING,
    SKIPPED,
    WAITING,
    SchedulingState,
    critical_path_priority,
)


class Shape(NamedTuple):
    """One scenario graph's structure, in its own numbering: ``names``,
    ``parents`` (argument order), ``children``, ``is_io`` and ``priority``
    (critical path, or the graph's own priority folded in)."""

    names: tuple[Any, ...]
    parents: tuple[tuple[int, ...], ...]
    children: tuple[tuple[int, ...], ...]
    is_io: bytes
    priority: tuple[float, ...]


def shape_of(
    dependencies: Mapping[Any, Sequence[Any]], io_bound: Sequence[Any] = (), user_priority: Mapping | None = None
) -> Shape:
    """The :class:`Shape` of a scenario graph (validated already)."""
    names = list(dependencies)
    index = {name: i for i, name in enumerate(names)}
    parents = [tuple(index[p] for p in dependencies[name]) for name in names]
    children: list[list[int]] = [[] for _ in names]
    for i, ps in enumerate(parents):
        for p in ps:
            children[p].append(i)
    priority = critical_path_priority(parents, children, names)
    if user_priority:
        scale = max(priority, default=0.0) + 1.0
        for name, p in user_priority.items():
            priority[index[name]] += p * scale
    io = set(io_bound)
    return Shape(
        tuple(names),
        tuple(parents),
        tuple(tuple(c) for c in children),
        bytes(1 if name in io else 0 for name in names),
        tuple(priority),
    )


class InstanceState(SchedulingState):
    """A :class:`SchedulingState` that starts empty and takes whole
    instances while it runs (see the module docstring)."""

    __slots__ = ("completed", "free", "instance_of", "left", "slots_of")

    def __init__(self) -> None:
        super().__init__({})
        self.free: list[int] = []  # retired slots, reused first
        self.instance_of: list[int] = []  # slot -> its instance (-1: free)
        self.slots_of: dict[int, list[int]] = {}  # live instance -> its slots, in its own order
        self.left: dict[int, int] = {}  # live instance -> its unfinished tasks
        self.completed: list[int] = []  # instances all of whose tasks finished, not retired yet

    # -- instances in and out ---------------------------------------------

    def add(self, k: int, shape: Shape) -> list[int]:
        """Instance ``k`` of ``shape`` joins the run: its tasks get slots
        (returned, in the shape's order) and those with no parent are
        queued."""
        if k in self.slots_of:
            raise ValueError(f"instance {k} is running already")
        n = len(shape.names)
        free = self.free
        slots = [free.pop() if free else self._grow() for _ in range(n)]
        names, index, parents, children = self.names, self.index, self.parents, self.children
        state, remaining, is_io, priority = self.state, self.remaining, self.is_io, self.priority
        instance_of = self.instance_of
        for j in range(n):
            e = slots[j]
            name = (k, shape.names[j])
            names[e] = name
            index[name] = e
            parents[e] = tuple(slots[p] for p in shape.parents[j])
            children[e] = [slots[c] for c in shape.children[j]]
            is_io[e] = shape.is_io[j]
            priority[e] = shape.priority[j]
            remaining[e] = len(shape.parents[j])
            state[e] = WAITING
            instance_of[e] = k
        self.slots_of[k] = slots
        self.left[k] = n
        self.unfinished += n
        if n == 0:
            self.completed.append(k)
        return slots

    def start_instance(self, k: int) -> None:
        """Queue the tasks of instance ``k`` that wait for nothing (after
        the runner set up its own tables for them)."""
        state, remaining = self.state, self.remaining
        for e in self.slots_of[k]:
            if remaining[e] == 0 and state[e] == WAITING:
                self._make_ready(e)

    def _grow(self) -> int:
        e = len(self.names)
        self.names.append(None)
        self.parents.append(())
        self.children.append([])
        self.is_io.append(0)
        self.priority.append(0.0)
        self.remaining.append(0)
        self.state.append(DONE)
        self.instance_of.append(-1)
        return e

    def retire(self, k: int) -> list[int]:
        """Instance ``k`` (completed) leaves: its slots are freed (returned)."""
        if self.left.get(k) != 0:
            raise ValueError(f"instance {k} has not completed")
        del self.left[k]
        slots = self.slots_of.pop(k)
        names, index, parents, children = self.names, self.index, self.parents, self.children
        state, remaining, is_io, priority = self.state, self.remaining, self.is_io, self.priority
        stale = False
        for e in slots:
            stale = stale or state[e] == SKIPPED  # (it may have left READY in a queue)
            del index[names[e]]
            names[e] = None
            parents[e] = ()
            children[e] = []
            is_io[e] = 0
            priority[e] = 0.0
            remaining[e] = 0
            state[e] = DONE
            self.instance_of[e] = -1
        if stale:
            # the queues drop tasks that left READY lazily: a slot reused
            # while its old entry is queued would be queued twice
            gone = set(slots)
            self.ready_io = deque(i for i in self.ready_io if i not in gone)
            self.ready_cpu = [entry for entry in self.ready_cpu if entry[1] not in gone]
            heapq.heapify(self.ready_cpu)
        self.free.extend(reversed(slots))
        return slots

    @property
    def in_flight(self) -> int:
        """Instances running (added, not completed)."""
        return len(self.left) - len(self.completed)

    # -- the state's events, counted per instance ----------------------------

    def _ended(self, e: int) -> None:
        k = self.instance_of[e]
        left = self.left[k] - 1
        self.left[k] = left
        if left == 0:
            self.completed.append(k)

    def finished(self, i: int) -> int:
        became = super().finished(i)
        self._ended(i)
        return became

    def failed(self, i: int) -> list[int]:
        skipped = super().failed(i)
        self._ended(i)
        for s in skipped:
            self._ended(s)
        return skipped

    def expected_remaining(self, i: int) -> int:
        if self.instance_of[i] < 0:
            return 0
        return super().expected_remaining(i)

    def validate_instances(self) -> None:
        """Assert the instance invariants: each live slot belongs to one
        live instance; a free slot is a DONE task with no edges; the
        unfinished counts add up."""
        seen: set[int] = set()
        for k, slots in self.slots_of.items():
            for e in slots:
                assert self.instance_of[e] == k and e not in seen
                seen.add(e)
            unfinished = sum(1 for e in slots if self.state[e] in (WAITING, READY, RUNNING))
            assert unfinished == self.left[k], (k, unfinished, self.left[k])
        for e in self.free:
            assert e not in seen and self.instance_of[e] == -1
            assert self.state[e] == DONE and not self.parents[e] and not self.children[e]
        assert len(seen) + len(self.free) == len(self.names)
        assert self.unfinished == sum(self.left.values())
        assert len(set(self.completed)) == len(self.completed)
