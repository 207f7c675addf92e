"""One live run per checkpoint store (issue 27), with real processes: a run
in another process holds the store; a second run is refused naming it,
readers work meanwhile, and once the holder is SIGKILLed its hold is taken
over (logged).  The holder signals through files that it holds the store; no
test waits on timing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import taskmap
from taskmap.checkpoint.hold import hold_path, holder_of

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    import taskmap

    store, holding, release = sys.argv[1:]

    def wait(_one):
        open(holding, "w").close()  # the run holds the store now
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "held"

    def one():
        return 1

    graph = taskmap.create_graph({"one": one, "wait": wait}, {"one": [], "wait": ["one"]},
                                 name="holder", checkpoint=store)
    taskmap.run(graph)
    """
)


def one():
    return 1


def two(x):
    return x + 1


def graph_on(store, name="second"):
    return taskmap.create_graph({"one": one, "two": two}, {"one": [], "two": ["one"]}, name=name, checkpoint=store)


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"the holder exited: {proc.communicate()}"
        assert time.monotonic() < deadline, "the holder never signalled"
        time.sleep(0.01)


@pytest.fixture
def holder(tmp_path):
    """A run in another process holding ``tmp_path/run.db`` until released."""
    with holding_run(tmp_path) as held:
        yield held


@contextlib.contextmanager
def holding_run(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    store = tmp_path / "run.db"
    holding, release = tmp_path / "holding", tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store), str(holding), str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(holding, proc)
        yield proc, store, release
    finally:
        release.touch()
        if proc.poll() is None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_second_run_is_refused_naming_the_live_holder_and_the_store_is_untouched(holder):
    proc, store, release = holder
    before = store.read_bytes()
    with pytest.raises(taskmap.CheckpointError) as info:
        taskmap.run(graph_on(str(store)))
    message = str(info.value)
    assert f"pid {proc.pid}" in message and socket.gethostname() in message
    assert "'holder'" in message and str(store) in message
    assert "since" in message
    # refused before it touched anything: the holder's rows are as they were
    assert store.read_bytes() == before
    # the holder finishes its run undisturbed
    release.touch()
    assert proc.wait(30) == 0
    with taskmap.open_checkpoint(store) as reader:
        assert reader.entry("wait").status == "done"


def test_readers_work_while_a_run_holds_the_store(holder):
    proc, store, _ = holder
    assert holder_of(store)["pid"] == proc.pid
    with taskmap.open_checkpoint(store) as reader:
        assert reader.statuses(graph_on(None, "holder"))["two"] == "not run"
        assert reader.failed_tasks() == []
        assert reader.entry("one").status == "done"
    # and a graph helper that clears rows (reset_tasks) too
    graph = graph_on(str(store))
    graph.checkpoint.clear(["two"])
    graph.checkpoint.close()


def test_the_hold_of_a_killed_run_is_taken_over_and_logged(holder, caplog):
    proc, store, _ = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert holder_of(store) is None  # the kernel let go with the process
    assert json.loads(hold_path(store).read_text())["pid"] == proc.pid  # its record stays
    caplog.set_level(logging.WARNING, logger="second-manager")
    graph = taskmap.run(graph_on(str(store)))
    assert graph.results == {"one": 1, "two": 2}
    graph.checkpoint.close()
    takeovers = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(takeovers) == 1 and f"pid {proc.pid}" in takeovers[0]


def test_a_run_that_ended_lets_go_and_the_next_takes_no_hold_over(tmp_path, caplog):
    store = str(tmp_path / "run.db")
    caplog.set_level(logging.WARNING, logger="second-manager")
    for _ in range(2):
        graph = taskmap.run_parallel_async(graph_on(store), ncores=1)
        assert graph.results == {"one": 1, "two": 2}
        assert holder_of(Path(store)) is None
        assert hold_path(Path(store)).read_text() == ""  # let go cleanly
        graph.checkpoint.close()
    assert not [r for r in caplog.records if "taking over" in r.getMessage()]


def test_a_hold_from_another_host_is_taken_over_only_when_forced(tmp_path):
    store = tmp_path / "run.db"
    taskmap.open_checkpoint(store).close()
    record = {"pid": 4242, "host": "elsewhere.example", "since": "2026-12-01T00:00:00+00:00", "graph": "nightly"}
    hold_path(store).write_text(json.dumps(record))
    with pytest.raises(taskmap.CheckpointError) as info:
        taskmap.run(graph_on(str(store)))
    assert "another host" in str(info.value) and "elsewhere.example" in str(info.value)
    assert "take_over=True" in str(info.value)
    with taskmap.open_checkpoint(store, take_over=True) as forced:
        graph = graph_on(forced)
        assert taskmap.run(graph).results == {"one": 1, "two": 2}


def test_two_runs_in_one_process_on_one_store_are_refused(tmp_path):
    store = str(tmp_path / "run.db")
    seen = {}
    started, finish = threading.Event(), threading.Event()

    def slow():
        started.set()
        finish.wait(30)
        return 1

    first = taskmap.create_graph({"slow": slow}, {"slow": []}, checkpoint=store)
    thread = threading.Thread(target=lambda: seen.setdefault("first", taskmap.run(first)))
    thread.start()
    try:
        assert started.wait(30)
        with pytest.raises(taskmap.CheckpointError, match=f"pid {os.getpid()}"):
            taskmap.run(graph_on(store))  # another store object on the same file
        with pytest.raises(taskmap.CheckpointError, match="a run of this process"):
            taskmap.run(taskmap.create_graph({"x": one}, {"x": []}, checkpoint=first.checkpoint))
    finally:
        finish.set()
        thread.join(30)
    assert seen["first"].results == {"slow": 1}
    first.checkpoint.close()


PIPELINE = textwrap.dedent(
    """
    def one():
        return 1

    def two(x):
        return x + 1

    funcs = {"one": one, "two": two}
    dependencies = {"one": [], "two": ["one"]}
    """
)


def bad():
    raise ValueError("bad")


@pytest.mark.parametrize("command", ["run", "rerun-failed"])
def test_the_cli_refuses_with_exit_status_2_naming_the_holder(command, tmp_path):
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(PIPELINE)
    store = tmp_path / "run.db"
    # a failure on record, so that rerun-failed has something to rerun
    failed = taskmap.run(taskmap.create_graph({"bad": bad}, {"bad": []}, checkpoint=str(store)))
    failed.checkpoint.close()
    with holding_run(tmp_path) as (proc, held, _):
        assert held == store
        before = store.read_bytes()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "taskmap",
                command,
                str(pipeline),
                "--checkpoint",
                str(store),
                "--runner",
                "sequential",
                "--no-summary",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert done.returncode == 2, done
        assert f"pid {proc.pid}" in done.stderr and "another run is using this store" in done.stderr
        assert store.read_bytes() == before
