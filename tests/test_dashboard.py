"""The live page of a run (taskmap.observe.dashboard) over plain HTTP: the
token, the pushed updates and their rate, what the messages hold, the option
on every runner, and that a run leaves no thread or socket behind.  The page
itself is tested in a real browser in test_dashboard_browser.py."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

import taskmap
from taskmap.observe.dashboard import Dashboard, check_port
from taskmap.observe.dashboard_layout import function_name, layers, layers_of_cyclic, layout
from taskmap.observe.dashboard_server import ASSETS, asset
from taskmap.observe.dashboard_view import BAR_BATCH, RunView, output_tail
from taskmap.observe.observers import DONE, FAILED, RunInfo, TaskEvent
from taskmap.options import resolve

RUNNERS = ["run", "run_async", "run_parallel", "run_parallel_async"]


def wait_for_file(path: str, *args: object) -> str:
    """A task that runs until ``path`` exists (at most 30 s)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"


def quick(*args: object) -> int:
    return 1


def nap(*args: object) -> None:
    time.sleep(0.05)


def boom(*args: object) -> None:
    raise ValueError("boom")


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def page(url: str, path: str) -> str:
    """``url`` (the page's, token included) with ``path`` instead of /."""
    return url.replace("/?", f"/{path}?", 1)


def inet_sockets() -> list:
    """This process's TCP/UDP sockets (the worker pool uses none: pipes)."""
    import psutil

    return sorted(map(str, psutil.Process().net_connections(kind="inet")))


def left_by_pages() -> list[object]:
    """What ended pages left behind: a request thread, a page thread other
    than the process's one, or a page that process's thread still serves
    (it is kept between runs, as the worker pool is, and must then serve
    nothing: its select then has no timeout, see the test of polling)."""
    from taskmap.observe import dashboard_server

    kept = dashboard_server._page_thread
    left: list[object] = [
        t
        for t in threading.enumerate()
        if "process_request" in t.name
        or (t.name.startswith("taskmap-dashboard") and (kept is None or t is not kept.thread))
    ]
    if kept is not None:
        left.extend(kept.pages)
    return left


def gated_graph(release: Path, gates: int = 2):
    funcs = {f"gate{i}": _partial(wait_for_file, str(release)) for i in range(gates)}
    deps: dict = {f"gate{i}": [] for i in range(gates)}
    funcs.update(first=quick, bad=boom, after_bad=quick, last=quick)
    deps.update(first=[], bad=["first"], after_bad=["bad"], last=[f"gate{i}" for i in range(gates)])
    return taskmap.create_graph(funcs, deps, io_bound=[f"gate{i}" for i in range(gates)], name="gated")


def _partial(f, *args):
    import functools

    return functools.partial(f, *args)


def read_events(url: str, stop_after: str = "end", timeout: float = 30) -> list[tuple[float, str, object]]:
    """The page's event stream until the event ``stop_after``: (arrival
    time, event, data)."""
    out: list[tuple[float, str, object]] = []
    with urllib.request.urlopen(page(url, "events"), timeout=timeout) as stream:
        event = None
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                assert event is not None
                out.append((time.monotonic(), event, json.loads(line[len("data: ") :])))
                if event == stop_after:
                    break
    return out


def gated_chain(release: Path, n: int, **options: object):
    """A gate (waits for ``release``), then a chain of ``n`` naps of 50 ms."""
    funcs = {"gate": _partial(wait_for_file, str(release))}
    deps: dict = {"gate": []}
    for i in range(n):
        funcs[f"t{i}"] = nap
        deps[f"t{i}"] = ["gate"] if i == 0 else [f"t{i - 1}"]
    return taskmap.create_graph(funcs, deps, **options)  # type: ignore[arg-type]


def watch_then_release(url: str, release: Path, timeout: float = 30) -> list[tuple[float, str, object]]:
    """A viewer reads the page's stream; half a second later (it is connected
    and sees the gate running) ``release`` is touched; the whole stream."""
    box: dict = {}
    reader = threading.Thread(target=lambda: box.setdefault("events", read_events(url, timeout=timeout)))
    reader.start()
    time.sleep(0.5)
    release.touch()
    reader.join(timeout)
    return box["events"]


# -- the option -------------------------------------------------------------------


def test_every_runner_takes_the_option_and_checks_it():
    graph = taskmap.create_graph({"a": quick}, {"a": []})
    for runner in [*RUNNERS, "run_dask"]:
        opts = resolve(runner, graph, False, {"dashboard": True})
        assert [type(o) for o in opts.observers.items] == [Dashboard], runner
        assert not resolve(runner, graph, False, {}).observers, runner  # off by default: nothing per task
        assert not resolve(runner, graph, False, {"dashboard": False}).observers, runner
    assert check_port(True) == 0 and check_port(8123) == 8123 and check_port(0) == 0
    with pytest.raises(TypeError, match="dashboard= takes True or a port"):
        taskmap.run(graph, dashboard="yes")
    with pytest.raises(ValueError, match="between 0 and 65535"):
        taskmap.run(graph, dashboard=70000)
    with pytest.raises(ValueError, match="between 0 and 65535"):
        taskmap.run(graph, dashboard=-1)
    assert graph.done == []  # refused before anything ran


@pytest.mark.parametrize("runner", RUNNERS)
def test_the_page_is_served_during_the_run_and_gone_after(runner, tmp_path):
    release = tmp_path / "release"
    graph = gated_graph(release)
    kwargs = {"ncores": 2} if runner.startswith("run_parallel") else {}
    sockets_before = inet_sockets()
    run = taskmap.start(graph, runner=runner, dashboard=True, **kwargs)
    url = run.dashboard_url
    assert url is not None and re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{20,}", url)
    port = int(url.split(":")[2].split("/")[0])
    # the page, its script and its style need the token; so do the data
    for path in ("", "dashboard.js", "dashboard.css", "state", "events", "nothing-here"):
        bare = f"http://127.0.0.1:{port}/{path}"
        assert get(bare)[0] == 403, path
        assert get(bare + "?token=wrong")[0] == 403, path
    status, body = get(url)
    assert status == 200 and b"dashboard.js?token=" in body
    assert get(page(url, "nothing-here"))[0] == 404
    # mid-run (the gates wait for the file): what the state says; `run`
    # runs one task at a time, so there the first gate blocks everything
    concurrent = runner != "run"
    deadline = time.monotonic() + 30
    while True:
        snap = json.loads(get(page(url, "state"))[1])
        counts = snap["state"]["counts"]
        if counts["done"] + counts["failed"] + counts["skipped"] >= (3 if concurrent else 0) and counts["running"] == (
            2 if concurrent else 1
        ):
            break
        assert time.monotonic() < deadline, snap
        time.sleep(0.05)
    names = [n[0] for n in snap["graph"]["nodes"]]
    status_of = dict(zip(names, snap["state"]["status"]))
    if concurrent:
        assert counts == {"total": 6, "done": 1, "failed": 1, "skipped": 1, "running": 2, "pending": 1}
        assert status_of == {"gate0": "r", "gate1": "r", "first": "d", "bad": "f", "after_bad": "s", "last": "p"}
        assert [f["task"] for f in snap["state"]["failures"]] == ["bad"]
        assert snap["state"]["failures"][0]["error"] == "ValueError: boom"
    else:
        assert counts == {"total": 6, "done": 0, "failed": 0, "skipped": 0, "running": 1, "pending": 5}
        assert sorted(status_of.values()) == ["p"] * 5 + ["r"]
        assert status_of[snap["state"]["running"][0][0]] == "r"
    release.touch()
    run.wait(timeout=30)
    final = {
        n: ("f" if isinstance(v, BaseException) else "s" if "Ancestor" in str(v) else "d")
        for n, v in graph.results.items()
    }
    assert final == {"gate0": "d", "gate1": "d", "first": "d", "bad": "f", "after_bad": "s", "last": "d"}
    # the run's end took the page down: no request thread, no socket, no port
    assert not left_by_pages()
    assert inet_sockets() == sockets_before
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert run.dashboard_url == url  # (still says where it was)


def test_a_viewer_gets_pushed_updates_at_most_five_a_second_and_the_end(tmp_path):
    release = tmp_path / "release"
    ticks = 40
    # a run of about 2 s whose tasks finish every 50 ms: 40 changes, at most 5 updates a second
    graph = gated_chain(release, ticks, name="ticking")
    run = taskmap.start(graph, runner="run", dashboard=True)
    url = run.dashboard_url
    assert url is not None
    events = watch_then_release(url, release)
    run.wait(timeout=30)
    kinds = [e for _, e, _ in events]
    assert kinds[0] == "graph" and kinds[1] == "state" and kinds[-1] == "end"
    # when each state was made (the run's clock, read by the server: what
    # the viewer's arrival times would blur on a busy machine)
    states = [(data["elapsed"], data) for _, e, data in events if e == "state"]
    # the first state comes with the graph on connecting, the last with the end;
    # in between they are the ticks: never more than 5 a second
    pushed = states[1:-1]
    assert len(pushed) >= 3, len(pushed)
    gaps = [b[0] - a[0] for a, b in zip(pushed, pushed[1:])]
    assert all(g >= 0.199 for g in gaps), gaps
    assert states[0][1]["counts"]["running"] == 1  # the gate
    final = states[-1][1]
    assert final["ended"] and final["counts"]["done"] == ticks + 1 and final["eta"] is None
    bars = [bar for _, e, data in events if e == "bars" for bar in data]
    assert sorted(b[0] for b in bars) == sorted(graph.dependencies)  # each task once, as a bar
    assert all(b[1] == os.getpid() and b[2] == "cpu" and b[3] <= b[4] and b[5] == "d" for b in bars)


def test_a_plain_run_holds_its_events_for_the_page_and_hands_them_over_at_each_tick(tmp_path):
    # `run` with the page as its only observer holds its events back (64 at
    # a time); the page takes what is held at each tick, so what it shows
    # moves with the run: one task running at every tick (each takes 50 ms),
    # about four more done than at the tick before
    import queue

    release = tmp_path / "release"
    graph = gated_chain(release, 40)
    page_ = Dashboard(0, announce=None)
    urls: queue.Queue = queue.Queue()
    page_.on_url.append(urls.put)
    runner = threading.Thread(target=lambda: taskmap.run(graph, observers=[page_]))
    runner.start()
    try:
        events = watch_then_release(urls.get(timeout=30), release)
    finally:
        release.touch()
        runner.join(30)
    states = [data for _, e, data in events if e == "state"]
    pushed = states[1:-1]  # (the first, on connecting, may come before the gate starts)
    assert len(pushed) >= 5, len(pushed)
    assert all(s["counts"]["running"] == 1 for s in pushed), [s["counts"] for s in pushed]
    done = [s["counts"]["done"] for s in pushed]
    assert len(set(done)) >= 0.7 * len(done), done
    assert states[-1]["counts"]["done"] == 41


def test_a_watched_run_of_many_quick_tasks_still_gets_at_most_five_updates_a_second(tmp_path):
    # tens of thousands of events a second: the queue passes DRAIN_AT many
    # times, which must not add states to the viewer's five a second
    release = tmp_path / "release"
    funcs: dict = {"gate": _partial(wait_for_file, str(release))}
    deps: dict = {"gate": []}
    for i in range(30_000):
        funcs[f"q{i}"] = quick
        deps[f"q{i}"] = ["gate"]
    graph = taskmap.create_graph(funcs, deps, logging_config={"level": "WARNING"})
    run = taskmap.start(graph, runner="run", dashboard=True)
    url = run.dashboard_url
    assert url is not None
    events = watch_then_release(url, release, timeout=60)
    run.wait(timeout=60)
    states = [data["elapsed"] for _, e, data in events if e == "state"]
    pushed = states[1:-1]
    gaps = [b - a for a, b in zip(pushed, pushed[1:])]
    assert all(g >= 0.199 for g in gaps), gaps


def test_a_fixed_port_and_announcing_the_address(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    graph = taskmap.create_graph({"a": quick}, {"a": []}, name="fixed")
    taskmap.run(graph, dashboard=port)
    err = capsys.readouterr().err
    assert re.search(rf"taskmap: live page of fixed at http://127\.0\.0\.1:{port}/\?token=[\w-]+ ", err), err
    # a port in use: the run goes on without its page, and a warning says why
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        graph = taskmap.create_graph({"a": quick}, {"a": []})
        with pytest.warns(RuntimeWarning, match=rf"no live page for this run: 127\.0\.0\.1:{taken}"):
            taskmap.run(graph, dashboard=taken)
        assert graph.results == {"a": 1}
        graph = taskmap.create_graph({"a": quick}, {"a": []})
        with pytest.warns(RuntimeWarning, match="no live page"):
            run = taskmap.start(graph, runner="run", dashboard=taken)
            assert run.dashboard_url is None
            assert run.wait(timeout=30).results == {"a": 1}
    assert not left_by_pages()


def test_a_run_without_a_dashboard_has_no_url():
    graph = taskmap.create_graph({"a": quick}, {"a": []})
    run = taskmap.start(graph, runner="run")
    assert run.dashboard_url is None
    run.wait(timeout=30)


def test_the_command_line_prints_the_address(tmp_path, capsys):
    from taskmap.cli import main

    pipeline = tmp_path / "pipe.py"
    pipeline.write_text("def a():\n    return 1\n\nfuncs = {'a': a}\ndependencies = {'a': []}\n")
    assert main(["run", str(pipeline), "--runner", "sequential", "--dashboard", "--no-summary"]) == 0
    assert re.search(r"live page of .* at http://127\.0\.0\.1:\d+/\?token=", capsys.readouterr().err)
    assert main(["run", str(pipeline), "--runner", "sequential", "--dashboard-port", "70000"]) == 2
    assert not left_by_pages()


def test_concurrent_runs_each_have_their_own_page_served_by_one_thread_that_never_polls(tmp_path):
    from taskmap.observe.dashboard_server import page_thread

    releases = [tmp_path / "r0", tmp_path / "r1"]
    graphs = [gated_graph(release) for release in releases]
    runs = [taskmap.start(graph, runner="run_async", dashboard=True) for graph in graphs]
    urls = [run.dashboard_url for run in runs]
    assert all(urls) and urls[0] != urls[1]
    ports = [u.split(":")[2].split("/")[0] for u in urls]  # type: ignore[union-attr]
    assert ports[0] != ports[1]
    # each page is its own run's, with its own token: the other's is refused
    assert get(urls[0])[0] == get(urls[1])[0] == 200  # type: ignore[arg-type]
    crossed = urls[0].replace(ports[0], ports[1])  # type: ignore[union-attr]
    assert get(crossed)[0] == 403
    served = page_thread()
    assert len(served.pages) == 2
    assert [t for t in threading.enumerate() if t.name == "taskmap-dashboard"] == [served.thread]
    for release, run in zip(releases, runs):
        release.touch()
        run.wait(timeout=30)
    assert not left_by_pages()
    # a page of a later run is served by the same thread
    graph = taskmap.create_graph({"a": quick}, {"a": []})
    taskmap.run(graph, dashboard=True)
    assert page_thread() is served and served.thread.is_alive()
    assert not left_by_pages()
    # with no page live it sleeps in select without a timeout: no wake-up at all
    before = served.wakeups
    time.sleep(0.6)  # (three ticks' worth, were it ticking)
    assert served.wakeups == before


class _WatchedSource:
    def snapshot(self) -> dict:
        return {}

    def subscribe(self):
        yield b""

    def wants_ticks(self) -> bool:
        return True


def test_a_page_whose_tick_raises_is_dropped_and_the_others_are_still_served(capsys):
    from taskmap.observe.dashboard_server import PageServer

    ticks: list[float] = []

    def tick_ok() -> None:
        ticks.append(time.monotonic())

    def tick_broken() -> None:
        raise RuntimeError("a bug in a page")

    good = PageServer(0, _WatchedSource(), tick_ok, 0.05)  # type: ignore[arg-type]
    bad = PageServer(0, _WatchedSource(), tick_broken, 0.05)  # type: ignore[arg-type]
    good.start()
    bad.start()
    good.tick_in(0.0)
    bad.tick_in(0.0)
    try:
        deadline = time.monotonic() + 10
        while len(ticks) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert get(good.url)[0] == 200
        assert "a bug in a page" in capsys.readouterr().err
    finally:
        bad.stop()  # (already dropped: returns at once)
        good.stop()
    assert not left_by_pages()


# -- the page's files -----------------------------------------------------------------


def test_every_file_of_the_page_ships_in_the_package_and_loads_nothing_from_outside():
    for name in ASSETS:
        text = asset(name).decode()
        # the only URL in the page is the SVG namespace (an identifier, never fetched)
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert "@import" not in text and "//cdn" not in text
    assert b"dashboard.js?token={{token}}" in asset("index.html")


# -- the view: bounded whatever the size of the run ---------------------------------------


def _info(tasks: list, started: float = 100.0) -> RunInfo:
    return RunInfo(runner="run", ncores=1, tasks=tasks, started=started, coordinator_pid=1)


def test_a_100000_task_run_is_drawn_by_function_with_bounded_messages():
    n = 100_000
    funcs, deps = {}, {}
    for i in range(n // 2):
        funcs[f"load{i}"] = quick
        deps[f"load{i}"] = []
        funcs[f"parse{i}"] = _partial(boom, i)
        deps[f"parse{i}"] = [f"load{i}"]
    graph = taskmap.create_graph(funcs, deps, io_bound=[f"load{i}" for i in range(n // 2)])
    names = list(deps)
    view = RunView(graph, _info(names))
    events: list = []
    for k, name in enumerate(names):
        events.append((name, 7, "cpu", 100.0 + k * 1e-5))
        status = FAILED if k % 1000 == 0 else DONE
        value = ValueError("x") if status == FAILED else 1
        events.append(TaskEvent(name, status, "cpu", 100.0 + k * 1e-5, 100.0 + k * 1e-5 + 1e-6, 7, 1, value))
    view.apply(events)
    graph_message = view.graph_message()
    assert graph_message["by_function"]
    assert [n[0] for n in graph_message["nodes"]] == ["quick (50000)", "boom (50000)"]
    assert graph_message["edges"] == [(0, 1)]
    state = view.state_message()
    assert state["groups"] == [[0, 0, 49900, 100, 0], [0, 0, 50000, 0, 0]]  # (even k: the loads)
    assert state["counts"]["done"] == n - 100 and state["counts"]["failed"] == 100
    assert len(state["failures"]) == 50  # the latest
    size = len(json.dumps(state)) + len(json.dumps(graph_message))
    assert size < 100_000, size
    bars, seq = view.bars_since(0)
    assert len(bars) == BAR_BATCH and seq == n
    assert bars[-1][0] == names[-1]
    assert view.bars_since(seq) == ([], seq)


def test_tasks_done_before_the_run_show_as_done_and_retries_count_once():
    graph = taskmap.create_graph({"a": quick, "b": quick, "c": quick}, {"a": [], "b": ["a"], "c": ["b"]}, done=["a"])
    view = RunView(graph, _info(["b", "c"]))
    view.apply([("b", 5, "cpu", 100.1), ("b", 6, "cpu", 100.2)])  # a retry: started twice
    state = view.state_message()
    assert state["status"] == "drp" and state["counts"]["running"] == 1 and state["counts"]["total"] == 2
    view.apply([TaskEvent("b", DONE, "cpu", 100.2, 100.3, 6, 2, 1)])
    state = view.state_message()
    assert state["status"] == "ddp" and state["counts"]["done"] == 1 and state["workers"] == [5, 6]


def test_resources_in_use_are_the_units_of_the_running_tasks():
    graph = taskmap.create_graph(
        {"a": quick, "b": quick, "c": quick}, {"a": [], "b": [], "c": []}, uses={"a": "api", "b": ["api", "db"]}
    )
    view = RunView(graph, _info(["a", "b", "c"]), limits={"api": 2}, rates={"db": 3.0})
    view.apply([("a", 1, "io", 100.0), ("b", 1, "io", 100.0), ("c", 1, "io", 100.0)])
    assert view.state_message()["resources"] == [
        {"name": "api", "in_use": 2, "limit": 2, "rate": None},
        {"name": "db", "in_use": 1, "limit": None, "rate": 3.0},
    ]


def test_a_failed_tasks_output_tail_comes_from_graph_output_when_there_is_one():
    # the hook for per-task output capture (DESIGN section 9): graph.output[task]
    assert output_tail(SimpleNamespace(), "t") is None
    assert output_tail(SimpleNamespace(output={}), "t") is None
    assert output_tail(SimpleNamespace(output={"t": "line\n"}), "t") == "line\n"
    long = "x" * 5000 + "the end\n"
    tail = output_tail(SimpleNamespace(output={"t": long}), "t", chars=100)
    assert tail is not None and tail.endswith("the end\n") and len(tail) == 101


def test_a_failures_output_tail_is_read_when_the_state_is_sent():
    # a graph with per-task output (DESIGN section 9): the tail shows, also
    # when the output is recorded after the failure reached the page
    from taskmap.graph import Graph

    class GraphWithOutput(Graph):
        output: dict

    graph = GraphWithOutput({"a": boom}, {"a": []})
    graph.output = {}
    view = RunView(graph, _info(["a"]))
    error = ValueError("boom")
    error.remote_traceback = "Traceback (most recent call last):\n  ...\nValueError: boom\n"  # type: ignore[attr-defined]
    view.apply([("a", 3, "cpu", 100.0), TaskEvent("a", FAILED, "cpu", 100.0, 100.5, 3, 1, error)])
    [failure] = view.state_message()["failures"]
    assert failure["output"] is None and failure["traceback"].endswith("ValueError: boom\n")
    graph.output["a"] = "reading input\nabout to fail\n"
    [failure] = view.state_message()["failures"]
    assert failure == {
        "task": "a",
        "error": "ValueError: boom",
        "worker": 3,
        "attempts": 1,
        "traceback": error.remote_traceback,  # type: ignore[attr-defined]
        "output": "reading input\nabout to fail\n",
    }


def numbers(release: str) -> list[int]:
    wait_for_file(release)
    return [1, 2, 3]


def double(x: int, *args: object) -> int:
    if x == 2:
        raise ValueError("two")
    return 2 * x


def test_an_expanded_tasks_elements_count_and_colour_its_node(tmp_path):
    release = tmp_path / "release"
    graph = taskmap.create_graph(
        {"numbers": _partial(numbers, str(release)), "double": double, "total": quick},
        {"numbers": [], "double": ["numbers"], "total": ["double"]},
        expand={"double": "numbers"},
        name="fan-out",
    )
    run = taskmap.start(graph, runner="run", dashboard=True)
    url = run.dashboard_url
    assert url is not None
    box: dict = {}
    reader = threading.Thread(target=lambda: box.setdefault("events", read_events(url)))
    reader.start()
    time.sleep(0.5)  # the viewer is connected and sees `numbers` running
    release.touch()
    run.wait(timeout=30)
    reader.join(30)
    events = box["events"]
    final = [data for _, event, data in events if event == "state"][-1]
    names = [n[0] for n in [data for _, event, data in events if event == "graph"][0]["nodes"]]
    # numbers, three elements of double and double itself ran (one element failed); total was skipped
    assert final["counts"] == {"total": 6, "done": 3, "failed": 2, "skipped": 1, "running": 0, "pending": 0}
    assert dict(zip(names, final["status"])) == {"numbers": "d", "double": "f", "total": "s"}
    assert [f["task"] for f in final["failures"]] == ["double[1]", "double"]
    bars = sorted(bar[0] for _, event, data in events if event == "bars" for bar in data)
    assert bars == ["double[0]", "double[1]", "double[2]", "numbers"]


# -- the layout ---------------------------------------------------------------------------


def test_layers_put_every_task_below_its_dependencies_and_positions_are_distinct():
    import random

    rng = random.Random(5)
    n = 400
    deps = {i: rng.sample(range(i), min(i, rng.randint(0, 3))) for i in range(n)}
    lay = layout(list(deps), deps, dict.fromkeys(deps, quick), set())
    assert not lay.by_function
    for child, parent in ((b, a) for a, b in lay.edges):
        assert lay.layer[parent] < lay.layer[child]
    for i, ps in deps.items():  # the longest chain: one more than the deepest parent
        assert lay.layer[i] == (max(lay.layer[p] for p in ps) + 1 if ps else 0)
    cells = list(zip(lay.layer, lay.position))
    assert len(set(cells)) == n
    assert layers([[], [0], [0, 1]]) == [0, 1, 2]


def test_by_function_past_the_limit():
    import functools

    def fetch(i):
        return i

    deps = {f"f{i}": [] for i in range(10)} | {"total": [f"f{i}" for i in range(10)]}
    funcs = {f"f{i}": functools.partial(fetch, i) for i in range(10)} | {"total": quick}
    lay = layout(list(deps), deps, funcs, {f"f{i}" for i in range(10)}, node_limit=5)
    assert function_name(fetch) == "fetch" and function_name(functools.partial(functools.partial(fetch, 1))) == "fetch"
    assert lay.by_function and lay.labels == ["fetch (10)", "quick (1)"]
    assert lay.lanes == ["io", "cpu"] and lay.layer == [0, 1] and lay.edges == [(0, 1)]
    assert lay.group == [0] * 10 + [1]


def test_functions_that_feed_each_other_are_still_layered():
    # f feeds g in one place and g feeds f in another: a cycle among functions
    def f(*a):
        return 1

    def g(*a):
        return 1

    deps = {"f1": [], "g1": ["f1"], "f2": ["g1"], "g2": ["f2"], "h": ["g2"]}
    funcs = {"f1": f, "g1": g, "f2": f, "g2": g, "h": quick}
    lay = layout(list(deps), deps, funcs, set(), node_limit=2)
    assert lay.by_function and lay.labels == ["f (2)", "g (2)", "quick (1)"]
    assert sorted(lay.edges) == [(0, 1), (1, 0), (1, 2)]
    assert lay.layer == [0, 1, 2]
    assert layers_of_cyclic(3, [(0, 1), (1, 2), (2, 0)])[0] == [0, 1, 2]
