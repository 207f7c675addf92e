"""The command line: ``python -m taskmap`` and the ``taskmap`` console script,
run as a user runs them (subprocesses), plus in-process checks of its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import cloudpickle
import pytest

import taskmap
from taskmap.cli import main
from taskmap.loader import PipelineError, load_graph

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60

PIPE = """\
import asyncio
from pathlib import Path

from helper import triple          # a module beside the pipeline file

OUT = Path(__file__).with_name("out.txt")


async def fetch():
    await asyncio.sleep(0.01)
    return 3


def square(x):
    return x * x


def boom(x):
    raise ValueError(f"bad {triple(x)}")


def after(x):
    return x


def save(a, b):
    OUT.write_text(f"{a} {b}")
    return a + b


funcs = {"fetch": fetch, "square": square, "boom": boom, "after": after,
         "tripled": triple, "save": save}
dependencies = {"fetch": [], "square": ["fetch"], "boom": ["fetch"], "after": ["boom"],
                "tripled": ["fetch"], "save": ["square", "tripled"]}
io_bound = ["fetch"]
"""
BOOM_LINE = PIPE.splitlines().index('    raise ValueError(f"bad {triple(x)}")') + 1

GOOD = """\
import taskmap


def one():
    return 1


def two(x):
    return x + 1


graph = taskmap.create_graph({"one": one, "two": two}, {"one": [], "two": ["one"]}, name="good")
other = taskmap.create_graph({"solo": one}, {"solo": []}, name="other")
"""

FLAKY = """\
from pathlib import Path

HERE = Path(__file__).parent


def source():
    with open(HERE / "source-runs", "a") as f:   # count how often it runs
        f.write("x")
    return 2


def fragile(x):
    if not (HERE / "fixed").exists():
        raise RuntimeError("not fixed yet")
    return x * 10


def final(x):
    return x + 1


funcs = {"source": source, "fragile": fragile, "final": final}
dependencies = {"source": [], "fragile": ["source"], "final": ["fragile"]}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def console_script() -> str:
    for candidate in (Path(sysconfig.get_path("scripts")) / "taskmap", Path(sys.executable).parent / "taskmap"):
        if candidate.is_file():
            return str(candidate)
    pytest.skip("the `taskmap` console script is not installed (pip install -e .)")


def cli(*args: str, cwd: Path, console: bool = False) -> subprocess.CompletedProcess:
    command = [console_script()] if console else [sys.executable, "-m", "taskmap"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture
def isolated_imports(tmp_path):
    """For in-process loads: forget the pipeline modules and sys.path entries after."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            try:
                cloudpickle.unregister_pickle_by_value(module)
            except ValueError:
                pass
            del sys.modules[name]


# -- through subprocesses --------------------------------------------------------


def test_run_a_pipeline_on_worker_processes(tmp_path):
    write(tmp_path, "pipe.py", PIPE)
    write(tmp_path, "helper.py", "def triple(x):\n    return 3 * x\n")
    proc = cli("run", "pipe.py", "--ncores", "2", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a task failed
    assert f"FAILED boom: ValueError: bad 9 (pipe.py:{BOOM_LINE})" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "task/s" not in proc.stderr  # stderr is not a terminal: no progress bar
    out = proc.stdout
    assert "taskmap summary: pipe (run_parallel_async, 2 workers)" in out
    assert "4 done, 1 failed, 1 skipped, 0 not run" in out and "critical path" in out
    # functions of the pipeline and of its helper module ran in the workers
    assert (tmp_path / "out.txt").read_text() == "9 9"


def test_console_script_runs_a_named_graph_with_progress_and_trace(tmp_path):
    write(tmp_path, "good.py", GOOD)
    proc = cli(
        "run", "good.py:graph", "--runner", "async", "--progress", "--trace", "t.json", cwd=tmp_path, console=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "good: 100%" in proc.stderr and "2/2" in proc.stderr  # --progress forces the bar
    assert "trace written to t.json" in proc.stderr
    trace = json.loads((tmp_path / "t.json").read_text())
    assert sorted(e["name"] for e in trace["traceEvents"] if e.get("cat") == "cpu") == ["one", "two"]
    assert "taskmap summary: good (run_async, 1 worker)" in proc.stdout
    assert "2 done, 0 failed, 0 skipped, 0 not run" in proc.stdout


@pytest.mark.parametrize(
    "source, where",
    [
        ("x = 1\ndef f(:\n    pass\n", "syntax.py:2: SyntaxError: "),
        ("import os\n\nvalue = 1 / 0\n", "syntax.py:3: ZeroDivisionError: division by zero"),
    ],
)
def test_errors_in_the_pipeline_file_give_file_and_line(tmp_path, source, where):
    write(tmp_path, "syntax.py", source)
    proc = cli("run", "syntax.py", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"taskmap: error: {where}"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_graph_command_prints_mermaid_and_writes_dot(tmp_path):
    write(tmp_path, "good.py", GOOD)
    proc = cli("graph", "good.py", "--format", "mermaid", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("flowchart LR\n") and 'n1["two"]:::notrun' in proc.stdout
    proc = cli("graph", "good.py:other", "-f", "dot", "-o", "other.dot", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == ""
    dot = (tmp_path / "other.dot").read_text()
    assert dot.startswith('digraph "other" {') and 'label="solo"' in dot


def test_the_example_pipeline_of_the_readme(tmp_path):
    proc = cli("run", str(REPO / "examples" / "pipeline.py"), "--runner", "async", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "taskmap summary: pipeline (run_async, 1 worker)" in proc.stdout
    assert "4 done, 0 failed, 0 skipped, 0 not run" in proc.stdout


def test_help_through_the_module(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("run", "graph", "rerun-failed"):
        assert command in proc.stdout


def test_rerun_failed_reruns_only_the_failed_tasks(tmp_path):
    pytest.importorskip("taskmap.checkpoint")
    write(tmp_path, "flaky.py", FLAKY)
    proc = cli("run", "flaky.py", "--checkpoint", "run.db", "--runner", "sequential", cwd=tmp_path)
    assert proc.returncode == 1 and "FAILED fragile: RuntimeError: not fixed yet" in proc.stderr
    before = (tmp_path / "run.db").read_bytes()
    proc = cli("graph", "flaky.py", "--checkpoint", "run.db", "-f", "mermaid", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in ('n0["source"]:::done', 'n1["fragile"]:::failed', 'n2["final"]:::skipped'):
        assert line in proc.stdout, proc.stdout
    assert (tmp_path / "run.db").read_bytes() == before  # only read

    proc = cli("rerun-failed", "flaky.py", "--checkpoint", "run.db", "--runner", "sequential", cwd=tmp_path)
    assert proc.returncode == 1 and "rerunning 1 failed task" in proc.stderr

    (tmp_path / "fixed").touch()
    proc = cli("rerun-failed", "flaky.py", "--checkpoint", "run.db", "--ncores", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 done, 0 failed, 0 skipped, 0 not run (2 finished in this run)" in proc.stdout
    assert (tmp_path / "source-runs").read_text() == "x"  # restored, never rerun

    proc = cli("rerun-failed", "flaky.py", "--checkpoint", "run.db", cwd=tmp_path)
    assert proc.returncode == 0 and "no failed tasks in run.db" in proc.stdout

    # a changed function: its stored result would not be kept
    write(tmp_path, "flaky.py", FLAKY.replace("return x + 1", "return x + 2"))
    proc = cli("graph", "flaky.py", "--checkpoint", "run.db", "-f", "mermaid", cwd=tmp_path)
    for line in ('n0["source"]:::done', 'n1["fragile"]:::done', 'n2["final"]:::notrun'):
        assert line in proc.stdout, proc.stdout


# -- in process: usage errors and options ----------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["graph"], ["rerun-failed"]])
def test_help_on_each_command(capsys, command):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: taskmap" + (f" {command[0]}" if command else ""))
    if command and command[0] != "graph":
        for option in ("--ncores", "--progress", "--trace", "--raise-errors", "--runner"):
            assert option in out


def test_usage_errors_exit_2(tmp_path, capsys, isolated_imports):
    write(tmp_path, "good.py", GOOD)
    write(tmp_path, "two.py", GOOD.replace("graph = ", "first = "))
    write(tmp_path, "empty.py", "x = 1\n")
    write(tmp_path, "cycle.py", "funcs = {'a': len, 'b': len}\ndependencies = {'a': ['b'], 'b': ['a']}\n")
    cases = {
        ("run", str(tmp_path / "missing.py")): "no such file",
        ("run", str(tmp_path / "two.py")): "defines several graphs (first, other); choose one",
        ("run", str(tmp_path / "good.py") + ":nothing"): "defines no 'nothing' (its graphs: graph, other)",
        ("run", str(tmp_path / "empty.py")): "defines no taskmap graph",
        ("graph", str(tmp_path / "cycle.py")): "invalid graph: Cyclic dependency",
        (
            "rerun-failed",
            str(tmp_path / "good.py"),
            "--checkpoint",
            str(tmp_path / "none.db"),
        ): "no checkpoint store at",
        ("run", str(tmp_path / "good.py"), "--trace", str(tmp_path / "no" / "t.json")): "does not exist",
        ("graph", str(tmp_path / "good.py"), "--format", "svg"): "give a file with -o FILE",
        ("run", str(tmp_path / "good.py"), "--ncores", "0"): "must be at least 1",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)


def test_exit_status_and_output_of_a_run_in_process(tmp_path, capsys, isolated_imports):
    write(tmp_path, "pipe.py", PIPE)
    write(tmp_path, "helper.py", "def triple(x):\n    return 3 * x\n")
    assert main(["run", str(tmp_path / "pipe.py"), "--runner", "sequential", "--raise-errors"]) == 1
    captured = capsys.readouterr()
    assert "stopped at the first failure (--raise-errors): task 'boom' failed" in captured.err
    assert f"pipe.py:{BOOM_LINE}: ValueError: bad 9" in captured.err
    assert "taskmap summary: pipe (run, 1 worker)" in captured.out

    write(tmp_path, "good.py", GOOD)
    assert main(["run", str(tmp_path / "good.py"), "--runner", "parallel", "--ncores", "1", "--no-summary"]) == 0
    assert capsys.readouterr().out == ""


def test_pipeline_functions_reach_workers_by_value(tmp_path, isolated_imports):
    # the workers cannot import the pipeline: its file is gone by the time they run
    taskmap.run_parallel_async(taskmap.create_graph({"warm": int}, {"warm": []}), ncores=2)
    path = write(
        tmp_path,
        "gone.py",
        """\
        class Box:
            def __init__(self, v):
                self.v = v

        def make():
            return Box(20)

        def unbox(box):
            return box.v + 1

        funcs = {"make": make, "unbox": unbox}
        dependencies = {"make": [], "unbox": ["make"]}
        """,
    )
    graph = load_graph(str(path))
    path.unlink()
    taskmap.run_parallel_async(graph, ncores=2)
    assert graph.results["unbox"] == 21 and type(graph.results["make"]).__name__ == "Box"


def test_load_graph_reports_errors_raised_by_a_graph_factory(tmp_path, isolated_imports):
    path = write(tmp_path, "factory.py", "def build():\n    raise KeyError('no data')\n")
    with pytest.raises(PipelineError, match=r"factory.py:2: KeyError: 'no data'"):
        load_graph(f"{path}:build")


SHM_PIPE = """\
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("out.txt")


def make():
    return np.ones(1 << 17)  # 1 MiB


def look(a):
    OUT.write_text("read-only" if not a.flags.writeable else "own copy")
    return a.sum()


funcs = {"make": make, "look": look}
dependencies = {"make": [], "look": ["make"]}
io_bound = ["look"]   # not pinned behind make: its argument crosses processes
"""


@pytest.mark.parametrize("flag, seen", [("512K", "read-only"), ("off", "own copy"), ("2M", "own copy")])
def test_shm_threshold_option(tmp_path, capsys, isolated_imports, flag, seen):
    path = write(tmp_path, "big.py", SHM_PIPE)
    assert main(["run", str(path), "--ncores", "1", "--no-summary", "--shm-threshold", flag]) == 0
    assert (tmp_path / "out.txt").read_text() == seen


def test_shm_threshold_option_rejects_what_is_not_a_size(tmp_path, capsys):
    path = write(tmp_path, "big.py", SHM_PIPE)
    assert main(["run", str(path), "--shm-threshold", "lots"]) == 2
    assert "'lots' is not a size" in capsys.readouterr().err


CHATTY = """\
import sys
from pathlib import Path

HERE = Path(__file__).parent


def talk():
    print("talking")
    return 1


def fragile(x):
    for k in range(30):
        print(f"step {k}")
    print("about to check", file=sys.stderr)
    if not (HERE / "fixed").exists():
        raise RuntimeError("not fixed yet")
    return x


funcs = {"talk": talk, "fragile": fragile}
dependencies = {"talk": [], "fragile": ["talk"]}
"""


def test_run_prefixes_task_output_and_prints_a_failed_tasks_last_lines_under_it(tmp_path):
    write(tmp_path, "chatty.py", CHATTY)
    proc = cli("run", "chatty.py", "--ncores", "1", "--checkpoint", "run.db", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[talk] talking\n" in proc.stdout and "[fragile] step 29\n" in proc.stdout  # the CLI's default: prefix
    assert "[fragile] about to check\n" in proc.stderr
    failure = proc.stderr[proc.stderr.index("FAILED fragile: RuntimeError: not fixed yet") :]
    tail = [line.strip() for line in failure.splitlines()[2:22]]
    assert tail == [f"step {k}" for k in range(11, 30)] + ["about to check"]
    # and the summary table ends with it too
    assert "output of failed task fragile (its last lines):\n    step 11\n" in proc.stdout

    proc = cli("rerun-failed", "chatty.py", "--checkpoint", "run.db", "--output", "capture", cwd=tmp_path)
    assert proc.returncode == 1
    shown = proc.stderr[proc.stderr.index("last output of fragile when it failed:") :]
    assert "    step 29\n    about to check\n" in shown
    assert "[fragile]" not in proc.stdout + proc.stderr  # capture: nothing shown live


def test_output_options_reach_the_runner(tmp_path, capsys, isolated_imports):
    write(tmp_path, "chatty.py", CHATTY)
    (tmp_path / "fixed").touch()
    argv = ["run", str(tmp_path / "chatty.py"), "--runner", "sequential", "--no-summary"]
    assert main([*argv, "--output", "pass"]) == 0
    assert capsys.readouterr().out == "talking\n" + "".join(f"step {k}\n" for k in range(30))
    assert main([*argv, "--output", "capture"]) == 0
    assert capsys.readouterr().out == ""
    assert main([*argv, "--capture-level", "LOUD"]) == 2
    assert "capture_level 'LOUD' is not a logging level name" in capsys.readouterr().err
