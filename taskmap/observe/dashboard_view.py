"""What the live page shows of a run, kept up to date from the run's events.

The :class:`~taskmap.observe.dashboard.Dashboard` observer queues the events
the coordinator reports; the page server's thread hands them to a
:class:`RunView` every tick and asks it for the messages the page reads
(plain JSON-able dicts, bounded in size whatever the size of the run):

* :meth:`RunView.graph_message`: the layout (sent once per viewer);
* :meth:`RunView.state_message`: counts, rate, ETA, the status of every
  node (a string of one letter per task, or counts per function past
  :data:`~taskmap.observe.dashboard_layout.NODE_LIMIT` tasks), the running
  tasks, the latest failures with their error and output tail, the resources
  in use;
* :meth:`RunView.bars_since`: the finished tasks as bars of the task stream
  (worker, lane, start, end), the latest :data:`BAR_BATCH` a viewer has not
  seen.

Not thread-safe: the dashboard calls it under its own lock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from taskmap.observe.dashboard_layout import Layout, layout
from taskmap.observe.observers import DONE, FAILED, RunInfo, TaskEvent
from taskmap.observe.record import describe_error
from taskmap.observe.status import task_status

if TYPE_CHECKING:
    from taskmap.graph import Graph

# one letter per task status on the wire (the page's legend reads them)
PENDING, RUNNING, DONE_L, FAILED_L, SKIPPED_L = "p", "r", "d", "f", "s"
LETTERS = PENDING + RUNNING + DONE_L + FAILED_L + SKIPPED_L
_LETTER_OF = {DONE: DONE_L, FAILED: FAILED_L}  # anything else that finishes: skipped
_FINAL_LETTER = {"done": DONE_L, "failed": FAILED_L, "skipped": SKIPPED_L}

BAR_RING = 5000  # finished bars kept for a viewer who connects late
BAR_BATCH = 1000  # at most this many bars per message
RUNNING_SHOWN = 500  # running tasks listed per message
FAILURES_SHOWN = 50  # latest failures listed
OUTPUT_TAIL = 2000  # characters of a failed task's output shown
TRACEBACK_TAIL = 2000  # characters of a failed task's traceback shown
RATE_WINDOW = 10.0  # seconds the current rate is measured over


def output_tail(graph: Graph, task: Any, chars: int = OUTPUT_TAIL) -> str | None:
    """The end of what ``task`` wrote, for the page's failure list.

    The hook for per-task output capture (DESIGN section 9): it reads
    ``graph.output[task]`` when the graph has such a mapping, and is None
    otherwise (a graph without output capture, or a task that wrote nothing).
    """
    output = getattr(graph, "output", None)
    if not isinstance(output, Mapping):
        return None
    text = output.get(task)
    if not text:
        return None
    text = str(text)
    return text if len(text) <= chars else "…" + text[-chars:]


def _traceback_tail(error: BaseException) -> str | None:
    text = getattr(error, "remote_traceback", None)
    if not isinstance(text, str) or not text:
        return None
    return text if len(text) <= TRACEBACK_TAIL else "…" + text[-TRACEBACK_TAIL:]


class RunView:
    """The page's view of one run of ``graph`` (see the module docstring).

    ``limits``/``rates``: the run's resource bounds (shown beside the units
    in use); ``clock``: ``time.monotonic`` (a test may pass another).
    """

    def __init__(
        self,
        graph: Graph,
        info: RunInfo,
        limits: Mapping[str, int] | None = None,
        rates: Mapping[str, float] | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.graph = graph
        self.info = info
        self.limits = dict(limits or {})
        self.rates = dict(rates or {})
        self.clock = clock
        self.t0 = info.started
        self.total = len(info.tasks)  # what the run set out to finish
        self.finished = {DONE: 0, FAILED: 0, "skipped": 0}
        self.running: dict[Any, tuple[int | None, str, float]] = {}  # task -> (worker, lane, since)
        self.bars: deque[tuple[int, list[Any]]] = deque(maxlen=BAR_RING)  # (seq, bar)
        self.bar_seq = 0
        self.failures: deque[dict[str, Any]] = deque(maxlen=FAILURES_SHOWN)
        self.samples: deque[tuple[float, int]] = deque()  # (when, finished) for the rate
        self.workers: dict[int, None] = {}  # pids in order of appearance
        self.ended: float | None = None
        self.stopped_by: str | None = None
        # built on first use (the graph's first viewer), not at the run's start
        self._layout: Layout | None = None
        self._index: dict[Any, int] | None = None
        self._status: bytearray | None = None
        self._group_counts: list[list[int]] | None = None

    # -- events ----------------------------------------------------------------

    def apply(self, events: Iterable[Any]) -> None:
        """Take the run's events: ``(task, worker, lane, when)`` tuples for a
        task handed out, :class:`TaskEvent` for a task that ended."""
        running, finished, t0 = self.running, self.finished, self.t0
        for ev in events:
            if type(ev) is tuple:
                name, worker, lane, when = ev
                running[name] = (worker, lane, when)
                if worker is not None and worker not in self.workers:
                    self.workers[worker] = None
                self._mark(name, RUNNING)
                continue
            event: TaskEvent = ev
            running.pop(event.name, None)
            status = event.status
            finished[status if status in finished else "skipped"] += 1
            self._mark(event.name, _LETTER_OF.get(status, SKIPPED_L))
            if event.start is not None and event.end is not None and event.worker is not None:
                if event.worker not in self.workers:
                    self.workers[event.worker] = None
                self.bar_seq += 1
                self.bars.append(
                    (
                        self.bar_seq,
                        [
                            str(event.name)[:80],
                            event.worker,
                            event.lane,
                            round(event.start - t0, 4),
                            round(event.end - t0, 4),
                            _LETTER_OF.get(status, SKIPPED_L),
                        ],
                    )
                )
            if status == FAILED:
                self._failure(event)

    def end(self, error: BaseException | None) -> None:
        """The run ended (``error``: what it raises)."""
        self.ended = self.clock()
        if error is not None:
            self.stopped_by = describe_error(error)

    def _failure(self, event: TaskEvent) -> None:
        error = event.value
        entry: dict[str, Any] = {
            "task": str(event.name)[:200],
            "error": describe_error(error)[:2000] if isinstance(error, BaseException) else str(error)[:2000],
            "worker": event.worker,
            "attempts": event.attempts,
        }
        if isinstance(error, BaseException):
            entry["traceback"] = _traceback_tail(error)
        entry["output"] = output_tail(self.graph, event.name)
        self.failures.append(entry)

    def _mark(self, name: Any, letter: str) -> None:
        if self._index is None:
            self._build_index()
        assert self._index is not None and self._status is not None
        i = self._index.get(name)
        if i is None:  # (not a task of the graph: nothing to colour)
            return
        status = self._status
        counts = self._group_counts
        if counts is not None:
            assert self._layout is not None
            g = self._layout.group[i]
            counts[g][LETTERS.index(chr(status[i]))] -= 1
            counts[g][LETTERS.index(letter)] += 1
        status[i] = ord(letter)

    def _build_index(self) -> None:
        """Each task's number and status letter (on the page server's
        thread, at the first event it hands over)."""
        graph = self.graph
        names = list(graph.dependencies)
        self._index = {name: i for i, name in enumerate(names)}
        to_run = set(self.info.tasks)
        # tasks the run does not set out to finish were finished before it
        self._status = bytearray(
            ord(PENDING) if name in to_run else ord(_FINAL_LETTER.get(task_status(graph, name), PENDING))
            for name in names
        )

    # -- the graph ------------------------------------------------------------

    def _ensure_layout(self) -> Layout:
        if self._layout is not None:
            return self._layout
        graph = self.graph
        if self._index is None:
            self._build_index()
        assert self._status is not None
        self._layout = lay = layout(list(graph.dependencies), graph.dependencies, graph.funcs, set(graph.io_bound))
        if lay.by_function:
            counts = [[0] * len(LETTERS) for _ in lay.labels]
            for i, code in enumerate(self._status):
                counts[lay.group[i]][LETTERS.index(chr(code))] += 1
            self._group_counts = counts
        return lay

    def graph_message(self) -> dict[str, Any]:
        """The layout of the graph (see :class:`~taskmap.observe.dashboard_layout.Layout`)."""
        message = self._ensure_layout().to_json()
        message["name"] = str(self.graph.name)
        message["tasks"] = len(self.graph.dependencies)
        return message

    # -- the state -------------------------------------------------------------

    def state_message(self) -> dict[str, Any]:
        """Counts, rate, ETA, node statuses, running tasks, failures, resources."""
        self._ensure_layout()
        now = self.ended if self.ended is not None else self.clock()
        elapsed = now - self.t0
        done = sum(self.finished.values())
        samples = self.samples
        samples.append((now, done))
        while len(samples) > 2 and samples[0][0] < now - RATE_WINDOW:
            samples.popleft()
        first_t, first_n = samples[0]
        rate = (done - first_n) / (now - first_t) if now > first_t else (done / elapsed if elapsed > 0 else 0.0)
        left = self.total - done
        eta = left / rate if rate > 0 and left > 0 and self.ended is None else None
        counts = {
            "total": self.total,
            "done": self.finished[DONE],
            "failed": self.finished[FAILED],
            "skipped": self.finished["skipped"],
            "running": len(self.running),
            "pending": max(0, left - len(self.running)),
        }
        waiting = self.info.waiting_for_resources
        if waiting is not None:
            counts["waiting"] = waiting()
        running = [
            [str(name)[:80], worker, lane, round(since - self.t0, 4)]
            for name, (worker, lane, since) in list(self.running.items())[:RUNNING_SHOWN]
        ]
        message: dict[str, Any] = {
            "elapsed": round(elapsed, 3),
            "counts": counts,
            "rate": round(rate, 2),
            "eta": None if eta is None else round(eta, 1),
            "running": running,
            "failures": list(self.failures),
            "workers": list(self.workers),
            "coordinator": self.info.coordinator_pid,
            "runner": self.info.runner,
            "ncores": self.info.ncores,
            "resources": self._resources(),
            "ended": self.ended is not None,
            "stopped_by": self.stopped_by,
        }
        if self._group_counts is not None:
            message["groups"] = self._group_counts
        else:
            assert self._status is not None
            message["status"] = self._status.decode("ascii")
        return message

    def _resources(self) -> list[dict[str, Any]]:
        """Per bounded resource: units in use now (by the running tasks),
        its limit and rate."""
        uses = self.graph.uses
        if not uses:
            return []
        in_use: dict[str, int] = {}
        for name in self.running:
            for resource in uses.get(name, ()):
                in_use[resource] = in_use.get(resource, 0) + 1
        names = sorted(set(self.limits) | set(self.rates) | set(in_use))
        return [
            {"name": r, "in_use": in_use.get(r, 0), "limit": self.limits.get(r), "rate": self.rates.get(r)}
            for r in names
        ]

    def bars_since(self, seq: int) -> tuple[list[list[Any]], int]:
        """The finished bars after ``seq`` (at most :data:`BAR_BATCH`, the
        latest), and the sequence number to ask from next time."""
        if not self.bars or self.bars[-1][0] <= seq:
            return [], seq
        newer = [bar for s, bar in self.bars if s > seq] if self.bars[0][0] <= seq else [bar for _, bar in self.bars]
        return newer[-BAR_BATCH:], self.bars[-1][0]
