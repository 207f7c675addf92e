"""Resources: concurrency limits and rate limits, enforced where tasks start.

A task *uses* resources (``create_graph(uses={task: name or [names]})``,
each use one unit; a name listed twice takes two).  A run may *limit* a
resource (``limits={name: n}``: at most n units in use at once) and *rate*
it (``rates={name: r}``: at most r starts a second, on a grid 1/r apart, so
in any window of t seconds at most r*t + 1 starts; when a timer wakes late,
the start after the late one catches up with the grid, so the rate is
reached rather than drifted below, at the price of one start more in a
window that holds both: r*t + 2 at worst).

:class:`ResourceGate` is pure bookkeeping, shared by every runner: no I/O,
no clock of its own (the runner passes ``now``).  A ready task that uses a
limited or rated resource asks :meth:`ResourceGate.admit`; if a unit or a
rate slot is missing it waits *in the gate* (not at a worker, holding no
slot, thread or connection) and comes out of :meth:`release` (a unit freed)
or :meth:`due` (a rate slot came, at :meth:`next_wakeup`: a timer in the
runner's one wait).  Waiting tasks get what frees up in order of priority
(``create_graph(priority=...)``, higher first), then critical path, then the
order they became ready.  A task releases its units exactly once, however it
ends; a retry takes them again.

The gate also keeps what the summary shows: each resource's peak in use and
the total time tasks waited for it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

UsesSpec = Mapping[Any, "str | Iterable[str]"]


def normalise_uses(uses: UsesSpec | None, tasks: Mapping[Any, Any]) -> dict[Any, tuple[str, ...]]:
    """``uses`` as task -> tuple of resource names (a name once per unit);
    a task that is not in ``tasks`` or a name that is not a non-empty str is
    a ValueError/TypeError naming it."""
    if not uses:
        return {}
    unknown = [t for t in uses if t not in tasks]
    if unknown:
        raise ValueError(f"uses names tasks that are not in the graph: {unknown[:10]!r}")
    out: dict[Any, tuple[str, ...]] = {}
    for task, names in uses.items():
        names = (names,) if isinstance(names, str) else tuple(names)
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(f"uses[{task!r}]: a resource is a non-empty str, not {name!r}")
        if names:
            out[task] = names
    return out


def check_limits_and_rates(
    uses: Mapping[Any, tuple[str, ...]], limits: Mapping[str, int] | None, rates: Mapping[str, float] | None
) -> tuple[dict[str, int], dict[str, float]]:
    """Validate a run's ``limits`` and ``rates`` against the graph's uses:
    ints >= 1 and numbers > 0; a name no task uses is a ValueError (a typo
    must not silently lift a limit); a task needing more units of a resource
    than its limit could never start: ValueError before the run."""
    limits = dict(limits or {})
    rates = dict(rates or {})
    used = {name for names in uses.values() for name in names}
    for what, spec in (("limits", limits), ("rates", rates)):
        unknown = sorted(str(n) for n in spec if n not in used)
        if unknown:
            raise ValueError(
                f"{what} names resources no task uses: {unknown[:10]!r} (resources used: {sorted(used)[:10]!r})"
            )
    for name, n in limits.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"limits[{name!r}] must be an int >= 1, not {n!r}")
    for name, r in rates.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0 or math.isinf(r) or math.isnan(r):
            raise ValueError(f"rates[{name!r}] must be a number > 0 (starts per second), not {r!r}")
        rates[name] = float(r)
    for task, names in uses.items():
        for name in set(names):
            need = names.count(name)
            if name in limits and need > limits[name]:
                raise ValueError(
                    f"task {task!r} uses {need} units of {name!r} but its limit is {limits[name]}: it could never start"
                )
    return limits, rates


class ResourceGate:
    """Admits tasks under limits and rates (see the module docstring).

    ``uses[i]``: resource numbers task i takes a unit of (repeats allowed);
    ``limit[r]``: units of resource r (None: unlimited); ``interval[r]``:
    seconds between starts (None: no rate); ``rank[i]``: the order among
    waiting tasks (smaller first).  Only tasks with a limited or rated
    resource ever reach the gate's heaps; for the others :meth:`admit` is a
    list lookup.
    """

    __slots__ = (
        "gated",
        "held",
        "in_use",
        "interval",
        "limit",
        "names",
        "need",
        "next_start",
        "peak",
        "rank",
        "rated",
        "seq",
        "since",
        "spans",
        "unrated",
        "uses",
        "waited",
        "waiting",
        "waits_on",
    )

    def __init__(
        self,
        names: Sequence[str],
        uses: Sequence[tuple[int, ...]],
        limit: Sequence[int | None],
        interval: Sequence[float | None],
        rank: Sequence[Any],
    ) -> None:
        self.names = list(names)
        self.limit = list(limit)
        self.interval = list(interval)
        # per distinct uses (most tasks share a few): only the resources
        # that can make a task wait, as (resource, units) pairs, and whether
        # none of them is rated (such a task may take its units ahead of its
        # start, e.g. pinned behind its parent on a worker)
        gated_r = {r for r in range(len(names)) if limit[r] is not None or interval[r] is not None}
        shapes: dict[tuple[int, ...], tuple[tuple[int, ...], tuple[tuple[int, int], ...], bool]] = {}
        for u in set(uses):
            kept = tuple(r for r in u if r in gated_r)
            need = tuple((r, kept.count(r)) for r in sorted(set(kept)))
            shapes[u] = (kept, need, all(interval[r] is None for r in kept))
        per_task = [shapes[u] for u in uses]
        self.uses = [shape[0] for shape in per_task]
        self.need = [shape[1] for shape in per_task]
        self.unrated = [shape[2] for shape in per_task]
        self.gated = [bool(u) for u in self.uses]
        self.rated = [r for r in range(len(names)) if interval[r] is not None]
        self.rank = rank
        self.in_use = [0] * len(names)
        self.next_start = [-math.inf] * len(names)
        # per resource: a heap of (rank, seq, task) of tasks waiting for it
        self.waiting: list[list[tuple[Any, int, int]]] = [[] for _ in names]
        self.waits_on: dict[int, int] = {}  # waiting task -> the resource it waits in
        self.since: dict[int, float] = {}  # waiting task -> when it began to wait
        self.held: set[int] = set()  # tasks holding their units now
        self.peak = [0] * len(names)
        self.waited = [0.0] * len(names)  # total seconds tasks waited, by the resource they waited in
        # each wait in a line: (task, resource, from, to), for the trace
        self.spans: list[tuple[int, int, float, float]] = []
        self.seq = 0

    # -- events in --------------------------------------------------------
    #
    # A runner asks at the moment it would start a task (pop), so a unit or a
    # rate slot is taken when the task really starts, not while it sits in a
    # queue waiting for a worker: starts are what limits and rates bound.

    def blocked(self, i: int, now: float) -> int | None:
        """The first resource that keeps task i from starting now (None:
        it may start)."""
        limits, in_use, interval = self.limit, self.in_use, self.interval
        for r, units in self.need[i]:
            limit = limits[r]
            if limit is not None and in_use[r] + units > limit:
                return r
            if interval[r] is not None and self.next_start[r] > now:
                return r
        return None

    def take(self, i: int, now: float) -> None:
        """Task i starts now: its units (and rate slots) are taken."""
        self.held.add(i)
        in_use, peak = self.in_use, self.peak
        for r, units in self.need[i]:
            in_use[r] += units
            if in_use[r] > peak[r]:
                peak[r] = in_use[r]
            interval = self.interval[r]
            if interval is not None:
                slot = self.next_start[r]
                # a start late for its slot by less than one interval (the
                # timer's granularity) keeps the grid, so the rate is reached
                # and does not drift; after an idle spell the grid restarts
                self.next_start[r] = slot + interval if now - slot < interval else now + interval

    def slot_taken(self, i: int) -> float | None:
        """The start slot task i took with its rate slots (the latest of
        them, on the state's clock), right after :meth:`take`; None when it
        uses no rated resource.  (A runner whose start lags its dispatch,
        run_dask's, starts the task on its worker at this slot, shifted.)"""
        slots = [self.next_start[r] - interval for r, _ in self.need[i] if (interval := self.interval[r]) is not None]
        return max(slots) if slots else None

    def park(self, i: int, r: int, now: float) -> None:
        """Task i waits in resource r's line (in rank order)."""
        self.seq += 1
        heapq.heappush(self.waiting[r], (self.rank[i], self.seq, i))
        self.waits_on[i] = r
        self.since.setdefault(i, now)

    def release(self, i: int, now: float) -> list[int]:
        """Task i ended (however): its units go back, once.  Returns the
        waiting tasks to try again (the first in line of each freed unit's
        resource), taken out of their lines.  A task still waiting in a line
        (a run stopping, or skipped) is withdrawn."""
        if i in self.waits_on:
            r = self.waits_on.pop(i)
            self.waiting[r] = [e for e in self.waiting[r] if e[2] != i]
            heapq.heapify(self.waiting[r])
            since = self.since.pop(i)
            self.waited[r] += now - since
            self.spans.append((i, r, since, now))
            return []
        if i not in self.held:
            return []
        self.held.discard(i)
        retry = []
        waiting = self.waiting
        for r, units in self.need[i]:
            self.in_use[r] -= units
            if waiting[r]:
                retry.extend(self._unpark(r, units, now))
        return retry

    def due(self, now: float) -> list[int]:
        """The waiting tasks whose rate slot has come (call at
        :meth:`next_wakeup`), taken out of their lines to try again."""
        retry = []
        for r in self.rated:
            if self.waiting[r] and self.next_start[r] <= now:
                retry.extend(self._unpark(r, 1, now))
        return retry

    def next_wakeup(self) -> float | None:
        """When the next waiting task's rate slot comes (None: no task waits
        for a rate)."""
        if not self.rated:
            return None
        times = [self.next_start[r] for r in self.rated if self.waiting[r]]
        return min(times) if times else None

    @property
    def waiting_count(self) -> int:
        return len(self.waits_on)

    def _unpark(self, r: int, n: int, now: float) -> list[int]:
        heap = self.waiting[r]
        out: list[int] = []
        while heap and len(out) < n:
            _, _, i = heapq.heappop(heap)
            del self.waits_on[i]
            since = self.since.pop(i)
            self.waited[r] += now - since
            self.spans.append((i, r, since, now))
            out.append(i)
        return out

    def extend_like(self, t: int, n: int, rank: Any) -> None:
        """n tasks were appended to the run, each using what task t uses
        (the elements of an expanded task: uses apply per element)."""
        self.uses.extend([self.uses[t]] * n)
        self.need.extend([self.need[t]] * n)
        self.unrated.extend([self.unrated[t]] * n)
        self.gated.extend([self.gated[t]] * n)
        self.rank.extend([rank] * n)  # type: ignore[attr-defined]

    def place(self, i: int, uses: tuple[int, ...], rank: Any) -> None:
        """Task i (a new number: the next one; or a reused one) uses the
        resources ``uses`` (numbers, repeats allowed): a task added to a
        running load (``taskmap.load``)."""
        kept = tuple(r for r in uses if self.limit[r] is not None or self.interval[r] is not None)
        need = tuple((r, kept.count(r)) for r in sorted(set(kept)))
        unrated = all(self.interval[r] is None for r in kept)
        if i == len(self.uses):
            self.uses.append(kept)
            self.need.append(need)
            self.unrated.append(unrated)
            self.gated.append(bool(kept))
            if i == len(self.rank):
                self.rank.append(rank)  # type: ignore[attr-defined]
            else:
                self.rank[i] = rank  # type: ignore[index]
        else:
            self.uses[i] = kept
            self.need[i] = need
            self.unrated[i] = unrated
            self.gated[i] = bool(kept)
            self.rank[i] = rank  # type: ignore[index]

    # -- checks and reports ---------------------------------------------------------

    def validate(self) -> None:
        """The invariants: units in use are the units of the tasks holding
        them and never exceed a limit; a task waits in exactly one line."""
        counted = [0] * len(self.names)
        for i in self.held:
            for r in self.uses[i]:
                counted[r] += 1
        assert counted == self.in_use, (counted, self.in_use)
        for r, limit in enumerate(self.limit):
            assert limit is None or self.in_use[r] <= limit, (self.names[r], self.in_use[r], limit)
        lines: dict[int, int] = {}
        for r, heap in enumerate(self.waiting):
            for _, _, i in heap:
                assert i not in lines, i
                lines[i] = r
        assert lines == self.waits_on, (lines, self.waits_on)
        assert not (self.held & set(self.waits_on))

    def report(self) -> dict[str, dict[str, float | None]]:
        """Per resource: peak units in use and seconds tasks waited for it."""
        return {
            name: {
                "peak": self.peak[r],
                "waited": self.waited[r],
                "limit": self.limit[r],
                "rate": (1.0 / interval) if (interval := self.interval[r]) else None,
            }
            for r, name in enumerate(self.names)
        }


def build_gate(
    names: Sequence[Any],
    uses: Mapping[Any, tuple[str, ...]],
    limits: Mapping[str, int],
    rates: Mapping[str, float],
    rank: Sequence[Any],
) -> ResourceGate | None:
    """The gate of a run, or None when nothing is limited or rated (then no
    runner pays anything for resources)."""
    if not limits and not rates:
        return None
    resources = sorted({name for names_ in uses.values() for name in names_})
    number = {name: r for r, name in enumerate(resources)}
    index = {task: i for i, task in enumerate(names)}
    task_uses: list[tuple[int, ...]] = [()] * len(names)
    numbered: dict[tuple[str, ...], tuple[int, ...]] = {}
    for task, used in uses.items():
        i = index.get(task)
        if i is not None:
            u = numbered.get(used)
            if u is None:
                u = numbered[used] = tuple(number[n] for n in used)
            task_uses[i] = u
    return ResourceGate(
        resources,
        task_uses,
        [limits.get(name) for name in resources],
        [1.0 / rates[name] if name in rates else None for name in resources],
        rank,
    )
