"""``taskmap load SCENARIO.py[:NAME]``: the command line of load mode.

    taskmap load scenario.py --rate 200 --duration 60s --ramp 10s --report out.json \\
        --fail-if 'scenario.p99<250ms' --fail-if 'errors<1%'

The file defines ``make_scenario(i)`` returning a graph (or NAME picks
another function).  The run prints the report's table (and a live one on a
terminal); exit status 0 when every ``--fail-if`` threshold holds, 1 when one
does not (each violation printed), 2 for a usage error, 130 when interrupted
(the partial report printed and written all the same).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from taskmap.loader import PipelineError, load_module, split_spec

_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


def seconds(text: str) -> float:
    """``'60s'``, ``'1.5m'``, ``'500ms'``, ``'2h'`` or a bare number of seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 60s, 1.5m, 500ms)")
    return float(m[1]) * _SECONDS[m[2] or ""]


def stages(text: str) -> list[tuple[float, float]]:
    """``'10s:100,30s:100,10s:0'``: (duration, target rate) per stage."""
    out = []
    for part in text.split(","):
        duration, sep, rate = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"stage {part!r} is not DURATION:RATE (e.g. 10s:100)")
        try:
            out.append((seconds(duration), float(rate)))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"stage {part!r}: {error}") from None
    return out


def _rate(text: str) -> float:
    try:
        value = float(text.removesuffix("/s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (instances per second)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the rate must be > 0, not {text!r}")
    return value


def add_parser(commands: Any, positive_int: Any, named_number: Any) -> None:
    """The ``load`` command, on the CLI's subparsers."""
    p = commands.add_parser(
        "load",
        help="run a scenario again and again on an open-loop schedule and report latencies",
        description="Start instances of a scenario graph at an open-loop arrival rate (they never wait for "
        "earlier ones), measure each task's and each instance's latency (from its scheduled arrival: corrected "
        "for coordinated omission) and print percentiles. Exit status 1 when a --fail-if threshold is violated.",
    )
    p.add_argument("scenario", metavar="SCENARIO.py[:NAME]", help="a file defining make_scenario(i) -> graph")
    p.add_argument("--rate", type=_rate, default=None, metavar="R", help="instances started per second")
    p.add_argument("--duration", type=seconds, default=None, metavar="T", help="how long, e.g. 60s (ramp included)")
    p.add_argument("--ramp", type=seconds, default=None, metavar="T", help="rise linearly from 0 to --rate over T")
    p.add_argument(
        "--stages",
        type=stages,
        default=None,
        metavar="T:R,...",
        help="instead of --rate/--duration: stages going linearly to rate R over T each, e.g. 10s:100,30s:100,10s:0",
    )
    p.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=1000,
        metavar="N",
        help="arrivals while N instances run are dropped (and counted); default 1000",
    )
    p.add_argument(
        "--ncores", type=positive_int, default=None, metavar="N", help="worker processes (default: half the cores)"
    )
    p.add_argument(
        "--limit",
        action="append",
        type=named_number(int),
        default=[],
        metavar="NAME=N",
        help="at most N tasks using resource NAME at once, over all instances; repeatable",
    )
    p.add_argument("--timeout", type=seconds, default=None, metavar="T", help="time limit of each task")
    p.add_argument(
        "--grace",
        type=seconds,
        default=30.0,
        metavar="T",
        help="time instances may take after the schedule's end (30s)",
    )
    p.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="measure from the first instance (default: one unmeasured instance per worker runs first)",
    )
    p.add_argument("--report", default=None, metavar="FILE.json", help="write the report as JSON")
    p.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="COND",
        help="a threshold that must hold, e.g. 'scenario.p99<250ms', 'errors<1%%', 'login.p50<=20ms'; repeatable",
    )
    live = p.add_mutually_exclusive_group()
    live.add_argument(
        "--live", dest="live", action="store_true", default=None, help="draw the live table (default: on a terminal)"
    )
    live.add_argument("--no-live", dest="live", action="store_false", help="no live table")
    p.set_defaults(command=cmd_load)


def cmd_load(args: argparse.Namespace) -> int:
    from taskmap.loadmode import thresholds
    from taskmap.loadmode.runner import load

    try:
        checks = [thresholds.parse(text) for text in args.fail_if]
    except ValueError as error:
        raise PipelineError(str(error)) from None
    path, name = split_spec(args.scenario)
    module = load_module(path)
    make = getattr(module, name or "make_scenario", None)
    if not callable(make):
        raise PipelineError(f"{path}: defines no function {name or 'make_scenario'}(i) returning a graph")
    if args.stages is None and (args.rate is None or args.duration is None):
        raise PipelineError("give --rate and --duration (and optionally --ramp), or --stages")
    try:
        report = load(
            make,
            rate=args.rate if args.stages is None else None,
            duration=args.duration if args.stages is None else None,
            ramp=args.ramp,
            stages=args.stages,
            max_in_flight=args.max_in_flight,
            ncores=args.ncores,
            limits=dict(args.limit),
            timeout=args.timeout,
            live=args.live,
            grace=args.grace,
            warmup=args.warmup,
        )
    except ValueError as error:
        raise PipelineError(str(error)) from None
    print(report.table())
    for scenario_name, examples in report.examples().items():
        for e in examples[:1]:
            print(f"\n{scenario_name} failed ({e['type']}, instance {e['instance']}): {e['message']}")
            if e.get("output_tail"):
                print("  " + e["output_tail"].rstrip().replace("\n", "\n  "))
    if args.report:
        report.to_json(args.report)
    if report.interrupted:
        return 130
    failed = thresholds.violations(checks, report)
    for line in failed:
        print(f"threshold violated: {line}", file=sys.stderr)
    return 1 if failed else 0
