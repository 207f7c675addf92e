"""A live page of a run (``dashboard=True`` or ``dashboard=PORT`` on any runner).

While the run lasts, a page is served on ``http://127.0.0.1:PORT/?token=...``
(a free port by default; a request without the token gets 403).  It shows
the graph in layers, each node coloured by its task's status as the run goes
(one node per function past a few thousand tasks), a task stream with one row
per worker lane (io, cpu) and each task as a bar in time, the counts, the rate
and an ETA, the failed tasks with their error, traceback and output tail, and
the resources in use.  Updates are pushed to the page as Server-Sent Events,
at most :data:`UPDATES_PER_SECOND` a second.  Every file of the page ships in
the package (``taskmap/observe/dashboard_assets``): it works offline.

Where the work happens, so that the run pays little:

* the coordinator's thread only calls the hooks below, which append the
  batch of starts or outcomes one message carried to a queue (a ``deque``:
  safe between threads without a lock) -- the batch makes its events when
  the page thread reads it --, binds the page's socket when the run starts
  and closes it when the run ends;
* the process's page thread (:mod:`taskmap.observe.dashboard_server`, one
  for every page, kept between runs) makes the run's
  :class:`~taskmap.observe.dashboard_view.RunView` when first needed and
  takes the queued events into it every tick while someone watches (and
  builds the state message once per tick for every viewer), otherwise only
  when :data:`DRAIN_AT` batches have queued up; the graph's layout is
  computed when the first viewer asks for it.
* At the run's end the last events are applied and pushed only if someone has
  watched (nobody else could see them), the streams end, and :meth:`Dashboard.run_finished`
  returns once the page's request threads have ended and its socket is closed.

The page's address is printed on stderr when the run starts (``announce``),
and is :attr:`taskmap.Run.dashboard_url` on a run started with
:func:`taskmap.start`.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

from taskmap.observe.dashboard_server import PageServer, PageSource, sse
from taskmap.observe.dashboard_view import Added, RunView
from taskmap.observe.observers import Observer, RunInfo, TaskEvent

if TYPE_CHECKING:
    from taskmap.graph import Graph

UPDATES_PER_SECOND = 5
TICK = 1.0 / UPDATES_PER_SECOND
# while nobody watches, queued batches are applied only past this many (their
# results and payloads are held meanwhile): the server's thread then hardly
# takes the interpreter's lock from the coordinator
DRAIN_AT = 1000


def print_url(graph: Graph, url: str) -> None:
    """The default ``announce``: one line on stderr."""
    print(f"taskmap: live page of {graph.name!s} at {url} (while the run lasts)", file=sys.stderr, flush=True)


def check_port(value: object) -> int | None:
    """The ``dashboard=`` option as a port: None (off), 0 (a free port, for
    ``True``) or the port given.  ``TypeError``/``ValueError`` otherwise."""
    if value is None or value is False:
        return None
    if value is True:
        return 0
    if not isinstance(value, int):
        raise TypeError(f"dashboard= takes True or a port number, not {type(value).__name__}")
    if not 0 <= value <= 65535:
        raise ValueError(f"dashboard= port must be between 0 and 65535, not {value}")
    return value


class Dashboard(Observer, PageSource):
    """Serves the live page of each run it observes (one run at a time).

    ``port``: 0 for a free port; ``limits``/``rates``: the run's resource
    bounds, shown beside the units in use; ``announce(graph, url)``: called
    when the page is up (default: a line on stderr; None: silent).
    :attr:`url` is the page's address once the run has started, ``None``
    before; ``on_url`` callbacks are called with it then (with None when the
    page cannot be served: its port is taken; the run goes on without it,
    with a ``RuntimeWarning``).
    """

    def __init__(
        self,
        port: int = 0,
        limits: Mapping[str, int] | None = None,
        rates: Mapping[str, float] | None = None,
        announce: Callable[[Graph, str], None] | None = print_url,
    ) -> None:
        self.port = port
        self.limits = limits
        self.rates = rates
        self.announce = announce
        self.url: str | None = None
        self.on_url: list[Callable[[str | None], None]] = []
        self._events: deque[Any] = deque()
        self._changed = threading.Condition()  # guards everything below
        self._run: tuple[Graph, RunInfo] | None = None  # the run being shown
        self._view: RunView | None = None  # its view, once someone needs it
        self._server: PageServer | None = None
        self._state: bytes = b""  # the latest state message, as an event
        self._version = 0  # bumped at each state message
        self._closing = False
        self._viewers = 0
        self._watched = False  # someone opened the stream during this run

    # its batch hooks only queue: an in-process run may hold its events and
    # hand them over from the page thread (RunInfo.flush)
    _batches_from_any_thread = True

    # -- the hooks (coordinator's thread) ---------------------------------------

    def run_started(self, graph: Graph, info: RunInfo) -> None:
        with self._changed:
            self._events.clear()
            # (the view is made on the page thread when first needed: not on the run's time)
            self._run = (graph, info)
            self._view = None
            self._state, self._version = b"", 0
            self._closing = self._watched = False
        try:
            server = PageServer(self.port, self, self._tick, TICK)
        except OSError as error:
            # a page that cannot be served (its port is taken) must not stop
            # the run it would have shown: the run goes on without it
            with self._changed:
                self._run = None
            warnings.warn(
                f"taskmap: no live page for this run: 127.0.0.1:{self.port}: {error}", RuntimeWarning, stacklevel=2
            )
            for callback in self.on_url:
                callback(None)
            return
        self._server = server
        self.url = server.url
        server.start()
        if self.announce is not None:
            self.announce(graph, server.url)
        for callback in self.on_url:
            callback(server.url)

    # (batches are queued whole and read in the server's thread: per task,
    # the run pays nothing for the page)
    def tasks_started(self, batch: Sequence[tuple[Any, int | None, str, float]]) -> None:
        self._queue(batch)

    def tasks_finished(self, batch: Sequence[TaskEvent]) -> None:
        self._queue(batch)

    def tasks_added(self, task: Any, elements: list) -> None:
        self._queue((Added(task, len(elements)),))

    def _queue(self, batch: Sequence[Any]) -> None:
        events = self._events
        events.append(batch)
        if len(events) == DRAIN_AT:
            # a run nobody watches: its queue stays bounded (while someone
            # watches, the ticks drain it, and a tick more would push a state more)
            server = self._server
            if server is not None and not self._viewers:
                server.tick_in(0.0)

    def run_finished(self, graph: Graph, error: BaseException | None) -> None:
        server, self._server = self._server, None
        with self._changed:
            if self._watched:
                view = self._view_now()
                if view is not None:
                    self._drain(view)
                    view.end(error)
                    self._publish(view)
            self._closing = True
            self._changed.notify_all()
        if server is not None:
            server.stop()
        with self._changed:
            # the graph and the last events are not kept alive (nobody could
            # see the unread ones: not worth the run's time)
            self._events.clear()
            self._run = self._view = None

    # -- the page thread ----------------------------------------------------------

    def _take_held(self) -> None:
        """Have an in-process run hand over the events it holds (not under
        the lock: handing over appends to the queue, and may ask for a drain)."""
        run = self._run
        if run is not None and run[1].flush is not None:
            run[1].flush()

    def _view_now(self) -> RunView | None:
        """The run's view (the lock held), made on first use; None without a run."""
        if self._view is None and self._run is not None:
            graph, info = self._run
            self._view = RunView(graph, info, self.limits, self.rates)
        return self._view

    def _drain(self, view: RunView) -> None:
        events = self._events
        taken = []
        while events:
            taken.append(events.popleft())
        if taken:
            view.apply(chain.from_iterable(taken))

    def _publish(self, view: RunView) -> None:
        self._state = sse("state", view.state_message())
        self._version += 1
        self._changed.notify_all()

    def wants_ticks(self) -> bool:
        """Ticks go on while someone watches."""
        return self._viewers > 0

    def _tick(self) -> None:
        """Every :data:`TICK` seconds while someone watches: take the queued
        events and push a new state.  Also when :data:`DRAIN_AT` batches have
        queued up while nobody watches: take them."""
        self._take_held()
        with self._changed:
            view = self._view_now()
            if view is None or self._closing:
                return
            self._drain(view)
            if self._viewers:
                self._publish(view)

    def snapshot(self) -> dict[str, Any]:
        """The graph and the state now (``/state``)."""
        self._take_held()
        with self._changed:
            view = self._view_now()
            if view is None:
                return {"ended": True}
            self._drain(view)
            bars, _ = view.bars_since(0)
            return {"graph": view.graph_message(), "state": view.state_message(), "bars": bars}

    def _wait_past(self, version: int) -> None:
        """Wait (the lock held) for a state newer than ``version`` or the end."""
        while self._version == version and not self._closing:
            self._changed.wait()

    def subscribe(self) -> Generator[bytes, None, None]:
        """A viewer's stream: ``graph`` once, then ``state`` and ``bars`` at
        each tick, then ``end`` when the run has ended."""
        self._take_held()
        with self._changed:
            view = self._view_now()
            if view is None:
                yield sse("end", None)
                return
            self._viewers += 1
            self._watched = True
            server = self._server
            if self._viewers == 1 and server is not None:
                server.tick_in(TICK)  # (the page thread ticks while someone watches)
            self._drain(view)
            first = [sse("graph", view.graph_message()), sse("state", view.state_message())]
            bars, seq = view.bars_since(0)
            version = self._version
        try:
            yield b"".join(first)
            if bars:
                yield sse("bars", bars)
            while True:
                with self._changed:
                    self._wait_past(version)
                    state, version, closing = self._state, self._version, self._closing
                    bars, seq = view.bars_since(seq)
                chunk = state
                if bars:
                    chunk += sse("bars", bars)
                if closing:
                    yield chunk + sse("end", None)
                    return
                yield chunk
        finally:
            with self._changed:
                self._viewers -= 1
