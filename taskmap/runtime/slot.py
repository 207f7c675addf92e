"""A few integers and a ring of flags shared by the coordinator and one
worker process.

The worker's cpu thread writes the number of the task it is running (or -1),
and when it started, around each task; each io task sets its flag when it
begins (a coroutine at its first step, a plain function in its thread, which
may begin after io tasks sent later): memory writes, no system call, nobody
woken.  The coordinator
reads them when the worker dies, to know exactly which tasks the crash
interrupted (even though the worker batches its results, and io tasks may
still have been in the pipe), and when a cpu task's time limit may have
passed.

The memory is an anonymous file (``memfd_create`` on Linux, an unlinked
temporary file elsewhere): it has no name in /dev/shm, so nothing can leak
whatever way either process ends.  It reaches the worker as an inherited file
descriptor, carried by a ``multiprocessing`` Connection object, the one fd
holder loky's process start-up already knows how to pass to a child.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from multiprocessing.connection import Connection

# [0]: running cpu task or -1; [1]: its start (monotonic_ns); [2]: last
# finished cpu task or -1; [3]: unused
_INTS = 32
# then a byte per io task, by its number among the io tasks sent to the worker
# (over its life) modulo IO_RING: 1 once it began.  The worker clears a byte
# when the task that reuses it arrives, so a flag is valid while fewer than
# IO_RING io tasks were sent after its own.
IO_RING = 1 << 16
_SIZE = _INTS + IO_RING


def _anonymous_fd() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("taskmap-running", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as f:  # unlinked at once
        return os.dup(f.fileno())


class RunningSlot:
    """The shared memory; ``slot.value`` is the running task (-1: none),
    ``slot.started_ns`` when it started, ``slot.io_began(n)`` whether the
    worker's io task number ``n`` began; ``slot.view()`` and
    ``slot.io_flags()`` write them."""

    def __init__(self, fd: int | None = None, carrier: Connection | None = None) -> None:
        if fd is None:
            fd = _anonymous_fd()
            os.ftruncate(fd, _SIZE)
        self._fd = fd
        # in the worker: keeps the inherited fd open; in the coordinator: the
        # fd handed to loky, which must stay open until the child has it
        self._carrier = carrier
        self._map = mmap.mmap(fd, _SIZE)
        if carrier is None:
            view = self.view()
            view[0] = view[2] = -1

    def view(self) -> memoryview:
        return memoryview(self._map)[:_INTS].cast("q")

    def io_flags(self) -> memoryview:
        """The ring of io flags: ``flags[n % IO_RING]``."""
        return memoryview(self._map)[_INTS:]

    @property
    def value(self) -> int:
        return self.view()[0]

    @property
    def started_ns(self) -> int:
        return self.view()[1]

    @property
    def last_finished(self) -> int:
        return self.view()[2]

    def io_began(self, n: int, sent: int) -> bool:
        """Whether the worker's io task number ``n`` began, ``sent`` io tasks
        having been sent to it (see :func:`io_began`)."""
        return sent > n + IO_RING or bool(self._map[_INTS + n % IO_RING])

    def __reduce__(self):
        # only meaningful while loky spawns a worker: the Connection's fd is
        # duplicated into the child
        if self._carrier is None:
            self._carrier = Connection(os.dup(self._fd))
        return (_attach, (self._carrier,))

    def close(self) -> None:
        """Release this process's hold on the memory (the worker has its own)."""
        if self._carrier is not None:
            self._carrier.close()
            self._carrier = None
        self._map.close()
        os.close(self._fd)


def io_began(flags: bytes, n: int, sent: int) -> bool:
    """Whether io task number ``n`` began, by a copy of a slot's ring of io
    flags (``bytes(slot.io_flags())``), ``sent`` io tasks having been sent;
    True when the ring cannot tell (a later task may have reused the flag):
    a task of unknown state counts as begun."""
    return sent > n + IO_RING or bool(flags[n % IO_RING])


def _attach(carrier: Connection) -> RunningSlot:
    return RunningSlot(fd=carrier.fileno(), carrier=carrier)
