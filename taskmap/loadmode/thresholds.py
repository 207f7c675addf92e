"""``--fail-if`` thresholds of ``taskmap load``: conditions the run must
meet, else the command exits with status 1.  Pure.

A threshold is ``[NAME.]STAT OP VALUE`` (k6 writes them as what must hold):

* ``STAT`` one of ``p50 p90 p99 p999 max`` (a latency: VALUE takes ``us``,
  ``ms`` or ``s``, seconds when bare), ``count``, ``errors`` (a number, or
  a percentage of that name's finished runs with ``%``), or, without a name,
  ``rate`` (instances started per second) and ``dropped`` (a number, or a
  percentage of the arrivals due);
* ``NAME`` a task name of the scenario or ``scenario`` (the default);
* ``OP`` one of ``< <= > >=``.

``scenario.p99<250ms`` holds when the scenario's p99 is under 250 ms;
``errors<1%`` when under 1 % of instances failed.  A latency threshold on a
name that never succeeded fails (there is nothing to show it holds).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from taskmap.loadmode.report import SCENARIO, LoadReport

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_LATENCY = ("p50", "p90", "p99", "p999", "max")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "": 1.0}
_PATTERN = re.compile(
    r"^\s*(?P<left>.+?)\s*(?P<op><=|>=|<|>)\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>us|ms|s|%)?\s*$"
)


class Threshold(NamedTuple):
    """One parsed threshold (see the module docstring)."""

    text: str
    name: str
    stat: str
    op: str
    value: float
    percent: bool


def parse(text: str) -> Threshold:
    """Parse ``[NAME.]STAT OP VALUE``; ValueError saying what is wrong."""
    m = _PATTERN.match(text)
    if m is None:
        raise ValueError(f"threshold {text!r} is not [NAME.]STAT OP VALUE (e.g. 'scenario.p99<250ms', 'errors<1%')")
    left, op, number, unit = m["left"], m["op"], float(m["number"]), m["unit"] or ""
    name, _, stat = left.rpartition(".")
    name = name or SCENARIO
    if stat in _LATENCY:
        if unit == "%":
            raise ValueError(f"threshold {text!r}: a latency takes us, ms or s, not %")
        return Threshold(text, name, stat, op, number * _UNITS[unit], False)
    if stat in ("count", "errors", "rate", "dropped"):
        if unit not in ("", "%"):
            raise ValueError(f"threshold {text!r}: {stat} is a number or a percentage, not a time")
        if unit == "%" and stat in ("count", "rate"):
            raise ValueError(f"threshold {text!r}: {stat} takes no %")
        if stat in ("rate", "dropped") and name != SCENARIO:
            raise ValueError(f"threshold {text!r}: {stat} is of the whole run, not of one name")
        return Threshold(text, name, stat, op, number / 100 if unit == "%" else number, unit == "%")
    raise ValueError(f"threshold {text!r}: unknown statistic {stat!r} (p50 p90 p99 p999 max count errors rate dropped)")


def measure(threshold: Threshold, report: LoadReport) -> float | None:
    """The report's figure the threshold compares (None: not measured)."""
    if threshold.stat == "rate":
        return report.achieved_rate
    if threshold.stat == "dropped":
        if threshold.percent:
            return report.dropped / report.scheduled if report.scheduled else 0.0
        return float(report.dropped)
    row = report.summary.get(threshold.name)
    if row is None:
        return None
    if threshold.stat == "errors" and threshold.percent:
        return row["errors"] / row["count"] if row["count"] else 0.0
    value = row[threshold.stat]
    return None if value is None else float(value)


def violations(thresholds: list[Threshold], report: LoadReport) -> list[str]:
    """The thresholds that do not hold, each with the figure measured."""
    out = []
    for t in thresholds:
        value = measure(t, report)
        if value is None:
            out.append(f"{t.text}: not measured ({t.name!r} has no successful runs)")
        elif not _OPS[t.op](value, t.value):
            out.append(f"{t.text}: measured {_show(t, value)}")
    return out


def _show(t: Threshold, value: float) -> str:
    if t.percent:
        return f"{value:.2%}"
    if t.stat in _LATENCY:
        return f"{value * 1e3:.2f}ms"
    return f"{value:g}"
