"""Checkpoint and resume (taskmap.checkpoint, taskmap.checkpoint.fingerprint): the store,
the fingerprint rule, resuming through every kind of runner, damaged files,
and a coordinator really killed with SIGKILL mid-run."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskmap
from taskmap import CheckpointError, open_checkpoint
from taskmap.checkpoint import SCHEMA_VERSION, CheckpointStore, encode_key
from taskmap.checkpoint.fingerprint import Fingerprinter, fingerprint

REPO = Path(__file__).resolve().parent.parent

RUNNERS = {
    "run": taskmap.run,
    "run_async": taskmap.run_async,
    "run_parallel_async": functools.partial(taskmap.run_parallel_async, ncores=2),
}


# -- helpers ------------------------------------------------------------------------


def _define(source: str, name: str = "f", module: str = "fp_subject"):
    """Define ``name`` from source text in a fresh module namespace."""
    namespace = {"__name__": module}
    exec(compile(textwrap.dedent(source), f"<{module}>", "exec"), namespace)
    return namespace[name]


def counted(log: str, name: str, func):
    """A task that appends its name to ``log`` (one line per call, from any
    process) and then returns ``func(*args)``."""

    def task(*args):
        with open(log, "a") as f:
            f.write(f"{name}\n")
        return func(*args)

    return task


def calls(log: str | Path) -> Counter:
    try:
        with open(log) as f:
            return Counter(line.strip() for line in f if line.strip())
    except FileNotFoundError:
        return Counter()


def plus(k):
    def add(*args):
        return sum(args) + k

    return add


def fail_once(flag: str, value):
    """Raises while the file ``flag`` exists; returns ``value + sum(args)`` after."""

    def task(*args):
        if os.path.exists(flag):
            raise ValueError("broken for now")
        return value + sum(args)

    return task


# a diamond plus a tail: a -> b, a -> c, (b, c) -> d, d -> e; f stands alone
DEPS = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"], "f": []}


def pipeline(log: str, overrides: dict | None = None) -> dict:
    funcs = {t: plus(i + 1) for i, t in enumerate(DEPS)}
    funcs.update(overrides or {})
    return {t: counted(log, t, f) for t, f in funcs.items()}


def expected(funcs: dict, deps: dict) -> dict:
    """Sequential evaluation on a fresh graph, without a store."""
    return taskmap.run(taskmap.create_graph(funcs, deps)).results


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the fingerprint rule ---------------------------------------------------------------


def test_fingerprint_ignores_name_position_and_docstring():
    one = _define(
        """
        def f(x):
            "one docstring"
            return x + 1
        """
    )
    moved = _define(
        '''


        def g(x):
            """another docstring, and the function moved down and renamed"""
            return x + 1
        ''',
        "g",
    )
    assert fingerprint(one) == fingerprint(moved)
    assert len(fingerprint(one)) == 32


@pytest.mark.parametrize(
    "changed",
    [
        "def f(x, k=1):\n    return x + 2\n",  # code
        "def f(x, k=1):\n    return x + 1.0\n",  # a constant's type
        "def f(x, k=2):\n    return x + 1\n",  # a default
        "def f(x, *, k=1):\n    return x + 1\n",  # the signature
        "def f(x, k=1):\n    return [x + 1 for _ in 'a']\n",  # nested code
        "def f(x, k=1):\n    return x - 1\n",  # an operator
        "async def f(x, k=1):\n    return x + 1\n",  # a coroutine function now
    ],
)
def test_fingerprint_changes_with_code_constants_defaults(changed):
    base = _define("def f(x, k=1):\n    return x + 1\n")
    assert fingerprint(base) != fingerprint(_define(changed))
    assert fingerprint(base) == fingerprint(_define("def f(x, k=1):\n    return x + 1\n"))


def test_fingerprint_covers_closures_nested_functions_and_same_module_helpers():
    def outer(value):
        def inner():
            return value

        return inner

    assert fingerprint(outer(1)) == fingerprint(outer(1))
    assert fingerprint(outer(1)) != fingerprint(outer(2))
    assert fingerprint(outer([1, {"a": (2, 3)}])) != fingerprint(outer([1, {"a": (2, 4)}]))
    # sets are hashed sorted: the same whatever order they were built in
    assert fingerprint(outer({"x", "y", 3})) == fingerprint(outer({3, "y", "x"}))

    nested_1 = _define("def f():\n    def g():\n        return 1\n    return g()\n")
    nested_2 = _define("def f():\n    def g():\n        return 2\n    return g()\n")
    assert fingerprint(nested_1) != fingerprint(nested_2)

    helper_source = (
        "def helper(x):\n    return x * {k}\n\n"
        "def deeper(x):\n    return helper(x)\n\n"
        "def f(x):\n    return deeper(x)\n"
    )
    cached_source = (
        "import functools\n\n"
        "@functools.lru_cache\ndef helper(x):\n    return x * {k}\n\n"
        "def f(x):\n    return helper(x)\n"
    )
    assert fingerprint(_define(cached_source.format(k=2))) != fingerprint(_define(cached_source.format(k=3)))
    with_2 = _define(helper_source.format(k=2))
    with_3 = _define(helper_source.format(k=3))
    assert fingerprint(with_2) != fingerprint(with_3)  # a helper two calls down changed
    assert fingerprint(with_2) == fingerprint(_define(helper_source.format(k=2)))


def test_fingerprint_of_callables_that_are_not_plain_functions():
    class Scale:
        factor = 2

        def __init__(self, k):
            self.k = k

        def __call__(self, x):
            return x * self.k * self.factor

        def method(self, x):
            return x + self.k

    assert fingerprint(functools.partial(max, 1)) != fingerprint(functools.partial(max, 2))
    assert fingerprint(functools.partial(max, 1)) == fingerprint(functools.partial(max, 1))
    assert fingerprint(functools.partial(max, 1, key=abs)) != fingerprint(functools.partial(max, 1))
    assert fingerprint(Scale(1)) == fingerprint(Scale(1))
    assert fingerprint(Scale(1)) != fingerprint(Scale(2))  # the object's state
    assert fingerprint(Scale(1).method) != fingerprint(Scale(2).method)
    assert fingerprint(len) != fingerprint(abs) and fingerprint(math.sqrt) == fingerprint(math.sqrt)
    assert fingerprint([].append) == fingerprint([].append)
    assert fingerprint([1].append) != fingerprint([].append)  # the list it appends to
    assert fingerprint(Scale) == fingerprint(Scale)
    assert fingerprint(staticmethod(plus(1))) != fingerprint(staticmethod(plus(2)))

    class Scale3(Scale):
        factor = 3  # a plain class attribute

    assert fingerprint(Scale3(1)) != fingerprint(Scale(1))


def test_fingerprint_terminates_on_recursion_and_self_reference():
    fact = _define("def f(n):\n    return 1 if n < 2 else n * f(n - 1)\n")
    assert fingerprint(fact) == fingerprint(_define("def f(n):\n    return 1 if n < 2 else n * f(n - 1)\n"))

    def make():
        def loop(n):
            return loop(n - 1) if n else 0

        return loop

    assert fingerprint(make()) == fingerprint(make())
    nested: list = [1]
    nested.append(nested)
    closure = _define("def f():\n    return X\n")
    assert fingerprint(functools.partial(closure, nested)) == fingerprint(functools.partial(closure, nested))


def test_fingerprint_of_unpicklable_values_uses_repr_without_addresses():
    class Opaque:
        def __reduce_ex__(self, protocol):
            raise TypeError("no")

    first, second = Opaque(), Opaque()
    assert fingerprint(functools.partial(print, first)) == fingerprint(functools.partial(print, second))
    lock = threading.Lock()
    assert fingerprint(functools.partial(print, lock)) == fingerprint(functools.partial(print, threading.Lock()))


def test_fingerprint_is_the_same_in_another_process_and_hash_seed(tmp_path):
    module = tmp_path / "fp_module.py"
    module.write_text(
        textwrap.dedent(
            """
            import functools

            def helper(x):
                return sorted(x)

            def make(values):
                def task(*args):
                    return helper(values) + list(args)
                return task

            FUNCS = [
                make({"alpha", "beta", "gamma", "delta"}),
                make(frozenset({("a", 1), ("b", 2)})),
                functools.partial(make({"k": {"x", "y"}}), 3),
                helper,
            ]
            """
        )
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import fp_module; "
        "from taskmap.checkpoint.fingerprint import fingerprint; "
        "print(' '.join(fingerprint(f) for f in fp_module.FUNCS))"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(out.stdout.split())
    sys.path.insert(0, str(tmp_path))
    try:
        import fp_module

        here = [fingerprint(f) for f in fp_module.FUNCS]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fp_module", None)
    assert outputs[0] == outputs[1] == here
    assert len(set(here)) == len(here)


def test_fingerprinter_reuses_digests_of_a_shared_function():
    hasher = Fingerprinter()
    shared = plus(1)
    assert hasher.digest(shared) is hasher.digest(shared)


# -- the store on its own --------------------------------------------------------------


def test_a_new_store_has_the_versioned_schema_in_wal_mode(tmp_path):
    path = tmp_path / "run.db"
    with open_checkpoint(path) as store:
        assert isinstance(store, CheckpointStore) and not store.closed
        assert store.failed_tasks() == [] and store.entry("a") is None
    assert store.closed
    with pytest.raises(CheckpointError, match="closed"):
        store.failed_tasks()
    store.close()  # idempotent
    conn = sqlite3.connect(path)
    try:
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        assert meta["schema_version"] == str(SCHEMA_VERSION)
        assert meta["created_by"].startswith("taskmap ")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
        assert columns == [
            "key",
            "fingerprint",
            "status",
            "payload",
            "checksum",
            "error",
            "finished",
            "attempts",
            "output",
        ]
    finally:
        conn.close()
    with pytest.raises(ValueError, match="synchronous"):
        open_checkpoint(tmp_path / "other.db", synchronous="sometimes")


def test_create_graph_takes_a_path_a_pathlike_or_a_store(tmp_path):
    funcs, deps = {"a": plus(1)}, {"a": []}
    for checkpoint in (str(tmp_path / "s.db"), tmp_path / "p.db", open_checkpoint(tmp_path / "o.db")):
        graph = taskmap.create_graph(funcs, deps, checkpoint=checkpoint)
        assert isinstance(graph.checkpoint, CheckpointStore)
        assert taskmap.run(graph).results == {"a": 1}
        graph.checkpoint.close()
    store = open_checkpoint(tmp_path / "o.db")
    graph = taskmap.create_graph(funcs, deps, checkpoint=store)
    assert graph.checkpoint is store
    store.close()
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        taskmap.create_graph(funcs, deps, checkpoint=3)
    # assigning a store to an existing graph is the other supported way
    graph = taskmap.create_graph(funcs, deps)
    with open_checkpoint(tmp_path / "o.db") as graph.checkpoint:
        assert taskmap.run(graph).done == ["a"]
        assert graph.checkpoint.last_restore.restored == ["a"]


def test_encode_key_is_stable_and_decodable():
    from taskmap.runtime import codec

    same = ("a" * 3, "a" * 3)
    built = ("".join(["a", "aa"]), "aaa")
    assert encode_key(same) == encode_key(built)  # no pickle memo: equal names, equal bytes
    for name in ["x", 3, ("t", 1, ("u", 2)), b"raw", 2**80, None]:
        assert codec.decode(encode_key(name)) == name


def test_a_store_pickles_as_its_path(tmp_path):
    with open_checkpoint(tmp_path / "run.db", synchronous="normal") as store:
        copy = pickle.loads(pickle.dumps(store))
        try:
            assert copy.path == store.path and copy.synchronous == "normal" and copy is not store
        finally:
            copy.close()


# -- resuming through the runners --------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_resume_does_not_rerun_stored_tasks_and_feeds_their_results(tmp_path, runner):
    log, db = str(tmp_path / "calls.log"), tmp_path / "run.db"
    funcs = pipeline(log)
    want = expected(pipeline(str(tmp_path / "ref.log")), DEPS)

    with open_checkpoint(db) as store:
        first = RUNNERS[runner](taskmap.create_graph(funcs, DEPS, checkpoint=store))
    assert first.results == want
    assert calls(log) == Counter(DEPS.keys())

    with open_checkpoint(db) as store:
        graph = taskmap.create_graph(funcs, DEPS, checkpoint=store)
        second = RUNNERS[runner](graph)
        assert sorted(store.last_restore.restored) == sorted(DEPS) and store.last_restore.rerun == []
    assert second.results == want and sorted(second.done) == sorted(DEPS)
    assert calls(log) == Counter(DEPS.keys())  # nothing ran again

    # a new task below stored ones runs alone, fed by their stored results
    deps = {**DEPS, "g": ["e", "f"]}
    funcs_g = {**funcs, "g": counted(log, "g", plus(100))}
    with open_checkpoint(db) as store:
        third = RUNNERS[runner](taskmap.create_graph(funcs_g, deps, checkpoint=store))
    assert third.results["g"] == want["e"] + want["f"] + 100
    assert calls(log) == Counter(DEPS.keys()) + Counter(["g"])


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_changed_function_reruns_with_its_descendants_only(tmp_path, runner):
    log, db = str(tmp_path / "calls.log"), str(tmp_path / "run.db")
    RUNNERS[runner](taskmap.create_graph(pipeline(log), DEPS, checkpoint=db)).checkpoint.close()
    changed = pipeline(log, {"c": plus(1000)})
    graph = RUNNERS[runner](taskmap.create_graph(changed, DEPS, checkpoint=db))
    graph.checkpoint.close()
    assert calls(log) == Counter(DEPS.keys()) + Counter(["c", "d", "e"])
    assert graph.results == expected(pipeline(str(tmp_path / "ref.log"), {"c": plus(1000)}), DEPS)


def test_a_changed_dependency_list_reruns_the_task(tmp_path):
    log, db = str(tmp_path / "calls.log"), str(tmp_path / "run.db")
    funcs = pipeline(log)
    taskmap.run(taskmap.create_graph(funcs, DEPS, checkpoint=db)).checkpoint.close()
    rewired = {**DEPS, "d": ["c", "b"]}  # same parents, other order: other arguments
    graph = taskmap.run(taskmap.create_graph(funcs, rewired, checkpoint=db))
    graph.checkpoint.close()
    assert calls(log) == Counter(DEPS.keys()) + Counter(["d", "e"])


@pytest.mark.parametrize("runner", RUNNERS)
def test_failures_are_recorded_and_rerun_with_their_descendants(tmp_path, runner):
    log, db = str(tmp_path / "calls.log"), str(tmp_path / "run.db")
    flag = tmp_path / "broken"
    flag.touch()
    funcs = pipeline(log, {"b": fail_once(str(flag), 10)})
    graph = RUNNERS[runner](taskmap.create_graph(funcs, DEPS, checkpoint=db))
    store = graph.checkpoint
    assert isinstance(graph.results["b"], ValueError)
    assert store.failed_tasks() == ["b"]
    entry = store.entry("b")
    assert entry.status == "failed" and "broken for now" in entry.error and entry.has_payload
    assert store.entry("d") is None  # skipped tasks are not stored
    assert store.entry("c").status == "done" and store.entry("c").attempts == 1
    store.close()
    assert calls(log) == Counter("abcf")

    flag.unlink()
    graph = RUNNERS[runner](taskmap.create_graph(funcs, DEPS, checkpoint=db))
    assert calls(log) == Counter("abcf") + Counter("bde")
    assert graph.results == expected(pipeline(str(tmp_path / "ref.log"), {"b": fail_once(str(flag), 10)}), DEPS)
    assert graph.checkpoint.failed_tasks() == []
    graph.checkpoint.close()


def test_a_second_run_in_the_same_process_reruns_only_failed_and_changed(tmp_path):
    log = str(tmp_path / "calls.log")
    flag = tmp_path / "broken"
    flag.touch()
    funcs = pipeline(log, {"c": fail_once(str(flag), 10)})
    with open_checkpoint(tmp_path / "run.db") as store:
        graph = taskmap.run(taskmap.create_graph(funcs, DEPS, checkpoint=store))
        assert graph.results["d"] == "Ancestor task c failed; task not run"
        flag.unlink()
        taskmap.run(graph)  # no reset needed: the failed row reruns
        assert calls(log) == Counter("abcf") + Counter("cde")
        graph.funcs["f"] = counted(log, "f", plus(50))
        taskmap.run(graph)  # a changed function, in place
        assert calls(log) == Counter("abcf") + Counter("cdef")
        assert graph.results["f"] == 50


@pytest.mark.parametrize("runner", RUNNERS)
def test_reset_tasks_and_reset_failed_tasks_clear_store_entries(tmp_path, runner):
    log, db = str(tmp_path / "calls.log"), str(tmp_path / "run.db")
    flag = tmp_path / "broken"
    flag.touch()
    funcs = pipeline(log, {"e": fail_once(str(flag), 1)})
    graph = RUNNERS[runner](taskmap.create_graph(funcs, DEPS, checkpoint=db))
    store = graph.checkpoint

    taskmap.reset_tasks(graph, ["c"])
    assert [store.entry(t) is None for t in "abcdef"] == [False, False, True, True, True, False]
    flag.unlink()
    RUNNERS[runner](graph)
    assert calls(log) == Counter("abcdef") + Counter("cde")
    store.close()

    # in a new process's way: a new graph, the failure known only to the store
    flag.touch()
    graph = RUNNERS[runner](taskmap.create_graph(funcs, DEPS, checkpoint=db))
    assert calls(log) == Counter("abcdef") + Counter("cde")  # all stored: nothing ran
    graph.checkpoint.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE tasks SET status = 'failed' WHERE key = ?", (encode_key("d"),))
    conn.commit()
    conn.close()
    with open_checkpoint(db) as store:
        graph = taskmap.create_graph(funcs, DEPS, checkpoint=store)
        assert store.failed_tasks() == ["d"]
        taskmap.reset_failed_tasks(graph)
        assert store.failed_tasks() == [] and store.entry("d") is None and store.entry("e") is None
        assert store.entry("c") is not None
        flag.unlink()
        RUNNERS[runner](graph)
    assert calls(log) == Counter("abcdef") + Counter("cde") + Counter("de")


@pytest.mark.parametrize("runner", ["run", "run_async"])
def test_an_unencodable_result_is_not_stored_and_reruns_next_time(tmp_path, runner):
    log, db = str(tmp_path / "calls.log"), str(tmp_path / "run.db")

    def make_lock():
        return threading.Lock()

    def use(lock):
        return lock.locked()

    funcs = {"lock": counted(log, "lock", make_lock), "use": counted(log, "use", use), "x": counted(log, "x", plus(1))}
    deps = {"lock": [], "use": ["lock"], "x": []}
    with open_checkpoint(db) as store:
        graph = RUNNERS[runner](taskmap.create_graph(funcs, deps, checkpoint=store))
        assert graph.results["use"] is False and type(graph.results["lock"]).__name__ == "lock"
        entry = store.entry("lock")
        assert entry.status == "not_stored" and not entry.has_payload
        assert "lock" in entry.error and "not stored" in entry.error
        RUNNERS[runner](graph)  # this process still holds the value: nothing reruns
        assert calls(log) == Counter(["lock", "use", "x"])
    with open_checkpoint(db) as store:  # a new graph: the value is gone, it reruns with its child
        RUNNERS[runner](taskmap.create_graph(funcs, deps, checkpoint=store))
        assert store.last_restore.rerun == ["lock", "use"]
    assert calls(log) == Counter(["lock", "use", "x"]) + Counter(["lock", "use"])


def test_a_result_too_big_for_the_store_is_not_stored(tmp_path):
    with open_checkpoint(tmp_path / "run.db") as store:
        store.max_payload = 1000  # (SQLite's real limit is about 1 GB)
        graph = taskmap.run_parallel_async(
            taskmap.create_graph(
                {"big": functools.partial(bytes, 5000), "small": plus(1)}, {"big": [], "small": []}, checkpoint=store
            ),
            ncores=2,
        )
        assert graph.results["big"] == bytes(5000)
        assert store.entry("small").status == "done"
        entry = store.entry("big")
        assert entry.status == "not_stored" and "bytes, over SQLite's limit of 1000" in entry.error


def test_results_given_as_done_are_kept_and_rows_below_a_rerun_are_deleted(tmp_path):
    log, db = str(tmp_path / "calls.log"), str(tmp_path / "run.db")
    funcs = pipeline(log)
    graph = taskmap.create_graph(funcs, DEPS, done=["b"], results={"b": 7}, checkpoint=db)
    taskmap.run(graph)
    assert "b" not in calls(log) and graph.results["d"] == 7 + graph.results["c"] + 4
    store = graph.checkpoint
    assert store.entry("b") is None and store.entry("d").status == "done"
    store.close()

    # c changes; restoring takes c, d, e back out and deletes their rows at
    # once, so a run killed before they rerun cannot bring back d's old value
    changed = pipeline(log, {"c": plus(1000)})
    with open_checkpoint(db) as store:
        graph = taskmap.create_graph(changed, DEPS, checkpoint=store)
        report = store.restore(graph)
        # (b was given, never stored: not done now, so d's row goes too)
        assert report.rerun == ["c", "d", "e"] and sorted(report.restored) == ["a", "f"]
        assert [store.entry(t) is None for t in "acdef"] == [False, True, True, True, False]
        assert sorted(graph.done) == ["a", "f"] and set(graph.results) == {"a", "f"}


def test_a_store_serves_a_graph_of_another_name_and_records_the_last(tmp_path):
    db = str(tmp_path / "run.db")
    log = str(tmp_path / "calls.log")
    funcs, deps = {"a": counted(log, "a", plus(1))}, {"a": []}
    taskmap.run(taskmap.create_graph(funcs, deps, name="etl", checkpoint=db)).checkpoint.close()
    # e.g. the same pipeline run as a script, then through the command line
    graph = taskmap.run(taskmap.create_graph(funcs, deps, name="pipeline", checkpoint=db))
    graph.checkpoint.close()
    assert calls(log) == Counter(["a"]) and graph.results == {"a": 1}
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'graph_name'").fetchone() == ("pipeline",)
    finally:
        conn.close()


def test_a_failing_write_is_reported_after_the_run_with_results_kept(tmp_path):
    db = tmp_path / "run.db"
    funcs = {"small": plus(1), "big": lambda: b"x" * 1_000_000, "after": plus(2)}
    deps = {"small": [], "big": [], "after": ["small"]}
    store = open_checkpoint(db)
    # a disk that is full: SQLite may not grow the file past its current size
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    graph = taskmap.create_graph(funcs, deps, checkpoint=store)
    with pytest.raises(CheckpointError, match="recording outcomes failed"):
        taskmap.run(graph)
    assert graph.results["big"] == b"x" * 1_000_000 and sorted(graph.done) == ["after", "big", "small"]
    store.close()


# -- damaged files ----------------------------------------------------------------------


def _finished_store(tmp_path: Path, log: str) -> tuple[Path, dict]:
    db = tmp_path / "run.db"
    funcs = pipeline(log, {"c": lambda a: b"MARKER-c-" * 8 + bytes([a]), "d": lambda b, c: b + len(c)})
    with open_checkpoint(db) as store:
        taskmap.run(taskmap.create_graph(funcs, DEPS, checkpoint=store))
    assert not Path(str(db) + "-wal").exists()  # closed cleanly: everything is in the file
    return db, funcs


def test_a_damaged_value_reruns_that_task_and_keeps_everything_else(tmp_path):
    log = str(tmp_path / "calls.log")
    db, funcs = _finished_store(tmp_path, log)
    data = bytearray(db.read_bytes())
    at = data.index(b"MARKER-c-")
    data[at + 3] ^= 0xFF  # one flipped bit pattern inside c's stored value
    db.write_bytes(bytes(data))
    with open_checkpoint(db) as store:
        graph = taskmap.run(taskmap.create_graph(funcs, DEPS, checkpoint=store))
        report = store.last_restore
        assert report.damaged == {"c": "checksum mismatch"}
        assert sorted(report.rerun) == ["c", "d", "e"] and sorted(report.restored) == ["a", "b", "f"]
    assert calls(log) == Counter(DEPS.keys()) + Counter("cde")
    assert graph.results["c"] == b"MARKER-c-" * 8 + bytes([graph.results["a"]])


def test_a_truncated_file_raises_a_clear_error_and_is_left_alone(tmp_path):
    log = str(tmp_path / "calls.log")
    db, funcs = _finished_store(tmp_path, log)
    size = db.stat().st_size
    for keep in (size // 2, 50):
        with open(db, "r+b") as f:
            f.truncate(keep)
        before = file_digest(db)
        with pytest.raises(CheckpointError, match="truncated") as info:
            taskmap.create_graph(funcs, DEPS, checkpoint=db)
        assert str(db) in str(info.value) and "left as it is" in str(info.value)
        assert file_digest(db) == before
    assert calls(log) == Counter(DEPS.keys())


def test_a_corrupted_file_raises_before_anything_runs_and_is_left_alone(tmp_path):
    log = str(tmp_path / "calls.log")
    db, funcs = _finished_store(tmp_path, log)
    page_size = int.from_bytes(db.read_bytes()[16:18], "big")
    with open(db, "r+b") as f:  # garbage over every page but the first
        f.seek(page_size)
        f.write(bytes((i * 7 + 3) % 251 for i in range(db.stat().st_size - page_size)))
    before = file_digest(db)
    with pytest.raises(CheckpointError) as info:
        graph = taskmap.create_graph(funcs, DEPS, checkpoint=db)
        taskmap.run(graph)
    assert str(db) in str(info.value) and "damaged" in str(info.value)
    assert file_digest(db) == before
    assert calls(log) == Counter(DEPS.keys())  # nothing ran a second time


@pytest.mark.parametrize(
    "content, match",
    [
        (b"name,value\n1,2\n" * 20, "not an SQLite database"),
        (b"SQLite format 3\x00" + b"\x00" * 20, "truncated"),
        (b"SQLite fo", "truncated"),
    ],
)
def test_a_file_that_is_not_a_store_is_refused(tmp_path, content, match):
    path = tmp_path / "results.csv"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(path)
    assert path.read_bytes() == content


def test_another_sqlite_database_or_a_newer_schema_is_refused(tmp_path):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    before = file_digest(other)
    with pytest.raises(CheckpointError, match="not a taskmap checkpoint store"):
        open_checkpoint(other)
    assert file_digest(other) == before

    newer = tmp_path / "newer.db"
    open_checkpoint(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(CheckpointError, match="newer taskmap"):
        open_checkpoint(newer)


# -- interrupted runs, at random ----------------------------------------------------------

BROKEN: set = set()
CALLS: Counter = Counter()


def random_task(name, version):
    def task(*args):
        CALLS[name] += 1
        if name in BROKEN:
            raise RuntimeError(f"{name} is broken")
        return hashlib.blake2b(repr((name, version, args)).encode(), digest_size=6).hexdigest()

    return task


@st.composite
def interrupted_runs(draw):
    n = draw(st.integers(1, 12))
    deps = {}
    for i in range(n):
        parents = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        deps[f"t{i}"] = [f"t{p}" for p in parents]
    names = list(deps)
    broken = draw(st.sets(st.sampled_from(names), max_size=3))
    changed = draw(st.sets(st.sampled_from(names), max_size=2))
    raise_errors = draw(st.booleans())
    return deps, broken, changed, raise_errors


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=interrupted_runs())
def test_an_interrupted_run_resumes_to_the_sequential_result(tmp_path, case):
    deps, broken, changed, raise_errors = case
    db = tmp_path / f"run-{time.monotonic_ns()}.db"
    funcs = {t: random_task(t, 1) for t in deps}
    BROKEN.clear()
    BROKEN.update(broken)
    CALLS.clear()
    with open_checkpoint(db, synchronous="normal") as store:
        graph = taskmap.create_graph(funcs, deps, checkpoint=store)
        try:
            taskmap.run(graph, raise_errors=raise_errors)
        except taskmap.TaskFailedError:
            assert raise_errors
        succeeded = {
            t for t in graph.done if isinstance(graph.results[t], str) and not graph.results[t].startswith("Ancestor")
        }
    # fix the broken tasks, change some functions, resume with a new graph
    BROKEN.clear()
    CALLS.clear()
    funcs2 = {t: random_task(t, 2 if t in changed else 1) for t in deps}
    with open_checkpoint(db, synchronous="normal") as store:
        resumed = taskmap.run(taskmap.create_graph(funcs2, deps, checkpoint=store))
    children = taskmap.graph.children_index(deps)
    must_rerun = (set(deps) - succeeded) | set(changed)
    must_rerun |= taskmap.graph.descendants(children, must_rerun)
    assert set(CALLS) == must_rerun and all(n == 1 for n in CALLS.values())
    assert resumed.results == expected(funcs2, deps)


# -- SIGKILL of the coordinator mid-run ----------------------------------------------------

PIPELINE = '''
"""A pipeline for the SIGKILL test: 40 tasks, each logs its start and end."""
import hashlib, json, os, sys, time

import taskmap

LOG = os.environ.get("PIPELINE_LOG", os.devnull)


def make(name, seconds):
    def task(*args):
        with open(LOG, "a") as f:
            f.write(f"start {name} {time.time()}\\n")
        time.sleep(seconds)
        value = hashlib.sha256(repr((name, args)).encode()).hexdigest()[:16]
        with open(LOG, "a") as f:
            f.write(f"end {name} {time.time()}\\n")
        return value
    return task


def build(pause=1.0):
    deps = {}
    for i in range(40):
        deps[f"t{i:02d}"] = [f"t{j:02d}" for j in range(max(0, i - 6), i) if (i * 7 + j * 3) % 4 == 0]
    funcs = {t: make(t, pause * (0.04 + 0.03 * (i % 4))) for i, t in enumerate(deps)}
    io = [t for i, t in enumerate(deps) if i % 3 == 0]
    return funcs, deps, io


if __name__ == "__main__":
    funcs, deps, io = build()
    graph = taskmap.create_graph(funcs, deps, io_bound=io, name="killed", checkpoint=sys.argv[1])
    taskmap.run_parallel_async(graph, ncores=2)
    with open(sys.argv[2], "w") as f:
        json.dump(graph.results, f)
'''


def _read_log(path: Path) -> list[tuple[str, str, float]]:
    events = []
    for line in path.read_text().splitlines():
        kind, name, when = line.split()
        events.append((kind, name, float(when)))
    return events


def test_sigkill_mid_run_then_resume_runs_each_task_at_most_once(tmp_path):
    import psutil

    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE)
    db, log, out = tmp_path / "run.db", tmp_path / "tasks.log", tmp_path / "results.json"
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PIPELINE_LOG": str(log), "PYTHONPATH": path}
    cmd = [sys.executable, str(script), str(db), str(out)]

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and first.poll() is None:
            if log.exists() and sum(1 for e in _read_log(log) if e[0] == "start") >= 15:
                break
            time.sleep(0.01)
        assert first.poll() is None, f"the pipeline ended before the kill: {first.stderr.read().decode()}"
        children = psutil.Process(first.pid).children(recursive=True)
        killed_at = time.time()
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stderr.close()

    # its worker processes (and loky's helpers) notice their parent is gone
    gone, alive = psutil.wait_procs(children, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, f"processes outlived their SIGKILLed coordinator: {[p.pid for p in alive]}"

    run1 = _read_log(log)
    started1 = [name for kind, name, _ in run1 if kind == "start"]
    ended1 = {name: when for kind, name, when in run1 if kind == "end"}
    conn = sqlite3.connect(db)
    try:
        from taskmap.runtime import codec

        stored = {codec.decode(k) for (k,) in conn.execute("SELECT key FROM tasks WHERE status = 'done'")}
    finally:
        conn.close()
    assert stored, "nothing was committed while the run went on"
    assert stored <= set(ended1), "a row was committed for a task that never finished"
    # the loss window: an outcome from well before the kill must be committed
    # (seconds of slack for a busy machine; the benchmark measures the real lag)
    assert {t for t, when in ended1.items() if when < killed_at - 2.0} <= stored
    in_flight = set(started1) - stored

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    started = Counter(name for kind, name, _ in _read_log(log) if kind == "start")

    sys.path.insert(0, str(tmp_path))
    try:
        import pipeline as reference

        funcs, deps, io = reference.build(pause=0)  # same values, no waiting
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("pipeline", None)
    assert set(started) == set(deps)  # every task ran in one run or the other
    twice = {t for t, n in started.items() if n > 1}
    assert twice <= in_flight, f"tasks committed before the kill ran again: {twice - in_flight}"
    assert max(started.values()) <= 2
    assert all(started[t] == 1 for t in stored)
    with open(out) as f:
        resumed = json.load(f)
    assert resumed == taskmap.run(taskmap.create_graph(funcs, deps, io_bound=io)).results


def _prints_then_fails():
    for k in range(150):
        print(f"line {k}")
    raise ValueError("broke")


@pytest.mark.parametrize("runner", ["run", "run_parallel_async"])
def test_a_failed_tasks_row_keeps_its_output_tail(tmp_path, runner):
    db = tmp_path / "run.db"
    funcs = {"bad": _prints_then_fails, "fine": lambda: print("fine") or 1}
    graph = RUNNERS[runner](taskmap.create_graph(funcs, {"bad": [], "fine": []}, checkpoint=db), output="capture")
    with open_checkpoint(db) as store:
        assert store.entry("bad").output == "\n".join(f"line {k}" for k in range(50, 150))
        assert store.entry("fine").output is None  # (only failed tasks keep it)
    graph.checkpoint.close()


def test_a_store_without_the_output_column_opens_and_gets_it_when_a_run_takes_it(tmp_path):
    db = tmp_path / "old.db"
    funcs = {"bad": _prints_then_fails}
    taskmap.run(taskmap.create_graph(funcs, {"bad": []}, checkpoint=db), output="capture").checkpoint.close()
    conn = sqlite3.connect(db)  # as an earlier taskmap wrote it: no output column
    conn.execute("ALTER TABLE tasks DROP COLUMN output")
    conn.commit()
    conn.close()
    with open_checkpoint(db) as store:  # read: no column needed, none added
        assert store.entry("bad").output is None and store.failed_tasks() == ["bad"]
    conn = sqlite3.connect(db)
    assert "output" not in [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
    conn.close()
    graph = taskmap.create_graph(funcs, {"bad": []}, checkpoint=db)
    taskmap.run(graph, output="capture")
    assert graph.checkpoint.entry("bad").output.endswith("line 149")
    graph.checkpoint.close()
