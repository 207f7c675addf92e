"""Output written straight to a worker's file descriptors 1 and 2 (a C
extension, a subprocess): it reaches where it went before, and it is
attributed to the cpu task that ran while it was written, when that task
can be known.

::

    task's C code / subprocess --write(1)--> pipe --forwarder thread--> the original fd 1
                                                         |               (a copy of it, kept
                                                         |                before the redirect)
                                                         +--> the cpu task running, if no io task
                                                              runs: its text, kept only (capture.FD_STDOUT)

How the writer is known: a worker runs one cpu task at a time, so bytes that
arrive while one runs and no io task does are that task's.  While io tasks
run too, nobody can tell whose they are: they pass to the terminal only.
The forwarder thread reads as bytes arrive; at the end of each cpu task the
cpu thread drains what the pipe still holds (under the same lock), so a
task's last bytes are not left to the next one -- once any byte has come
through the pipe, or a subprocess was started (an audit hook notices), since
before that the pipe is known empty and the drain's system call is saved.

Buffering stays as it was for C code: C stdio buffers a pipe fully but a
terminal by line, so when fd 1 was a terminal, C's ``stdout`` is set to line
buffering (before any C code wrote to it).  A subprocess a task starts sees
a pipe, not a terminal (``isatty`` is false in it).

If the worker dies, what the pipe still held is not lost: the coordinator
opened the pipe's read end too (``/proc/<pid>/fd/<n>``, on the worker's
HELLO), and drains it when it notices the death (:func:`open_remote`,
:func:`drain`), attributing it to the task the crash interrupted.
"""

from __future__ import annotations

import codecs
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import Any

from taskmap.runtime.capture import FD_STDERR, FD_STDOUT

READ_SIZE = 1 << 16
_SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork"})


class DescriptorTee:
    """Routes this process's fds 1 and 2 through pipes (see the module
    docstring).  ``owner`` is the cpu thread's ``[sink, key]``: bytes
    arriving while ``key`` is not None belong to that task, unless
    ``io_running()`` says an io task runs (then to nobody known)."""

    def __init__(self, io_running: Callable[[], bool]) -> None:
        self.io_running = io_running
        self.owner: list[Any] | None = None
        self.lock = threading.Lock()
        self.pipes: list[tuple[int, int, int, Any]] = []  # (read end, original copy, kind, decoder)
        self.maybe = False  # bytes may be waiting: a task's end drains them
        self.waiting = select.poll()  # the pipes, for a task's end to ask at once

    def start(self) -> list[int]:
        """Redirect fds 1 and 2; returns the read ends' numbers (for the
        coordinator), empty when this process cannot (then nothing changed)."""
        done = []
        for fd, kind in ((1, FD_STDOUT), (2, FD_STDERR)):
            try:
                tty = os.isatty(fd)
                original = os.dup(fd)  # (not inheritable: a subprocess gets the pipe)
            except OSError:
                continue
            read_end, write_end = os.pipe()
            for stream in (sys.__stdout__, sys.__stderr__, sys.stdout, sys.stderr):
                try:
                    stream.flush()  # type: ignore[union-attr]  # (what Python buffered goes where it was meant to)
                except (OSError, ValueError, AttributeError):
                    pass
            os.dup2(write_end, fd)
            os.close(write_end)
            os.set_blocking(read_end, False)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self.pipes.append((read_end, original, kind, decoder))
            done.append(read_end)
            if fd == 1 and tty:
                _line_buffer_c_stdout()
        if self.pipes:
            for read_end, _, _, _ in self.pipes:
                self.waiting.register(read_end, select.POLLIN)
            sys.addaudithook(self._audit)
            threading.Thread(target=self._forward, name="taskmap-fd-output", daemon=True).start()
        return done

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event in _SPAWN_EVENTS:
            self.maybe = True

    def _forward(self) -> None:
        poller = select.poll()
        for read_end, _, _, _ in self.pipes:
            poller.register(read_end, select.POLLIN)
        while True:
            ready = poller.poll()
            with self.lock:
                self.maybe = True
                for read_end, original, kind, decoder in self.pipes:
                    if any(fd == read_end for fd, _ in ready):
                        self._pass_on(read_end, original, kind, decoder)

    def _pass_on(self, read_end: int, original: int, kind: int, decoder: Any) -> None:
        """Forward what the pipe holds now, and attribute it (under the lock)."""
        while True:
            try:
                data = os.read(read_end, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                return
            if not data:
                return
            write_all(original, data)
            owner = self.owner
            if owner is None:
                continue
            sink, key = owner[0], owner[1]
            if key is not None and not self.io_running():
                text = decoder.decode(data)
                if text:
                    sink.write(key, kind, text)

    def end(self) -> None:
        """The cpu task is ending (its key still set): what it wrote and
        the pipe still holds is its.  One ``poll`` tells which pipes hold
        anything (the usual answer, none, costs one system call)."""
        with self.lock:
            holding = {fd for fd, _ in self.waiting.poll(0)}
            for read_end, original, kind, decoder in self.pipes:
                if read_end in holding:
                    self._pass_on(read_end, original, kind, decoder)
                # (a character cut at the end is not carried to the next task)
                decoder.reset()

    def flush(self) -> None:
        """Forward what is waiting (the worker is exiting)."""
        with self.lock:
            self.owner = None
            for read_end, original, kind, decoder in self.pipes:
                self._pass_on(read_end, original, kind, decoder)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return  # (the terminal is gone: nothing to pass it to)
        view = view[written:]


def _line_buffer_c_stdout() -> None:
    """C's ``stdout`` buffered by line, as it is on a terminal (glibc and
    musl name it ``stdout``; elsewhere it stays as the C library chose)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        stream = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(stream, None, 1, 0)  # _IOLBF
    except (OSError, ValueError, AttributeError):
        pass


# -- the coordinator's side ------------------------------------------------------------


def open_remote(pid: int, read_ends: list[int]) -> list[int]:
    """The coordinator's own descriptors on a worker's pipes' read ends, so
    it can drain them when the worker dies (Linux: through /proc); the ones
    that cannot be opened are left out."""
    fds = []
    for n in read_ends:
        try:
            fd = os.open(f"/proc/{pid}/fd/{n}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        fds.append(fd)
    return fds


def drain(fds: list[int]) -> list[bytes]:
    """What each pipe still holds (the worker died), its descriptor closed."""
    out = []
    for fd in fds:
        chunks = []
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        try:
            os.close(fd)
        except OSError:
            pass
        out.append(b"".join(chunks))
    return out
