"""The open-loop arrival schedule of a load run: when each instance of the
scenario starts, as a pure function of the arrival's number.

The target rate is piecewise linear in time, as k6's ramping-arrival-rate
executor's: a constant ``rate``; a linear ``ramp`` from 0 up to ``rate``
over its first seconds, then ``rate``; or ``stages=[(seconds, rate), ...]``,
each going linearly from the previous stage's target (0 before the first)
to its own over its seconds (a stage of 0 seconds jumps).  Arrival ``k``
(0, 1, 2, ...) is due when the expected number of arrivals so far,
``N(t) = integral of rate from 0 to t``, reaches ``k``: its time is computed
from ``k`` alone, never by adding intervals, so no error accumulates over a
long run, and an arrival made late by a busy coordinator does not delay the
next ones.  The schedule ends at ``duration``: the arrivals are those due
before it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence


class Schedule:
    """Arrival times of an open-loop load: ``time_of(k)`` for ``k`` in
    ``range(count)``, in seconds from the start, non-decreasing.

    ``stages``: the rate profile as ``(seconds, rate)`` pairs (see the
    module docstring).  Built by :func:`make_schedule` from the options of
    :func:`taskmap.load`."""

    __slots__ = ("count", "duration", "ends", "points", "totals")

    def __init__(self, stages: Sequence[tuple[float, float]]) -> None:
        if not stages:
            raise ValueError("a schedule needs at least one stage")
        points = [(0.0, 0.0)]  # (time, rate) at each stage's end, from 0
        t = 0.0
        for seconds, rate in stages:
            seconds, rate = _number(seconds, "stage seconds"), _number(rate, "stage rate")
            if seconds < 0 or rate < 0:
                raise ValueError(f"a stage's seconds and rate must be >= 0, not {(seconds, rate)!r}")
            t += seconds
            points.append((t, rate))
        if t <= 0:
            raise ValueError("the stages last 0 seconds")
        self.points = points
        self.duration = t
        # cumulative expected arrivals at each point
        totals = [0.0]
        for (t0, r0), (t1, r1) in itertools.pairwise(points):
            totals.append(totals[-1] + (r0 + r1) / 2 * (t1 - t0))
        self.totals = totals
        self.ends = [p[0] for p in points]
        # arrivals due strictly before the end (k = 0 is due at N(t) = 0)
        self.count = max(0, math.ceil(totals[-1] - 1e-9))
        if self.count and self.time_of(self.count - 1) >= self.duration:
            self.count -= 1

    def expected(self, t: float) -> float:
        """N(t): arrivals expected in the first ``t`` seconds."""
        if t <= 0:
            return 0.0
        if t >= self.duration:
            return self.totals[-1]
        s = bisect.bisect_right(self.ends, t) - 1
        (t0, r0), (t1, r1) = self.points[s], self.points[s + 1]
        x = t - t0
        slope = (r1 - r0) / (t1 - t0)
        return self.totals[s] + r0 * x + slope * x * x / 2

    def rate_at(self, t: float) -> float:
        """The target rate at ``t`` seconds."""
        if t < 0 or t >= self.duration:
            return 0.0
        s = bisect.bisect_right(self.ends, t) - 1
        (t0, r0), (t1, r1) = self.points[s], self.points[s + 1]
        return r0 + (r1 - r0) * (t - t0) / (t1 - t0)

    def time_of(self, k: int) -> float:
        """When arrival ``k`` is due, in seconds from the start: the ``t``
        where N(t) = k (the first such ``t``)."""
        if k < 0:
            raise ValueError(f"arrival numbers start at 0, not {k}")
        if k == 0:
            # the first stage with a rate > 0 starts the arrivals
            for s in range(len(self.points) - 1):
                if self.points[s][1] > 0 or self.points[s + 1][1] > 0:
                    return self.points[s][0]
            return math.inf
        totals = self.totals
        if k > totals[-1]:
            return math.inf
        # the first segment whose end total reaches k (segments of 0 arrivals skipped)
        s = bisect.bisect_left(totals, k) - 1
        s = max(s, 0)
        (t0, r0), (t1, r1) = self.points[s], self.points[s + 1]
        need = k - totals[s]
        if t1 == t0:
            return t0
        slope = (r1 - r0) / (t1 - t0)
        # a x^2 / 2 + r0 x = need, in the form that stays exact as slope -> 0
        disc = r0 * r0 + 2 * slope * need
        x = 2 * need / (r0 + math.sqrt(max(disc, 0.0))) if r0 > 0 or slope > 0 else 0.0
        return min(t0 + x, t1)


def make_schedule(
    rate: float | None = None,
    duration: float | None = None,
    ramp: float | None = None,
    stages: Sequence[tuple[float, float]] | None = None,
) -> Schedule:
    """The schedule of :func:`taskmap.load`'s options: ``stages`` alone, or
    ``rate`` and ``duration`` (seconds in all, the ``ramp`` included)."""
    if stages is not None:
        if rate is not None or duration is not None or ramp is not None:
            raise ValueError("give either stages= or rate=/duration=/ramp=, not both")
        return Schedule([tuple(stage) for stage in stages])  # type: ignore[misc]
    if rate is None or duration is None:
        raise ValueError("give rate= and duration= (or stages=)")
    rate, duration = _number(rate, "rate"), _number(duration, "duration")
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be > 0, not {rate!r} and {duration!r}")
    ramp = 0.0 if ramp is None else _number(ramp, "ramp")
    if not 0 <= ramp <= duration:
        raise ValueError(f"ramp must be between 0 and the duration ({duration}), not {ramp!r}")
    if ramp == 0:
        return Schedule([(0.0, rate), (duration, rate)])
    return Schedule([(ramp, rate), (duration - ramp, rate)])


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{what} must be a number, not {value!r}")
    return float(value)
