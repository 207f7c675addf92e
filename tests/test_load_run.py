"""Load mode end to end (``taskmap.load``, ``taskmap load``) against the
example's HTTP service on 127.0.0.1 (examples/load_scenario.py, a child
process that answers after a known delay and measures what it served), with
the real async HTTP client (aiohttp).  What taskmap reports is checked
against what the service measured itself."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import pytest

import taskmap
from taskmap.cli import main

pytest.importorskip("aiohttp")
pytest.importorskip("hdrh")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))  # (the workers get the caller's sys.path)
import load_scenario as example  # noqa: E402

PATHS = {"login": "/login", "browse": "/browse", "search": "/search", "checkout": "/checkout"}


@pytest.fixture
def service():
    with example.service(delay=0.02) as s:
        yield s


async def self_timed_call(log: str, base: str, path: str, *parents: object) -> int:
    """The example's request, timed by the task itself (written to ``log``)."""
    start = time.perf_counter()
    status = await example.call(base, path)
    took = time.perf_counter() - start
    with open(log, "a") as out:  # (one short O_APPEND write per line: whole lines from every worker)
        out.write(f"{path} {took}\n")
    return status


def self_timed_scenario(log: str, base: str):
    def make_scenario(i: int) -> taskmap.Graph:
        funcs = {name: functools.partial(self_timed_call, log, base, path) for name, path in PATHS.items()}
        deps = {"login": [], "browse": ["login"], "search": ["login"], "checkout": ["browse", "search"]}
        return taskmap.create_graph(funcs, deps, io_bound=list(deps))

    return make_scenario


@pytest.mark.timeout(60)
def test_latency_and_rate_match_what_the_service_measured(service, tmp_path):
    # What is compared is measured in this same run, on both sides: this
    # machine's speed drifts (its slow spells add 2-4 ms to a request seen
    # by any client and to each hop between tasks), so a bound against a
    # fixed figure would test the machine.
    log = tmp_path / "self-timed"
    report = taskmap.load(self_timed_scenario(str(log), service.url), rate=100, duration=3, ncores=1, live=False)
    served = service.stats()
    assert report.dropped == 0 and report.scenario.error_count == 0
    assert report.started == report.completed == 300
    summary = report.summary
    timed: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        path, took = line.split()
        timed.setdefault(path, []).append(float(took))
    client = 0.0  # the most a request's p50 took beyond the service's own time, this run
    for name, path in PATHS.items():
        mine = sorted(timed[path][1:])  # (the warm-up instance's first)
        assert len(mine) == 300
        # a task's latency is its request's, as the task itself timed it
        assert abs(summary[name]["p50"] - mine[150]) < 0.001, (name, summary[name], mine[150])
        # and no less than the service's own time, plus the client's part of the trip
        assert 0 <= summary[name]["p50"] - served[path]["p50"] < 0.005, (name, summary[name], served[path])
        client = max(client, summary[name]["p50"] - served[path]["p50"])
    # an instance's latency is three requests deep: what the service saw of it,
    # from its login's arrival to its checkout's answer (instance k's requests are
    # the k-th to arrive at each path: 10 ms apart, they take ~65 ms), plus what
    # comes before the login reaches the service (arrival lateness, the hop to
    # the worker, the client's send) and after checkout's answer (the client's
    # receive): 2-8 ms here, as the machine goes; a request counted twice would
    # add 20
    logins, checkouts = served["/login"]["arrivals"][1:], served["/checkout"]["arrivals"][1:]
    assert len(logins) == len(checkouts) == 300
    spans = sorted(c - lg for lg, c in zip(logins, checkouts))
    through_service = spans[150] + served["/checkout"]["p50"]
    assert 3 * 0.02 <= through_service <= summary["scenario"]["p50"] < through_service + 2 * client + 0.005, (
        summary["scenario"],
        through_service,
        client,
    )
    # the rate the service saw logins arrive at, on its own clock: the
    # median slope over pairs of arrivals 100 apart (Theil-Sen: a few
    # requests a busy machine delayed move it little); the warm-up
    # instance's login came before the clock started
    times = served["/login"]["arrivals"]
    assert len(times) == 301
    times = times[1:]
    slopes = sorted((times[j] - times[i]) / (j - i) for i in range(len(times)) for j in range(i + 100, len(times)))
    assert 1 / slopes[len(slopes) // 2] == pytest.approx(100, rel=0.01)
    # and each arrival on its schedule (the line through the median offset)
    offsets = sorted(t - k / 100 for k, t in enumerate(times))
    late = sorted(abs(t - k / 100 - offsets[len(offsets) // 2]) for k, t in enumerate(times))
    assert late[int(0.9 * len(late))] < 0.02, late[int(0.9 * len(late)) :]
    assert report.achieved_rate == pytest.approx(100, rel=0.01)


@pytest.mark.timeout(60)
def test_a_stall_shows_in_the_scenario_percentiles_as_wrk2_reports_it(service):
    # instance 50 (due at 1.0 s) stalls the service for 1 s: the 50 instances
    # due during the stall wait for it, each from its own scheduled arrival,
    # so a third of the instances see 0..1 s more (a closed loop would
    # have sent almost none of them, and reported a p99 of ~60 ms)
    report = taskmap.load(example.scenario(service.url, stall_at=50), rate=50, duration=3, ncores=1, live=False)
    s = report.summary["scenario"]
    assert report.dropped == 0 and report.scenario.error_count == 0
    assert s["p99"] >= 0.9, s
    assert s["p90"] >= 0.4, s
    assert s["p50"] < 0.3, s
    assert s["max"] < 1.6, s


@pytest.mark.timeout(60)
def test_arrivals_past_max_in_flight_are_dropped_and_counted():
    with example.service(delay=0.05) as s:
        # an instance takes ~150 ms: 5 at a time sustain ~33/s, far below 200/s
        report = taskmap.load(example.scenario(s.url), rate=200, duration=1, max_in_flight=5, ncores=1, live=False)
    assert report.scheduled == 200
    assert report.started + report.dropped == 200
    assert report.dropped > 100
    assert report.peak_in_flight <= 5
    assert report.completed == report.started
    assert report.to_dict()["dropped"] == report.dropped


@pytest.mark.timeout(60)
def test_errors_fail_their_instance_and_are_counted_by_type(service):
    report = taskmap.load(example.scenario(service.url, fail_every=5), rate=50, duration=1, ncores=1, live=False)
    assert report.completed == 50
    assert report.errors() == {"checkout": {"ClientResponseError": 10}, "scenario": {"ClientResponseError": 10}}
    assert report.summary["scenario"]["errors"] == 10 and report.summary["scenario"]["count"] == 50
    assert report.error_rate == pytest.approx(0.2)
    example_ = report.examples()["checkout"][0]
    assert "500" in example_["message"]
    assert "GET /fail: HTTP 500 out of stock" in example_["output_tail"]


@pytest.mark.timeout(60)
def test_cli_thresholds_set_the_exit_status(service, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(example.URL_VARIABLE, service.url)
    scenario = str(EXAMPLES / "load_scenario.py")
    common = ["load", scenario, "--rate", "20", "--duration", "1s", "--ncores", "1", "--no-live"]
    out = tmp_path / "out.json"
    assert main([*common, "--fail-if", "scenario.p99<1ms", "--fail-if", "errors<1%", "--report", str(out)]) == 1
    captured = capsys.readouterr()
    assert "threshold violated: scenario.p99<1ms: measured" in captured.err
    assert "errors<1%" not in captured.err
    data = json.loads(out.read_text())
    assert data["started"] == 20 and data["summary"]["scenario"]["count"] == 20
    assert main([*common, "--fail-if", "scenario.p99<5s", "--fail-if", "errors<1%"]) == 0
    assert main([*common, "--fail-if", "p98<1s"]) == 2  # a usage error


@pytest.mark.timeout(60)
def test_cancel_ends_the_run_with_a_partial_report(service):
    run = taskmap.start_load(example.scenario(service.url), rate=50, duration=60, ncores=1)
    with pytest.raises(TimeoutError):
        run.wait(timeout=1.0)
    run.cancel()
    report = run.wait(timeout=10)
    assert report.cancelled and not report.interrupted
    assert 20 <= report.started <= 200
    assert report.duration < 10
    assert report.achieved_rate == pytest.approx(50, rel=0.2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warmup", [True, False])
def test_the_warm_up_instance_runs_before_the_clock_and_is_not_measured(warmup):
    # a fresh service each time: its counts are this run's alone
    with example.service(delay=0.02) as s:
        report = taskmap.load(example.scenario(s.url), rate=20, duration=0.5, ncores=1, live=False, warmup=warmup)
        served = s.stats()
    assert report.started == report.completed == 10
    assert report.summary["login"]["count"] == report.summary["scenario"]["count"] == 10
    # one instance per worker ran first (ncores=1: one), unmeasured
    assert served["/login"]["count"] == 10 + warmup
    if warmup:
        assert served["/login"]["arrivals"][1] - served["/login"]["arrivals"][0] > 0.04  # (before the clock)


async def timed_login(log: str, base: str, *parents: object) -> int:
    """The example's login, its start and end written to ``log`` (monotonic)."""
    start = time.monotonic()
    status = await example.call(base, "/login")
    with open(log, "a") as out:
        out.write(f"{start} {time.monotonic()}\n")
    return status


@pytest.mark.timeout(60)
def test_stages_end_to_end_set_the_rate_the_service_sees_per_stage(service):
    # 40 a second for half a second, then 120 a second for half a second (a stage of 0 s jumps)
    def make_scenario(i: int) -> taskmap.Graph:
        return taskmap.create_graph(
            {"login": functools.partial(example.call, service.url, "/login")}, {"login": []}, io_bound=["login"]
        )

    stages = [(0.0, 40), (0.5, 40), (0.0, 120), (0.5, 120)]
    report = taskmap.load(make_scenario, stages=stages, ncores=1, live=False)
    assert report.scheduled == report.started == report.completed == 80
    times = service.stats()["/login"]["arrivals"][1:]  # (the warm-up's first)
    assert len(times) == 80
    first = times[0]
    per_stage = [sum(1 for t in times if lo <= t - first < hi) for lo, hi in ((0.0, 0.495), (0.503, 1.0))]
    assert per_stage[0] == pytest.approx(20, abs=1) and per_stage[1] == pytest.approx(60, abs=2), per_stage


@pytest.mark.timeout(60)
def test_a_limit_holds_across_every_instance_of_a_load(tmp_path):
    # 100 instances a second for half a second, each one 50 ms request using "db": with a
    # limit of 2, never more than 2 requests at once, and the limit reached
    log = tmp_path / "spans"
    with example.service(delay=0.05) as s:

        def make_scenario(i: int) -> taskmap.Graph:
            return taskmap.create_graph(
                {"query": functools.partial(timed_login, str(log), s.url)},
                {"query": []},
                io_bound=["query"],
                uses={"query": "db"},
            )

        report = taskmap.load(make_scenario, rate=100, duration=0.5, ncores=2, limits={"db": 2}, live=False, grace=10)
    assert report.started == report.completed == 50 and report.scenario.error_count == 0
    spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(spans) == 50 + 2  # (and one warm-up instance per worker)
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    at_once = peak = 0
    for _, step in events:
        at_once += step
        peak = max(peak, at_once)
    assert peak == 2
    # 50 requests of 50 ms, two at a time: about 1.25 s, so the instances
    # queued for the limit: the scenario's p90 is far above one request's
    assert report.summary["scenario"]["p90"] > 0.5, report.summary["scenario"]
