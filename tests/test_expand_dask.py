"""Run-time fan-out (create_graph(expand=...)) on ``run_dask`` against a
real ``distributed.LocalCluster`` of two worker processes (as
tests/test_dask_runner.py).  The workers do not see this process's
environment, so the task functions take their folder as an argument
(``functools.partial``) and count their calls in files there."""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid

import pytest

distributed = pytest.importorskip("distributed")

from test_dask_runner import local_cluster  # noqa: E402

import taskmap  # noqa: E402
from taskmap import Element  # noqa: E402

MESSAGE = "Ancestor task parse[2] failed; task not run"


@pytest.fixture(scope="module")
def client():
    with local_cluster() as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=30)
        yield client


def note(folder: str, what: str) -> None:
    with open(os.path.join(folder, f"{what}-{uuid.uuid4().hex}"), "w"):
        pass


def calls(folder, what: str) -> int:
    return sum(1 for f in os.listdir(folder) if f.rsplit("-", 1)[0] == what)


def list_files():
    return ["a", "b", "c", "d"]


def config():
    return "!"


def parse(folder, f, c):
    note(folder, f"parse-{f}")
    if f == "c" and not os.path.exists(os.path.join(folder, "fixed")):
        raise ValueError("bad " + f)
    return f.upper() + c


def clean(folder, p):
    note(folder, f"clean-{p}")
    return p.lower()


def total(folder, cs):
    note(folder, "total")
    return "|".join(cs)


def etl(folder, source=list_files, **kwargs):
    folder = str(folder)
    funcs = {
        "list_files": source,
        "config": config,
        "parse": functools.partial(parse, folder),
        "clean": functools.partial(clean, folder),
        "total": functools.partial(total, folder),
    }
    deps = {
        "list_files": [],
        "config": [],
        "parse": ["list_files", "config"],
        "clean": ["parse"],
        "total": ["clean"],
    }
    return taskmap.create_graph(funcs, deps, expand={"parse": "list_files", "clean": "parse"}, **kwargs)


def test_a_failed_element_and_the_rerun_of_exactly_what_failed(client, tmp_path):
    graph = taskmap.run_dask(etl(tmp_path), client=client)
    assert graph.results["parse"][:2] == ["A!", "B!"] and graph.results["parse"][3] == "D!"
    assert isinstance(graph.results["parse"][2], ValueError)
    assert graph.results["clean"] == ["a!", "b!", MESSAGE, "d!"]
    assert graph.results["total"] == MESSAGE
    taskmap.reset_failed_tasks(graph)
    (tmp_path / "fixed").touch()
    taskmap.run_dask(graph, client=client)
    assert graph.results["total"] == "a!|b!|c!|d!"
    assert calls(tmp_path, "parse-a") == 1 and calls(tmp_path, "parse-c") == 2
    assert calls(tmp_path, "clean-A!") == 1 and calls(tmp_path, "total") == 1


def empty():
    return []


def a_string():
    return "abc"


def test_empty_and_string_results(client, tmp_path):
    graph = taskmap.run_dask(etl(tmp_path, empty), client=client)
    assert graph.results["parse"] == [] and graph.results["clean"] == [] and graph.results["total"] == ""
    graph = taskmap.run_dask(etl(tmp_path, a_string), client=client)
    assert isinstance(graph.results["parse"], TypeError)
    assert graph.results["total"] == "Ancestor task parse failed; task not run"


async def slow_parse(folder, k):
    """The last element waits for clean[0]'s file: a barrier would starve it."""
    if k == 3:
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(folder, "clean-0")):
            if time.monotonic() > deadline:
                return "barrier"
            await asyncio.sleep(0.005)
    return k


async def signalling_clean(folder, k):
    with open(os.path.join(folder, f"clean-{k}"), "w"):
        pass
    return k * 10


def test_element_wise_chains_have_no_barrier(client, tmp_path):
    folder = str(tmp_path)
    funcs = {
        "keys": lambda: range(4),
        "parse": functools.partial(slow_parse, folder),
        "clean": functools.partial(signalling_clean, folder),
    }
    deps = {"keys": [], "parse": ["keys"], "clean": ["parse"]}
    graph = taskmap.create_graph(funcs, deps, io_bound=["parse", "clean"], expand={"parse": "keys", "clean": "parse"})
    taskmap.run_dask(graph, client=client, summary=True)
    assert graph.results["parse"] == [0, 1, 2, 3] and graph.results["clean"] == [0, 10, 20, 30]
    times = {str(t.name): t for t in graph.last_run.tasks}
    assert times["clean[0]"].start < times["parse[3]"].end


def flaky(folder, k):
    marker = os.path.join(folder, f"tried-{k}")
    if k == 1 and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise RuntimeError("first attempt")
    return k


def test_retries_apply_per_element(client, tmp_path):
    funcs = {"keys": lambda: [0, 1, 2], "work": functools.partial(flaky, str(tmp_path))}
    graph = taskmap.create_graph(funcs, {"keys": [], "work": ["keys"]}, expand={"work": "keys"})
    taskmap.run_dask(graph, client=client, retries={"work": 1})
    assert graph.results["work"] == [0, 1, 2]
    assert graph.attempts[Element("work", 1)] == 2 and graph.attempts[Element("work", 0)] == 1


def test_results_left_on_the_cluster_still_expand(client, tmp_path):
    graph = taskmap.run_dask(etl(tmp_path), client=client, gather=["total", "clean"])
    assert graph.results["list_files"] == ["a", "b", "c", "d"]  # gathered: it is mapped over
    assert graph.results["clean"] == ["a!", "b!", MESSAGE, "d!"]  # gathered: its elements are
    assert isinstance(graph.results["parse"][0], distributed.Future)  # left on the cluster


def test_a_resumed_run_reruns_only_unfinished_elements(client, tmp_path):
    store = tmp_path / "run.db"
    graph = taskmap.run_dask(etl(tmp_path, checkpoint=store), client=client)
    graph.checkpoint.close()
    (tmp_path / "fixed").touch()
    again = taskmap.run_dask(etl(tmp_path, checkpoint=store), client=client)
    assert again.results["total"] == "a!|b!|c!|d!"
    assert calls(tmp_path, "parse-a") == 1 and calls(tmp_path, "parse-c") == 2
    again.checkpoint.close()
