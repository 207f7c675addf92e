"""The summary of a run: counts, wall time, busy time per worker, core use,
slowest tasks and the critical path; what every run records for it."""

from __future__ import annotations

import os
import time

import pytest
from _tasks import boom

import taskmap
from taskmap.observe.observers import build_observers
from taskmap.observe.summary import COUNTS_ONLY, DURATIONS, PER_TASK, critical_path

RUNNERS = {
    "run": lambda g, **kw: taskmap.run(g, **kw),
    "run_async": lambda g, **kw: taskmap.run_async(g, **kw),
    "run_parallel_async": lambda g, **kw: taskmap.run_parallel_async(g, ncores=2, **kw),
}


def busy(seconds: float):
    def task(*args):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return 1

    return task


def build() -> taskmap.Graph:
    """The heaviest chain is slow -> slower -> fetch (0.16 s); `quick`, the
    failing `bad` and its skipped child are off it.  (Nothing else runs while
    the io task `fetch` does: in run_async an io task's end is noticed only
    when the loop is free of inline cpu tasks.)"""
    funcs = {
        "slow": busy(0.05),
        "slower": busy(0.1),
        "fetch": busy(0.01),
        "quick": busy(0.01),
        "bad": boom,
        "skipped": busy(0.01),
    }
    deps = {"slow": [], "slower": ["slow"], "fetch": ["slower"], "quick": [], "bad": ["quick"], "skipped": ["bad"]}
    return taskmap.create_graph(funcs, deps, io_bound=["fetch"])


@pytest.mark.parametrize("runner", RUNNERS)
def test_summary_of_a_recorded_run(runner):
    graph = RUNNERS[runner](build(), summary=True)
    s = taskmap.summarize(graph)
    assert s.detail == PER_TASK and s.runner == runner
    assert s.ncores == (2 if runner == "run_parallel_async" else 1)
    assert s.counts == {"done": 4, "failed": 1, "skipped": 1, "not run": 0}
    assert s.finished == 6 and s.retried == 0 and s.error is None

    assert s.critical_path == ["slow", "slower", "fetch"]
    assert s.critical_path_seconds >= 0.16
    assert s.wall >= s.critical_path_seconds
    assert [t.name for t in s.slowest[:2]] == ["slower", "slow"]
    # the five that ran (the skipped one never did), slowest first
    assert {t.name for t in s.slowest} == {"slow", "slower", "fetch", "quick", "bad"}
    assert next(t for t in s.slowest if t.name == "fetch").lane == "io"
    assert next(t for t in s.slowest if t.name == "bad").status == "failed"

    # busy time per worker adds up to the task times, and the utilisation follows
    assert s.workers and sum(w.tasks for w in s.workers) == 5
    assert sum(w.cpu_seconds for w in s.workers) == pytest.approx(s.cpu_seconds)
    assert sum(w.io_seconds for w in s.workers) == pytest.approx(s.io_seconds)
    assert s.cpu_seconds >= 0.15 and s.io_seconds >= 0.01
    assert s.utilisation == pytest.approx(s.cpu_seconds / (s.wall * s.ncores))
    assert 0 <= s.first_start < s.wall - s.critical_path_seconds
    assert 0 < s.utilisation <= 1
    pids = {w.pid for w in s.workers}
    assert (os.getpid() not in pids) if runner == "run_parallel_async" else pids == {os.getpid()}

    table = str(s)
    assert table.startswith(f"taskmap summary: taskmap ({runner}, ")
    assert "4 done, 1 failed, 1 skipped, 0 not run (6 finished in this run)" in table
    assert "critical path" in table and "slow -> slower -> fetch" in table
    for w in s.workers:
        assert str(w.pid) in table
    assert table.index("slower") < table.index("quick")  # slowest first


def test_a_parallel_run_not_recorded_still_has_task_times():
    # run_parallel_async measures every task for its own scheduling: the
    # summary uses those, but knows nothing per worker
    graph = taskmap.run_parallel_async(build(), ncores=2)
    assert graph.last_run.tasks is None
    s = taskmap.summarize(graph)
    assert s.detail == DURATIONS and s.workers == []
    assert s.critical_path == ["slow", "slower", "fetch"] and s.critical_path_seconds >= 0.16
    # the done tasks only, the slowest five of them
    assert {t.name for t in s.slowest} == {"slow", "slower", "fetch", "quick"}
    assert "per worker     not recorded" in str(s)


def test_an_in_process_run_not_recorded_has_counts_and_wall_time_only():
    graph = taskmap.run(build())
    s = taskmap.summarize(graph)
    assert s.detail == COUNTS_ONLY and s.wall > 0.16
    assert s.counts == {"done": 4, "failed": 1, "skipped": 1, "not run": 0}
    assert s.slowest == [] and s.critical_path == [] and s.utilisation is None
    assert "not recorded (run with summary=True" in str(s)


def test_a_plain_run_builds_no_observer_and_records_nothing_per_task():
    graph = build()
    assert not build_observers(graph)
    assert not build_observers(graph, progress=False, summary=False)
    assert build_observers(graph, summary=True)
    taskmap.run(graph)
    record = graph.last_run
    assert isinstance(record, taskmap.RunRecord) and record.tasks is None
    assert record.runner == "run" and record.wall > 0 and record.done_before == 0


def test_a_second_run_counts_only_what_it_finished():
    graph = RUNNERS["run"](build(), summary=True)
    taskmap.reset_tasks(graph, ["fetch"])
    taskmap.run(graph, summary=True)
    s = taskmap.summarize(graph)
    assert s.finished == 1 and [t.name for t in s.slowest] == ["fetch"]
    assert s.critical_path == ["fetch"]  # its parents ran in the first run: not measured here
    assert s.counts["done"] == 4


def test_stopped_run_summary_names_the_error():
    graph = build()
    with pytest.raises(taskmap.TaskFailedError):
        taskmap.run(graph, raise_errors=True, summary=True)
    s = taskmap.summarize(graph)
    assert s.error.startswith("TaskFailedError") and "run stopped by TaskFailedError" in str(s)
    assert s.counts["failed"] == 1 and s.finished == len(graph.done)
    assert s.unfinished == []  # run: the failing task was the only one running


def test_tasks_running_when_the_run_is_interrupted_are_listed():
    def interrupted(*args):
        raise KeyboardInterrupt

    graph = taskmap.create_graph({"a": busy(0), "b": interrupted, "c": busy(0)}, {"a": [], "b": ["a"], "c": ["b"]})
    with pytest.raises(KeyboardInterrupt):
        taskmap.run(graph, summary=True)
    s = taskmap.summarize(graph)
    assert s.unfinished == ["b"] and s.error == "KeyboardInterrupt"
    assert s.counts == {"done": 1, "failed": 0, "skipped": 0, "not run": 2}
    assert "still running  b" in str(s) and "run stopped by KeyboardInterrupt" in str(s)


def test_a_graph_never_run_has_counts_only():
    s = taskmap.summarize(build())
    assert s.runner is None and s.wall is None
    assert s.counts == {"done": 0, "failed": 0, "skipped": 0, "not run": 6}
    assert "(not run)" in str(s)


def test_critical_path_is_the_heaviest_chain():
    # a -> b -> d and a -> c -> d: the heavier middle wins; e is unmeasured
    graph = taskmap.create_graph(
        dict.fromkeys("abcde", busy(0)),
        {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"]},
    )
    assert critical_path(graph, {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0}) == (["a", "c", "d"], 7.0)
    assert critical_path(graph, {"b": 2.0}) == (["b"], 2.0)
    assert critical_path(graph, {}) == ([], None)


def _noisy_failure(lines: int):
    def task():
        for k in range(lines):
            print(f"line {k}")
        raise ValueError("broke")

    return task


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_the_summary_prints_the_output_tail_of_each_failed_task(runner):
    funcs = {"bad": _noisy_failure(50), "silent_bad": boom, "fine": lambda: print("fine") or 1}
    graph = taskmap.create_graph(funcs, {name: [] for name in funcs})
    RUNNERS[runner](graph, output="capture")
    summary = taskmap.summarize(graph)
    assert list(summary.failed_output) == ["bad"]  # (silent_bad wrote nothing; fine did not fail)
    assert summary.failed_output["bad"] == "\n".join(f"line {k}" for k in range(30, 50))
    text = str(summary)
    assert text.endswith(
        "  output of failed task bad (its last lines):\n" + "".join(f"    line {k}\n" for k in range(30, 50))
    )


def test_the_summary_names_how_many_more_failed_tasks_wrote_something():
    funcs = {f"bad{k}": _noisy_failure(1) for k in range(7)}
    graph = taskmap.create_graph(funcs, {name: [] for name in funcs})
    taskmap.run(graph, output="capture")
    text = str(taskmap.summarize(graph))
    assert text.count("output of failed task") == 5
    assert "... and 2 more failed tasks with output (graph.output)" in text
