"""Recording expanded tasks into the graph (``create_graph(expand=...)``):
element results in their task's list, which elements finished
(``graph.elements``), completed tasks, and what observers hear of them.

The :class:`~taskmap.bookkeeping.Bookkeeper` hands element events here, and
only for graphs that expand (a static graph never builds an
:class:`ElementBook`).  For the in-process runners it also drives the
expansion: when a task's mapped result is there, it counts its items and
tells the :class:`~taskmap.scheduling.expansion.ExpandingState`; in a parallel
run the ledger does that and forwards the state's news.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskmap.expand import Element, items_of, result_of
from taskmap.observe.observers import CPU, DONE, FAILED, IO, TaskEvent
from taskmap.scheduling.expansion import ExpandingState, News
from taskmap.scheduling.state import DONE as STATE_DONE

if TYPE_CHECKING:
    from taskmap.bookkeeping import Bookkeeper


class ElementFunctions(dict):
    """The graph's functions, looked up by element names too (an element
    runs its task's function)."""

    def __missing__(self, name: Any) -> Any:
        if type(name) is Element:
            return self[name.task]
        raise KeyError(name)


def functions_of(graph: Any) -> dict:
    """``graph.funcs``, or for a graph that expands a mapping that also
    answers element names (for the in-process runners' lookups)."""
    return ElementFunctions(graph.funcs) if graph.expand else graph.funcs


def done_elements(graph: Any) -> dict:
    """The element records of a graph's unfinished expanded tasks whose
    results are still the list they describe (for the state)."""
    out = {}
    for task, flags in graph.elements.items():
        values = graph.results.get(task)
        if isinstance(values, list) and len(values) == len(flags) and task not in graph.done:
            out[task] = flags
    return out


class ElementBook:
    """The graph's side of one run's expansions.  ``expands``: this book
    counts items and expands (the in-process runners); else the runner's
    ledger does and hands the news to :meth:`apply`."""

    __slots__ = ("book", "expands", "graph", "items", "n_static", "on_expanded", "state")

    def __init__(self, book: Bookkeeper, state: ExpandingState, expands: bool) -> None:
        self.book = book
        self.graph = book.graph
        self.state = state
        self.n_static = state.n_static
        self.expands = expands
        self.items: dict[int, list] = {}  # collector -> the items its elements map over
        # the runner's own tables grow with each expansion: (collector, first element, count)
        self.on_expanded: Callable[[int, int, int], None] | None = None

    def args(self, e: int) -> list:
        """Element e's arguments: its parents' results in order with its
        item in the mapped dependency's place, None left out."""
        state, results, names = self.state, self.graph.results, self.state.names
        values = [result_of(results, names[p]) for p in state.parents[e]]
        t, k = state.element_of(e)
        pos = state.item_pos.get(t)
        if pos is not None:
            values.insert(pos, self.items[t][k])
        return [v for v in values if v is not None]

    def item_values(self, t: int) -> list:
        """The items collector t maps over (TypeError: its mapped result has none)."""
        state = self.state
        m = state.mapped[t]
        return items_of(state.names[t], result_of(self.graph.results, state.names[m]))

    def expand_pending(self) -> None:
        """Expand every collector waiting for its count (in-process runners)."""
        state = self.state
        while state.to_expand:
            t = state.to_expand[0]
            try:
                items = self.item_values(t)
            except TypeError as error:
                self.book.recorded_failure(t, error, None, None, None, state.fail_expansion(t))
                continue
            self.items[t] = items
            state.expand(t, len(items))
        self.apply(state.take_news())

    def after_event(self) -> None:
        if self.expands:
            self.expand_pending()

    # -- outcomes ---------------------------------------------------------------

    def set_value(self, e: int, value: Any, finished: bool) -> None:
        """Element e's entry in its task's list (``finished``: it succeeded)."""
        state = self.state
        t, k = state.element_of(e)
        name = state.names[t]
        self._list_of(t, name)[k] = value
        self.graph.elements[name][k] = 1 if finished else 0

    def _list_of(self, t: int, name: Any) -> list:
        """Collector t's list of results, made when it is not there yet (a
        skip recorded before the news of its expansion)."""
        graph, n = self.graph, self.state.count[t]
        values = graph.results.get(name)
        flags = graph.elements.get(name)
        if not (isinstance(values, list) and len(values) == n and flags is not None and len(flags) == n):
            values = graph.results[name] = [None] * n
            graph.elements[name] = bytearray(n)
        return values

    def apply(self, news: News) -> None:
        """Record what the state did: new elements (their task's list), skips
        made at an element's creation, completed tasks."""
        graph, state, book = self.graph, self.state, self.book
        names, results = state.names, graph.results
        observers = book.observers
        for t, first, n in news.expanded:
            self._list_of(t, names[t])
            if self.on_expanded is not None:
                self.on_expanded(t, first, n)
            if observers:
                status = state.state
                observers.tasks_added(names[t], [names[e] for e in range(first, first + n) if status[e] != STATE_DONE])
        for s, root in news.skipped:
            book.recorded_skip(s, root)
        for t in news.collected:
            name = names[t]
            graph.done.append(name)
            ok = state.state[t] == STATE_DONE
            if ok:
                graph.elements.pop(name, None)
            book.log.finished(name, None)
            if observers:
                observers.task_finished(
                    TaskEvent(
                        name, DONE if ok else FAILED, IO if state.is_io[t] else CPU, None, None, None, 0, results[name]
                    )
                )
