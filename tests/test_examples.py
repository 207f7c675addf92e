"""The ETL example (examples/etl.py) runs end to end and computes the right thing.

The expected values come from the data generator's ground truth
(``make_data.generate()`` knows which lines it made dirty and why), not from
the pipeline's own parsing, so these tests check the pipeline independently.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import pytest

import taskmap

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
DATA = EXAMPLES / "data"
TIMEOUT = 60


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


etl = _load("etl")
make_data = _load("make_data")


@pytest.fixture(scope="module")
def truth():
    """Ground truth from the generator, plus what a test needs to price it."""
    files, truth = make_data.generate()

    rates = json.loads(files["rates.json"])["monthly"]
    stores = {s["store_id"]: s for s in json.loads(files["stores.json"])["stores"]}
    category = {}
    for line in files["products.csv"].splitlines()[1:]:
        sku, _name, cat, _price = line.split(",")
        category[sku] = cat
    lines = []  # (country, order_id, date, store, sku, qty, revenue_eur)
    for country, t in truth.items():
        for order_id, day, store, sku, qty, price in t["clean"]:
            rate = rates[day[:7]][t["currency"]]
            lines.append((country, order_id, day, store, sku, qty, qty * price / rate))
    return {"files": files, "by_country": truth, "lines": lines, "stores": stores, "category": category}


def _run_example(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    db = tmp_path / "out.sqlite"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "etl.py"), "--db", str(db), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return proc, db


def test_committed_data_is_what_make_data_generates():
    files, _ = make_data.generate()
    on_disk = {p.name: p.read_bytes() for p in DATA.iterdir() if p.is_file()}
    assert on_disk == {name: text.encode() for name, text in files.items()}
    assert sum(map(len, on_disk.values())) < 300 * 1024


@pytest.mark.parametrize("runner", ["async", "parallel_async"])
def test_etl_end_to_end(tmp_path, truth, runner):
    args = ("--runner", runner) if runner != "parallel_async" else ()  # the default
    proc, db = _run_example(tmp_path, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "15 done, 0 failed, 0 skipped" in proc.stdout
    assert f"wrote {db}" in proc.stdout
    # the run's summary table comes last: who ran what, for how long
    workers = "2 workers" if runner == "parallel_async" else "1 worker"
    table = proc.stdout[proc.stdout.index("taskmap summary: etl") :]
    assert table.startswith(f"taskmap summary: etl (run_{runner}, {workers})")
    for row in ("wall time", "core use", "critical path", "cpu busy", "slowest tasks"):
        assert row in table, row
    assert "-> load_sqlite -> report" in table  # every path of work ends there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.sqlite"]

    conn = sqlite3.connect(db)
    q = lambda sql, *a: conn.execute(sql, a).fetchall()  # noqa: E731
    lines, by_country = truth["lines"], truth["by_country"]

    # every table, with the row count the inputs imply
    counts = {t: q(f"SELECT COUNT(*) FROM {t}")[0][0] for t in etl.TABLES}
    assert counts == {
        "sales": len(lines),
        "rejects": sum(len(t["dirty"]) for t in by_country.values()),
        "daily_revenue": 366 * 4,
        "category_stats": len(set(truth["category"].values())),
        "product_ranking": len(truth["category"]),
        "store_stats": len(truth["stores"]),
    }

    # exactly the clean lines were kept, and each dirty line rejected for its defect
    assert set(q("SELECT country, order_id, qty FROM sales")) == {(c, o, n) for c, o, _, _, _, n, _ in lines}
    expected_rejects = {(f"sales_{c}.csv", line, reason) for c, t in by_country.items() for line, reason in t["dirty"]}
    assert set(q("SELECT file, line, reason FROM rejects")) == expected_rejects

    # revenue in EUR per country and per store
    per_country, per_store = defaultdict(float), defaultdict(list)
    for c, _, _, store, _, _, eur in lines:
        per_country[c] += eur
        per_store[store].append(eur)
    got = dict(q("SELECT country, SUM(revenue_eur) FROM sales GROUP BY country"))
    assert got == pytest.approx(per_country, rel=1e-9)
    for store, orders, revenue, mean, low, high in q(
        "SELECT store_id, orders, revenue_eur, mean_order_eur, ci95_low_eur, ci95_high_eur FROM store_stats"
    ):
        assert orders == len(per_store[store])
        assert revenue == pytest.approx(sum(per_store[store]), rel=1e-9)
        assert mean == pytest.approx(statistics.fmean(per_store[store]), rel=1e-9)
        assert low < mean < high

    # the 7-day rolling mean of UK revenue on Christmas Eve, and on New Year's Day
    daily = defaultdict(float)
    for c, _, day, _, _, _, eur in lines:
        daily[c, day] += eur
    week = [(date(2024, 12, 24) - timedelta(d)).isoformat() for d in range(7)]
    [(rolling,)] = q("SELECT rolling_7d_eur FROM daily_revenue WHERE country='uk' AND date='2024-12-24'")
    assert rolling == pytest.approx(sum(daily["uk", d] for d in week) / 7, rel=1e-9)
    [(rolling, revenue)] = q(
        "SELECT rolling_7d_eur, revenue_eur FROM daily_revenue WHERE country='de' AND date='2024-01-01'"
    )
    assert rolling == pytest.approx(revenue) and revenue == pytest.approx(daily["de", "2024-01-01"])

    # percentiles of the order-line value per category (statistics' own interpolation)
    per_category = defaultdict(list)
    for _, _, _, _, sku, _, eur in lines:
        per_category[truth["category"][sku]].append(eur)
    for category, p50, p90 in q("SELECT category, p50_eur, p90_eur FROM category_stats"):
        values = per_category[category]
        assert p50 == pytest.approx(statistics.median(values), rel=1e-9)
        assert p90 == pytest.approx(statistics.quantiles(values, n=10, method="inclusive")[8], rel=1e-9)

    # the best-selling product by revenue is ranked first, and printed first
    per_sku = defaultdict(float)
    for _, _, _, _, sku, _, eur in lines:
        per_sku[sku] += eur
    best = max(per_sku, key=per_sku.get)
    assert q("SELECT sku FROM product_ranking WHERE rank = 1") == [(best,)]
    assert f"1. {best} " in proc.stdout
    conn.close()


def test_a_failed_task_makes_the_exit_status_non_zero(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for p in DATA.iterdir():
        text = p.read_bytes()
        if p.name == "sales_se.csv":  # a broken export: its header is gone
            text = text.split(b"\n", 1)[1]
        (data / p.name).write_bytes(text)
    proc, _ = _run_example(tmp_path, "--runner", "async", "--data", str(data), "--latency", "0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # the files are found at run time, in name order: de, se, uk, us
    assert "FAILED clean_sales[1]: ValueError: sales_se.csv: unexpected header" in proc.stderr
    # the Swedish chain after it and everything after the join were skipped;
    # the other files' chains ran (their tasks count as failed: an element is not done)
    assert "6 done, 3 failed, 6 skipped" in proc.stdout


def test_build_graph_gives_the_same_results_with_run_and_run_async(tmp_path, truth):
    with etl.reference_server(DATA) as base_url:
        sequential = etl.build_graph(DATA, base_url, tmp_path / "run.sqlite")
        taskmap.run(sequential)
        concurrent = etl.build_graph(DATA, base_url, tmp_path / "run_async.sqlite")
        taskmap.run_async(concurrent)
    for graph in (sequential, concurrent):
        status = etl.task_status(graph)
        assert status["done"] == list(graph.dependencies), status
    assert sequential.results.keys() == concurrent.results.keys()
    for task in sequential.results:
        assert sequential.results[task] == concurrent.results[task], task
    assert sequential.results["report"]["row_counts"]["sales"] == len(truth["lines"])


def test_etl_writes_a_timeline(tmp_path):
    proc, _ = _run_example(tmp_path, "--latency", "0", "--trace", "etl.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = json.loads((tmp_path / "etl.json").read_text())["traceEvents"]
    tasks = [e for e in events if e["ph"] == "X" and e["cat"] in ("io", "cpu")]
    # 11 tasks that run whole and the 16 elements of the 4 expanded ones (4 files)
    assert len(tasks) == len({e["name"] for e in tasks}) == 27
    assert {e["name"] for e in tasks} >= {f"clean_sales[{i}]" for i in range(4)}
    assert {e["args"]["status"] for e in tasks} == {"done"}
    assert len({e["pid"] for e in tasks}) <= 2  # the two worker processes


# -- the streaming web service (examples/stream_service.py) --------------------------------


def _get(port: int, path: str):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    conn.request("GET", path)
    return conn, conn.getresponse()


def test_stream_service_streams_each_result_as_it_finishes_and_a_disconnect_cancels_the_run():
    import time

    psutil = pytest.importorskip("psutil")
    service = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "stream_service.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = service.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line + service.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        # a report over 6 cities whose fetches end 0.2 s apart: the lines
        # arrive as the tasks finish, not all at the end
        conn, response = _get(port, "/report?cities=6&delay=0.8")
        assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
        arrivals = []
        for raw in response:
            arrivals.append((time.monotonic(), json.loads(raw)))
        conn.close()
        lines = [obj for _, obj in arrivals]
        assert lines[-1]["done"] is True
        tasks = [obj["task"] for obj in lines[:-1]]
        assert sorted(tasks) == sorted([f"fetch{c}" for c in range(6)] + [f"summary{c}" for c in range(6)] + ["report"])
        assert all(obj["status"] == "done" for obj in lines[:-1]) and tasks[-1] == "report"
        assert lines[-2]["result"]["cities"] == 6
        first_fetch = next(t for t, obj in arrivals if obj.get("task", "").startswith("fetch"))
        assert arrivals[-1][0] - first_fetch > 0.6  # the last fetch ended 1 s after the first
        # a client that goes away mid-run cancels its run
        conn, response = _get(port, "/report?cities=4&delay=60")
        assert response.status == 200
        conn.close()
        deadline = time.monotonic() + 20
        while True:
            conn, response = _get(port, "/stats")
            stats = json.loads(response.read())
            conn.close()
            if stats["cancelled"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert stats == {"finished": 1, "cancelled": 1, "running": 0}
        workers = psutil.Process(service.pid).children(recursive=True)
    finally:
        service.terminate()
        out, err = service.communicate(timeout=TIMEOUT)
    assert service.returncode == 0, err
    assert "stopped:" in out
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"the service left processes behind: {alive}"


def test_load_example_runs_and_reports():
    """examples/load_scenario.py starts its service, runs taskmap.load and
    prints the report (a failed checkout every 50 instances)."""
    pytest.importorskip("aiohttp")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "load_scenario.py"), "--duration", "1", "--rate", "100", "--ncores", "1"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert "rate 100.0/s (target 100.0/s), started 100, completed 100, dropped 0, errors 2 (2.00%)" in done.stdout
    assert "checkout failed (ClientResponseError)" in done.stdout
