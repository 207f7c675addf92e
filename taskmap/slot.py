"""A 64-bit integer shared by the coordinator and one worker process.

The worker's cpu thread writes the number of the task it is running (or -1),
and when it started, around each task; its loop thread counts the io tasks it
has started: memory writes, no system call, nobody woken.  The coordinator
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
# finished cpu task or -1; [3]: io tasks started so far (over the worker's life)
_SIZE = 32


def _anonymous_fd() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("taskmap-running", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as f:  # unlinked at once
        return os.dup(f.fileno())


class RunningSlot:
    """The shared integers; ``slot.value`` is the running task (-1: none),
    ``slot.started_ns`` when it started, ``slot.io_started`` how many io
    tasks the worker has started; ``slot.view()`` writes them."""

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
        return memoryview(self._map).cast("q")

    @property
    def value(self) -> int:
        return self.view()[0]

    @property
    def started_ns(self) -> int:
        return self.view()[1]

    @property
    def last_finished(self) -> int:
        return self.view()[2]

    @property
    def io_started(self) -> int:
        return self.view()[3]

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


def _attach(carrier: Connection) -> RunningSlot:
    return RunningSlot(fd=carrier.fileno(), carrier=carrier)
