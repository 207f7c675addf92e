"""A warm worker behaves like a fresh one (issue 25): code the caller
reloaded, its cwd, environment and sys.path reach the warm workers at the
start of each run, and a task's chdir or closed stream does not outlive it.

Every test runs on both parallel runners with a warm pool of two workers and
makes both workers take part (io tasks go to the worker with the fewest in
flight; each result carries the worker's pid)."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
import uuid

import pytest

import taskmap
from taskmap.runtime import process_setup
from taskmap.runtime.pool import get_pool
from taskmap.scheduling.ledger import IO_CHUNK

RUNNERS = [taskmap.run_parallel, taskmap.run_parallel_async]

MODULE = """
import asyncio, os

VERSION = {version!r}

async def where(*_):
    await asyncio.sleep(0.05)  # (both workers get one)
    return VERSION, os.getpid()

def plain(*_):
    return {version!r}  # (in the code, so the checkpoint's fingerprint sees it)
"""


@contextlib.contextmanager
def imported(folder, prefix: str, version: str, monkeypatch):
    """A fresh module ``<prefix>_<random>`` (MODULE at ``version``) written in
    ``folder``, which goes first on sys.path, and imported; forgotten after."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(MODULE.format(version=version))
    monkeypatch.syspath_prepend(str(folder))
    try:
        yield importlib.import_module(name)
    finally:
        sys.modules.pop(name, None)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A fresh user module in its own directory on sys.path; ``write(v)``
    rewrites its file (each version a different size, so no stale bytecode
    can pass for it)."""
    with imported(tmp_path, "usermod", "v1", monkeypatch) as module:
        path = tmp_path / f"{module.__name__}.py"

        def write(version: str) -> None:
            path.write_text(MODULE.format(version=version))

        module.write = write
        yield module


def spread_graph(func, n: int = 2 * IO_CHUNK):
    """n io tasks of ``func`` (results: (version, pid)); by default enough
    for both workers (io tasks ready together go to a worker IO_CHUNK at a
    time)."""
    names = [f"t{k}" for k in range(n)]
    return taskmap.create_graph({t: func for t in names}, {t: [] for t in names}, io_bound=names)


def run(runner, graph):
    return runner(graph, ncores=2)


@pytest.fixture(autouse=True)
def two_warm_workers():
    """Both workers up (a worker still booting gets no task), so that the
    io tasks of a run spread over both."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        graph = run(taskmap.run_parallel_async, spread_graph(where_am_i))
        if len({pid for _, _, pid in graph.results.values()}) == 2:
            return
        time.sleep(0.05)  # (a new worker's HELLO is read during a run)
    raise AssertionError("the two workers never both took a task")


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_module_edited_and_reloaded_between_runs_runs_the_new_code(runner, user_module):
    first = run(runner, spread_graph(user_module.where))
    assert {v for v, _ in first.results.values()} == {"v1"}
    assert len({pid for _, pid in first.results.values()}) == 2  # both workers imported v1

    user_module.write("v22")
    importlib.reload(user_module)
    assert user_module.VERSION == "v22"

    second = run(runner, spread_graph(user_module.where))
    assert {v for v, _ in second.results.values()} == {"v22"}
    assert len({pid for _, pid in second.results.values()}) == 2


@pytest.mark.parametrize("runner", RUNNERS)
def test_partials_of_a_reloaded_modules_function_run_the_new_code(runner, user_module):
    """A partial's function travels by name and the worker keeps what it
    looked up across runs: a reload must make it look again."""
    import functools

    def graph():
        return spread_graph(functools.partial(user_module.where, "an argument"))

    assert {v for v, _ in run(runner, graph()).results.values()} == {"v1"}
    user_module.write("v22")
    importlib.reload(user_module)
    assert {v for v, _ in run(runner, graph()).results.values()} == {"v22"}


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_reload_keeps_class_identity_and_module_globals(runner, tmp_path, monkeypatch):
    """The worker reloads the module (as the caller did) rather than getting
    a copy by value: a value of the reloaded class built in the caller is an
    instance of the class the worker's functions see, and module state is
    one per worker, not reset per task."""
    name = f"usermod_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    source = """
CALLS = []

class Point:
    def __init__(self, x):
        self.x = x

def check(p):
    CALLS.append(p.x)
    return isinstance(p, Point), p.x * {factor}, len(CALLS)

def make():
    return Point(3)
"""
    path.write_text(source.format(factor=1))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    try:
        graph = taskmap.create_graph({"p": module.make, "c": module.check}, {"p": [], "c": ["p"]})
        assert runner(graph, ncores=2).results["c"][:2] == (True, 3)
        path.write_text(source.format(factor=100))
        importlib.reload(module)
        graph = taskmap.create_graph({"c": module.check}, {"c": []}, done=[], results=None)
        graph = taskmap.create_graph({"p": module.make, "c": module.check}, {"p": [], "c": ["p"]})
        ok, value, _ = runner(graph, ncores=2).results["c"]
        assert (ok, value) == (True, 300)
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("runner", RUNNERS)
def test_the_checkpoint_never_holds_a_result_of_old_code(runner, user_module, tmp_path):
    store = str(tmp_path / "run.db")

    def graph():
        return taskmap.create_graph({"a": user_module.plain}, {"a": []}, checkpoint=store)

    assert run(runner, graph()).results["a"] == "v1"
    user_module.write("v22")
    importlib.reload(user_module)
    # the store sees a changed function and reruns it: on the new code
    assert run(runner, graph()).results["a"] == "v22"
    # and restores the new result afterwards, without running it
    restored = run(runner, graph())
    assert restored.results["a"] == "v22"


def where_am_i(*_):
    return os.getcwd(), os.environ.get("TASKMAP_TEST_SETUP"), os.getpid()


@pytest.mark.parametrize("runner", RUNNERS)
def test_cwd_and_environment_changed_between_runs_reach_warm_workers(runner, tmp_path, monkeypatch):
    run(runner, spread_graph(where_am_i))  # the workers are warm now
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKMAP_TEST_SETUP", "set after the pool started")
    graph = run(runner, spread_graph(where_am_i))
    assert {(cwd, env) for cwd, env, _ in graph.results.values()} == {(str(tmp_path), "set after the pool started")}
    assert len({pid for _, _, pid in graph.results.values()}) == 2
    monkeypatch.delenv("TASKMAP_TEST_SETUP")
    graph = run(runner, spread_graph(where_am_i))
    assert {env for _, env, _ in graph.results.values()} == {None}


@pytest.mark.parametrize("runner", RUNNERS)
def test_environment_values_that_are_not_utf8_arrive_as_bytes(runner, monkeypatch):
    run(runner, spread_graph(where_am_i))
    monkeypatch.setitem(os.environb, b"TASKMAP_TEST_SETUP", b"caf\xe9")
    graph = run(runner, spread_graph(where_am_i))
    assert {env for _, env, _ in graph.results.values()} == {os.environ["TASKMAP_TEST_SETUP"]}


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_directory_added_to_sys_path_late_is_seen_by_warm_workers(runner, tmp_path, monkeypatch):
    run(runner, spread_graph(where_am_i))
    with imported(tmp_path, "latemod", "late", monkeypatch) as module:
        graph = run(runner, spread_graph(module.where))
        assert {v for v, _ in graph.results.values()} == {"late"}


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_module_the_workers_find_through_a_symlink_is_the_callers_own(runner, tmp_path, monkeypatch):
    # the caller imported it from its directory; later a symlink to that
    # directory comes first on sys.path, so a worker importing it fresh
    # finds the same file under another name: the same code, not stale
    run(runner, spread_graph(where_am_i))
    real = tmp_path / "real"
    with imported(real, "linkedmod", "linked", monkeypatch) as module:
        (tmp_path / "link").symlink_to(real)
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend("link")  # (relative, as a script's own directory often is)
        graph = run(runner, spread_graph(module.where))
        assert {v for v, _ in graph.results.values()} == {"linked"}, graph.results


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_module_the_workers_would_find_in_another_file_is_refused_naming_both(runner, tmp_path, monkeypatch):
    run(runner, spread_graph(where_am_i))
    with imported(tmp_path / "first", "shadowedmod", "caller's", monkeypatch) as module:
        name = module.__name__
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / f"{name}.py").write_text(MODULE.format(version="another"))
        monkeypatch.syspath_prepend(str(tmp_path / "other"))  # a fresh import now finds the other file
        graph = run(runner, spread_graph(module.where))
        errors = set(map(str, graph.results.values()))
        assert len(errors) == 1, errors
        (error,) = errors
        assert f"the worker found it in {tmp_path / 'other' / name}.py" in error, error
        assert f"the caller has it from {tmp_path / 'first' / name}.py" in error, error


def close_stdout():
    sys.stdout.close()
    return "closed"


def print_something(*_):
    # (the worker's fd 1 is whatever it was when the pool started, not this
    # test's capture: what counts is that printing works, on fd 1)
    print("still printing")
    sys.stdout.flush()
    return "printed", sys.stdout.fileno()


def move_away(*_):
    os.chdir("/")
    return os.getcwd()


def cpu_where(*_):
    return os.getcwd()


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_task_closing_stdout_does_not_break_later_tasks(runner):
    # one worker, so the later tasks share the process of the one that closed it
    graph = taskmap.create_graph(
        {"close": close_stdout, "after": print_something, "later": print_something},
        {"close": [], "after": ["close"], "later": ["after"]},
    )
    graph = runner(graph, ncores=1)
    assert graph.results == {"close": "closed", "after": ("printed", 1), "later": ("printed", 1)}
    graph = runner(taskmap.create_graph({"next": print_something}, {"next": []}), ncores=1)
    assert graph.results == {"next": ("printed", 1)}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("io", [False, True])
def test_a_task_changing_directory_does_not_move_later_tasks(runner, io, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = ["move", "after"]
    graph = taskmap.create_graph(
        {"move": move_away, "after": cpu_where},
        {"move": [], "after": ["move"]},
        io_bound=names if io else [],
    )
    graph = runner(graph, ncores=1)
    assert graph.results == {"move": "/", "after": str(tmp_path)}


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_reload_that_fails_in_the_worker_fails_that_modules_tasks(runner, user_module):
    run(runner, spread_graph(user_module.where))
    user_module.write("v22")
    importlib.reload(user_module)
    # broken after the caller's reload: the worker's reload fails
    path = user_module.__file__
    with open(path, "a") as f:
        f.write("\nraise RuntimeError('half-edited module')\n")
    graph = taskmap.create_graph(
        {"stale": user_module.where, "other": where_am_i},
        {"stale": [], "other": []},
        io_bound=["stale"],
    )
    graph = run(runner, graph)
    error = graph.results["stale"]
    assert isinstance(error, taskmap.StaleCodeError), error
    assert user_module.__name__ in str(error) and "half-edited module" in str(error)
    assert graph.results["other"][0] == os.getcwd()  # other modules' tasks run


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_module_edited_without_reload_is_refused_where_a_worker_would_import_the_edit(runner, user_module):
    # the caller has v1 loaded; no worker has imported the module yet
    run(runner, spread_graph(where_am_i))
    os.utime(user_module.__file__, ns=(1, 1))  # (a known, different stat)
    run(runner, spread_graph(where_am_i))  # the caller's version is read now: v1's stat
    user_module.write("v333")  # edited on disk, not reloaded in the caller
    graph = run(runner, spread_graph(user_module.where))
    for result in graph.results.values():
        assert isinstance(result, taskmap.StaleCodeError), result
        assert "changed after the caller loaded it" in str(result)
    # once the caller reloads, the workers run what it runs
    importlib.reload(user_module)
    graph = run(runner, spread_graph(user_module.where))
    assert {v for v, _ in graph.results.values()} == {"v333"}


# -- the caller's side, no process --------------------------------------------


def test_an_unchanged_setup_is_the_same_snapshot_and_sends_nothing():
    first = process_setup.snapshot()
    assert process_setup.snapshot() is first
    assert process_setup.message_body(first, first) is None


def test_a_changed_setup_sends_only_what_changed(monkeypatch, tmp_path):
    before = process_setup.snapshot()
    monkeypatch.setenv("TASKMAP_TEST_SETUP", "x")
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    after = process_setup.snapshot()
    body = process_setup.message_body(before, after)
    assert body["cwd"] == str(tmp_path)
    assert body["env_set"] == {b"TASKMAP_TEST_SETUP": b"x"}
    assert body["env_unset"] == ([b"HOME"] if b"HOME" in before.environ else [])
    assert "path" not in body and "modules" not in body
    full = process_setup.message_body(None, after)
    assert set(full) == {"cwd", "environ", "path", "modules"}


def test_user_modules_are_versioned_and_a_reload_gives_a_new_version(user_module):
    versions = process_setup.snapshot().modules
    name = user_module.__name__
    assert versions[name][0] == user_module.__file__
    assert "taskmap.runtime.worker" not in versions and "os" not in versions and "pytest" not in versions
    user_module.write("v22")
    assert process_setup.snapshot().modules[name] == versions[name]  # not reloaded: same code
    importlib.reload(user_module)
    assert process_setup.snapshot().modules[name] != versions[name]


def test_dependencies_are_reloaded_first(tmp_path, monkeypatch):
    a, b = (f"dep_{k}_{uuid.uuid4().hex[:6]}" for k in "ab")
    (tmp_path / f"{a}.py").write_text("def f():\n    return 1\n")
    (tmp_path / f"{b}.py").write_text(f"from {a} import f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module(b)
    try:
        assert process_setup.dependencies_first([b, a]) == [a, b]
        assert process_setup.dependencies_first([a, b]) == [a, b]
    finally:
        sys.modules.pop(a, None)
        sys.modules.pop(b, None)


def test_the_pool_is_still_warm(user_module):
    """None of the above replaced a worker to get a fresh process."""
    run(taskmap.run_parallel_async, spread_graph(where_am_i))
    pids = {w.pid for w in get_pool().workers}
    user_module.write("v22")
    importlib.reload(user_module)
    run(taskmap.run_parallel_async, spread_graph(user_module.where))
    assert {w.pid for w in get_pool().workers} == pids
