"""Task functions the test files share (module-level, so they reach worker
processes by reference, like a user's module's functions)."""

from __future__ import annotations


def a():
    return 5


def b(x):
    return x + 10


def c(x, y):
    return x + y + 20


def boom(*args):
    raise ValueError("boom")


def max_overlap(intervals) -> int:
    """The most (start, end) intervals open at one moment (an end before a
    start at the same instant)."""
    intervals = list(intervals)
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def fail_once(marker, *_):
    """Fails its first run (it leaves ``marker``), then holds 50 ms; returns
    (start, end, pid).  Use with ``functools.partial(fail_once, path)``."""
    import os
    import time

    start = time.time()
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt")
    time.sleep(0.05)
    return start, time.time(), os.getpid()
