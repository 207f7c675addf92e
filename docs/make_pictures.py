"""Make the site's pictures with taskmap itself, on the example ETL pipeline.

    python docs/make_pictures.py

writes, in ``docs/images/``:

* ``etl-graph.svg``: the graph of ``examples/etl.py`` after a run, drawn by
  ``taskmap graph ... --checkpoint etl.db --format svg`` (coloured by what the
  run's checkpoint store holds; needs Graphviz's ``dot`` program:
  ``apt install graphviz``);
* ``etl-timeline.svg``: that run's timeline, drawn here from the Chrome
  trace-event file the run wrote (``trace=``): one row per lane of each
  worker, as Perfetto shows it.  (taskmap writes the trace; it draws no
  timeline picture itself, so this script does, in a few lines of SVG.)

``docs/images/dashboard.png``, the live page, is not made here: it is the
screenshot ``tests/test_dashboard_browser.py`` takes in a real headless
Chromium (copied from a run of that test).
"""

from __future__ import annotations

import html
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import taskmap

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "docs" / "images"
EXAMPLES = REPO / "examples"

# status -> fill, as taskmap.observe.export colours the graph
FILL = {"done": "#b7e4c7", "failed": "#f4a6a6", "skipped": "#ffe8a3", "unfinished": "#d0d0d0"}
STROKE = {"done": "#2d6a4f", "failed": "#9d0208", "skipped": "#b08900", "unfinished": "#888888"}
WAIT_FILL, WAIT_STROKE = "#e3ecf7", "#7f9cc4"


def load_etl():
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location("etl", EXAMPLES / "etl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["etl"] = module
    spec.loader.exec_module(module)
    return module


def run_example(work: Path) -> tuple[Path, Path, str]:
    """Run the example on 2 workers with a checkpoint store and a trace; returns
    (store, trace, base URL of its API)."""
    etl = load_etl()
    store, trace, db = work / "etl.db", work / "etl.json", work / "etl.sqlite"
    # start the warm workers first, as any run after the first in a process
    # finds them: the timeline then shows the pipeline, not the pool starting
    taskmap.run_parallel_async(taskmap.create_graph({"warm": int}, {"warm": []}), ncores=2)
    with etl.reference_server(etl.DATA_DIR, latency=0.2) as base_url:
        graph = etl.build_graph(etl.DATA_DIR, base_url, db)
        graph.checkpoint = taskmap.open_checkpoint(store)
        taskmap.run_parallel_async(graph, ncores=2, trace=trace, output="capture", **etl.API_LIMITS)
        graph.checkpoint.close()
    failed = [t for t, r in graph.results.items() if isinstance(r, BaseException)]
    assert not failed, f"the example failed: {failed}"
    return store, trace, base_url


def draw_graph(work: Path, store: Path, base_url: str) -> Path:
    """``taskmap graph`` on a pipeline file that builds the same graph."""
    pipeline = work / "etl_pipeline.py"
    pipeline.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(EXAMPLES)!r})\n"
        "import etl\n\n"
        f"graph = etl.build_graph(etl.DATA_DIR, {base_url!r}, {str(work / 'etl.sqlite')!r})\n"
    )
    out = IMAGES / "etl-graph.svg"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "taskmap",
            "graph",
            str(pipeline),
            "--checkpoint",
            str(store),
            "-f",
            "svg",
            "-o",
            str(out),
        ],
        check=True,
    )
    return out


def draw_timeline(trace: Path, width: int = 960) -> Path:
    """An SVG of a Chrome trace-event file: one row per (process, thread)."""
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    process, thread = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            process[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            thread[(e["pid"], e["tid"])] = e["args"]["name"]
    slices = [e for e in events if e.get("ph") == "X" and e.get("dur", 0) > 0]
    rows: dict[tuple, list] = defaultdict(list)
    for e in slices:
        rows[(e["pid"], e["tid"])].append(e)
    # workers first (by pid), the coordinator last; within a process by tid
    coordinator = [pid for pid, name in process.items() if name == "coordinator"]
    order = sorted(rows, key=lambda key: (key[0] in coordinator, key[0], key[1]))
    end = max(e["ts"] + e["dur"] for e in slices)
    label_w, row_h, top, axis_h = 190, 22, 10, 28
    plot_w = width - label_w - 10
    scale = plot_w / end
    height = top + row_h * len(order) + axis_h
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for r, key in enumerate(order):
        y = top + r * row_h
        if r % 2 == 0:
            out.append(f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{row_h}" fill="#f4f4f4"/>')
        name = f"{process.get(key[0], key[0])} · {thread.get(key, key[1])}"
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(str(name))}</text>')
        for e in sorted(rows[key], key=lambda e: e["ts"]):
            x, w = label_w + e["ts"] * scale, max(e["dur"] * scale, 1.0)
            status = e.get("args", {}).get("status")
            waits = "waits for" in e.get("name", "")
            fill = WAIT_FILL if waits else FILL.get(status, "#cfe0f5")
            stroke = WAIT_STROKE if waits else STROKE.get(status, "#4a78b0")
            title = html.escape(f"{e['name']}: {e['dur'] / 1000:.1f} ms")
            out.append(
                f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{fill}" '
                f'stroke="{stroke}" stroke-width="0.8"><title>{title}</title></rect>'
            )
            label = html.escape(str(e["name"]))
            if w > 7 * len(label) + 6:
                out.append(f'<text x="{x + 3:.1f}" y="{y + 15}">{label}</text>')
    y = top + row_h * len(order)
    step = next(s for s in (50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000) if end / s <= 10)  # us
    for t in range(0, int(end) + 1, step):
        x = label_w + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 5}" stroke="#555"/>')
        out.append(f'<text x="{x:.1f}" y="{y + 17}" text-anchor="middle">{t / 1e6:.1f} s</text>')
    out.append("</svg>")
    path = IMAGES / "etl-timeline.svg"
    path.write_text("\n".join(out) + "\n")
    return path


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store, trace, base_url = run_example(work)
        for path in (draw_graph(work, store, base_url), draw_timeline(trace)):
            print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
