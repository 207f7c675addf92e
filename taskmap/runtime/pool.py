"""The warm pool of worker processes, started through loky.

loky's process start-up (fork+exec of a fresh interpreter, no inherited
threads or locks) is safe in a threaded caller, and functions reach workers
through cloudpickle, so lambdas, closures and ``__main__`` functions work.
Each worker gets its own duplex pipe; the coordinator keeps the io and cpu
queues and feeds each worker's pipe, which attributes exactly which tasks a
crashed worker held.

The pool lives across runs in one Python process (like loky's reusable
executor) and is shut down at interpreter exit: SHUTDOWN to each worker, a
short join, then kill; then the shared memory segments of this process's
runs are removed (normally none is left by then).  A run uses a pool of its
own: when two runs overlap (``taskmap.start`` twice, or two threads), the
second takes a second pool, started then and kept warm like the first
(:func:`take_pool`).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from loky.backend.context import get_context

from taskmap.runtime import messages, shm
from taskmap.runtime.slot import RunningSlot
from taskmap.runtime.worker import worker_main

if TYPE_CHECKING:
    from taskmap.runtime.process_setup import CallerSetup

JOIN_SECONDS = 1.0


class WorkerHandle:
    """The coordinator's view of one worker process."""

    __slots__ = (
        "codes_held",
        "codes_sent",
        "conn",
        "fd_pipes",
        "funcs_sent",
        "io_sent",
        "pid",
        "process",
        "ready",
        "run_id",
        "setup_heard",
        "slot",
    )

    def __init__(self, process, conn, slot: RunningSlot) -> None:
        self.process = process
        self.conn = conn
        self.slot: RunningSlot | None = slot  # which cpu task it is running, read after a crash
        self.pid: int | None = process.pid
        self.ready = False  # set when its HELLO arrives
        # io tasks sent over the worker's life, as the worker numbers them
        # (the ledger holds which tasks it has; see RunningSlot.io_began)
        self.io_sent = 0
        self.funcs_sent: set[int] = set()
        self.codes_sent: set[int] = set()  # code pickled by value, this run
        # digests of the code this worker keeps across runs, oldest first
        # (the coordinator decides what it drops: see taskmap.runtime.functions)
        self.codes_held: OrderedDict[bytes, None] = OrderedDict()
        self.run_id: int | None = None
        # the caller's setup this worker last heard
        self.setup_heard: CallerSetup | None = None
        # our descriptors on the pipes its fds 1 and 2 write to (drained when it dies)
        self.fd_pipes: list[int] = []

    @property
    def sentinel(self):
        return self.process.sentinel

    def exitcode(self, timeout: float = JOIN_SECONDS) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self) -> None:
        """Kill the process now and reap it."""
        self.send_kill()
        self.process.join(JOIN_SECONDS)
        self.close()

    def send_kill(self) -> None:
        """SIGKILL without waiting (loky's Popen has no ``kill``)."""
        if self.process.exitcode is None and self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not within a second."""
        try:
            self.conn.send_bytes(messages.SHUTDOWN)
        except (OSError, ValueError):
            pass
        self.process.join(JOIN_SECONDS)
        if self.process.exitcode is None:
            self.kill()
        self.close()

    def close(self) -> None:
        """Release the pipe and the shared slot (after the process ended)."""
        try:
            self.conn.close()
        except OSError:
            pass
        for fd in self.fd_pipes:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fd_pipes = []
        if self.slot is not None:
            self.slot.close()
            self.slot = None


class WorkerPool:
    """Starts, replaces and stops worker processes."""

    def __init__(self, number: int = 1) -> None:
        self.workers: list[WorkerHandle] = []
        self.lock = threading.Lock()  # one run at a time uses the pool
        self.memory_limit: int | None = None
        self._ctx = get_context("loky")
        # names of this process's shared memory segments start with this
        # (None: no /dev/shm here, big values take the pipes)
        self.shm_prefix: str | None = None
        if shm.available():
            try:
                # (the pool's number keeps two pools' segments apart)
                self.shm_prefix = f"{shm.coordinator_prefix()}{number}-"
            except (ProcessLookupError, OSError, ValueError, IndexError):
                pass  # no readable /proc: no way to name segments safely
        if self.shm_prefix is not None:
            shm.sweep_orphans()  # segments of coordinators that died before us

    def configure(self, memory_limit: int | None) -> None:
        """Workers started from now on get this memory limit (bytes); workers
        started with another limit are stopped."""
        if memory_limit != self.memory_limit:
            self.memory_limit = memory_limit
            workers, self.workers = self.workers, []
            for w in workers:
                w.stop()

    def spawn(self) -> WorkerHandle:
        ours, theirs = self._ctx.Pipe(duplex=True)
        slot = RunningSlot()
        process = self._ctx.Process(
            target=worker_main,
            args=(theirs, slot, self.memory_limit, self.shm_prefix),
            name="taskmap-worker",
            daemon=True,
        )
        process.start()
        theirs.close()  # so the worker sees EOF when we close ours or die
        handle = WorkerHandle(process, ours, slot)
        self.workers.append(handle)
        return handle

    def resize(self, n: int) -> None:
        """Have exactly ``n`` workers (dead ones are replaced)."""
        for w in [w for w in self.workers if not w.process.is_alive()]:
            self.discard(w)
        while len(self.workers) > n:
            self.workers.pop().stop()
        while len(self.workers) < n:
            self.spawn()

    def discard(self, handle: WorkerHandle, kill: bool = False) -> None:
        if handle in self.workers:
            self.workers.remove(handle)
        if kill:
            handle.kill()
        else:
            handle.process.join(0)
            handle.close()

    def kill_all(self) -> None:
        """Stop everything at once (Ctrl-C, aborts): kill, then reap."""
        workers, self.workers = self.workers, []
        for w in workers:
            w.send_kill()
        for w in workers:
            w.process.join(JOIN_SECONDS)
            w.close()

    def shutdown(self) -> None:
        workers, self.workers = self.workers, []
        for w in workers:
            try:
                w.conn.send_bytes(messages.SHUTDOWN)
            except (OSError, ValueError):
                pass
        for w in workers:
            w.stop()
        if self.shm_prefix is not None:
            shm.remove_all(self.shm_prefix)


_pools: list[WorkerPool] = []  # every pool of this process; the first is get_pool()'s
_pool: WorkerPool | None = None  # (the first, kept for callers that read it)
_pool_lock = threading.Lock()


def get_pool() -> WorkerPool:
    """The process-wide warm pool (the first), created on first use."""
    global _pool
    with _pool_lock:
        if not _pools:
            _new_pool()
        return _pools[0]


@contextmanager
def take_pool() -> Iterator[WorkerPool]:
    """A warm pool that no other run uses, for the length of one run: the
    first idle pool, else a new one (kept warm afterwards, for the next time
    two runs overlap).  Each pool names its shared memory segments with its
    own prefix, so one run's clean-up never touches another's segments."""
    with _pool_lock:
        for pool in _pools:
            if pool.lock.acquire(blocking=False):
                break
        else:
            pool = _new_pool()
            pool.lock.acquire()
    try:
        yield pool
    finally:
        pool.lock.release()


def _new_pool() -> WorkerPool:
    global _pool
    if not _pools:
        atexit.register(shutdown_pool)
    pool = WorkerPool(len(_pools) + 1)
    _pools.append(pool)
    _pool = _pools[0]
    return pool


def pool_worker_pids() -> set[int]:
    """The pids of every pool's workers (for leak checks)."""
    with _pool_lock:
        return {w.pid for pool in _pools for w in pool.workers if w.pid is not None}


def shutdown_pool() -> None:
    """Stop every worker of every warm pool (also registered with atexit)."""
    global _pool
    with _pool_lock:
        pools = list(_pools)
        _pools.clear()
        _pool = None
    for pool in pools:
        pool.shutdown()
