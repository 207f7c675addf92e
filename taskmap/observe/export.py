"""The graph as a picture: Graphviz DOT and mermaid text, and rendering DOT
with Graphviz's ``dot`` program when it is installed.

Nodes are coloured by status (:mod:`taskmap.observe.status`: done green, failed red,
skipped amber, not run white) and shaped by lane (io-bound tasks are
parallelograms, the flowchart symbol for input/output; cpu-bound tasks are
boxes).  Edges point from a dependency to the task that uses it.  Node ids are
``n0``, ``n1``, ... in graph order and the task's name is the label, escaped,
so any name (quotes, backslashes, spaces, unicode, non-string names) is safe.
An expanded task (``create_graph(expand=...)``) is drawn, once a run expanded
it, as a stack labelled with its name and its number of elements (``parse \u00d74``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from taskmap.observe.status import DONE, FAILED, NOT_RUN, SKIPPED, STATUSES, statuses

if TYPE_CHECKING:
    from taskmap.graph import Graph

# status -> (fill, border)
COLOURS = {
    DONE: ("#b7e4c7", "#2d6a4f"),
    FAILED: ("#f4a6a6", "#9d0208"),
    SKIPPED: ("#ffe8a3", "#b08900"),
    NOT_RUN: ("#ffffff", "#888888"),
}


def _node_ids(graph: Graph) -> dict:
    return {task: f"n{k}" for k, task in enumerate(graph.dependencies)}


def element_count(graph: Graph, task: object) -> int | None:
    """How many elements an expanded task ran as (``create_graph(expand=...)``),
    once a run expanded it; None otherwise.  The pictures draw such a task as
    a stack, labelled with its count."""
    if task in graph.expand:
        values = graph.results.get(task)
        if isinstance(values, list):
            return len(values)
    return None


def _label(task: object, count: int | None) -> str:
    return str(task) if count is None else f"{task} \u00d7{count}"


# -- Graphviz DOT -------------------------------------------------------------


def dot_quote(text: object) -> str:
    """``text`` as a DOT double-quoted string.  Backslashes are doubled so
    that DOT's own escapes (``\\N``, ``\\l``...) cannot be triggered by a name."""
    s = str(text).replace("\\", "\\\\").replace('"', '\\"')
    s = s.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return f'"{s}"'


def to_dot(graph: Graph, *, rankdir: str = "LR", legend: bool = True, status: Mapping | None = None) -> str:
    """The graph in Graphviz DOT, coloured by status, shaped by lane.

    ``rankdir``: DOT's layout direction (``LR`` left to right, ``TB`` top
    to bottom); ``legend``: add a small cluster explaining colours and shapes
    (its node ids start with ``legend_``); ``status``: task -> status (one of
    :data:`taskmap.observe.status.STATUSES`) instead of what the graph holds, e.g.
    :meth:`taskmap.checkpoint.CheckpointStore.statuses`.
    """
    ids = _node_ids(graph)
    status = _status_of(graph, status)
    io = set(graph.io_bound)
    lines = [
        f"digraph {dot_quote(graph.name)} {{",
        f'  graph [rankdir={rankdir}, fontname="Helvetica"];',
        '  node [style="filled", fontname="Helvetica", fontsize=11];',
        '  edge [color="#555555"];',
    ]
    for task, node in ids.items():
        st = status[task]
        fill, border = COLOURS[st]
        lane = "io" if task in io else "cpu"
        shape = "parallelogram" if lane == "io" else "box"
        dashed = ', style="filled,dashed"' if st == NOT_RUN else ""
        count = element_count(graph, task)
        if count is not None:  # a stack: its elements
            shape = "parallelogram, peripheries=3" if lane == "io" else "box3d"
        lines.append(
            f"  {node} [label={dot_quote(_label(task, count))}, shape={shape}, "
            f'fillcolor="{fill}", color="{border}", '
            f"tooltip={dot_quote(f'{task}: {st}, {lane}')}{dashed}];"
        )
    for task, parents in graph.dependencies.items():
        for parent in parents:
            lines.append(f"  {ids[parent]} -> {ids[task]};")
    if legend:
        lines.append("  subgraph cluster_legend {")
        lines.append('    label="legend"; fontsize=10; color="#bbbbbb";')
        for st in STATUSES:
            fill, border = COLOURS[st]
            key = st.replace(" ", "_")
            dashed = ', style="filled,dashed"' if st == NOT_RUN else ""
            lines.append(
                f'    legend_{key} [label="{st}", shape=box, fillcolor="{fill}", color="{border}", fontsize=9{dashed}];'
            )
        lines.append('    legend_io [label="io-bound", shape=parallelogram, fillcolor="#eeeeee", fontsize=9];')
        lines.append('    legend_cpu [label="cpu-bound", shape=box, fillcolor="#eeeeee", fontsize=9];')
        # invisible edges line the legend up along the layout direction
        keys = [f"legend_{st.replace(' ', '_')}" for st in STATUSES] + ["legend_io", "legend_cpu"]
        lines.append(f"    {' -> '.join(keys)} [style=invis];")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- mermaid --------------------------------------------------------------------

# characters with a meaning inside a quoted mermaid label, as mermaid's
# entity codes (#<decimal>; becomes &#<decimal>; in the rendered label)
_MERMAID_ESCAPES = {
    '"': "#34;",
    "#": "#35;",
    "&": "#38;",
    "<": "#60;",
    ">": "#62;",
    "`": "#96;",
    "\r": " ",
    "\n": " ",
}


def mermaid_quote(text: object) -> str:
    """``text`` as a quoted mermaid label."""
    return '"' + "".join(_MERMAID_ESCAPES.get(c, c) for c in str(text)) + '"'


def _mermaid_class(status: str) -> str:
    return status.replace(" ", "")  # "not run" -> "notrun"


def to_mermaid(graph: Graph, *, direction: str = "LR", status: Mapping | None = None) -> str:
    """The graph as a mermaid flowchart, coloured by status (class
    ``done``, ``failed``, ``skipped``, ``notrun``), io-bound tasks as
    parallelograms, cpu-bound ones as rectangles.  Paste it into a
    ```` ```mermaid ```` block of a GitHub/GitLab markdown file.
    ``status`` as in :func:`to_dot`."""
    ids = _node_ids(graph)
    status = _status_of(graph, status)
    io = set(graph.io_bound)
    lines = [f"flowchart {direction}"]
    for st in STATUSES:
        fill, border = COLOURS[st]
        dash = ",stroke-dasharray:4 3" if st == NOT_RUN else ""
        lines.append(f"  classDef {_mermaid_class(st)} fill:{fill},stroke:{border},color:#000{dash};")
    for task, node in ids.items():
        count = element_count(graph, task)
        label = mermaid_quote(_label(task, count))
        if count is not None:
            # mermaid's stacked rectangle (11.3+), for an expanded task's elements
            lines.append(f"  {node}@{{ shape: st-rect, label: {label} }}")
            lines.append(f"  class {node} {_mermaid_class(status[task])}")
            continue
        shape = f"[/{label}/]" if task in io else f"[{label}]"
        lines.append(f"  {node}{shape}:::{_mermaid_class(status[task])}")
    for task, parents in graph.dependencies.items():
        for parent in parents:
            lines.append(f"  {ids[parent]} --> {ids[task]}")
    return "\n".join(lines) + "\n"


def _status_of(graph: Graph, given: Mapping | None) -> dict:
    status = statuses(graph)
    if given is not None:
        status.update((t, s) for t, s in given.items() if t in status)
    return status


# -- rendering --------------------------------------------------------------------


def render(
    graph: Graph,
    path: str | os.PathLike[str],
    format: str | None = None,
    status: Mapping | None = None,
) -> Path:
    """Draw the graph into ``path`` with Graphviz's ``dot`` program.

    ``format``: any ``dot -T`` format (``svg``, ``png``, ``pdf``...); by
    default the suffix of ``path``, else ``svg``; ``status`` as in
    :func:`to_dot`.  Returns the path.  Raises
    ``RuntimeError`` when ``dot`` is not on ``PATH`` (install Graphviz, or
    write the text of :func:`to_dot` and render it elsewhere) or when it fails.
    """
    path = Path(path)
    fmt = format or path.suffix.lstrip(".") or "svg"
    program = shutil.which("dot")
    if program is None:
        raise RuntimeError(
            "cannot render: Graphviz's 'dot' program is not on PATH. Install Graphviz "
            "(e.g. `apt install graphviz`, `brew install graphviz`) or use "
            "taskmap.to_dot(graph) or `taskmap graph --format dot` and render the text elsewhere"
        )
    done = subprocess.run(
        [program, f"-T{fmt}", "-o", str(path)],
        input=to_dot(graph, status=status).encode("utf-8"),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"dot -T{fmt} failed (exit status {done.returncode}): {message}")
    return path
