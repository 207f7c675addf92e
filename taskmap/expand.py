"""Fan-out at run time, on the graph's side: ``create_graph(expand=...)``.

``expand={task: dependency}``: when ``dependency`` finishes with n items,
``task`` runs as n *elements* ``task[0]`` .. ``task[n-1]``, element i getting
the dependencies' results in order with the mapped one replaced by its i-th
item (``None`` left out, as ever).  A task expanding over an expanded task
pairs elements (``clean[i]`` over ``parse[i]``, no barrier); a task depending
on an expanded task without expanding over it gets the list of element
results.  ``graph.results[task]`` is always a list.

This module holds what the graph keeps between runs: the element names
(:class:`Element`), the validation of ``expand``, which elements of a task
finished (``graph.elements``, so a rerun runs only the others) and the
results of elements by name.  The run-time part, elements created as their
counts become known, is :mod:`taskmap.scheduling.expansion`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any


class Element:
    """The name of element ``index`` of the expanded task ``task``: shown as
    ``task[index]`` (``str`` and ``repr``: logs, progress, trace, summary,
    the store).  Equal only to another Element of the same task and index,
    never to a task name (a tuple ``('parse', 2)`` is a different task)."""

    __slots__ = ("index", "task")

    def __init__(self, task: Hashable, index: int) -> None:
        self.task = task
        self.index = index

    def __eq__(self, other: object) -> bool:
        return type(other) is Element and other.task == self.task and other.index == self.index

    def __hash__(self) -> int:
        return hash((Element, self.task, self.index))

    def __str__(self) -> str:
        return f"{self.task}[{self.index}]"

    __repr__ = __str__

    def __reduce__(self) -> tuple[Any, ...]:
        return (Element, (self.task, self.index))


def check_expand(expand: Mapping[Hashable, Hashable] | None, deps: Mapping[Hashable, list]) -> dict:
    """``expand`` validated: each key a task, each value one of that task's
    dependencies (else ``ValueError`` naming them)."""
    if not expand:
        return {}
    unknown = [t for t in expand if t not in deps]
    if unknown:
        raise ValueError(f"Names in expand that are not tasks of the graph: {unknown[:10]!r}")
    wrong = [(t, m) for t, m in expand.items() if m not in deps[t]]
    if wrong:
        detail = "; ".join(f"{t!r} expands over {m!r}, not one of its dependencies" for t, m in wrong[:10])
        raise ValueError(f"expand must name one of the task's dependencies: {detail}")
    return dict(expand)


def items_of(task: Hashable, value: Any) -> list:
    """The items an expanding task maps over, from its mapped dependency's
    result: a list, tuple, range or other iterable that is not a string,
    bytes or a mapping (``TypeError`` saying so, which fails ``task``)."""
    if isinstance(value, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(
            f"task {task!r} expands over a result of type {type(value).__name__}; "
            "expand needs a list, tuple, range or other non-string iterable of items"
        )
    return list(value)


def result_of(results: Mapping, name: Hashable) -> Any:
    """The result of task ``name`` in ``results``, an element's too (its
    entry in its task's list); None when there is none."""
    if type(name) is Element:
        values = results.get(name.task)
        if isinstance(values, list) and name.index < len(values):
            return values[name.index]
        return None
    return results.get(name)


def element_descendants(graph: Any, roots: Iterable[Element]) -> tuple[dict, set]:
    """What depends on elements ``roots``: the elements paired with them
    down chains of expansion (``clean[2]`` under ``parse[2]``), returned as
    task -> element indices, and the tasks whose results hold or take them
    (each root's task, the chained tasks, and their descendants), as a set."""
    from taskmap.graph import children_index, descendants

    chained: dict[Hashable, set[int]] = {}
    over: dict[Hashable, list] = {}
    for task, mapped in graph.expand.items():
        over.setdefault(mapped, []).append(task)
    for root in roots:
        stack = [root.task]
        while stack:
            t = stack.pop()
            chained.setdefault(t, set()).add(root.index)
            stack.extend(over.get(t, ()))
    # a task taking a chained task's list (not expanding over it) reruns
    # whole, and so does everything below it
    children = children_index(graph)
    whole = {c for t in chained for c in children[t] if graph.expand.get(c) != t}
    whole |= descendants(children, whole)
    return {t: idx for t, idx in chained.items() if t not in whole}, whole
