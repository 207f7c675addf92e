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
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

from taskmap.observe.dashboard_layout import Layout, layout
from taskmap.observe.observers import DONE, FAILED, RunInfo, TaskEvent
from taskmap.observe.record import describe_error
from taskmap.observe.status import task_status

if TYPE_CHECKING:
    from taskmap.graph import Graph

# a task's status: a code in the view, one letter on the wire (the page's legend reads them)
PENDING, RUNNING, DONE_CODE, FAILED_CODE, SKIPPED_CODE = range(5)
LETTERS = "prdfs"
_TO_LETTERS = bytes.maketrans(bytes(range(5)), LETTERS.encode())
_CODE_OF = {DONE: DONE_CODE, FAILED: FAILED_CODE}  # anything else that finishes: skipped
_FINAL_CODE = {"done": DONE_CODE, "failed": FAILED_CODE, "skipped": SKIPPED_CODE}

BAR_RING = 5000  # finished bars kept for a viewer who connects late
BAR_BATCH = 1000  # at most this many bars per message
RUNNING_SHOWN = 500  # running tasks listed per message
FAILURES_SHOWN = 50  # latest failures listed
OUTPUT_TAIL = 2000  # characters of a failed task's output shown
TRACEBACK_TAIL = 2000  # characters of a failed task's traceback shown
RATE_WINDOW = 10.0  # seconds the current rate is measured over


class Added(NamedTuple):
    """``elements`` (how many) of the expanded task ``task`` joined the run
    (:meth:`~taskmap.observe.observers.Observer.tasks_added`)."""

    task: Any
    elements: int


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
        self.finished = [0] * 5  # per status code (only the final ones count)
        # task -> (task, worker, lane, since): the task_started event itself
        self.running: dict[Any, tuple[Any, int | None, str, float]] = {}
        # (seq, task, worker, lane, start, end, code): kept raw, made readable when sent
        self.bars: deque[tuple[int, Any, int, str, float, float, int]] = deque(maxlen=BAR_RING)
        self.bar_seq = 0
        self.failures: deque[tuple[Any, dict[str, Any]]] = deque(maxlen=FAILURES_SHOWN)  # (task, entry)
        self.samples: deque[tuple[float, int]] = deque()  # (when, finished) for the rate
        self.workers: dict[int, None] = {}  # pids in order of appearance
        self.ended: float | None = None
        self.stopped_by: str | None = None
        # built on first use (the graph's first viewer), not at the run's start
        self._layout: Layout | None = None
        self._index: dict[Any, int] | None = None
        self._status: bytearray | None = None
        self._group_counts: list[list[int]] | None = None
        self._names: list[Any] = []

    # -- events ----------------------------------------------------------------

    def apply(self, events: Iterable[Any]) -> None:
        """Take the run's events: ``(task, worker, lane, when)`` tuples for a
        task handed out, :class:`TaskEvent` for a task that ended,
        :class:`Added` for an expanded task's elements.  An element is drawn
        as its task's node.  (The hottest code of the page: one pass, no call
        per event but dict and list operations, about a microsecond an event.)"""
        if self._index is None:
            self._build_index()
        index, status = self._index, self._status
        assert index is not None and status is not None
        counts = self._group_counts
        group = self._layout.group if counts is not None and self._layout is not None else None
        running, finished, workers, bars = self.running, self.finished, self.workers, self.bars
        seq = self.bar_seq
        code_of = _CODE_OF
        for ev in events:
            if type(ev) is tuple:
                name = ev[0]
                running[name] = ev
                if ev[1] not in workers:
                    workers[ev[1]] = None
                code = RUNNING
            elif type(ev) is Added:
                self.total += ev.elements
                continue
            else:
                name = ev.name
                running.pop(name, None)
                code = code_of.get(ev.status, SKIPPED_CODE)
                finished[code] += 1
                if ev.start is not None and ev.worker is not None:
                    seq += 1
                    bars.append((seq, name, ev.worker, ev.lane, ev.start, ev.end, code))
                    if ev.worker not in workers:
                        workers[ev.worker] = None
                if code == FAILED_CODE:
                    self._failure(ev)
            i = index.get(name)
            if i is None:  # an element of an expanded task (taskmap.Element): its task's node
                i = index.get(getattr(name, "task", None))
            if i is not None:
                if group is not None:
                    row = counts[group[i]]  # type: ignore[index]
                    row[status[i]] -= 1
                    row[code] += 1
                status[i] = code
        self.bar_seq = seq

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
            "traceback": _traceback_tail(error) if isinstance(error, BaseException) else None,
        }
        self.failures.append((event.name, entry))

    def _failures(self) -> list[dict[str, Any]]:
        """The latest failures, each with its output tail as it is now (a
        task's output may be recorded after its outcome)."""
        graph = self.graph
        return [{**entry, "output": output_tail(graph, name)} for name, entry in self.failures]

    def _build_index(self) -> None:
        """Each task's number and status (on the page server's thread, at
        the first events it hands over)."""
        graph = self.graph
        names = self._names = list(graph.dependencies)
        self._index = {name: i for i, name in enumerate(names)}
        status = bytearray(len(names))  # PENDING
        if len(self.info.tasks) < len(names):
            # tasks the run does not set out to finish were finished before it
            to_run = set(self.info.tasks)
            for i, name in enumerate(names):
                if name not in to_run:
                    status[i] = _FINAL_CODE.get(task_status(graph, name), PENDING)
        self._status = status

    # -- the graph ------------------------------------------------------------

    def _ensure_layout(self) -> Layout:
        if self._layout is not None:
            return self._layout
        graph = self.graph
        if self._index is None:
            self._build_index()
        assert self._status is not None and self._index is not None
        self._layout = lay = layout(self._names, graph.dependencies, graph.funcs, set(graph.io_bound), self._index)
        if lay.by_function:
            counts = [[0] * len(LETTERS) for _ in lay.labels]
            for (g, code), k in Counter(zip(lay.group, self._status)).items():
                counts[g][code] = k
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
        done = sum(self.finished)
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
            "done": self.finished[DONE_CODE],
            "failed": self.finished[FAILED_CODE],
            "skipped": self.finished[SKIPPED_CODE],
            "running": len(self.running),
            "pending": max(0, left - len(self.running)),
        }
        waiting = self.info.waiting_for_resources
        if waiting is not None:
            counts["waiting"] = waiting()
        running = [
            [str(name)[:80], worker, lane, round(since - self.t0, 4)]
            for name, worker, lane, since in list(self.running.values())[:RUNNING_SHOWN]
        ]
        message: dict[str, Any] = {
            "elapsed": round(elapsed, 3),
            "counts": counts,
            "rate": round(rate, 2),
            "eta": None if eta is None else round(eta, 1),
            "running": running,
            "failures": self._failures(),
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
            message["status"] = self._status.translate(_TO_LETTERS).decode("ascii")
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
        latest), each ``[task, worker, lane, start, end, status letter]``
        with times in seconds from the run's start, and the sequence number
        to ask from next time."""
        bars = self.bars
        if not bars or bars[-1][0] <= seq:
            return [], seq
        last = bars[-1][0]
        first = max(seq + 1, last - BAR_BATCH + 1, bars[0][0])
        t0 = self.t0
        newer = [
            [str(name)[:80], worker, lane, round(start - t0, 4), round(end - t0, 4), LETTERS[code]]
            for _, name, worker, lane, start, end, code in islice(bars, first - bars[0][0], None)
        ]
        return newer, last
