"""A run's task output in the calling process: the runner options
``output=`` and ``capture_level=``, and the collector that keeps each task's
text for ``graph.output`` and shows its lines.

Where the lines come from (:mod:`taskmap.runtime.capture` does the capturing):
``run``/``run_async`` write into the collector directly (it is their sink);
the parallel runners' workers send ``OUTPUT`` messages the coordinator hands
to :meth:`OutputCollector.arrived`; ``run_dask`` gets each task's kept text
with its outcome, and its lines as Dask events while it runs.

``output=``:

``"pass"`` (default)
    each complete line goes to the caller's ``sys.stdout`` or ``sys.stderr``
    (whatever they are when the line arrives: a notebook's, pytest's, a
    ``redirect_stdout``), one whole line at a time, never torn;
``"prefix"``
    the same, each line prefixed ``[task] `` (``str(task)``);
``"capture"``
    kept in ``graph.output`` only; taskmap prints nothing.

Log records are kept, not printed by taskmap in any mode: the user's own
handlers print them as they always did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from taskmap.runtime.capture import SHOWN, KeptText, Sink, original

PASS, PREFIX, CAPTURE = "pass", "prefix", "capture"
MODES = (PASS, PREFIX, CAPTURE)


class OutputOptions(NamedTuple):
    """A run's ``output=`` and ``capture_level=``, checked."""

    mode: str
    level: int


DEFAULT = OutputOptions(PASS, logging.INFO)


def resolve_output(mode: Any, level: Any) -> OutputOptions:
    """Check ``output=`` (one of :data:`MODES`) and ``capture_level=`` (a
    logging level: an int, or a name such as ``"DEBUG"``)."""
    if mode not in MODES:
        raise ValueError(f"output must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"capture_level {level!r} is not a logging level name")
        level = number
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise TypeError(f"capture_level must be a logging level (an int >= 0 or a name), not {level!r}")
    return OutputOptions(mode, level)


class OutputCollector(Sink):
    """Keeps each task's text (bounded: :class:`KeptText`) until the
    bookkeeper records the task, and shows complete lines per the mode.
    Keys are the run's task numbers; ``names[key]`` is the task."""

    def __init__(self, names: Sequence[Any], options: OutputOptions = DEFAULT, graph_name: str = "taskmap") -> None:
        super().__init__()
        self.names = names
        self.mode = options.mode
        self.level = options.level
        self.kept: dict[int, KeptText] = {}
        self.prefixes: dict[Any, str] = {}  # key -> "[task] "
        # taskmap's own loggers: their records are not task output
        self.skip = {f"{graph_name}-manager", f"{graph_name}-worker"}

    def lines(self, key: Any, stream: int, text: str) -> None:
        kept = self.kept.get(key)
        if kept is None:
            kept = self.kept[key] = KeptText()
        kept.add(text)
        if stream in SHOWN and self.mode != CAPTURE:
            self.show(key, stream, text)

    def show(self, key: Any, stream: int, text: str) -> None:
        """Write whole lines to the caller's stream (prefixed in prefix mode)."""
        if self.mode == PREFIX:
            prefix = self.prefixes.get(key)
            if prefix is None:
                prefix = self.prefixes[key] = f"[{self.names[key]}] "
            if text.count("\n") == 1 and text[-1] == "\n":  # (one line: the common case)
                text = prefix + text
            else:
                text = "".join([prefix + line for line in text.splitlines(True)])
        try:
            original(stream).write(text)
        except (OSError, ValueError):
            pass  # (the caller's stream is closed: the text is still kept)

    def arrived(self, chunks: list[Any]) -> None:
        """An OUTPUT message from a worker: ``[task, stream, text, ...]``.
        What was shown is flushed at once (the caller's stream may be a
        pipe, block-buffered)."""
        shown = set()
        for k in range(0, len(chunks), 3):
            stream = chunks[k + 1]
            self.lines(chunks[k], stream, chunks[k + 2])
            shown.add(stream)
        if self.mode != CAPTURE:
            for stream in SHOWN:
                if stream in shown:
                    try:
                        original(stream).flush()
                    except (OSError, ValueError):
                        pass

    def restart(self, key: int) -> None:
        """Task ``key`` starts another attempt: what the last one wrote goes
        (``graph.output`` holds the attempt whose outcome counts)."""
        self.kept.pop(key, None)
        self.open.pop(key, None)

    def set_text(self, key: int, text: str | None) -> None:
        """Task ``key``'s whole kept text, as it arrived with its outcome."""
        self.kept.pop(key, None)
        if text:
            kept = self.kept[key] = KeptText()
            kept.head.append(text)  # (bounded where it was written: kept as is)
            kept.head_size = len(text)

    def take(self, key: int) -> str | None:
        """Task ``key`` was recorded: its text (None: it wrote nothing)."""
        kept = self.kept.pop(key, None)
        return None if kept is None else kept.text()
