"""Load mode end to end (``taskmap.load``, ``taskmap load``) against the
example's HTTP service on 127.0.0.1 (examples/load_scenario.py, a child
process that answers after a known delay and measures what it served), with
the real async HTTP client (aiohttp).  What taskmap reports is checked
against what the service measured itself."""

from __future__ import annotations

import json
import sys
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


@pytest.mark.timeout(60)
def test_latency_and_rate_match_what_the_service_measured(service):
    report = taskmap.load(example.scenario(service.url), rate=100, duration=3, ncores=1, live=False)
    served = service.stats()
    assert report.dropped == 0 and report.scenario.error_count == 0
    assert report.started == report.completed == 300
    summary = report.summary
    for name, path in PATHS.items():
        # each task's p50 is the service's own, within 2 ms
        assert abs(summary[name]["p50"] - served[path]["p50"]) < 0.002, (name, summary[name], served[path])
    # the scenario is three requests deep
    assert (
        3 * 0.02
        <= summary["scenario"]["p50"]
        < sum(served[p]["p50"] for p in ("/login", "/browse", "/checkout")) + 0.01
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
