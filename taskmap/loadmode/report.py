"""What a load run measured: latency histograms per task name and per
scenario, errors by type, arrivals dropped, and the rate achieved.  Pure:
the runner feeds it numbers; nothing here knows of processes.

Latencies are kept in HDR histograms (the ``hdrhistogram`` package) in
microseconds, from 1 us to one hour at 3 significant digits: a percentile is
exact to 0.1 %, in constant memory however long the run.

* A scenario's latency runs from its *scheduled* arrival (not from when it
  could start) to the end of its last task, as wrk2 measures: a stall of the
  service delays the instances that should have started during it, and
  their latency says so (no coordinated omission).
* A task's latency is its own run time, as its worker measured it around
  the call (``end - start`` on the machine's monotonic clock): what the
  service took to answer that task.

Percentiles are over the instances (tasks) that succeeded; ``count`` counts
those that finished either way and ``errors`` those that failed (a task
skipped because an ancestor failed counts in neither).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO = "scenario"
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
EXAMPLES_PER_TYPE = 3  # failures kept as examples, per name and error type
TAIL_CHARS = 2000  # of a failed task's output, kept with its example
_HIGHEST_US = 3600 * 1_000_000


def _histogram() -> Any:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError as error:  # pragma: no cover - the extra is missing
        raise ImportError("taskmap.load needs the hdrhistogram package: pip install 'taskmap[load]'") from error
    return HdrHistogram(1, _HIGHEST_US, 3)


class Latencies:
    """One name's latencies (an HDR histogram in microseconds), its count of
    finished runs and its errors by exception type, with a few examples."""

    __slots__ = ("count", "errors", "examples", "histogram")

    def __init__(self) -> None:
        self.histogram = _histogram()
        self.count = 0
        self.errors: dict[str, int] = {}
        self.examples: list[dict[str, Any]] = []

    def ok(self, seconds: float) -> None:
        self.count += 1
        us = min(max(1, round(seconds * 1e6)), _HIGHEST_US)
        self.histogram.record_value(us)

    def failed(self, error_type: str, message: str = "", output: str | None = None, instance: int = -1) -> None:
        self.count += 1
        n = self.errors.get(error_type, 0)
        self.errors[error_type] = n + 1
        if n < EXAMPLES_PER_TYPE:
            example: dict[str, Any] = {"type": error_type, "message": message[:500], "instance": instance}
            if output:
                example["output_tail"] = output[-TAIL_CHARS:]
            self.examples.append(example)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def row(self) -> dict[str, Any]:
        """``{'count', 'errors', 'p50', 'p90', 'p99', 'p999', 'max'}``,
        latencies in seconds (None when nothing succeeded)."""
        h = self.histogram
        out: dict[str, Any] = {"count": self.count, "errors": self.error_count}
        empty = h.get_total_count() == 0
        for key, q in PERCENTILES:
            out[key] = None if empty else h.get_value_at_percentile(q) / 1e6
        out["max"] = None if empty else h.get_max_value() / 1e6
        return out


@dataclass
class LoadReport:
    """The result of :func:`taskmap.load` (also while it runs: the live
    table reads the same object).

    ``summary``: ``{name: {'count', 'errors', 'p50', 'p90', 'p99', 'p999',
    'max'}}`` with latencies in seconds, one row per task name of the
    scenario and ``'scenario'`` for whole instances.  ``achieved_rate``:
    instances started per second over the run's duration (the schedule's,
    or until it was cancelled).  ``dropped``: arrivals not started because
    ``max_in_flight`` instances were running.  ``cancelled``: the run was
    cancelled or interrupted; the report covers what ran until then."""

    target_rate: float = 0.0  # arrivals scheduled per second on average
    duration: float = 0.0  # seconds of schedule the run covered
    scheduled: int = 0  # arrivals due in that time
    started: int = 0
    dropped: int = 0
    completed: int = 0
    max_in_flight: int = 0
    peak_in_flight: int = 0
    cancelled: bool = False
    interrupted: bool = False  # by Ctrl-C (or SIGTERM)
    unfinished: int = 0  # instances still running when the run stopped
    ncores: int = 0
    coordinator_rss_peak: int | None = None  # bytes (ru_maxrss), when known
    names: dict[str, Latencies] = field(default_factory=dict)
    scenario: Latencies = field(default_factory=Latencies)
    # how late arrivals started against their schedule (the coordinator's lag)
    lateness: Latencies = field(default_factory=Latencies)

    def task(self, name: Any) -> Latencies:
        key = str(name)
        found = self.names.get(key)
        if found is None:
            found = self.names[key] = Latencies()
        return found

    @property
    def achieved_rate(self) -> float:
        return self.started / self.duration if self.duration > 0 else 0.0

    @property
    def error_rate(self) -> float:
        """Failed instances / finished instances (0.0 when none finished)."""
        return self.scenario.error_count / self.scenario.count if self.scenario.count else 0.0

    @property
    def summary(self) -> dict[str, dict[str, Any]]:
        out = {name: lat.row() for name, lat in self.names.items()}
        out[SCENARIO] = self.scenario.row()
        return out

    def errors(self) -> dict[str, dict[str, int]]:
        """{name: {exception type: count}} of the names with errors."""
        out = {name: dict(lat.errors) for name, lat in self.names.items() if lat.errors}
        if self.scenario.errors:
            out[SCENARIO] = dict(self.scenario.errors)
        return out

    def examples(self) -> dict[str, list[dict[str, Any]]]:
        """A few failures per name and error type: type, message, instance
        and the tail of what the task wrote."""
        return {name: list(lat.examples) for name, lat in self.names.items() if lat.examples}

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_rate": self.target_rate,
            "achieved_rate": self.achieved_rate,
            "duration": self.duration,
            "scheduled": self.scheduled,
            "started": self.started,
            "completed": self.completed,
            "dropped": self.dropped,
            "max_in_flight": self.max_in_flight,
            "peak_in_flight": self.peak_in_flight,
            "cancelled": self.cancelled,
            "interrupted": self.interrupted,
            "unfinished": self.unfinished,
            "ncores": self.ncores,
            "coordinator_rss_peak": self.coordinator_rss_peak,
            "error_rate": self.error_rate,
            "summary": self.summary,
            "errors": self.errors(),
            "examples": self.examples(),
            "start_lateness": self.lateness.row(),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The report as JSON text (latencies in seconds); written to
        ``path`` too when given."""
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def table(self) -> str:
        """The summary as a text table (latencies in milliseconds)."""
        head = (
            f"rate {self.achieved_rate:.1f}/s (target {self.target_rate:.1f}/s), "
            f"started {self.started}, completed {self.completed}, dropped {self.dropped}, "
            f"errors {self.scenario.error_count} ({self.error_rate:.2%})" + (", cancelled" if self.cancelled else "")
        )
        return head + "\n" + format_rows(self.summary)

    def __str__(self) -> str:
        return self.table()


def format_rows(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Rows of name, count, errors and percentiles (ms), 'scenario' last."""
    cols = ("count", "errors", "p50", "p90", "p99", "p999", "max")
    names = [*sorted(n for n in summary if n != SCENARIO), SCENARIO]
    width = max(8, *(len(n) for n in names))
    lines = [
        f"{'name':<{width}} "
        + " ".join(f"{c:>9}" for c in cols[:2])
        + " "
        + " ".join(f"{c + ' ms':>9}" for c in cols[2:])
    ]
    for name in names:
        row = summary.get(name)
        if row is None:
            continue
        cells = [f"{row['count']:>9}", f"{row['errors']:>9}"]
        for c in cols[2:]:
            v = row[c]
            cells.append(f"{'-':>9}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 1e3:>9.2f}")
        lines.append(f"{name:<{width}} " + " ".join(cells))
    return "\n".join(lines)
