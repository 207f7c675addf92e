"""Graph pictures: DOT and mermaid text coloured by status, shaped by lane,
safe for any task name; rendering through Graphviz's ``dot``."""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys

import pytest
from _tasks import boom

import taskmap
from taskmap.observe.export import COLOURS, render

NAMES = {
    "plain": "load",
    "quote": 'say "hi"',
    "backslash": "C:\\temp\\N",
    "newline": "two\nlines",
    "unicode": "grün ☕",
    "markup": "<b>#1 & `x`</b>",
    "tuple": ("part", 2),
}


def ok(*args):
    return 1


def build_and_run() -> tuple[taskmap.Graph, dict]:
    """A run leaving every status: done, failed, skipped and not run."""
    n = NAMES
    funcs = {
        n["plain"]: ok,
        n["quote"]: ok,
        n["backslash"]: boom,
        n["newline"]: ok,
        n["unicode"]: ok,
        n["markup"]: ok,
        n["tuple"]: ok,
    }
    deps = {
        n["plain"]: [],
        n["quote"]: [n["plain"]],
        n["backslash"]: [n["plain"]],
        n["newline"]: [n["backslash"]],
        n["unicode"]: [n["quote"]],
        n["markup"]: [n["unicode"]],
        n["tuple"]: [n["plain"], n["quote"]],
    }
    graph = taskmap.create_graph(funcs, deps, io_bound=[n["quote"], n["tuple"]])
    taskmap.run(graph)
    taskmap.reset_tasks(graph, [n["unicode"]])  # it and its child: not run
    expected = {
        n["plain"]: "done",
        n["quote"]: "done",
        n["backslash"]: "failed",
        n["newline"]: "skipped",
        n["unicode"]: "not run",
        n["markup"]: "not run",
        n["tuple"]: "done",
    }
    return graph, expected


def edges_of(graph) -> set:
    return {(str(p), str(t)) for t, ps in graph.dependencies.items() for p in ps}


# -- DOT ---------------------------------------------------------------------------

_DOT_NODE = re.compile(
    r'^  (n\d+) \[label="((?:[^"\\]|\\.)*)", shape=(\w+), fillcolor="(#[0-9a-f]+)", '
    r'color="(#[0-9a-f]+)", tooltip="(?:[^"\\]|\\.)*"(, style="filled,dashed")?\];$'
)
_DOT_EDGE = re.compile(r"^  (n\d+) -> (n\d+);$")


def _dot_unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], s)


def test_dot_colours_by_status_shapes_by_lane_and_escapes_names():
    graph, expected = build_and_run()
    text = taskmap.to_dot(graph)
    assert text.startswith('digraph "taskmap" {') and text.rstrip().endswith("}")
    nodes, edges = {}, set()
    for line in text.splitlines():
        if m := _DOT_NODE.match(line):
            nodes[m[1]] = (_dot_unescape(m[2]), m[3], m[4], m[5])
        elif m := _DOT_EDGE.match(line):
            edges.add((m[1], m[2]))
    label = {node: v[0] for node, v in nodes.items()}
    assert sorted(label.values()) == sorted(str(t) for t in graph.dependencies)
    by_name = {v[0]: v for v in nodes.values()}
    for task, status in expected.items():
        _, shape, fill, border = by_name[str(task)]
        assert (fill, border) == COLOURS[status], (task, status)
        assert shape == ("parallelogram" if task in graph.io_bound else "box")
    assert {(label[a], label[b]) for a, b in edges} == edges_of(graph)
    # the legend explains every colour
    for status in ("done", "failed", "skipped", "not run"):
        assert f'[label="{status}"' in text
    assert "legend" not in taskmap.to_dot(graph, legend=False)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_dot_text_is_accepted_by_graphviz(tmp_path):
    graph, _ = build_and_run()
    out = render(graph, tmp_path / "graph.svg")
    svg = out.read_text(encoding="utf-8")
    assert "<svg" in svg and "grün ☕" in svg


# -- mermaid -------------------------------------------------------------------------

_MERMAID_NODE = re.compile(r'^  (n\d+)(\[/"([^"]*)"/\]|\["([^"]*)"\]):::(\w+)$')
_MERMAID_EDGE = re.compile(r"^  (n\d+) --> (n\d+)$")


def test_mermaid_colours_by_status_shapes_by_lane_and_escapes_names():
    graph, expected = build_and_run()
    text = taskmap.to_mermaid(graph)
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    for cls in ("done", "failed", "skipped", "notrun"):
        assert any(line.startswith(f"  classDef {cls} fill:") for line in lines)
    nodes, edges = {}, set()
    for line in lines[1:]:
        if m := _MERMAID_NODE.match(line):
            io = m[3] is not None
            raw = m[3] if io else m[4]
            assert not set(raw) & set('"<>`\n'), raw  # escaped as entity codes
            name = re.sub(r"#(\d+);", lambda e: chr(int(e[1])), raw)
            nodes[m[1]] = (name, io, m[5])
        elif m := _MERMAID_EDGE.match(line):
            edges.add((m[1], m[2]))
        else:
            assert line.startswith("  classDef "), line
    by_name = {v[0]: v for v in nodes.values()}
    for task, status in expected.items():
        shown = str(task).replace("\n", " ")  # a label is one line
        _, io, cls = by_name[shown]
        assert cls == status.replace(" ", "") and io == (task in graph.io_bound), task
    assert len(nodes) == len(graph.dependencies)
    label = {node: v[0] for node, v in nodes.items()}
    assert {(label[a], label[b]) for a, b in edges} == {
        (a.replace("\n", " "), b.replace("\n", " ")) for a, b in edges_of(graph)
    }


def test_a_graph_never_run_is_all_not_run():
    graph = taskmap.create_graph({"a": ok, "b": ok}, {"a": [], "b": ["a"]})
    assert taskmap.to_mermaid(graph).count(":::notrun") == 2
    assert taskmap.to_dot(graph, legend=False).count(COLOURS["not run"][0]) == 2


# -- rendering -----------------------------------------------------------------------


def test_render_without_graphviz_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no `dot`
    graph, _ = build_and_run()
    with pytest.raises(RuntimeError, match="Graphviz's 'dot' program is not on PATH"):
        render(graph, tmp_path / "g.svg")


def test_render_runs_dot_with_the_format_and_the_dot_text(tmp_path, monkeypatch):
    # a stand-in `dot` that records its arguments and copies stdin to -o FILE
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "out = sys.argv[sys.argv.index('-o') + 1]\n"
        "data = sys.stdin.buffer.read()\n"
        "open(out, 'wb').write(' '.join(sys.argv[1:]).encode() + b'\\n' + data)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    graph, _ = build_and_run()
    out = render(graph, tmp_path / "picture.png")
    args, _, body = out.read_bytes().partition(b"\n")
    assert args.decode() == f"-Tpng -o {tmp_path / 'picture.png'}"
    assert body.decode("utf-8") == taskmap.to_dot(graph)
    render(graph, tmp_path / "picture", format="pdf")
    assert (tmp_path / "picture").read_bytes().startswith(b"-Tpdf ")

    fake.write_text("#!/bin/sh\necho 'syntax error in line 3' >&2\nexit 1\n")
    with pytest.raises(RuntimeError, match="syntax error in line 3"):
        render(graph, tmp_path / "bad.svg")
