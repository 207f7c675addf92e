"""Each task's output: what it writes to ``sys.stdout``/``sys.stderr`` and the
log records emitted while it runs, attributed to the task that wrote them.

How a write finds its task: a context variable (:data:`owner`) holds
``(sink, key)`` while a task runs.  A thread that runs one task at a time
(the worker's cpu thread, ``run``'s caller) sets it once to a list
``[sink, key]`` and changes ``key`` per task (None between tasks): setting
and resetting a context variable per task cost more than a tiny task's
other bookkeeping.  A coroutine's asyncio task copies the
context it was created in, so coroutines interleaving on one loop each see
their own owner; a plain function run in a thread gets it set by the runner
around the call (:func:`call_owned`).  Threads a task starts itself do not
inherit it (``threading.Thread`` copies no context): their writes pass
through as if no task ran.

::

    print() -> sys.stdout = OwnedStream --owner None--> the stream it wraps (as before)
                             |
                             +--owner (sink, key)--> sink.write(key, stream, text)
                                                       complete lines -> sink.lines()
    logger.info() -> root's OutputLogHandler --owner--> sink.lines(key, LOG, record text)

A :class:`Sink` cuts each task's text into complete lines (a task's last
line is completed with a newline when it ends) and hands them to
``lines()``: in the calling process the run's collector keeps them
(:class:`KeptText`, bounded) and shows them per the ``output=`` option; in a
worker process they are sent to the coordinator.

Logging: the handler sits on the root logger at ``capture_level`` and sees
records that propagate there; it never changes a logger's level, so a
record is captured only when its logger emits it.  The user's handlers get
every record as before.  A record that a handler of the user's already wrote
through a captured stream is not kept twice; and since any handler on the
root suppresses logging's last resort (WARNING and above printed to stderr
when no handler exists), the handler calls the last resort itself in that
case, as logging would have.

This module is light: worker processes import it.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TextIO

# what a chunk of text is: a log record, a stream; or what reached the
# descriptor 1 or 2 straight (taskmap.runtime.fd_output: it was shown
# already, so it is kept only, like a log record)
LOG, STDOUT, STDERR, FD_STDOUT, FD_STDERR = 0, 1, 2, 3, 4
SHOWN = (STDOUT, STDERR)  # the kinds of text taskmap shows (output='pass'/'prefix')

# a line longer than this is passed on in pieces (no line is held back unbounded)
LINE_MAX = 1 << 16

# (sink, key), or [sink, key] where key None means no task owns the output now
owner: ContextVar[tuple[Sink, Any] | list[Any] | None] = ContextVar("taskmap_output_owner", default=None)


class Sink:
    """Where the text of a run's tasks goes.  ``write`` is called by the
    streams and the log handler with the owner's key; subclasses implement
    :meth:`lines`, which receives complete lines (one or more, each ending
    in a newline, except pieces of a line longer than ``LINE_MAX``).

    ``open`` holds the partial lines of the tasks that wrote something and
    have not finished: a task that writes nothing never appears in it."""

    def __init__(self) -> None:
        # key -> partial line pieces of stdout, stderr, fd 1, fd 2
        self.open: dict[Any, list[list[str]]] = {}

    def lines(self, key: Any, stream: int, text: str) -> None:
        raise NotImplementedError

    def write(self, key: Any, stream: int, text: str) -> None:
        """A task wrote ``text`` to ``stream``: pass on what completes a line."""
        partial = self.open.get(key)
        newline = text.rfind("\n")
        if newline < 0:  # (print writes its text, then "\n": the common case)
            if partial is None:
                partial = self.open[key] = [[], [], [], []]
            pieces = partial[stream - 1]
            pieces.append(text)
            if len(text) > LINE_MAX or (len(pieces) > 64 and sum(map(len, pieces)) > LINE_MAX):
                self.lines(key, stream, "".join(pieces))
                pieces.clear()
            return
        if partial is not None and partial[stream - 1]:
            pieces = partial[stream - 1]
            pieces.append(text[: newline + 1])
            complete = "".join(pieces)
            pieces.clear()
        else:
            complete = text if newline == len(text) - 1 else text[: newline + 1]
        self.lines(key, stream, complete)
        if newline < len(text) - 1:
            if partial is None:
                partial = self.open[key] = [[], [], [], []]
            partial[stream - 1].append(text[newline + 1 :])

    def write_log(self, key: Any, text: str) -> None:
        """A log record of the task, formatted."""
        self.lines(key, LOG, text if text.endswith("\n") else text + "\n")

    def finish(self, key: Any) -> None:
        """The task ended: its unfinished lines are completed (callers test
        ``if sink.open`` first: a run whose tasks write nothing pays only that)."""
        partial = self.open.pop(key, None)
        if partial is not None:
            for stream, pieces in enumerate(partial, 1):
                if pieces:
                    self.lines(key, stream, "".join(pieces) + "\n")


def call_owned(sink: Sink, key: Any, func: Callable[..., Any], args: Any) -> Any:
    """Call ``func(*args)`` with its output owned by ``key`` (for a plain
    function run in a thread, which does not inherit the caller's context)."""
    token = owner.set((sink, key))
    try:
        return func(*args)
    finally:
        owner.reset(token)


class KeptText:
    """A task's text, bounded: the first ``HEAD`` characters and the last
    ``TAIL`` are kept, and :meth:`text` puts a line saying how many
    characters were cut between them.  The whole stays within ``CAP``
    characters (1 MiB)."""

    CAP = 1 << 20
    HEAD = CAP // 2
    TAIL = CAP - HEAD - 80  # (room for the line that says what was cut)

    __slots__ = ("cut", "head", "head_size", "tail", "tail_size")

    def __init__(self) -> None:
        self.head: list[str] = []
        self.head_size = 0
        self.tail: deque[str] = deque()
        self.tail_size = 0
        self.cut = 0

    def add(self, text: str) -> None:
        room = self.HEAD - self.head_size
        if room > 0:
            if len(text) <= room:
                self.head.append(text)
                self.head_size += len(text)
                return
            self.head.append(text[:room])
            self.head_size += room
            text = text[room:]
        self.tail.append(text)
        self.tail_size += len(text)
        if self.tail_size > 2 * self.TAIL:
            self._trim()  # (amortised: the tail holds at most twice what it keeps)

    def _trim(self) -> None:
        """Cut the tail down to ``TAIL`` characters, counting what goes."""
        tail = self.tail
        over = self.tail_size - self.TAIL
        while over > 0:
            first = tail[0]
            if len(first) <= over:
                tail.popleft()
                self.tail_size -= len(first)
                self.cut += len(first)
                over -= len(first)
            else:
                tail[0] = first[over:]
                self.tail_size -= over
                self.cut += over
                over = 0

    def text(self) -> str:
        if self.tail_size > self.TAIL:
            self._trim()
        head = "".join(self.head)
        tail = "".join(self.tail)
        if not self.cut:
            return head + tail
        if head and not head.endswith("\n"):
            head += "\n"
        return f"{head}[taskmap: {self.cut} characters of output cut here]\n{tail}"


def tail_lines(text: str, lines: int = 20, chars: int = 2000) -> str:
    """The end of a task's text: its last ``lines`` lines, at most ``chars``
    characters (for a failed task's report)."""
    end = text[-chars:] if len(text) > chars else text
    kept = end.splitlines()[-lines:]
    return "\n".join(kept)


# -- the streams ------------------------------------------------------------------


class OwnedStream:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: a write made while a
    task owns the context goes to that task's sink, any other write to the
    stream it wraps (``inner``), as before.  Everything else (``fileno``,
    ``isatty``, ``buffer``, ``encoding``...) is the wrapped stream's."""

    # (not an io.TextIOBase: its __del__ would close the stream it wraps)

    def __init__(self, inner: Any, stream: int) -> None:
        self.inner = inner
        self.stream = stream

    def write(self, text: str) -> int:
        current = owner.get()
        if current is None or current[1] is None:
            return self.inner.write(text)
        if type(text) is not str:
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        current[0].write(current[1], self.stream, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        current = owner.get()
        if current is None or current[1] is None:
            self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    @property
    def closed(self) -> bool:
        return bool(self.inner.closed)

    def fileno(self) -> int:
        return int(self.inner.fileno())

    def isatty(self) -> bool:
        return bool(self.inner.isatty())

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self.inner, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:
        return getattr(self.inner, "errors", None)

    def __getattr__(self, name: str) -> Any:
        # (only names the class does not have: buffer, mode, line_buffering...)
        return getattr(self.inner, name)


def original(stream: int) -> TextIO:
    """The caller's own ``sys.stdout``/``sys.stderr`` (the stream an
    :class:`OwnedStream` wraps, if one is installed): where a task's lines
    are shown."""
    current = sys.stdout if stream == STDOUT else sys.stderr
    while isinstance(current, OwnedStream):
        current = current.inner
    return current


# -- logging ------------------------------------------------------------------------


class OutputLogHandler(logging.Handler):
    """On the root logger: keeps each record emitted while a task owns the
    context as that task's text (see the module docstring)."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
        self.skip: set[str] = set()  # taskmap's own loggers: their records are not task output

    def emit(self, record: logging.LogRecord) -> None:
        others, written = self._other_handlers(record)
        if not others:
            last = logging.lastResort
            if last is not None and record.levelno >= last.level:
                last.handle(record)  # (what logging does when no handler exists)
                return
        current = owner.get()
        if current is None or current[1] is None or written or record.name in self.skip:
            return
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - as logging.Handler does
            self.handleError(record)
            return
        current[0].write_log(current[1], text)

    def _other_handlers(self, record: logging.LogRecord) -> tuple[bool, bool]:
        """Whether a handler other than this one handles the record, and
        whether one of them writes it through a captured stream."""
        found = written = False
        logger: Any = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
        while logger is not None:
            for handler in logger.handlers:
                if handler is self or record.levelno < handler.level:
                    continue
                found = True
                if isinstance(getattr(handler, "stream", None), OwnedStream):
                    written = True
            if not logger.propagate:
                break
            logger = logger.parent
        return found, written


class _Installed:
    """What :func:`install` put in place, and how many runs use it."""

    def __init__(self, stdout: OwnedStream, stderr: OwnedStream, handler: OutputLogHandler) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.handler = handler
        self.users = 0
        self.levels: list[int] = []
        self.skips: list[set[str]] = []


_lock = threading.Lock()
_installed: _Installed | None = None


def install(level: int, skip: set[str] | None = None) -> None:
    """Capture in this process from now on: ``sys.stdout``/``sys.stderr``
    become :class:`OwnedStream` over what they are now, and the root logger
    gets an :class:`OutputLogHandler` at ``level``.  Nested and concurrent
    runs share one installation (the lowest level of those running applies);
    each :func:`install` is undone by one :func:`uninstall`."""
    global _installed
    with _lock:
        state = _installed
        if state is None:
            state = _installed = _Installed(
                _owned(sys.stdout, STDOUT), _owned(sys.stderr, STDERR), OutputLogHandler(level)
            )
            sys.stdout, sys.stderr = state.stdout, state.stderr
            logging.getLogger().addHandler(state.handler)
        state.users += 1
        state.levels.append(level)
        state.skips.append(skip or set())
        state.handler.setLevel(min(state.levels))
        state.handler.skip = set().union(*state.skips)


def uninstall(level: int, skip: set[str] | None = None) -> None:
    """Undo one :func:`install` (with its arguments); the last one puts the
    streams back (unless a task replaced them meanwhile: then the stand-ins
    stay, and pass every write through) and removes the handler."""
    global _installed
    with _lock:
        state = _installed
        if state is None:
            return
        state.users -= 1
        state.levels.remove(level)
        state.skips.remove(skip or set())
        if state.users > 0:
            state.handler.setLevel(min(state.levels))
            state.handler.skip = set().union(*state.skips)
            return
        _installed = None
        logging.getLogger().removeHandler(state.handler)
        if sys.stdout is state.stdout:
            sys.stdout = state.stdout.inner
        if sys.stderr is state.stderr:
            sys.stderr = state.stderr.inner


def _owned(stream: Any, number: int) -> OwnedStream:
    return stream if isinstance(stream, OwnedStream) else OwnedStream(stream, number)


def install_for_process(level: int) -> OutputLogHandler:
    """Capture for the life of this process (a worker): as :func:`install`,
    never undone; returns the handler, whose level a run may change."""
    install(level)
    assert _installed is not None
    return _installed.handler
