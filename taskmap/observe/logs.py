"""Logging compatible with the original package, at no cost when unused.

Loggers are ``<name>-manager`` and ``<name>-worker``; their level comes from
``logging_config['level']`` (default DEBUG).  Unlike the original, taskmap
attaches no stderr handler unless ``logging_config['stderr']`` is true, and a
run checks once whether anybody listens: when nobody does, no log record is
created or formatted per task.

Lines read ``pid <pid>: queueing task <task>``, ``... starting task <task>``,
``... finished task <task>`` and ``... failed task <task>``, so that
:func:`in_progress` can tell from a log file what was queued or running when a
run died.  The coordinator writes every line (tasks are dispatched and their
results arrive there), naming the worker's pid for starting/finished lines.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
_OURS = "_taskmap_handler"


def setup_loggers(name: str, config: Mapping[str, Any]) -> None:
    """Configure the ``<name>-manager``/``<name>-worker`` loggers.

    The latest configuration for a name wins: handlers taskmap attached for an
    earlier graph of the same name are replaced, handlers the user attached
    are left alone.
    """
    level = config.get("level", logging.DEBUG)
    loggers = [logging.getLogger(f"{name}-manager"), logging.getLogger(f"{name}-worker")]
    handlers: list[logging.Handler] = []
    formatter = logging.Formatter(_FORMAT)
    if config.get("stderr", False):
        handlers.append(logging.StreamHandler())
    if config.get("write", False):
        stamp = _dt.datetime.now().strftime("%m-%d-%Y:%H.%M.%S")
        handlers.append(logging.FileHandler(f"{name}{stamp}.log"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.setLevel(level)
        setattr(handler, _OURS, True)
    for logger in loggers:
        if logger.level != level:
            # (setLevel clears the cache of every logger in the process: a
            # graph built again and again with the same name pays it once)
            logger.setLevel(level)
        for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
            logger.removeHandler(old)
            if old not in handlers:
                old.close()
        for handler in handlers:
            logger.addHandler(handler)


class RunLog:
    """Per-run logging front end used by every runner.

    Whether each logger has a listener is decided once, when the run starts;
    the per-task methods then return at once when nobody listens.
    """

    __slots__ = ("errors_on", "manager", "manager_on", "pid", "worker", "worker_on")

    def __init__(self, name: str) -> None:
        self.manager = logging.getLogger(f"{name}-manager")
        self.worker = logging.getLogger(f"{name}-worker")
        self.manager_on = _listening(self.manager)
        self.worker_on = _listening(self.worker)
        self.errors_on = _listening(self.worker, logging.ERROR)
        self.pid = os.getpid()

    def queueing(self, tasks: Iterable) -> None:
        if self.manager_on:
            for task in tasks:
                self.manager.info("pid %s: queueing task %s", self.pid, task)

    def starting(self, task, pid: int | None = None) -> None:
        if self.worker_on:
            self.worker.info("pid %s: starting task %s", pid or self.pid, task)

    def finished(self, task, pid: int | None = None) -> None:
        if self.worker_on:
            self.worker.info("pid %s: finished task %s", pid or self.pid, task)

    def failed(self, task, error: BaseException, pid: int | None = None) -> None:
        if self.errors_on:
            self.worker.error("pid %s: failed task %s", pid or self.pid, task, exc_info=error)

    def skipped(self, task, children: Iterable) -> None:
        if self.worker_on:
            self.worker.info(
                "pid %s: marking children %s of failed task %s", self.pid, sorted(map(str, children)), task
            )


def _listening(logger: logging.Logger, level: int = logging.INFO) -> bool:
    # Python's last-resort handler would print WARNING+ to stderr when no
    # handler exists; a library must not, so "no handler" means "off".
    return logger.isEnabledFor(level) and logger.hasHandlers()


def in_progress(path_to_log: str) -> dict:
    """Read a taskmap log file; return ``{'in_progress': set, 'queued': set}``:
    tasks started but not finished, and tasks queued but not started."""
    queued, started, finished = set(), set(), set()
    with open(path_to_log) as f:
        for line in f:
            words = line.strip().split(" ")
            if "starting" in words:
                started.add(words[-1])
            elif "finished" in words or "failed" in words:
                finished.add(words[-1])
            elif "queueing" in words:
                queued.add(words[-1])
    return {"in_progress": started - finished, "queued": queued - started}
