"""Task functions as code and data (taskmap/functions.py): what each shape
of function becomes on the wire, that the worker's copy behaves as the
caller's, and that a graph of per-task partials and closures gives the
results of the same graph run in-process."""

from __future__ import annotations

import functools
import os
import pathlib

import pytest

import taskmap
from taskmap.runtime import functions as F


def add(a, b=0, *rest, scale=1):
    return (a + b + sum(rest)) * scale


def make_adder(k, offset=0):
    def adder(x=0, *, times=1):
        return (x + k + offset) * times

    return adder


def make_plain(k):
    def plain(x):
        return x * k

    return plain


def make_recursive():
    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    return fact  # its cell holds itself (the codec carries it with cloudpickle)


def make_unbound():
    def reads_later():
        return later

    return reads_later
    later = 1


def roundtrip(funcs):
    shipment = F.ship(funcs)
    table = F.FunctionTable()
    table.add_codes({n: [shipment.digests[n], b] for n, b in shipment.codes.items()})
    return shipment, [table.build(shipment.entries[fid], 0) for fid in shipment.func_of]


def test_partials_of_one_function_share_one_named_code():
    funcs = [functools.partial(add, k, scale=2) for k in range(5)]
    shipment, built = roundtrip(funcs)
    assert len(set(shipment.func_of)) == 5  # one entry per object
    assert set(shipment.code_of) == {shipment.code_of[0]}  # one code
    assert shipment.codes == {}  # named, nothing pickled
    assert {e[0] for e in shipment.entries.values()} == {F.PARTIAL}
    assert shipment.entries[0][1] == f"{__name__}:add"
    assert [f(10) for f in built] == [f(10) for f in funcs]


def test_closures_of_one_code_share_one_template_and_keep_defaults():
    funcs = [make_adder(k, offset=k * 10) for k in range(4)]
    funcs[2].__kwdefaults__ = {"times": 3}
    shipment, built = roundtrip(funcs)
    assert set(shipment.code_of) == {shipment.code_of[0]}
    assert len(shipment.codes) == 1  # the template, pickled once
    assert {e[0] for e in shipment.entries.values()} == {F.CLOSURE}
    assert [f(1) for f in built] == [f(1) for f in funcs] == [1, 12, 69, 34]
    assert built[1].__qualname__ == funcs[1].__qualname__


def test_a_closure_without_defaults_carries_none_for_them():
    funcs = [make_plain(k) for k in range(3)]
    shipment, built = roundtrip(funcs)
    assert all(e[3] is None and e[4] is None for e in shipment.entries.values())
    assert [f(2) for f in built] == [0, 2, 4]
    assert built[0].__defaults__ is None and built[0].__kwdefaults__ is None


def test_what_the_codec_cannot_carry_is_pickled_whole():
    lock_partial = functools.partial(add, 1, b=2)
    lock_partial.note = "has a __dict__"  # a partial with attributes of its own
    unbound = make_unbound()
    lam = lambda x: x * 2  # noqa: E731
    recursive = make_recursive()
    shipment, built = roundtrip([lock_partial, unbound, lam, os.getpid, pathlib.Path, recursive])
    kinds = [shipment.entries[fid][0] for fid in shipment.func_of]
    # (a lambda has no name to be imported by: its code is a template, as a
    # closure's, with no cells)
    assert kinds == [F.REF, F.REF, F.CLOSURE, F.REF, F.REF, F.CLOSURE]
    assert built[0]() == 3 and built[2](4) == 8 and built[5](5) == 120
    with pytest.raises(NameError):
        built[1]()
    assert shipment.entries[shipment.func_of[3]][1] in ("posix:getpid", "os:getpid")
    assert built[4]("a") == pathlib.Path("a")


def test_one_function_object_is_one_entry():
    shipment, _ = roundtrip([add, add, None, add])
    assert shipment.func_of[0] == shipment.func_of[1] == shipment.func_of[3]
    assert len(shipment.entries) == 1


def test_a_lambda_per_task_pickles_its_code_once_and_keeps_each_ones_defaults():
    lambdas = [lambda x, k=k, *, times=1: (x + k) * times for k in range(5)]  # noqa: E731
    lambdas[3].__kwdefaults__ = {"times": 10}
    shipment, built = roundtrip(lambdas)
    assert len(shipment.codes) == 1  # one pickle, not one per lambda
    assert {shipment.entries[fid][0] for fid in shipment.func_of} == {F.CLOSURE}
    assert [f(1) for f in built] == [f(1) for f in lambdas] == [1, 2, 3, 40, 5]
    assert [f.__name__ for f in built] == ["<lambda>"] * 5


def test_a_run_of_partials_over_the_same_arguments_is_one_entry():
    url, limit = 5, 3
    storm = [functools.partial(add, url, limit) for _ in range(4)]
    # 1 == 1.0 == True, but the codec keeps each type: three entries
    typed = [functools.partial(add, 1), functools.partial(add, 1.0), functools.partial(add, True)]
    # equal arguments that are other objects: other entries (identity is what is compared)
    equal_lists = [functools.partial(add, [1]), functools.partial(add, [1])]
    keywords = [functools.partial(add, 1, scale=2), functools.partial(add, 1, scale=3)]
    other_func = [functools.partial(add, url), functools.partial(make_plain, url)]
    shipment, built = roundtrip(storm + typed + equal_lists + keywords + other_func + storm[:1])
    fids = shipment.func_of
    assert len(set(fids[:4])) == 1 and fids[-1] == fids[0]
    assert len(set(fids[4:7])) == 3 and len(set(fids[7:9])) == 2
    assert len(set(fids[9:11])) == 2 and len(set(fids[11:13])) == 2
    assert len(shipment.entries) == 1 + 3 + 2 + 2 + 2
    assert [type(f.args[0]) for f in built[4:7]] == [int, float, bool]  # type: ignore[attr-defined]
    assert [f(0) for f in built[9:11]] == [f(0) for f in keywords] == [2, 3]
    assert built[0]() == storm[0]() and built[12]()(2) == other_func[1]()(2) == 10


def test_code_named_is_looked_up_again_after_a_reload():
    table = F.FunctionTable()
    entry = [F.REF, f"{__name__}:add"]
    first = table.build(entry, epoch=0)
    assert table.build(entry, epoch=0) is first
    import sys

    module = sys.modules[__name__]
    original = module.add
    module.add = lambda *a, **k: "reloaded"  # what a reload does to the attribute
    try:
        assert table.build(entry, epoch=1)() == "reloaded"
    finally:
        module.add = original


def test_a_function_that_cannot_be_pickled_names_the_task_before_the_run(tmp_path):
    import threading

    lock = threading.Lock()

    def holds_a_lock():
        return lock.locked()

    graph = taskmap.create_graph({"a": holds_a_lock}, {"a": []})
    with pytest.raises(taskmap.SerializationError, match="'a'"):
        taskmap.run_parallel(graph, ncores=1)


RUNNERS = [taskmap.run_parallel, taskmap.run_parallel_async]


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_graph_of_per_task_partials_and_closures_gives_the_in_process_results(runner):
    deps, funcs = {}, {}
    for k in range(60):
        name = f"t{k}"
        deps[name] = [f"t{k - 1}"] if k % 3 else []
        if k % 2:
            funcs[name] = functools.partial(add, k, scale=2)
        else:
            funcs[name] = make_adder(k, offset=1)
    expected = taskmap.run(taskmap.create_graph(funcs, deps)).results
    got = runner(taskmap.create_graph(funcs, deps), ncores=2).results
    assert got == expected
    assert not any(isinstance(v, BaseException) for v in got.values())


SETTING = 1
SETTINGS_LIST = [1]


def test_a_by_value_pickle_is_reused_only_while_what_it_captured_is_the_same():
    global SETTING
    ns: dict = {"SETTING": 1, "helper": None}
    exec("def helper():\n    return SETTING\n\ndef task():\n    return helper() * 10\n", ns)
    task = ns["task"]
    task.__module__ = "__main__"  # (pickled by value, as a script's functions are)
    ns["helper"].__module__ = "__main__"
    first = F.ship([task]).codes
    again = F.ship([task]).codes
    assert first == again and F._BY_VALUE[id(task)][0]() is task
    ns["SETTING"] = 2  # a global the helper reads: a new pickle
    changed = F.ship([task])
    table = F.FunctionTable()
    table.add_codes({n: [changed.digests[n], b] for n, b in changed.codes.items()})
    assert table.build(changed.entries[0], 0)() == 20

    ns2: dict = {"DATA": [1, 2]}
    exec("def reads_a_list():\n    return sum(DATA)\n", ns2)
    reads = ns2["reads_a_list"]
    reads.__module__ = "__main__"
    F.ship([reads])
    cached = F._BY_VALUE.get(id(reads))
    assert cached is None or cached[0]() is not reads  # a list could change inside: never reused


def test_workers_keep_pickled_code_across_runs_and_drop_what_the_coordinator_drops(monkeypatch):
    from taskmap.runtime import coordinator
    from taskmap.runtime.pool import get_pool

    monkeypatch.setattr(coordinator, "CODES_HELD", 2)
    makers = {}
    for k in range(4):
        ns: dict = {"K": k}
        exec("def task():\n    return K * 100\n", ns)
        ns["task"].__module__ = "__main__"  # (by value, as a script's function)
        makers[k] = ns["task"]
    for _ in range(2):  # each code sent once, then kept; past 2 the oldest goes
        for k, task in makers.items():
            graph = taskmap.run_parallel_async(taskmap.create_graph({"t": task}, {"t": []}), ncores=1)
            assert graph.results == {"t": k * 100}
    (worker,) = get_pool().workers
    assert len(worker.codes_held) == 2
