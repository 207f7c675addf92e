"""Per-task time limits and retry counts, resolved once per run.

``timeout`` and ``retries`` each take a number for every task, or a mapping
from task to number; in a mapping the key ``None`` gives the default for tasks
not named.  ``retry_delay`` is the pause, in seconds, before a retry.
``memory_limit`` is the most memory, in bytes, one worker process may use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

TimeoutSpec = None | float | Mapping
RetrySpec = int | Mapping


class TaskLimits:
    """``timeout[i]`` (seconds or None) and ``retries[i]`` for task number i."""

    __slots__ = ("memory_limit", "retries", "retry_delay", "timeout")

    def __init__(
        self,
        names: Sequence,
        timeout: TimeoutSpec = None,
        retries: RetrySpec = 0,
        retry_delay: float = 0.0,
        memory_limit: int | None = None,
    ) -> None:
        self.timeout = _resolve(names, timeout, None, "timeout", _check_timeout)
        self.retries = _resolve(names, retries, 0, "retries", _check_retries)
        if not (isinstance(retry_delay, (int, float)) and retry_delay >= 0):
            raise ValueError(f"retry_delay must be a number >= 0, not {retry_delay!r}")
        self.retry_delay = float(retry_delay)
        if memory_limit is not None and (
            isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit <= 0
        ):
            raise ValueError(f"memory_limit must be a number of bytes > 0 or None, not {memory_limit!r}")
        self.memory_limit = memory_limit


def _resolve(names, spec, empty, what, check) -> list:
    if isinstance(spec, Mapping):
        index = set(names)
        unknown = [k for k in spec if k is not None and k not in index]
        if unknown:
            raise ValueError(f"{what} names tasks that are not in the graph: {unknown[:10]!r}")
        default = check(spec.get(None, empty), what)
        return [check(spec[n], what) if n in spec else default for n in names]
    return [check(spec, what)] * len(names)


def _check_timeout(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isnan(value):
        raise ValueError(f"{what} must be a number of seconds > 0 or None, not {value!r}")
    return float(value)


def _check_retries(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, not {value!r}")
    return value
