"""The scheduling state of a graph with run-time fan-out (``expand=``):
tasks added while the run goes, no I/O.

An expanded task ``t`` (a *collector*) never runs itself.  It waits like any
task; when its count is known it *expands*: ``n`` elements ``t[0]..t[n-1]``
are appended to the state's tables (numbers ``first..first+n-1``, names
:class:`~taskmap.expand.Element`) and ``t`` goes to ``EXPANDED``, with
``remaining[t]`` counting its unfinished elements; when the last one
finishes, ``t`` is DONE (or FAILED if any element failed or was skipped) and
its own children go on as after any task.

The count comes from the mapped dependency ``m``:

* ``m`` a task that runs whole (or an expanded task done before the run): the
  count is the number of items of its result, which only the runner has.  The
  collector then waits in :attr:`ExpandingState.to_expand` (state READY, in
  no queue) until the runner calls :meth:`ExpandingState.expand` with the
  count, or :meth:`ExpandingState.fail_expansion` when the result has no
  items (a string, a mapping).  Element ``i``'s arguments are the collector's
  dependencies' results with ``m``'s replaced by item ``i``: ``parents`` of an
  element leave ``m`` out and ``item_pos[t]`` says where the item goes.
* ``m`` itself expanded in this run (``clean`` over ``parse``): ``t`` expands
  as soon as ``m`` does (and its other dependencies are done), with ``m``'s
  count, and element ``t[i]`` has ``m[i]`` as its parent in ``m``'s place:
  ``clean[i]`` starts when ``parse[i]`` is done, no barrier.  Such a ``t`` is
  not among ``m``'s children (``expanders[m]``): ``m``'s expansion, not its
  completion, counts as its parent finishing.

A failed element skips what depends on it like any task: the elements
chained below it and, the first time one of ``t``'s elements fails, ``t``'s
own children (their ancestor string names that element: ``cause``).  The
other elements run on.  Whatever the state adds or completes in the middle of
an event is logged for the runner to take (:meth:`ExpandingState.take_news`):
new elements (to grow its per-task tables), completed collectors, elements
skipped at their creation.

Static graphs never build this class: they pay nothing for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from taskmap.expand import Element
from taskmap.scheduling.state import (
    DONE,
    EXPANDED,
    FAILED,
    READY,
    RUNNING,
    SKIPPED,
    WAITING,
    SchedulingState,
)


class News(NamedTuple):
    """What an :class:`ExpandingState` did since the runner last looked:
    ``expanded``: (collector, first element, count) in order of creation;
    ``collected``: collectors that completed (DONE or FAILED), in order;
    ``skipped``: (element or task, the failed element it is skipped for)
    skipped without a ``failed`` call of theirs (an element created below a
    failed one, a collector's children when it failed at expansion are in
    ``fail_expansion``'s return instead)."""

    expanded: list[tuple[int, int, int]]
    collected: list[int]
    skipped: list[tuple[int, int]]


class ExpandingState(SchedulingState):
    """A :class:`SchedulingState` whose graph has expanded tasks.

    ``expand``: collector name -> mapped dependency name;
    ``done_elements``: collector name -> a flag per element, 1 for each
    element finished in an earlier run (kept: it does not run again; a
    record of another count than the collector's now is void).
    """

    __slots__ = (
        "cause",
        "count",
        "done_elements",
        "expanders",
        "first",
        "item_pos",
        "mapped",
        "n_static",
        "news",
        "owner",
        "poisoned",
        "to_expand",
    )

    expanding = True

    def __init__(
        self,
        dependencies: Mapping,
        io_bound: Iterable = (),
        done: Iterable = (),
        durations: Mapping | None = None,
        user_priority: Mapping | None = None,
        expand: Mapping | None = None,
        done_elements: Mapping[Any, bytes | bytearray] | None = None,
    ) -> None:
        super().__init__(dependencies, io_bound, done, durations, user_priority)
        index, state, children = self.index, self.state, self.children
        self.n_static = len(self.names)
        self.mapped: dict[int, int] = {}  # collector -> mapped dependency
        for t_name, m_name in (expand or {}).items():
            t = index[t_name]
            if state[t] != DONE:
                self.mapped[t] = index[m_name]
        # collector m -> the collectors expanding over it element-wise
        self.expanders: dict[int, list[int]] = {}
        for t, m in self.mapped.items():
            if m in self.mapped:
                children[m].remove(t)
                self.expanders.setdefault(m, []).append(t)
        self.done_elements = {index[t]: f for t, f in (done_elements or {}).items() if index.get(t) in self.mapped}
        self.first: dict[int, int] = {}  # expanded collector -> its first element
        self.count: dict[int, int] = {}  # expanded collector -> its number of elements
        self.item_pos: dict[int, int] = {}  # collector over items -> where the item goes
        self.owner: list[int] = []  # element - n_static -> its collector
        self.poisoned: set[int] = set()  # collectors with a failed or skipped element
        self.cause: dict[int, int] = {}  # failed/skipped element -> the failed element it is for
        self.to_expand: list[int] = []  # collectors waiting for the runner's count
        self.news = News([], [], [])

    # -- queries ------------------------------------------------------------

    def element_of(self, e: int) -> tuple[int, int]:
        """(collector, index) of element number e."""
        t = self.owner[e - self.n_static]
        return t, e - self.first[t]

    def elements(self, t: int) -> range:
        """The element numbers of expanded collector t."""
        first = self.first[t]
        return range(first, first + self.count[t])

    def take_news(self) -> News:
        """What happened since the last call (see :class:`News`), cleared."""
        news = self.news
        self.news = News([], [], [])
        return news

    def expected_remaining(self, i: int) -> int:
        state = self.state
        if state[i] == EXPANDED:
            return sum(1 for e in self.elements(i) if state[e] not in (DONE, FAILED, SKIPPED))
        if i in self.first:
            return 0  # (completed: its elements all finished)
        if i in self.mapped and state[i] in (WAITING, READY):
            m = self.mapped[i]
            return sum(
                1
                for p in self.parents[i]
                if state[p] != DONE and not (p == m and m in self.expanders and m in self.first)
            )
        return super().expected_remaining(i)

    # -- events in ------------------------------------------------------------

    def _make_ready(self, i: int) -> None:
        m = self.mapped.get(i) if i < self.n_static else None
        if m is None:
            super()._make_ready(i)
        elif m in self.expanders and m in self.first:
            self._expand(i, self.count[m])  # element-wise over m: its count is known
        else:
            self.state[i] = READY  # waiting for the runner's count, in no queue
            self.to_expand.append(i)

    def expand(self, t: int, n: int) -> None:
        """Collector t (in ``to_expand``) runs as ``n`` elements."""
        if self.state[t] != READY or t not in self.mapped:
            raise self._illegal(t, "expand")
        self.to_expand.remove(t)
        self._expand(t, n)

    def fail_expansion(self, t: int) -> list[int]:
        """Collector t (in ``to_expand``) cannot expand (its mapped result
        has no items): it fails, and what depends on it is skipped (returned)."""
        if self.state[t] != READY or t not in self.mapped:
            raise self._illegal(t, "fail_expansion")
        self.to_expand.remove(t)
        self.state[t] = FAILED
        self.unfinished -= 1
        skipped: list[int] = []
        self._skip([*self.children[t], *self.expanders.get(t, ())], t, skipped)
        return skipped

    def finished(self, i: int) -> int:
        became = super().finished(i)
        if i >= self.n_static:
            self._element_ended(i, -1, [])
        return became

    def failed(self, i: int) -> list[int]:
        """As :meth:`SchedulingState.failed`; a failed element also fails
        its collector (once all its elements finished) and skips the
        collector's children at once."""
        if self.state[i] != RUNNING:
            raise self._illegal(i, "failed")
        self.state[i] = FAILED
        self.unfinished -= 1
        if self.gate is not None:
            self._release(i)
        skipped: list[int] = []
        if i >= self.n_static:
            self.cause[i] = i
        self._skip(list(self.children[i]), i, skipped)
        if i >= self.n_static:
            self._element_ended(i, i, skipped)
        return skipped

    # -- the work -------------------------------------------------------------

    def _expand(self, t: int, n: int) -> None:
        names, index, parents, children = self.names, self.index, self.parents, self.children
        state, remaining, is_io, priority = self.state, self.remaining, self.is_io, self.priority
        m = self.mapped[t]
        chained = m in self.expanders and m in self.first
        sp = parents[t]
        pos = sp.index(m)
        before, after = sp[:pos], sp[pos + 1 :]
        if not chained:
            self.item_pos[t] = pos
        first = len(names)
        self.first[t] = first
        self.count[t] = n
        done = self.done_elements.pop(t, None)
        if done is None or len(done) != n:
            done = bytes(n)
        name, io, prio = names[t], is_io[t], priority[t]
        m_first = self.first[m] if chained else 0
        late: list[tuple[int, int]] = []
        ready: list[int] = []
        left = 0
        for k in range(n):
            e = first + k
            element = Element(name, k)
            names.append(element)
            index[element] = e
            children.append([])
            is_io.append(io)
            priority.append(prio)
            self.owner.append(t)
            if chained:
                mk = m_first + k
                parents.append((*before, mk, *after))
                children[mk].append(e)
                s = state[mk]
                if s == DONE:
                    remaining.append(0)
                    if done[k]:
                        state.append(DONE)
                        continue
                    ready.append(e)
                elif s == FAILED or s == SKIPPED:
                    remaining.append(1)
                    late.append((e, self.cause[mk]))
                else:
                    remaining.append(1)
            else:
                parents.append((*before, *after))
                remaining.append(0)
                if done[k]:
                    state.append(DONE)
                    continue
                ready.append(e)
            state.append(WAITING)
            left += 1
        self.unfinished += left
        state[t] = EXPANDED
        remaining[t] = left
        if self.gate is not None:
            self.gate.extend_like(t, n, -prio)
        self.news.expanded.append((t, first, n))
        for e in ready:
            SchedulingState._make_ready(self, e)
        for e, root in late:
            # created below an element that had failed: skipped for its cause
            state[e] = SKIPPED
            self.unfinished -= 1
            self.cause[e] = root
            self.news.skipped.append((e, root))
            skipped: list[int] = []
            self._element_ended(e, root, skipped)
            self.news.skipped.extend((s, root) for s in skipped)
        if state[t] == EXPANDED and remaining[t] == 0:
            self._complete(t)
        for u in self.expanders.get(t, ()):
            remaining[u] -= 1
            if remaining[u] == 0 and state[u] == WAITING:
                self._expand(u, n)

    def _element_ended(self, e: int, root: int, skipped: list[int]) -> None:
        """Element e finished (``root`` >= 0: failed, or skipped for that
        failed element): its collector hears it."""
        t = self.owner[e - self.n_static]
        if root >= 0 and t not in self.poisoned:
            self.poisoned.add(t)
            self._skip(list(self.children[t]), root, skipped)
        self.remaining[t] -= 1
        if self.remaining[t] == 0:
            self._complete(t)

    def _complete(self, t: int) -> None:
        """Every element of t finished: t is DONE, or FAILED if one failed
        (its children were skipped then)."""
        state = self.state
        self.unfinished -= 1
        self.news.collected.append(t)
        if t in self.poisoned:
            state[t] = FAILED
            return
        state[t] = DONE
        remaining = self.remaining
        for c in self.children[t]:
            remaining[c] -= 1
            if remaining[c] == 0 and state[c] == WAITING:
                self._make_ready(c)

    def _skip(self, stack: list[int], root: int, skipped: list[int]) -> None:
        """Skip, for the failed task ``root``, the tasks below ``stack`` that
        have not started (as :meth:`SchedulingState.failed` does), going on
        through element-wise expanders and into the collectors of skipped
        elements."""
        state, children, gate, n_static = self.state, self.children, self.gate, self.n_static
        seen: set[int] = set()
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            s = state[c]
            if s == WAITING or s == READY:
                if s == READY and self.to_expand and c in self.to_expand:
                    self.to_expand.remove(c)
                if s == READY and gate is not None:
                    self._release(c)
                state[c] = SKIPPED
                self.unfinished -= 1
                skipped.append(c)
                if c >= n_static:
                    self.cause[c] = self.cause.get(root, root)
                    self._element_ended(c, self.cause[c], skipped)
            elif s == SKIPPED:
                continue
            stack.extend(children[c])
            if c in self.expanders:
                stack.extend(self.expanders[c])
