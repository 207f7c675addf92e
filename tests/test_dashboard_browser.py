"""The live page of a run in a real headless Chromium (Debian's ``chromium``
and ``chromium-driver``, which ``.ci/run`` installs), driven by selenium with
the system's chromedriver: no tool downloads a browser of its own.

The tasks of the first test wait for a file the test creates, so the page is
seen mid-run deterministically; the test sees the statuses change, and
checks the page's final counts and node colours against ``graph.results``.
A screenshot of each test is written under ``tmp_path`` (the mid-run one of
the first test also to ``$TASKMAP_DASHBOARD_SCREENSHOT`` when set).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskmap
from taskmap.observe.status import statuses

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Chromium's own background connections are refused on a closed network: off
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
LETTER = {"done": "d", "failed": "f", "skipped": "s", "not run": "p"}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium (its own profile), quit with every process it started."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(
            "the browser tests need Debian's chromium and chromium-driver: "
            "apt-get install -y chromium chromium-driver (as .ci/run does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    chromedriver = psutil.Process(driver.service.process.pid)
    try:
        yield driver
    finally:
        # chromedriver and the browser it started (not the warm pool's workers)
        started = [chromedriver, *chromedriver.children(recursive=True)]
        driver.quit()
        # chromedriver and Chromium's helpers end a moment after quit()
        _, alive = psutil.wait_procs(started, timeout=15)
        for p in alive:
            p.kill()


def wait_until(what: Callable[[], Any], seconds: float = 30, message: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {message or what}")
        time.sleep(0.05)


def text(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent"))


def count(driver: Any, key: str) -> int:
    return int(text(driver, f"count-{key}").replace(",", ""))


def node_statuses(driver: Any) -> dict[str, str]:
    """Each node of the drawn graph -> its status letter (data-status)."""
    return dict(
        driver.execute_script(
            "return Array.from(document.querySelectorAll('#graph g.node'))"
            ".map(g => [g.dataset.label, g.dataset.status]);"
        )
    )


def wait_for_file(path: str, *args: object) -> str:
    """Runs until ``path`` exists (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"


def extract(i: int) -> int:
    return i


def transform(*values: object) -> int:
    return len(values)


def broken(*values: object) -> None:
    print("reading the broken input...")
    raise KeyError("no such column: price")


def total(*values: object) -> int:
    return len(values)


def etl_graph(release: Path) -> taskmap.Graph:
    """Extracts (io) that wait for ``release``, transforms, one that fails,
    the tasks below it (skipped) and a total over the rest."""
    funcs: dict = {}
    deps: dict = {}
    for i in range(4):
        funcs[f"extract_{i}"] = (
            functools.partial(wait_for_file, str(release)) if i < 2 else functools.partial(extract, i)
        )
        deps[f"extract_{i}"] = []
        funcs[f"transform_{i}"] = transform
        deps[f"transform_{i}"] = [f"extract_{i}"]
    funcs["clean_prices"] = broken
    deps["clean_prices"] = ["extract_3"]
    funcs["report_prices"] = total
    deps["report_prices"] = ["clean_prices"]
    funcs["total"] = total
    deps["total"] = [f"transform_{i}" for i in range(4)]
    io = [f"extract_{i}" for i in range(4)]
    return taskmap.create_graph(funcs, deps, io_bound=io, name="etl")


@pytest.mark.timeout(120)
def test_the_page_shows_a_run_live_and_ends_with_its_results(browser, tmp_path):
    release = tmp_path / "release"
    graph = etl_graph(release)
    run = taskmap.start(graph, runner="run_parallel_async", ncores=2, dashboard=True)
    try:
        url = run.dashboard_url
        assert url is not None
        browser.get(url)
        # mid-run: the graph is drawn, the released part has run, the gated part waits
        wait_until(lambda: len(node_statuses(browser)) == len(graph.dependencies), message="the graph drawn")
        wait_until(
            lambda: count(browser, "failed") == 1 and count(browser, "running") == 2,
            message="the failure and the two waiting extracts",
        )
        nodes = node_statuses(browser)
        assert nodes["extract_0"] == nodes["extract_1"] == "r"
        assert nodes["extract_2"] == nodes["extract_3"] == nodes["transform_2"] == nodes["transform_3"] == "d"
        assert nodes["clean_prices"] == "f" and nodes["report_prices"] == "s"
        assert nodes["transform_0"] == nodes["transform_1"] == nodes["total"] == "p"
        assert text(browser, "run-status") == "running"
        assert count(browser, "total") == len(graph.dependencies) and count(browser, "pending") == 3
        failures = browser.execute_script(
            "return Array.from(document.querySelectorAll('#failures li')).map(li => li.textContent)"
        )
        assert len(failures) == 1 and "clean_prices" in failures[0] and "KeyError" in failures[0]
        assert "no such column: price" in failures[0]
        # its output tail (graph.output), as the page shows it
        wait_until(
            lambda: "reading the broken input..." in text(browser, "failures"), message="the failed task's output"
        )
        # the task stream has a row per worker lane and bars in it
        assert browser.execute_script("return document.getElementById('stream').height") > 0
        mid = tmp_path / "dashboard-mid-run.png"
        browser.save_screenshot(str(mid))
        if os.environ.get("TASKMAP_DASHBOARD_SCREENSHOT"):
            shutil.copyfile(mid, os.environ["TASKMAP_DASHBOARD_SCREENSHOT"])

        release.touch()
        graph = run.wait(timeout=60)
    finally:
        release.touch()
        run.cancel()
    # the end: the page shows what graph.results says
    wait_until(lambda: text(browser, "run-status").startswith("run ended"), message="the run's end on the page")
    expected = statuses(graph)
    by_status = {s: sum(1 for v in expected.values() if v == s) for s in ("done", "failed", "skipped")}
    assert by_status == {"done": 9, "failed": 1, "skipped": 1}
    assert {key: count(browser, key) for key in by_status} == by_status
    assert count(browser, "running") == 0 and count(browser, "pending") == 0
    assert node_statuses(browser) == {task: LETTER[s] for task, s in expected.items()}
    assert text(browser, "run-status") == "run ended with failures"
    # every file the page loaded came from its own server: nothing from outside
    origin = url.split("/?")[0]
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(origin + "/") for name in loaded), loaded
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "events" not in e["message"]]
    assert not severe, severe
    browser.save_screenshot(str(tmp_path / "dashboard-end.png"))


@pytest.mark.timeout(240)
def test_a_100000_task_run_keeps_the_page_responsive(browser, tmp_path):
    release = tmp_path / "release"
    n = 100_000
    funcs: dict = {"gate": functools.partial(wait_for_file, str(release))}
    deps: dict = {"gate": []}
    for i in range(n // 2):
        funcs[f"extract_{i}"] = extract
        deps[f"extract_{i}"] = ["gate"]
        funcs[f"transform_{i}"] = transform
        deps[f"transform_{i}"] = [f"extract_{i}"]
    # (at WARNING: pytest captures every record a logger emits, 300,000 of them here)
    graph = taskmap.create_graph(funcs, deps, name="big", logging_config={"level": "WARNING"})
    run = taskmap.start(graph, runner="run", dashboard=True)
    try:
        url = run.dashboard_url
        assert url is not None
        browser.get(url)
        # one node per function, not 100,000
        wait_until(lambda: len(node_statuses(browser)) == 3, message="the graph drawn by function")
        assert sorted(node_statuses(browser)) == ["extract (50000)", "transform (50000)", "wait_for_file (1)"]
        wait_until(lambda: count(browser, "running") == 1, message="the gate running")
        release.touch()
        # while 100,000 tasks finish, the page answers: each round trip into its
        # script is quick, and the counts move
        slowest = 0.0
        seen: set[int] = set()
        while not run.done():
            t = time.monotonic()
            seen.add(count(browser, "done"))
            slowest = max(slowest, time.monotonic() - t)
            time.sleep(0.1)
        assert slowest < 2.0, slowest
        graph = run.wait(timeout=120)
    finally:
        release.touch()
        run.cancel()
    wait_until(lambda: text(browser, "run-status") == "run ended", seconds=30, message="the run's end on the page")
    assert count(browser, "done") == n + 1 == sum(1 for v in graph.results.values() if not isinstance(v, Exception))
    assert len(seen) > 1  # the count moved while the run went on
    counts = browser.execute_script(
        "return Array.from(document.querySelectorAll('#graph g.node')).map(g => g.dataset.counts)"
    )
    assert sorted(counts) == ["0,0,1,0,0", "0,0,50000,0,0", "0,0,50000,0,0"]
    browser.save_screenshot(str(tmp_path / "dashboard-100000.png"))
