"""Where the live page draws each node of a graph: layers by dependency depth,
and, past :data:`NODE_LIMIT` tasks, one node per function instead of one per
task.

A task's layer is the length of the longest chain of dependencies above it
(sources are layer 0), so every edge points to a later layer.  Within a layer
nodes are ordered by the mean position of their parents (one sweep of the
barycentre heuristic of Sugiyama-style layouts: it untangles most crossings for
the price of one pass over the edges).  Everything here is linear in tasks +
edges: it runs on the page server's thread when the first viewer asks for the
graph, never on the coordinator's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# past this many tasks the page draws one node per function (the browser
# stays responsive and the payload bounded: a few thousand SVG nodes at most)
NODE_LIMIT = 3000
# at most this many edges are sent; the rest are counted
EDGE_LIMIT = 20000
LABEL_CHARS = 60  # node labels are cut to this length


@dataclass(slots=True)
class Layout:
    """The drawing of a graph: ``group[i]`` is the node of task ``i`` (in
    graph order); node ``k`` is ``labels[k]`` at (``layer[k]``,
    ``position[k]``); ``edges`` join nodes (parent, child), at most
    :data:`EDGE_LIMIT`, ``edges_left_out`` counts the others.  ``by_function``:
    the nodes are functions (each standing for ``sizes[k]`` tasks), not tasks."""

    by_function: bool
    group: list[int]
    labels: list[str]
    lanes: list[str]
    sizes: list[int]
    layer: list[int]
    position: list[int]
    edges: list[tuple[int, int]]
    edges_left_out: int

    def to_json(self) -> dict[str, Any]:
        """The form the page reads (see ``dashboard_assets/dashboard.js``)."""
        return {
            "by_function": self.by_function,
            "nodes": [
                [label, layer, pos, lane, size]
                for label, layer, pos, lane, size in zip(self.labels, self.layer, self.position, self.lanes, self.sizes)
            ],
            "edges": self.edges,
            "edges_left_out": self.edges_left_out,
            "layers": max(self.layer, default=-1) + 1,
            "width": max(self.position, default=-1) + 1,
        }


def layers(parents: Sequence[Sequence[int]]) -> list[int]:
    """Each task's layer: the longest chain of dependencies above it
    (Kahn's order; the graph is acyclic, ``create_graph`` checked it)."""
    n = len(parents)
    children: list[list[int]] = [[] for _ in range(n)]
    missing = [len(ps) for ps in parents]
    for i, ps in enumerate(parents):
        for p in ps:
            children[p].append(i)
    layer = [0] * n
    todo = [i for i in range(n) if not missing[i]]
    while todo:
        i = todo.pop()
        below = layer[i] + 1
        for c in children[i]:
            if layer[c] < below:
                layer[c] = below
            missing[c] -= 1
            if not missing[c]:
                todo.append(c)
    return layer


def order_within_layers(layer: Sequence[int], parents: Sequence[Sequence[int]]) -> list[int]:
    """Each node's position in its layer: layer by layer, by the mean
    position of its parents (ties in graph order)."""
    by_layer: dict[int, list[int]] = {}
    for i, lay in enumerate(layer):
        by_layer.setdefault(lay, []).append(i)
    position = [0] * len(layer)
    for lay in sorted(by_layer):
        nodes = by_layer[lay]
        if lay:

            def mean_parent(i: int) -> float:
                ps = parents[i]
                return sum(position[p] for p in ps) / len(ps) if ps else 0.0

            nodes.sort(key=mean_parent)  # (stable: ties keep graph order)
        for pos, i in enumerate(nodes):
            position[i] = pos
    return position


def layers_of_cyclic(n: int, edges: Sequence[tuple[int, int]]) -> tuple[list[int], list[list[int]]]:
    """Layers of a graph of ``n`` nodes that may have cycles (functions:
    ``f`` feeds ``g`` in one place and ``g`` feeds ``f`` in another): a
    depth-first search drops the edges that close a cycle, the rest are
    layered as :func:`layers` does.  Returns each node's layer and its
    parents along the kept edges."""
    children: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        children[a].append(b)
    NEW, OPEN, DONE = 0, 1, 2
    mark = [NEW] * n
    kept: list[list[int]] = [[] for _ in range(n)]
    finished: list[int] = []
    for root in range(n):
        if mark[root] != NEW:
            continue
        mark[root] = OPEN
        stack = [(root, iter(children[root]))]
        while stack:
            node, rest = stack[-1]
            for child in rest:
                if mark[child] == OPEN:
                    continue  # closes a cycle: not used for layering
                kept[child].append(node)
                if mark[child] == NEW:
                    mark[child] = OPEN
                    stack.append((child, iter(children[child])))
                    break
            else:
                mark[node] = DONE
                finished.append(node)
                stack.pop()
    layer = [0] * n
    for node in reversed(finished):  # parents before children along kept edges
        for parent in kept[node]:
            if layer[node] <= layer[parent]:
                layer[node] = layer[parent] + 1
    return layer, kept


def function_name(func: Callable[..., Any]) -> str:
    """What a task's function is called on the page: its qualified name
    from the innermost function it is defined in (``outer.<locals>.f`` is
    ``f``); a ``functools.partial`` is named after the function it wraps."""
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if not isinstance(name, str):
        return type(func).__name__
    return name.rpartition("<locals>.")[2]


def _cut(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def layout(
    names: Sequence[Hashable],
    dependencies: Mapping[Hashable, Sequence[Hashable]],
    funcs: Mapping[Hashable, Callable[..., Any]],
    io_bound: set[Hashable],
    index: Mapping[Hashable, int] | None = None,
    node_limit: int = NODE_LIMIT,
) -> Layout:
    """The layout of a graph's tasks ``names`` (graph order): one node per
    task up to ``node_limit`` tasks, else one per function (one edge joins
    two functions when any of their tasks are joined; functions are layered
    along those edges, see :func:`layers_of_cyclic`).  ``index``: task ->
    its position in ``names``, when the caller has it."""
    if index is None:
        index = {name: i for i, name in enumerate(names)}
    if len(names) <= node_limit:
        parents = [[index[p] for p in dependencies[name]] for name in names]
        task_layer = layers(parents)
        position = order_within_layers(task_layer, parents)
        edges = [(p, i) for i, ps in enumerate(parents) for p in ps]
        return Layout(
            False,
            list(range(len(names))),
            [_cut(str(name)) for name in names],
            ["io" if name in io_bound else "cpu" for name in names],
            [1] * len(names),
            task_layer,
            position,
            edges[:EDGE_LIMIT],
            max(0, len(edges) - EDGE_LIMIT),
        )
    # by function: the tasks are only walked to find each one's function and
    # the functions' edges; layers and order are computed on the functions
    group_of: dict[str, int] = {}
    group = [0] * len(names)
    labels: list[str] = []
    group_lanes: list[str] = []
    sizes: list[int] = []
    named: dict[int, str] = {}  # id(function) -> its name: most tasks share a few functions
    for i, name in enumerate(names):
        func = funcs[name]
        fname = named.get(id(func))
        if fname is None:
            fname = named[id(func)] = function_name(func)
        g = group_of.get(fname)
        lane = "io" if name in io_bound else "cpu"
        if g is None:
            g = group_of[fname] = len(labels)
            labels.append(_cut(fname))
            group_lanes.append(lane)
            sizes.append(0)
        group[i] = g
        sizes[g] += 1
        if group_lanes[g] != lane:
            group_lanes[g] = "mixed"
    joined: set[tuple[int, int]] = set()
    for i, name in enumerate(names):
        gi = group[i]
        for p in dependencies[name]:
            gp = group[index[p]]
            if gp != gi:
                joined.add((gp, gi))
    group_edges = sorted(joined)
    group_layer, group_parents = layers_of_cyclic(len(labels), group_edges)
    position = order_within_layers(group_layer, group_parents)
    for g, label in enumerate(labels):
        labels[g] = f"{label} ({sizes[g]})"
    return Layout(
        True,
        group,
        labels,
        group_lanes,
        sizes,
        group_layer,
        position,
        group_edges[:EDGE_LIMIT],
        max(0, len(group_edges) - EDGE_LIMIT),
    )
