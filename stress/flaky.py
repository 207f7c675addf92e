#!/usr/bin/env python3
"""Flaky: run chosen tests many times and print each one's failure rate.

    python stress/flaky.py tests/test_fault_matrix.py --loops 50 --load 2
    python stress/flaky.py "tests/test_faults.py::test_interrupt_stops_every_worker_and_keeps_results" -k sigint
    python stress/flaky.py tests/test_shm.py tests/test_leaks.py --loops 20 --mode fresh

The tests (pytest node ids or paths, with optional ``-k EXPR``) run --loops
times in two ways (``--mode``, default both):

* one: a single pytest process runs the selected tests --loops times over
  (a plugin's ``pytest_runtestloop`` repeats the collected items), so the
  warm pool, module state and leftovers of one run meet the next;
* fresh: --loops pytest processes, one run each (a cold start every time).

``--load K`` starts K processes that spin on a core for the whole time (a
busy machine is where timing assumptions break).  Each pytest process
records every test report through a plugin object passed to ``pytest.main``
(no output is parsed) and writes them to a JSON file for this script.

Prints one line per test that ran (runs, failed runs, rate), each distinct
failure message (its first ``E`` line), then a verdict: ``OK: ...`` and exit status 0 when nothing
failed, ``FAIL: ...`` and exit status 1 when a test failed in any run, 2 when
a pytest process did not finish within --max-seconds (it is killed), 130
when interrupted (Ctrl-C or SIGTERM: the table shows the runs until then).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


class Recorder:
    """A pytest plugin: repeats the session's tests ``loops`` times and keeps,
    per test id, the number of runs, the runs that failed (in setup, call or
    teardown) and the failure messages (phase and first ``E`` line)."""

    def __init__(self, loops: int) -> None:
        self.loops = loops
        self.runs: dict[str, int] = defaultdict(int)
        self.failed: dict[str, set[int]] = defaultdict(set)  # run numbers
        self.failures: dict[str, list[str]] = defaultdict(list)

    def pytest_runtestloop(self, session):
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            return None  # pytest's own loop reports the collection errors
        if session.config.option.collectonly:
            return None
        schedule = [item for _ in range(self.loops) for item in session.items]
        for i, item in enumerate(schedule):
            nextitem = schedule[i + 1] if i + 1 < len(schedule) else None
            if nextitem is item:
                # the same test again: tear down the test itself, keep its
                # module's and the session's fixtures (as for any next test)
                nextitem = item.parent
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            if session.shouldfail or session.shouldstop:
                break
        return True

    def pytest_runtest_logreport(self, report):
        if report.when == "setup":
            self.runs[report.nodeid] += 1
        if report.failed:
            self.failed[report.nodeid].add(self.runs[report.nodeid])
            lines = (report.longreprtext or "").strip().splitlines() or ["?"]
            # the first "E   ..." line says what failed; else the last line
            why = next((line[1:].strip() for line in lines if line.startswith("E ")), lines[-1])
            self.failures[report.nodeid].append(f"{report.when}: {why[:200]}")


def child(args) -> int:
    """In a pytest process: run the tests, write what the recorder saw."""
    import pytest

    # (started in the background, a shell may have left SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    recorder = Recorder(args.loops)
    pytest_args = ["-q", "-p", "no:cacheprovider", *args.pytest_args]
    code = pytest.main(pytest_args, plugins=[recorder])
    failed = {test: len(runs) for test, runs in recorder.failed.items()}
    report = {"runs": recorder.runs, "failed": failed, "failures": recorder.failures, "exit": int(code)}
    Path(args.child).write_text(json.dumps(report))
    return 0


def run_pytest(args, loops: int, out: Path, log) -> dict | None:
    """One pytest process running the tests ``loops`` times; its report,
    or None if it did not finish in time (killed, with its process group)."""
    cmd = [sys.executable, __file__, "--child", str(out), "--loops", str(loops), "--", *args.pytest_args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=args.max_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own group: its workers too
        proc.wait()
        return None
    except KeyboardInterrupt:
        args.interrupted = True
        os.killpg(proc.pid, signal.SIGINT)  # pytest stops and reports what ran
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if not out.exists():
        problem = [f"exit status {proc.returncode}, no report"]
        return {"runs": {}, "failed": {"<pytest process>": 1}, "failures": {"<pytest process>": problem}}
    return json.loads(out.read_text())


def start_load(k: int) -> list[subprocess.Popen]:
    spin = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(k)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tests", nargs="*", help="pytest node ids or paths")
    p.add_argument("-k", dest="keyword", help="pytest -k expression")
    p.add_argument("--loops", type=int, default=10, help="runs of each test per mode")
    p.add_argument("--mode", choices=["one", "fresh", "both"], default="both")
    p.add_argument("--load", type=int, default=0, help="processes spinning on the cores meanwhile")
    p.add_argument("--max-seconds", type=float, default=3600, help="limit for one pytest process")
    p.add_argument("--log", help="append the pytest output here (default: a temporary file, printed path)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)  # other options go to pytest as they are
    args.pytest_args = [*args.tests, *(["-k", args.keyword] if args.keyword else []), *extra]
    if args.child:
        return child(args)
    args.interrupted = False
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C: report what ran
    if not args.tests and not args.keyword:
        p.error("name the tests to run (node ids, paths, or -k)")

    modes = ["one", "fresh"] if args.mode == "both" else [args.mode]
    log_path = Path(args.log) if args.log else Path(tempfile.mkstemp(prefix="flaky-", suffix=".log")[1])
    print(
        f"flaky: {' '.join(args.pytest_args)}; {args.loops} loops, modes {'+'.join(modes)}, load {args.load}; "
        f"pytest output in {log_path}",
        flush=True,
    )
    runs: dict[tuple[str, str], int] = defaultdict(int)
    failed: dict[tuple[str, str], int] = defaultdict(int)  # runs that failed
    failures: dict[tuple[str, str], list[str]] = defaultdict(list)
    hung = []
    load = start_load(args.load)
    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp, open(log_path, "a") as log:
            jobs = [("one", args.loops)] * ("one" in modes) + [("fresh", 1)] * (args.loops if "fresh" in modes else 0)
            for n, (mode, loops) in enumerate(jobs):
                report = run_pytest(args, loops, Path(tmp) / f"{n}.json", log)
                if report is None:
                    hung.append(f"{mode} #{n}")
                    print(f"  {mode} #{n}: did not finish within {args.max_seconds:g} s (killed)", flush=True)
                    continue
                for test, count in report["runs"].items():
                    runs[mode, test] += count
                for test, count in report["failed"].items():
                    failed[mode, test] += count
                for test, lines in report["failures"].items():
                    failures[mode, test] += lines
                if mode == "fresh":
                    print(f"  fresh #{n}: {len(report['failed'])} failing tests", flush=True)
                if args.interrupted:
                    break
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - start

    width = max((len(t) for _, t in runs), default=10)
    print(f"\n{'mode':5}  {'test':{width}}  {'runs':>5}  {'fail':>4}  rate")
    for mode, test in sorted(runs, key=lambda mt: (-failed.get(mt, 0), mt)):
        n, bad = runs[mode, test], failed.get((mode, test), 0)
        print(f"{mode:5}  {test:{width}}  {n:5}  {bad:4}  {bad / max(n, 1):.0%}")
    for (mode, test), lines in sorted(failures.items()):
        if (mode, test) not in runs:
            print(f"{mode:5}  {test:{width}}  {'-':>5}  {failed[mode, test]:4}  (no test ran)")
        for line in dict.fromkeys(lines):  # each distinct message once
            print(f"       {mode} {test}: {line}")

    failed_runs = sum(failed.values())
    facts = (
        f"{len({t for _, t in runs})} tests, {sum(runs.values())} runs ({'+'.join(modes)}, "
        f"{args.loops} loops, load {args.load}), {elapsed:.0f} s"
    )
    if args.interrupted:
        print(f"FAIL: interrupted; {failed_runs} failed runs so far; {facts}")
        return 130
    if hung:
        print(
            f"FAIL: {len(hung)} pytest processes did not finish ({', '.join(hung)}); {failed_runs} failed runs; {facts}"
        )
        return 2
    if failed_runs:
        print(f"FAIL: {failed_runs} failed runs of {len({t for _, t in failed})} tests; {facts}")
        return 1
    if not runs:
        print(f"FAIL: no test ran; {facts}")
        return 1
    print(f"OK: no failure; {facts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
