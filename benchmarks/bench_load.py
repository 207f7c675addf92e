"""Load mode against locust, same local service, one run.

    pip install -e '.[bench-load]'        # hdrhistogram, aiohttp, locust
    python benchmarks/bench_load.py [--seconds 5] [--rates 50,100,200,400] [--bound 0.25]

The service is examples/load_scenario.py's (a child process on 127.0.0.1
answering each request after 20 ms and timing itself).  The scenario: log in,
then browse and search at once, then check out (4 requests, 3 deep).  For
each tool and each target rate (scenario instances per second), a fresh
service and a run of ``--seconds``; the table shows the rate achieved, the
scenario p50/p99 each tool reports, a request's p50/p99 as each reports it
(login) and as the service measured it.  "Sustained": achieved within 5 % of
the target, nothing dropped, scenario p99 under ``--bound``.

taskmap: ``taskmap.load`` (open loop; scenario latency from the scheduled
arrival, corrected for coordinated omission).  locust: ``--headless``,
users with ``constant_throughput`` summing to the target rate (each user a
closed loop: a slow scenario delays that user's next one), the scenario
timed from its actual start and reported as a custom request.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import load_scenario as example  # noqa: E402

import taskmap  # noqa: E402

LOCUSTFILE = """
import time
import gevent
from locust import HttpUser, task, constant_throughput, events

RATE = float(__import__("os").environ["BENCH_USER_RATE"])


class Shopper(HttpUser):
    wait_time = constant_throughput(RATE)

    @task
    def scenario(self):
        start = time.perf_counter()
        ok = True
        try:
            self.client.get("/login", name="login").raise_for_status()
            jobs = [gevent.spawn(lambda p=p: self.client.get(p, name=p[1:]).raise_for_status()) for p in ("/browse", "/search")]
            gevent.joinall(jobs, raise_error=True)
            self.client.get("/checkout", name="checkout").raise_for_status()
        except Exception as error:
            ok = False
        events.request.fire(
            request_type="SCENARIO", name="scenario", response_time=(time.perf_counter() - start) * 1000,
            response_length=0, exception=None if ok else RuntimeError("scenario failed"), context={},
        )
"""


def run_taskmap(rate: float, seconds: float, ncores: int) -> dict:
    with example.service(0.02) as s:
        report = taskmap.load(example.scenario(s.url), rate=rate, duration=seconds, ncores=ncores, live=False)
        served = s.stats()
    sm = report.summary
    for name, examples in report.examples().items():
        print(f"  ({name} failed: {examples[0]['type']}: {examples[0]['message'][:200]})", file=sys.stderr)
    return {
        "achieved": report.achieved_rate,
        "dropped": report.dropped,
        "errors": report.scenario.error_count,
        "scenario_p50": sm["scenario"]["p50"],
        "scenario_p99": sm["scenario"]["p99"],
        "login_p50": sm["login"]["p50"],
        "login_p99": sm["login"]["p99"],
        "service_p50": served["/login"]["p50"],
        "service_p99": served["/login"]["p99"],
        "rss": report.coordinator_rss_peak,
    }


def run_locust(rate: float, seconds: float) -> dict | None:
    users = max(10, int(rate * 0.25))
    with tempfile.TemporaryDirectory() as tmp, example.service(0.02) as s:
        locustfile = Path(tmp) / "locustfile.py"
        locustfile.write_text(LOCUSTFILE)
        prefix = str(Path(tmp) / "out")
        env = dict(os.environ, BENCH_USER_RATE=str(rate / users))
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(locustfile),
                "--headless",
                "-u",
                str(users),
                "-r",
                str(users),
                "-t",
                f"{seconds + 1:g}s",
                "--host",
                s.url,
                "--csv",
                prefix,
                "--only-summary",
                "--stop-timeout",
                "5",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds + 60,
        )
        elapsed = time.monotonic() - started
        served = s.stats()
        path = Path(prefix + "_stats.csv")
        if not path.exists():
            print("locust failed:", done.stderr[-2000:], file=sys.stderr)
            return None
        rows = {row["Name"]: row for row in csv.DictReader(path.open())}
    scen, login = rows["scenario"], rows["login"]
    ms = 1e-3
    return {
        "achieved": float(scen["Requests/s"]),
        "dropped": 0,
        "errors": int(scen["Failure Count"]),
        "scenario_p50": float(scen["50%"]) * ms,
        "scenario_p99": float(scen["99%"]) * ms,
        "login_p50": float(login["50%"]) * ms,
        "login_p99": float(login["99%"]) * ms,
        "service_p50": served["/login"]["p50"],
        "service_p99": served["/login"]["p99"],
        "rss": None,
        "elapsed": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", default="50,100,200,400")
    parser.add_argument("--bound", type=float, default=0.25, help="scenario p99 bound, seconds")
    parser.add_argument("--ncores", type=int, default=1, help="taskmap's worker processes")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    import importlib.util

    # (not imported here: importing locust monkey-patches the whole process with gevent)
    if importlib.util.find_spec("locust") is None:
        print("locust is not installed (pip install -e '.[bench-load]'): taskmap only", file=sys.stderr)
        tools = ["taskmap"]
    else:
        tools = ["taskmap", "locust"]
    print(f"service delay 20 ms; {args.seconds:g} s per rate; p99 bound {args.bound * 1e3:g} ms; cpus {os.cpu_count()}")
    print(
        f"{'tool':8} {'target/s':>8} {'achieved':>8} {'dropped':>7} {'err':>4} {'scen p50':>8} {'scen p99':>8} "
        f"{'login p50':>9} {'login p99':>9} {'svc p50':>8} {'svc p99':>8}  sustained"
    )
    best = {tool: 0.0 for tool in tools}
    for rate in rates:
        for tool in tools:
            r = run_taskmap(rate, args.seconds, args.ncores) if tool == "taskmap" else run_locust(rate, args.seconds)
            if r is None:
                continue
            ok = r["achieved"] >= 0.95 * rate and r["dropped"] == 0 and r["scenario_p99"] < args.bound
            if ok:
                best[tool] = max(best[tool], rate)
            print(
                f"{tool:8} {rate:8g} {r['achieved']:8.1f} {r['dropped']:7d} {r['errors']:4d} "
                f"{r['scenario_p50'] * 1e3:8.1f} {r['scenario_p99'] * 1e3:8.1f} {r['login_p50'] * 1e3:9.1f} "
                f"{r['login_p99'] * 1e3:9.1f} {r['service_p50'] * 1e3:8.1f} {r['service_p99'] * 1e3:8.1f}  {'yes' if ok else 'no'}",
                flush=True,
            )
    print("highest sustained scenario rate: " + ", ".join(f"{t} {b:g}/s" for t, b in best.items()))


if __name__ == "__main__":
    main()
