"""taskmap.runtime.fd_output: what C code and subprocesses write to a
worker's fds 1 and 2 reaches the terminal as before and is attributed to the
cpu task that wrote it when that task can be known."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import taskmap
from taskmap.runtime import fd_output

_SCRIPT = """
import asyncio, json, os, subprocess, sys, time
import taskmap

def cpu_writes():
    subprocess.run([sys.executable, "-c", "print('from a subprocess')"], check=True)
    os.write(1, b"raw to fd 1\\n")
    os.write(2, b"raw to fd 2\\n")
    print("a python line")
    return 1

def after(x):
    os.write(1, b"the next task's own\\n")
    return x

async def io_waits():
    await asyncio.sleep(0.5)
    return 2

def cpu_beside_io():
    time.sleep(0.1)  # (the io task is running by now)
    os.write(1, b"nobody knows whose\\n")
    return 3

def last_words():
    os.write(2, b"dying words\\n")
    time.sleep(0.3)
    os._exit(7)

if __name__ == "__main__":
    graph = taskmap.create_graph(
        {"cpu_writes": cpu_writes, "after": after, "last_words": last_words},
        {"cpu_writes": [], "after": ["cpu_writes"], "last_words": []},
    )
    taskmap.run_parallel(graph, ncores=1, output="capture")
    mixed = taskmap.create_graph({"io": io_waits, "cpu": cpu_beside_io}, {"io": [], "cpu": []}, io_bound=["io"])
    taskmap.run_parallel_async(mixed, ncores=1, output="capture")
    crashed = type(graph.results["last_words"]).__name__
    print("RESULT", json.dumps([graph.output, mixed.output, crashed]), file=sys.stderr)
"""


def test_descriptor_output_reaches_the_terminal_and_is_attributed_to_its_cpu_task(tmp_path):
    script = tmp_path / "fds.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # as before: straight to the real descriptors, whatever output= says
    assert sorted(done.stdout.splitlines()) == [
        "from a subprocess",
        "nobody knows whose",
        "raw to fd 1",
        "the next task's own",
    ]
    err = done.stderr.splitlines()
    assert "raw to fd 2" in err and "dying words" in err
    result = [line for line in err if line.startswith("RESULT ")][0]
    graph_output, mixed_output, crashed = json.loads(result.split(" ", 1)[1])
    assert crashed == "WorkerCrashedError"
    assert sorted(graph_output["cpu_writes"].splitlines()) == [
        "a python line",
        "from a subprocess",
        "raw to fd 1",
        "raw to fd 2",
    ]
    assert graph_output["after"] == "the next task's own\n"  # (not the task before's)
    assert graph_output["last_words"] == "dying words\n"
    assert mixed_output == {}  # an io task ran beside it: whose bytes they were is unknown


def test_the_coordinator_can_drain_a_pipe_through_proc(tmp_path):
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"left in the pipe\n")
        mine = fd_output.open_remote(os.getpid(), [read_end])
        assert len(mine) == 1
        assert fd_output.drain(mine) == [b"left in the pipe\n"]
    finally:
        os.close(read_end)
        os.close(write_end)
    assert fd_output.open_remote(os.getpid(), [10_000_000]) == []  # (no such descriptor: left out)


def test_workers_can_be_left_with_their_descriptors(tmp_path, monkeypatch):
    from taskmap.runtime.pool import shutdown_pool

    def where_fd1_goes() -> str:
        return os.readlink("/proc/self/fd/1")

    monkeypatch.setenv("TASKMAP_FD_OUTPUT", "0")
    shutdown_pool()  # (fresh workers read the variable)
    try:
        graph = taskmap.create_graph({"w": where_fd1_goes}, {"w": []})
        taskmap.run_parallel(graph, ncores=1)
        assert not graph.results["w"].startswith("pipe:")
    finally:
        monkeypatch.delenv("TASKMAP_FD_OUTPUT")
        shutdown_pool()
    graph = taskmap.create_graph({"w": where_fd1_goes}, {"w": []})
    taskmap.run_parallel(graph, ncores=1)
    assert graph.results["w"].startswith("pipe:")
