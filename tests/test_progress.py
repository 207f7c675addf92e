"""The progress bar (``progress=True``): counts and ETA on stderr, throttled
redraws, closed at the end of every run, off unless asked for."""

from __future__ import annotations

import io
import threading
import time

import pytest
from _tasks import boom

import taskmap
from taskmap.observe.observers import build_observers
from taskmap.observe.progress import ProgressBar

RUNNERS = {
    "run": lambda g, **kw: taskmap.run(g, **kw),
    "run_async": lambda g, **kw: taskmap.run_async(g, **kw),
    "run_parallel_async": lambda g, **kw: taskmap.run_parallel_async(g, ncores=2, **kw),
}


def ok(*args):
    return 1


def nap(*args):
    time.sleep(0.002)
    return 1


def build() -> taskmap.Graph:
    funcs = {"a": ok, "b": ok, "c": boom, "d": ok, "e": ok}
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["c"], "e": ["b"]}
    return taskmap.create_graph(funcs, deps, io_bound=["b"], name="demo")


def frames(err: str) -> list[str]:
    """The successive drawings of a bar (tqdm redraws with a carriage return)."""
    return [f for f in err.replace("\n", "\r").split("\r") if f.strip()]


def progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "taskmap-progress"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_bar_shows_counts_and_is_closed(capsys, runner):
    RUNNERS[runner](build(), progress=True)
    err = capsys.readouterr().err
    last = frames(err)[-1]
    assert last.startswith("demo: 100%") and "5/5" in last and "task/s" in last
    assert "done=3 failed=1 skipped=1 running=0" in last
    assert err.endswith("\n")  # closed: the cursor left the bar's line
    assert progress_threads() == []


@pytest.mark.parametrize("runner", ["run", "run_parallel_async"])
def test_bar_is_closed_when_the_run_raises(capsys, runner):
    with pytest.raises(taskmap.TaskFailedError):
        RUNNERS[runner](build(), progress=True, raise_errors=True)
    err = capsys.readouterr().err
    assert "failed=1" in frames(err)[-1] and "stopped by TaskFailedError" in frames(err)[-1]
    assert err.endswith("\n") and progress_threads() == []


def test_bar_is_closed_on_keyboard_interrupt(capsys):
    def interrupt(*args):
        raise KeyboardInterrupt

    graph = taskmap.create_graph({"a": ok, "b": interrupt, "c": ok}, {"a": [], "b": ["a"], "c": ["b"]})
    with pytest.raises(KeyboardInterrupt):
        taskmap.run(graph, progress=True)
    last = frames(capsys.readouterr().err)[-1]
    assert "1/3" in last and "running=1 stopped by KeyboardInterrupt" in last
    assert progress_threads() == []


def test_no_bar_unless_asked_for(capsys):
    for progress in (None, False):
        graph = build()
        assert not build_observers(graph, progress=progress)  # nothing attached per task
        taskmap.run(graph, progress=progress)
        taskmap.run_parallel_async(build(), ncores=2, progress=progress)
    assert capsys.readouterr().err == ""


def test_redraws_are_throttled_but_live():
    # 150 tasks of 2 ms: one drawing per task would be 150; a redraw every
    # 20 ms gives about 15, and some happen while the run is going on
    n = 150
    graph = taskmap.create_graph({i: nap for i in range(n)}, {i: [i - 1] if i else [] for i in range(n)})
    out = io.StringIO()
    bar = ProgressBar(file=out, refresh=0.02)
    start = time.perf_counter()
    taskmap.run(graph, observers=[bar])
    wall = time.perf_counter() - start
    drawn = frames(out.getvalue())
    assert len(drawn) <= wall / 0.02 + 3, (len(drawn), wall)
    during = [f for f in drawn if f"/{n}" in f and f" {n}/{n}" not in f]
    assert len(during) >= 2, drawn  # the bar moved while tasks ran
    assert f"{n}/{n}" in drawn[-1] and f"done={n} " in drawn[-1]
