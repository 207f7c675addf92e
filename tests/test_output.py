"""Each task's output (taskmap.observe.output with taskmap.runtime.capture):
attribution on every runner, graph.output and its cap, the output= modes,
log records, retries and crashes."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import taskmap
from taskmap.observe.output import resolve_output
from taskmap.runtime.capture import KeptText

LOCAL = [taskmap.run, taskmap.run_async]
PARALLEL = [
    functools.partial(taskmap.run_parallel, ncores=1),
    functools.partial(taskmap.run_parallel_async, ncores=1),
]


# -- task functions (module level: the workers import them by name) -----------------


async def chatty(k: int, lines: int = 5) -> int:
    """Interleaves with its siblings on one loop: a line, a line in pieces,
    a line on stderr, a log record, awaiting between every write."""
    for j in range(lines):
        print(f"task {k} line {j}")
        await asyncio.sleep(0.001)
        sys.stdout.write(f"task {k} ")
        await asyncio.sleep(0)
        sys.stdout.write(f"piece {j}\n")
        await asyncio.sleep(0)
        print(f"task {k} err {j}", file=sys.stderr)
        await asyncio.sleep(0)
    return k


def chatty_expected(k: int, lines: int = 5) -> str:
    return "".join(f"task {k} line {j}\ntask {k} piece {j}\ntask {k} err {j}\n" for j in range(lines))


_barriers: dict[int, threading.Barrier] = {}
_barriers_lock = threading.Lock()


def threaded(k: int, parties: int) -> int:
    """A plain io function: every one of ``parties`` threads has printed its
    first line before any prints its second (they run at once)."""
    with _barriers_lock:
        barrier = _barriers.setdefault(parties, threading.Barrier(parties))
    print(f"thread {k} first")
    barrier.wait(timeout=30)
    print(f"thread {k} second")
    barrier.wait(timeout=30)
    with _barriers_lock:
        _barriers.pop(parties, None)
    return k


def logs_and_prints() -> str:
    logger = logging.getLogger("test_output.task")
    logger.setLevel(logging.INFO)
    logger.info("an info record")
    logger.debug("below the logger's level")
    print("a printed line")
    return "ok"


def quiet() -> int:
    return 1


def flood(total: int, block_lines: int = 1000) -> int:
    """Writes ``total`` characters (a multiple of 100) in 100-character
    lines, a block of lines per write."""
    line = "y" * 99 + "\n"
    sys.stdout.write("first".ljust(99, "-") + "\n")
    left = total // 100 - 2
    while left:
        n = min(left, block_lines)
        sys.stdout.write(line * n)
        left -= n
    sys.stdout.write("last".ljust(99, "-") + "\n")
    return total


def flaky(marks: str) -> str:
    path = Path(marks) / "ran"
    attempt = 2 if path.exists() else 1
    path.write_text("x")
    print(f"attempt {attempt}")
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


def crashes() -> None:
    print("last words")
    time.sleep(0.3)  # (the line is sent as soon as the worker's loop gets to it)
    os._exit(3)


def fails_after_printing() -> None:
    print("working on it")
    print("something is off", file=sys.stderr)
    raise ValueError("boom")


# -- attribution -------------------------------------------------------------------


@pytest.mark.parametrize("runner", [taskmap.run_async, *PARALLEL[1:]], ids=["run_async", "run_parallel_async"])
def test_200_coroutines_printing_interleaved_lines_on_one_loop_each_get_exactly_theirs(runner, capsys):
    n = 200
    funcs = {f"c{k}": functools.partial(chatty, k) for k in range(n)}
    graph = taskmap.create_graph(funcs, {name: [] for name in funcs}, io_bound=list(funcs))
    runner(graph, output="prefix")
    assert graph.results == {f"c{k}": k for k in range(n)}
    for k in range(n):
        assert graph.output[f"c{k}"] == chatty_expected(k), k
    shown = capsys.readouterr()
    out_lines = shown.out.splitlines()
    # every line shown whole, under its own task's prefix
    assert all(re.fullmatch(r"\[c(\d+)\] task \1 (line|piece) \d+", line) for line in out_lines)
    assert all(re.fullmatch(r"\[c(\d+)\] task \1 err \d+", line) for line in shown.err.splitlines())
    assert len(out_lines) == n * 10
    # and they did interleave: the first 200 lines shown come from many tasks
    assert len({line.split("]")[0] for line in out_lines[:n]}) > n // 2


@pytest.mark.parametrize(
    "runner", [taskmap.run_async, PARALLEL[1]], ids=["run_async threads", "run_parallel_async io threads"]
)
def test_plain_functions_in_threads_each_get_exactly_their_lines(runner):
    n = 24
    funcs = {f"t{k}": functools.partial(threaded, k, n) for k in range(n)}
    graph = taskmap.create_graph(funcs, {name: [] for name in funcs}, io_bound=list(funcs))
    runner(graph, output="capture")
    assert graph.results == {f"t{k}": k for k in range(n)}
    for k in range(n):
        assert graph.output[f"t{k}"] == f"thread {k} first\nthread {k} second\n"


@pytest.mark.parametrize("runner", LOCAL + PARALLEL, ids=["run", "run_async", "run_parallel", "run_parallel_async"])
def test_every_runner_keeps_prints_and_emitted_log_records_and_nothing_for_silent_tasks(runner, capsys):
    graph = taskmap.create_graph({"talk": logs_and_prints, "quiet": quiet}, {"talk": [], "quiet": []})
    runner(graph)
    assert graph.output == {"talk": "INFO:test_output.task:an info record\na printed line\n"}
    shown = capsys.readouterr()
    assert "a printed line\n" in shown.out  # pass: as print would show it
    assert "an info record" not in shown.out + shown.err  # (no handler of the user's prints it)


@pytest.mark.parametrize("runner", LOCAL + PARALLEL[1:], ids=["run", "run_async", "run_parallel_async"])
def test_capture_level_leaves_out_records_below_it(runner):
    graph = taskmap.create_graph({"talk": logs_and_prints}, {"talk": []})
    runner(graph, output="capture", capture_level="WARNING")
    assert graph.output == {"talk": "a printed line\n"}


def test_the_users_logging_and_streams_are_as_they_were_after_a_run():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stdout, stderr = sys.stdout, sys.stderr
    seen: list[str] = []

    class Listener(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    listener = Listener(logging.INFO)
    logging.getLogger("test_output.task").addHandler(listener)
    try:
        for runner in LOCAL:
            graph = taskmap.create_graph({"talk": logs_and_prints}, {"talk": []})
            runner(graph, output="capture")
    finally:
        logging.getLogger("test_output.task").removeHandler(listener)
    assert seen == ["an info record", "an info record"]  # the user's handler got every record
    assert root.handlers == handlers and root.level == level
    assert sys.stdout is stdout and sys.stderr is stderr


# -- graph.output ------------------------------------------------------------------


@pytest.mark.parametrize("runner", [taskmap.run, PARALLEL[0]], ids=["run", "run_parallel"])
def test_the_cap_holds_for_a_task_printing_100_mb(runner):
    total = 100_000_000
    graph = taskmap.create_graph({"flood": functools.partial(flood, total)}, {"flood": []})
    runner(graph, output="capture")
    assert graph.results["flood"] == total
    text = graph.output["flood"]
    assert len(text) <= KeptText.CAP
    assert text.startswith("first".ljust(99, "-") + "\n" + "y" * 99 + "\n")
    assert text.endswith("y" * 99 + "\n" + "last".ljust(99, "-") + "\n")
    cut = int(re.search(r"\[taskmap: (\d+) characters of output cut here\]", text).group(1))
    assert cut == total - KeptText.HEAD - KeptText.TAIL


def test_a_retried_task_keeps_the_output_of_its_last_attempt(tmp_path):
    graph = taskmap.create_graph({"flaky": functools.partial(flaky, str(tmp_path))}, {"flaky": []})
    taskmap.run_parallel_async(graph, ncores=1, retries=1, output="capture")
    assert graph.results["flaky"] == "ok"
    assert graph.output == {"flaky": "attempt 2\n"}


def test_a_task_whose_worker_dies_keeps_what_it_wrote_before():
    graph = taskmap.create_graph({"crashes": crashes}, {"crashes": []})
    taskmap.run_parallel(graph, ncores=1, output="capture")
    assert isinstance(graph.results["crashes"], taskmap.WorkerCrashedError)
    assert graph.output == {"crashes": "last words\n"}


@pytest.mark.parametrize("runner", LOCAL + PARALLEL[1:], ids=["run", "run_async", "run_parallel_async"])
def test_a_rerun_replaces_a_tasks_output_and_a_silent_rerun_removes_it(runner):
    state = {"talk": True}

    def maybe_talk():
        if state["talk"]:
            print("talking")
        return 1

    graph = taskmap.create_graph({"t": maybe_talk, "child": quiet}, {"t": [], "child": ["t"]})
    runner(graph, output="capture")
    assert graph.output == {"t": "talking\n"}
    taskmap.reset_tasks(graph, ["t"])
    assert graph.output == {}  # (reset with its result)
    runner(graph, output="capture")
    assert graph.output == {"t": "talking\n"}
    state["talk"] = False
    del graph.done[graph.done.index("t")]  # (rerun it without a reset: its old text must go)
    del graph.done[graph.done.index("child")]
    runner(graph, output="capture")
    assert graph.output == {}


def test_a_failed_tasks_output_is_kept_with_its_error():
    graph = taskmap.create_graph({"bad": fails_after_printing, "child": quiet}, {"bad": [], "child": ["bad"]})
    taskmap.run_parallel_async(graph, ncores=1, output="capture")
    assert isinstance(graph.results["bad"], ValueError)
    assert graph.output == {"bad": "working on it\nsomething is off\n"}


# -- the options -------------------------------------------------------------------


def test_output_and_capture_level_are_checked():
    graph = taskmap.create_graph({"q": quiet}, {"q": []})
    with pytest.raises(ValueError, match="output must be one of"):
        taskmap.run(graph, output="loud")
    with pytest.raises(ValueError, match="not a logging level name"):
        taskmap.run(graph, capture_level="LOUD")
    with pytest.raises(TypeError, match="capture_level"):
        taskmap.run(graph, capture_level=True)
    assert resolve_output("prefix", "debug") == ("prefix", logging.DEBUG)
    assert resolve_output("capture", 25) == ("capture", 25)


# -- what reaches the real terminal --------------------------------------------------

_SCRIPT = """
import asyncio, functools, logging, sys
import taskmap

async def co(k):
    for j in range(4):
        sys.stdout.write(f"task {k} ")
        await asyncio.sleep(0.001)
        sys.stdout.write(f"line {j} ")
        await asyncio.sleep(0)
        sys.stdout.write("end\\n")
    print(f"task {k} to stderr", file=sys.stderr)
    logging.getLogger("script").warning("a warning, no handler anywhere")
    return k

def cpu(k):
    print(f"cpu {k} says", end=" ")
    print("hello")
    return k

if __name__ == "__main__":
    mode = sys.argv[1]
    funcs = {f"io{k}": functools.partial(co, k) for k in range(40)}
    funcs.update({f"cpu{k}": functools.partial(cpu, k) for k in range(4)})
    deps = {name: [] for name in funcs}
    io = [n for n in funcs if n.startswith("io")]
    outputs = 0
    for runner in (taskmap.run, taskmap.run_async, taskmap.run_parallel, taskmap.run_parallel_async):
        graph = taskmap.create_graph(funcs, deps, io_bound=io)
        kw = {"ncores": 2} if "parallel" in runner.__name__ else {}
        runner(graph, output=mode, **kw)
        outputs += len(graph.output)
    sys.stdout.flush()
    sys.__stdout__.write(f"DONE {outputs}\\n")
"""


def _run_script(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    return subprocess.run(
        [sys.executable, str(script), mode], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_capture_prints_nothing_on_the_real_stdout_and_stderr(tmp_path):
    done = _run_script(tmp_path, "capture")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "DONE 176\n"
    assert done.stderr == ""


@pytest.mark.parametrize("mode", ["pass", "prefix"])
def test_pass_and_prefix_show_every_line_whole_on_the_real_streams(tmp_path, mode):
    done = _run_script(tmp_path, mode)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "DONE 176"
    prefix = r"\[(?:io|cpu)(\d+)\] " if mode == "prefix" else ""
    body = r"(?:task (\d+) line \d+ end|cpu (\d+) says hello)"
    for line in lines[:-1]:
        match = re.fullmatch(prefix + body, line)
        assert match, line
        if mode == "prefix":  # under its own task's name
            assert match.group(1) == (match.group(2) or match.group(3)), line
    assert len(lines) - 1 == 4 * (40 * 4 + 4)
    err = done.stderr.splitlines()
    assert len(err) == 4 * 40 * 2
    assert sorted(set(err))[0].startswith("[io" if mode == "prefix" else "a warning")


def closes_stdout() -> int:
    sys.stdout.close()
    return 1


def prints_after(_: int) -> int:
    print("after a task closed stdout")
    return 2


def test_a_task_that_closes_stdout_in_a_worker_leaves_capture_working_for_the_next():
    graph = taskmap.create_graph({"close": closes_stdout, "after": prints_after}, {"close": [], "after": ["close"]})
    taskmap.run_parallel(graph, ncores=1, output="capture")
    assert graph.results == {"close": 1, "after": 2}
    assert graph.output == {"after": "after a task closed stdout\n"}
