"""One live run per store: the hold a run takes on its store.

A run holds its store from its restore to its end with an exclusive
``flock`` on a file beside it (``<store>-hold``, as SQLite names its
``-wal`` and ``-shm`` files), in which it writes who holds it: pid, host,
since when, graph.  The kernel drops the lock when the holder's process
ends however it ends (SIGKILL, out of memory), so:

- lock taken, file empty: the last run ended and let go;
- lock taken, file names this host: that run died holding it; its hold is
  taken over, and the takeover logged;
- lock taken, file names another host: the store is on a shared filesystem
  where this host cannot see the other's locks, nor tell whether it is alive:
  refused unless the caller forces it (``take_over=True``, ``taskmap run
  --take-over``);
- lock busy: a live run holds it: refused, naming the holder.

Readers (``statuses``, ``failed_tasks``, ``entry``, ``clear``) take no hold:
SQLite's WAL lets them read beside a run.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from taskmap.checkpoint.log import log
from taskmap.errors import CheckpointError


def hold_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + "-hold")


def describe(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')!r} since {holder.get('since')}"
        f" (graph {holder.get('graph')!r})"
    )


class RunHold:
    """The hold of one run on one store (see the module docstring)."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.path = hold_path(store_path)
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, graph_name: Any, take_over: bool = False) -> None:
        """Hold the store for a run of ``graph_name``, or raise
        :class:`taskmap.CheckpointError` naming the holder."""
        if self.fd is not None:
            self._write(graph_name)  # (still ours: a run that never got going)
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CheckpointError(str(self.store_path), f"cannot create its hold file {self.path}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                raise CheckpointError(
                    str(self.store_path),
                    "another run is using this store: "
                    + (describe(holder) if holder else "a run that is starting")
                    + "; one run at a time per store (reading it stays possible)",
                ) from None
            holder = _read(fd)
            if holder:
                if holder.get("host") != socket.gethostname() and not take_over:
                    raise CheckpointError(
                        str(self.store_path),
                        f"held by {describe(holder)}: a run on another host, which this host "
                        "cannot tell alive or dead; if it is gone, take its hold over "
                        "(open_checkpoint(path, take_over=True), or taskmap run --take-over)",
                    )
                log(
                    graph_name,
                    logging.WARNING,
                    "checkpoint %s: taking over the hold of a run that ended without letting go: %s",
                    self.store_path,
                    describe(holder),
                )
        except BaseException:
            os.close(fd)  # (and with it the lock, if we had it)
            raise
        self.fd = fd
        self._write(graph_name)

    def _write(self, graph_name: Any) -> None:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "graph": str(graph_name),
        }
        data = json.dumps(record).encode()
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        """Let go (the file is emptied: the next run sees a clean end)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # (the lock goes anyway; the next run will log a takeover)
        finally:
            os.close(fd)


def holder_of(store_path: Path) -> dict[str, Any] | None:
    """Who holds the store now (None: nobody alive on this host)."""
    path = hold_path(store_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {}
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        value = json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
