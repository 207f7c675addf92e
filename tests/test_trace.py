"""The timeline file (``trace=``): Chrome trace-event JSON that matches the run."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections import defaultdict

import pytest
from _tasks import boom

import taskmap
from taskmap.observe.record import RunRecord, TaskRecord
from taskmap.observe.trace import trace_events

JITTER_US = 5.0  # clock readings of two processes: allow a few microseconds

RUNNERS = {
    "run": lambda g, **kw: taskmap.run(g, **kw),
    "run_async": lambda g, **kw: taskmap.run_async(g, **kw),
    "run_parallel": lambda g, **kw: taskmap.run_parallel(g, ncores=2, **kw),
    "run_parallel_async": lambda g, **kw: taskmap.run_parallel_async(g, ncores=2, **kw),
}


def spin(*args):
    """About 20 ms of cpu work."""
    end = time.perf_counter() + 0.02
    while time.perf_counter() < end:
        pass
    return len(args)


async def wait(*args):
    await asyncio.sleep(0.05)
    return len(args)


IO_TASKS = ["fetch 1", "fetch 2", "fetch 3", 'say "hi"', "grün"]


def build() -> taskmap.Graph:
    """Overlapping io tasks, cpu chains and a fan-in, a failure with skipped
    descendants; names with spaces, quotes and unicode."""
    funcs = {name: wait for name in IO_TASKS}
    deps = {name: [] for name in IO_TASKS}
    for k in range(1, 4):
        funcs[f"parse {k}"] = spin
        deps[f"parse {k}"] = [f"fetch {k}"]
    funcs.update({"join": spin, "report": wait, "bad": boom, "after bad": spin, "later": spin, "solo": spin})
    deps.update(
        {
            "join": ["parse 1", "parse 2", "parse 3", 'say "hi"'],
            "report": ["join", "grün"],
            "bad": ["parse 1"],
            "after bad": ["bad"],
            "later": ["after bad"],
            "solo": [],
        }
    )
    return taskmap.create_graph(funcs, deps, io_bound=IO_TASKS + ["report"])


def load(path) -> dict:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    return doc


def overlaps(slices: list[dict]) -> list[tuple[str, str]]:
    """Pairs of X events whose intervals overlap (beyond the jitter)."""
    slices = sorted(slices, key=lambda e: e["ts"])
    return [(a["name"], b["name"]) for a, b in itertools.pairwise(slices) if b["ts"] < a["ts"] + a["dur"] - JITTER_US]


@pytest.mark.parametrize("runner", RUNNERS)
def test_trace_matches_the_format_and_the_run(tmp_path, runner):
    path = tmp_path / "run.json"
    graph = RUNNERS[runner](build(), trace=path)
    doc = load(path)
    events = doc["traceEvents"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary file left
    assert doc["otherData"]["runner"] == runner and doc["otherData"]["error"] is None

    # every event has the keys its phase requires
    for e in events:
        assert {"name", "ph", "pid", "tid"} <= e.keys(), e
        assert e["ph"] in {"X", "M", "i", "C"}, e
        if e["ph"] == "X":
            assert isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float))
            assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["args"], dict)
        elif e["ph"] == "M":
            assert e["name"] in {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}
        else:
            assert isinstance(e["ts"], (int, float)) and isinstance(e["args"], dict)

    # every task that ran is exactly one X event, with its status in args
    status = {
        name: "failed"
        if isinstance(r, Exception)
        else "skipped"
        if isinstance(r, str) and r.startswith("Ancestor task")
        else "done"
        for name, r in graph.results.items()
    }
    assert status["bad"] == "failed" and status["later"] == "skipped"
    tasks = [e for e in events if e["ph"] == "X" and e["cat"] in ("io", "cpu")]
    names = [e["name"] for e in tasks]
    assert sorted(names) == sorted(n for n, s in status.items() if s != "skipped")
    for e in tasks:
        assert e["args"]["task"] == e["name"]
        assert e["args"]["status"] == status[e["name"]]
        assert e["cat"] == e["args"]["lane"] == ("io" if e["name"] in graph.io_bound else "cpu")
    assert next(e for e in tasks if e["name"] == "bad")["args"]["error"] == "ValueError: boom"
    skipped = {e["args"]["task"]: e for e in events if e["ph"] == "i"}
    assert set(skipped) == {"after bad", "later"}
    assert skipped["later"]["args"]["failed_ancestor"] == "bad"

    # processes and rows are named; tasks ran in workers or, in-process, here
    meta = {(e["name"], e["pid"], e["tid"]): e["args"] for e in events if e["ph"] == "M"}
    process = {pid: args["name"] for (kind, pid, _), args in meta.items() if kind == "process_name"}
    coordinator = os.getpid()
    assert process[coordinator] == "coordinator"
    assert all(e["tid"] != 0 for e in events)  # some Perfetto versions merge tid 0 into 1
    # one name per row of a process: no two rows share a tid
    rows = [(e["pid"], e["tid"]) for e in events if e["name"] == "thread_name"]
    assert len(rows) == len(set(rows))
    for e in tasks:
        if runner.startswith("run_parallel"):
            assert e["pid"] != coordinator
            assert process[e["pid"]] == f"worker {e['pid']}"
        else:
            assert e["pid"] == coordinator
        row = meta["thread_name", e["pid"], e["tid"]]["name"]
        assert row.startswith(e["cat"]), (e, row)
    run = [e for e in events if e["ph"] == "X" and e["cat"] == "run"]
    assert len(run) == 1 and run[0]["pid"] == coordinator
    assert meta["thread_name", coordinator, run[0]["tid"]] == {"name": "scheduler"}

    # no two cpu slices overlap within a worker; no io row holds overlapping slices
    cpu, io_rows = defaultdict(list), defaultdict(list)
    for e in tasks:
        (cpu[e["pid"]] if e["cat"] == "cpu" else io_rows[e["pid"], e["tid"]]).append(e)
    for pid, slices in cpu.items():
        assert overlaps(slices) == [], (pid, overlaps(slices))
    for row, slices in io_rows.items():
        assert overlaps(slices) == [], (row, overlaps(slices))
    if runner != "run":  # the three first fetches start together: three io rows
        fetches = {e["name"]: (e["pid"], e["tid"]) for e in tasks if e["name"].startswith("fetch")}
        by_pid = defaultdict(set)
        for pid, tid in fetches.values():
            by_pid[pid].add(tid)
        assert sum(len(t) for t in by_pid.values()) == 3, fetches

    # every task starts after its parents' slices end
    by_name = {e["name"]: e for e in tasks}
    for name, parents in graph.dependencies.items():
        if name not in by_name:
            continue
        for parent in parents:
            p = by_name[parent]
            assert by_name[name]["ts"] >= p["ts"] + p["dur"] - JITTER_US, (parent, name)

    # the counter track ends with every task finished and none in flight
    counters = [e for e in events if e["ph"] == "C"]
    assert counters[-1]["args"] == {"in flight": 0, "finished": len(graph.dependencies)}


@pytest.mark.parametrize("runner", ["run", "run_parallel_async"])
def test_trace_is_written_when_the_run_raises(tmp_path, runner):
    path = tmp_path / "stopped.json"
    with pytest.raises(taskmap.TaskFailedError):
        RUNNERS[runner](build(), trace=path, raise_errors=True)
    doc = load(path)
    assert doc["otherData"]["error"].startswith("TaskFailedError")
    run = next(e for e in doc["traceEvents"] if e.get("cat") == "run")
    assert run["args"]["error"].startswith("TaskFailedError")
    assert "bad" in [e["name"] for e in doc["traceEvents"] if e["ph"] == "X"]


def test_a_task_cut_off_by_an_interrupt_is_drawn_as_unfinished(tmp_path):
    def interrupted(*args):
        raise KeyboardInterrupt

    path = tmp_path / "interrupted.json"
    graph = taskmap.create_graph({"a": spin, "b": interrupted, "c": spin}, {"a": [], "b": ["a"], "c": ["b"]})
    with pytest.raises(KeyboardInterrupt):
        taskmap.run(graph, trace=path)
    doc = load(path)
    slices = {e["name"]: e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "cpu"}
    assert set(slices) == {"a", "b"} and doc["otherData"]["error"] == "KeyboardInterrupt"
    assert slices["a"]["args"]["status"] == "done"
    assert slices["b"]["args"]["status"] == "unfinished"
    assert slices["b"]["ts"] >= slices["a"]["ts"] + slices["a"]["dur"] - JITTER_US
    assert [e["args"] for e in doc["traceEvents"] if e["ph"] == "C"][-1] == {"in flight": 1, "finished": 1}


def test_a_missing_trace_directory_fails_before_anything_runs(tmp_path):
    ran = []
    graph = taskmap.create_graph({"a": lambda: ran.append(1)}, {"a": []})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        taskmap.run(graph, trace=tmp_path / "missing" / "run.json")
    assert ran == []


def _record(tasks: list[TaskRecord]) -> RunRecord:
    record = RunRecord("run_async", 1, 100.0, 0, ended=100.01, tasks=tasks, coordinator_pid=7)
    return record


def _task(name, lane, start, end, pid=7):
    return TaskRecord(name, "done", lane, pid, start, end, start, end, 1)


def test_rows_are_coloured_greedily_and_cpu_overlap_spills_into_extra_rows():
    # io: a [0,4) b [1,3) c [3,5) d [4,6): a and b need two rows; c reuses b's
    # row (free at 3); d reuses a's row.  cpu: x [0,2) y [1,3) overlap (a cpu
    # coroutine that awaits, in run_async) -> y goes to a second cpu row.
    ms = 1e-3
    tasks = [
        _task("a", "io", 100 + 0 * ms, 100 + 4 * ms),
        _task("b", "io", 100 + 1 * ms, 100 + 3 * ms),
        _task("c", "io", 100 + 3 * ms, 100 + 5 * ms),
        _task("d", "io", 100 + 4 * ms, 100 + 6 * ms),
        _task("x", "cpu", 100 + 0 * ms, 100 + 2 * ms),
        _task("y", "cpu", 100 + 1 * ms, 100 + 3 * ms),
    ]
    events = trace_events(_record(tasks), "g")
    tid = {e["name"]: e["tid"] for e in events if e["ph"] == "X" and e["cat"] != "run"}
    rows = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert tid["a"] == tid["d"] == 2 and tid["b"] == tid["c"] == 3
    assert tid["x"] == 1 and rows[1] == "cpu" and rows[2] == "io 1" and rows[3] == "io 2"
    assert rows[tid["y"]] == "cpu 2" and tid["y"] not in (1, 2, 3)
    x = next(e for e in events if e["name"] == "x")
    assert x["ts"] == pytest.approx(0.0) and x["dur"] == pytest.approx(2000.0)


def _talks_then_fails():
    for k in range(80):
        print(f"line {k}")
    raise ValueError("broke")


@pytest.mark.parametrize("runner", ["run", "run_parallel_async"])
def test_a_failed_tasks_event_carries_its_output_tail(tmp_path, runner):
    path = tmp_path / "output.json"
    graph = taskmap.create_graph(
        {"bad": _talks_then_fails, "fine": lambda: print("fine") or 1}, {"bad": [], "fine": []}
    )
    RUNNERS[runner](graph, trace=path, output="capture")
    slices = {e["name"]: e for e in load(path)["traceEvents"] if e["ph"] == "X" and e["cat"] == "cpu"}
    assert slices["bad"]["args"]["output"] == "\n".join(f"line {k}" for k in range(30, 80))
    assert "output" not in slices["fine"]["args"]  # (only failed tasks carry it)
