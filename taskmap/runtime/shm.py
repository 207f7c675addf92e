"""Shared memory segments for big values: create, attach, release, sweep.

A worker that returns a value with big out-of-band buffers (pickle protocol
5: numpy arrays, pandas frames, bytearray; and top-level bytes/memoryview)
writes those buffers into one file in ``/dev/shm`` (tmpfs: the pages *are*
the shared memory) and sends only a small handle in its message; the worker
running a child maps the same file and hands pickle a view over it, so numpy
builds its array over the shared pages without a copy.

Why plain files and ``mmap`` rather than ``multiprocessing.shared_memory``:
in Python 3.11 ``SharedMemory`` registers every segment with the resource
tracker also when it only *attaches* to it, and the tracker of whichever
process exits first unlinks a segment others still use (and warns).  Here the
coordinator owns every segment of its run and nothing else unlinks them
behind its back.

Names: ``taskmap-<coordinator pid>-<its start time>-<creator pid>-<n>``.  The
coordinator's start time (clock ticks since boot, from ``/proc``) makes the
name unique to one coordinator process even when its pid is reused, so any
process can tell whether the owner of a segment is still alive
(:func:`sweep_orphans`); the creator's pid finds the segments of a worker
that died before reporting them.

Lifetime (see also the README):

* the coordinator removes every segment of its prefix when a run ends, also
  when it ends by an exception or Ctrl-C (:func:`remove_all`), and at exit;
* a worker whose coordinator died (its pipe reaches EOF and the coordinator's
  pidfd says it exited) removes that coordinator's segments on its way out
  (:func:`close_and_sweep`);
* a new coordinator removes, once, the segments of every dead coordinator
  (:func:`sweep_orphans`);
* a consumer told it is the last reader of a segment unlinks it as soon as
  its function returned (:func:`unlink`), so a chain of big values holds one
  input and one output at a time, not every intermediate.

Only Linux's ``/dev/shm`` is supported; elsewhere :func:`available` is false
and big values travel through the pipes as before.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import select
import threading
import weakref
from collections.abc import Container, Iterable
from typing import NamedTuple

__all__ = [
    "DEFAULT_THRESHOLD",
    "SHM_DIR",
    "Attached",
    "HandOver",
    "Handle",
    "SegmentWriter",
    "TaskSegments",
    "attach",
    "available",
    "close_and_sweep",
    "coordinator_prefix",
    "default_threshold",
    "list_segments",
    "parse_threshold",
    "remove_all",
    "sweep_orphans",
    "unlink",
]

SHM_DIR = "/dev/shm"
NAME_PREFIX = "taskmap-"
DEFAULT_THRESHOLD = 256 << 10
"""Bytes: a buffer at least this big travels through shared memory (256 KiB:
measured by ``bench_shm.py --sweep``, a hop through a segment costs about
what a hop through the pipes does at 64-128 KiB, and half at 256 KiB)."""
THRESHOLD_ENV = "TASKMAP_SHM_THRESHOLD"
ALIGN = 64  # each buffer starts on a cache line (numpy wants 16; AVX-512 likes 64)
_MAX_WRITE = 1 << 30  # Linux writes at most ~2 GiB per call


class Handle(NamedTuple):
    """Where one buffer lies: segment name, offset and length in bytes."""

    name: str
    offset: int
    length: int


def available() -> bool:
    """Whether big values can go through ``/dev/shm`` on this machine."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK)


def default_threshold() -> int | None:
    """The threshold used when a runner is not given one: the environment
    variable ``TASKMAP_SHM_THRESHOLD`` (bytes, or ``off``) if set, else
    :data:`DEFAULT_THRESHOLD`; ``None`` (shared memory off) where
    ``/dev/shm`` is not available."""
    if not available():
        return None
    text = os.environ.get(THRESHOLD_ENV, "").strip()
    if not text:
        return DEFAULT_THRESHOLD
    try:
        return parse_threshold(text)
    except ValueError as error:
        raise ValueError(f"{THRESHOLD_ENV}: {error}") from None


def parse_threshold(text: str) -> int | None:
    """A threshold written as text (the environment variable, the command
    line): bytes with an optional K or M suffix, or ``off`` (also ``none``,
    ``no``, ``false``, ``0``) for shared memory off."""
    value = text.strip().lower()
    if value in ("off", "none", "no", "0", "false"):
        return None
    scale = {"k": 1 << 10, "m": 1 << 20}.get(value[-1:], 1)
    try:
        size = int(value[:-1] if scale > 1 else value) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 262144, 256K, 1M, off)") from None
    if size < 1:
        raise ValueError(f"{text!r}: the threshold must be at least 1 byte (or 'off')")
    return size


# -- whose segment is it -----------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), or None
    if it does not exist or is a zombie (it has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # the name may hold spaces and ')'
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22 of proc(5), counted after the name


def coordinator_prefix(pid: int | None = None) -> str:
    """``taskmap-<pid>-<start time>-``: the name prefix of every segment of
    the run(s) coordinated by process ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    ticks = _start_ticks(pid)
    if ticks is None:
        raise ProcessLookupError(pid)
    return f"{NAME_PREFIX}{pid}-{ticks}-"


def _owner(name: str) -> tuple[int, int] | None:
    parts = name[len(NAME_PREFIX) :].split("-")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def list_segments(prefix: str = NAME_PREFIX) -> list[str]:
    """Names of the segments in ``/dev/shm`` that start with ``prefix``."""
    try:
        return [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
    except OSError:
        return []


def unlink(names: Iterable[str]) -> None:
    """Remove segments by name; ones already gone are ignored.  Processes
    that have a segment mapped keep it until they unmap it."""
    for name in names:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass


def remove_all(prefix: str) -> int:
    """Remove every segment whose name starts with ``prefix``; how many."""
    names = list_segments(prefix)
    unlink(names)
    return len(names)


def remove_unreported(prefix: str, reported: Container[str]) -> int:
    """Remove the segments starting with ``prefix`` that are not in
    ``reported``: a dead worker's segments no result announced, which nobody
    can ever read (say, one it was writing when it died).  How many."""
    names = [n for n in list_segments(prefix) if n not in reported]
    unlink(names)
    return len(names)


def sweep_orphans() -> int:
    """Remove the segments of every coordinator that is no longer running
    (its pid is gone, a zombie, or now belongs to a process started at
    another time); how many were removed."""
    alive: dict[tuple[int, int], bool] = {}
    dead = []
    for name in list_segments():
        owner = _owner(name)
        if owner is None:
            continue
        if owner not in alive:
            alive[owner] = _start_ticks(owner[0]) == owner[1]
        if not alive[owner]:
            dead.append(name)
    unlink(dead)
    return len(dead)


# -- in a worker: writing segments, sweeping when the coordinator died -------

_create_lock = threading.Lock()
_closing = False


def close_and_sweep(prefix: str, coordinator_pidfd: int | None, wait: float = 2.0) -> None:
    """A worker whose pipe reached EOF: if its coordinator has exited (its
    pidfd turns readable within ``wait`` seconds), remove the coordinator's
    segments.  No segment is created by this process afterwards."""
    global _closing
    with _create_lock:
        _closing = True
    if coordinator_pidfd is None:
        return
    try:
        readable, _, _ = select.select([coordinator_pidfd], [], [], wait)
    except (OSError, ValueError):
        return
    if readable:  # it exited: nobody else will remove its segments
        remove_all(prefix)


class SegmentWriter:
    """Names and writes the segments of one worker process.

    ``prefix`` is the coordinator's (:func:`coordinator_prefix`); names add
    this process's pid and a counter.  Thread-safe: the io loop and the cpu
    thread of a worker encode results at the same time, each through its own
    :meth:`for_task`.
    """

    def __init__(self, prefix: str, threshold: int) -> None:
        if threshold < 1:
            raise ValueError(f"the shared memory threshold must be >= 1 byte, not {threshold}")
        self.prefix = f"{prefix}{os.getpid()}-"
        self.threshold = threshold
        self._count = itertools.count(1)  # next() is atomic under the GIL
        # what a task that releases nothing encodes with: shared, as it keeps
        # no state (most results are small and never reach it)
        self.plain = TaskSegments(self, [])

    def for_task(self, release: Iterable[str] = (), hand_over: bool = False) -> TaskSegments:
        """What one task's result is encoded with (``codec.encode(value,
        shm=...)``).  ``release``: segments this task was the last to read;
        they are unlinked before its result is written (so a chain holds one
        input and one output, not more), unless the result points into them.
        ``hand_over``: a value that would need a new segment raises
        :class:`HandOver` instead (its only reader runs in this process)."""
        if not release and not hand_over:
            return self.plain
        return TaskSegments(self, list(release), hand_over)

    def next_name(self) -> str:
        return f"{self.prefix}{next(self._count)}"


class HandOver(Exception):
    """Raised by :meth:`TaskSegments.store` for a value to hand over in-process."""


class TaskSegments:
    """The segments of one result (see :meth:`SegmentWriter.for_task`).

    A buffer that already lies inside a segment mapped in this process (a
    task returned its input, or a view of it) is not copied: its handle
    points into that segment.
    """

    __slots__ = ("hand_over", "kept", "release", "threshold", "writer")

    def __init__(self, writer: SegmentWriter, release: list[str], hand_over: bool = False) -> None:
        self.writer = writer
        self.threshold = writer.threshold
        self.release = release
        # raise HandOver instead of writing: the value goes to the one task
        # that reads it, in this process
        self.hand_over = hand_over
        self.kept: set[str] = set()  # released segments the result points into

    def store(self, buffers: list[memoryview]) -> list[Handle]:
        """Handles for ``buffers`` (contiguous byte views), writing the ones
        not already in a mapped segment into one new segment."""
        handles: list[Handle | None] = []
        fresh: list[int] = []
        for k, buf in enumerate(buffers):
            inside = _find_mapped(buf)
            if inside is None:
                fresh.append(k)
            elif self.release:
                self.kept.add(inside.name)
            handles.append(inside)
        # release the inputs before writing: once unmapped (the task's
        # arguments are dropped by now) their memory is free for the new one
        self.flush_release()
        if fresh and self.hand_over:
            raise HandOver
        if fresh:
            name = self.writer.next_name()
            offsets, size = [], 0
            for k in fresh:
                offsets.append(size)
                size += (buffers[k].nbytes + ALIGN - 1) // ALIGN * ALIGN
            _write(name, size, [(offsets[j], buffers[k]) for j, k in enumerate(fresh)])
            for j, k in enumerate(fresh):
                handles[k] = Handle(name, offsets[j], buffers[k].nbytes)
        return handles  # type: ignore[return-value]

    def flush_release(self) -> None:
        """Unlink the released segments no result points into (once)."""
        if self.release:
            names, self.release = self.release, []
            unlink([n for n in names if n not in self.kept])


def _write(name: str, size: int, parts: list[tuple[int, memoryview]]) -> None:
    """Create segment ``name`` of ``size`` bytes holding ``parts``: one copy
    from each buffer's memory into the segment's pages (``pwrite``, so no
    mapping and no page faults on this side)."""
    path = os.path.join(SHM_DIR, name)
    with _create_lock:
        if _closing:
            raise RuntimeError("taskmap worker is shutting down: no new shared memory")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        for offset, buf in parts:
            view = buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf
            done, n = 0, len(view)
            while done < n:
                done += os.pwrite(fd, view[done : done + _MAX_WRITE], offset + done)
    except BaseException:
        os.close(fd)
        unlink([name])  # no half-written segment stays behind
        raise
    os.close(fd)


# -- reading segments --------------------------------------------------------


class Attached(mmap.mmap):
    """A mapping of one segment (an ``mmap`` that also knows its name).

    It lives as long as any view over it (a numpy array, a memoryview);
    dropping the last one unmaps it.
    """

    name: str


class _Mapping(NamedTuple):
    name: str
    address: int
    size: int
    ref: weakref.ref


_mapped: dict[int, _Mapping] = {}  # id(mmap) -> where it lies, while it lives
_mapped_lock = threading.Lock()


def attach(name: str, writable: bool = False) -> Attached:
    """Map segment ``name``.  Read-only and shared by default; with
    ``writable`` a private copy-on-write mapping (writes stay in this process
    and copy only the pages they touch).

    Raises :class:`FileNotFoundError` with an explanation if the segment is
    gone (its run ended, or its last reader already released it).
    """
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"shared memory segment {name!r} is gone: its run ended or its last reader already released it"
        ) from None
    try:
        size = os.fstat(fd).st_size
        if writable:
            m = Attached(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        else:
            m = Attached(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    m.name = name
    key = id(m)

    def gone(_ref: object, key: int = key) -> None:
        _forget(key)

    entry = _Mapping(name, buffer_address(m), size, weakref.ref(m, gone))
    with _mapped_lock:
        _mapped[key] = entry
    return m


def _forget(key: int) -> None:
    with _mapped_lock:
        _mapped.pop(key, None)


def _find_mapped(buf: memoryview) -> Handle | None:
    """The handle of ``buf`` if it lies inside a segment mapped here."""
    if not _mapped:
        return None
    try:
        address = buffer_address(buf)
    except (TypeError, BufferError, ValueError):
        return None
    n = buf.nbytes
    with _mapped_lock:
        entries = list(_mapped.values())
    for m in entries:
        if m.address <= address and address + n <= m.address + m.size and m.ref() is not None:
            return Handle(m.name, address - m.address, n)
    return None


# -- the address of a buffer (read-only ones too, which ctypes refuses) -------


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def buffer_address(obj) -> int:
    """The memory address of the first byte of ``obj``'s buffer."""
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE
        raise BufferError("no buffer")
    try:
        return view.buf or 0
    finally:
        _release_buffer(ctypes.byref(view))
