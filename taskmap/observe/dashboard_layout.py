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


def function_name(func: Callable[..., Any]) -> str:
    """What a task's function is called on the page: its qualified name
    (a ``functools.partial`` is named after the function it wraps)."""
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__


def _cut(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def layout(
    names: Sequence[Hashable],
    dependencies: Mapping[Hashable, Sequence[Hashable]],
    funcs: Mapping[Hashable, Callable[..., Any]],
    io_bound: set[Hashable],
    node_limit: int = NODE_LIMIT,
) -> Layout:
    """The layout of a graph's tasks ``names`` (graph order): one node per
    task up to ``node_limit`` tasks, else one per function (a function's
    node sits in the first layer any of its tasks is in; one edge joins two
    function nodes when any of their tasks are joined)."""
    index = {name: i for i, name in enumerate(names)}
    parents = [[index[p] for p in dependencies[name]] for name in names]
    task_layer = layers(parents)
    lanes = ["io" if name in io_bound else "cpu" for name in names]
    if len(names) <= node_limit:
        position = order_within_layers(task_layer, parents)
        edges = [(p, i) for i, ps in enumerate(parents) for p in ps]
        return Layout(
            False,
            list(range(len(names))),
            [_cut(str(name)) for name in names],
            lanes,
            [1] * len(names),
            task_layer,
            position,
            edges[:EDGE_LIMIT],
            max(0, len(edges) - EDGE_LIMIT),
        )
    group_of: dict[str, int] = {}
    group = [0] * len(names)
    labels: list[str] = []
    group_lanes: list[str] = []
    sizes: list[int] = []
    group_layer: list[int] = []
    for i, name in enumerate(names):
        fname = function_name(funcs[name])
        g = group_of.get(fname)
        if g is None:
            g = group_of[fname] = len(labels)
            labels.append(_cut(fname))
            group_lanes.append(lanes[i])
            sizes.append(0)
            group_layer.append(task_layer[i])
        group[i] = g
        sizes[g] += 1
        if task_layer[i] < group_layer[g]:
            group_layer[g] = task_layer[i]
        if group_lanes[g] != lanes[i]:
            group_lanes[g] = "mixed"
    joined = {(group[p], group[i]) for i, ps in enumerate(parents) for p in ps if group[p] != group[i]}
    group_edges = sorted(joined)
    group_parents: list[list[int]] = [[] for _ in labels]
    for a, b in group_edges:
        if group_layer[a] < group_layer[b]:
            group_parents[b].append(a)
    position = order_within_layers(group_layer, group_parents)
    for g, label in enumerate(labels):
        labels[g] = _cut(f"{label} ({sizes[g]})")
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
