"""The exceptions taskmap raises or stores as task results.

A small hierarchy in the manner of loky's: one base class, one class per way a
task can fail without its own code raising, and a carrier for remote tracebacks
that is attached as ``__cause__`` so that ``traceback`` prints the worker's
stack below the coordinator's.
"""

from __future__ import annotations

import asyncio
import signal

# What a task may raise and still just fail (the rest, KeyboardInterrupt and
# SystemExit, end the run).  CancelledError is a BaseException, but a task
# that raises it (say, it awaited something that was cancelled) has failed.
TASK_ERRORS = (Exception, asyncio.CancelledError)


class TaskmapError(Exception):
    """Base class of every error taskmap itself raises or records.

    ``except taskmap.TaskmapError`` catches what taskmap raises
    (:class:`TaskFailedError`, :class:`RunCancelled`, :class:`CheckpointError`,
    :class:`SerializationError` before a run) and matches the errors it
    stores as a failed task's result (:class:`WorkerCrashedError`,
    :class:`TaskTimeoutError`, :class:`StaleCodeError`, ...).  A task's own
    exception is stored as itself, not wrapped in one of these.
    """


class TaskFailedError(TaskmapError, RuntimeError):
    """Raised by a runner with ``raise_errors=True`` when a task fails.

    ``task`` names the failing task; the task's own exception is ``__cause__``
    and its text is part of the message.  It is a ``RuntimeError`` because the
    original package's async runners raised one (``... check your logs``).
    """

    def __init__(self, task: str, error: BaseException) -> None:
        self.task = task
        self.error = error
        super().__init__(f"task {task!r} failed: {type(error).__name__}: {error}; check your logs")

    def __reduce__(self):  # keep it picklable with its two arguments
        return (type(self), (self.task, self.error))


class WorkerCrashedError(TaskmapError):
    """A worker process died while it was running the task.

    ``exitcode`` is the process exit code; a negative value is the number of
    the signal that killed it, named in ``signal_name``.
    """

    def __init__(self, task: str, pid: int | None, exitcode: int | None) -> None:
        self.task = task
        self.pid = pid
        self.exitcode = exitcode
        self.signal_name = _signal_name(exitcode)
        how = f"killed by signal {self.signal_name}" if self.signal_name else f"exit code {exitcode}"
        super().__init__(f"worker pid {pid} running task {task!r} died ({how})")

    def __reduce__(self):
        return (type(self), (self.task, self.pid, self.exitcode))


class TaskTimeoutError(TaskmapError, TimeoutError):
    """The task ran longer than its time limit and was stopped.

    Stored as the task's result (and retried first if the task has
    ``retries=``) when a run's ``timeout=`` runs out: the limit counts from
    when the task started, not from when it was queued.  An io task is
    cancelled; a cpu task's worker is killed and replaced (on Dask, and for a
    plain function in a thread, the task is reported timed out and its thread
    runs on unwatched).  ``task`` is the task's name, ``limit`` the limit in
    seconds; also a ``TimeoutError``.
    """

    def __init__(self, task: str, limit: float) -> None:
        self.task = task
        self.limit = limit
        super().__init__(f"task {task!r} exceeded its time limit of {limit:g} s")

    def __reduce__(self):
        return (type(self), (self.task, self.limit))


class SerializationError(TaskmapError):
    """A value or function could not be serialised or deserialised.

    ``task`` names the task whose function, argument or result it was,
    ``type_name`` the type of the offending value when it is known (else
    None), and ``action`` what failed: ``"serialised"`` (the default) or
    ``"deserialised"``, with where (``"deserialised in the worker"``).
    """

    def __init__(
        self,
        task: str,
        what: str,
        type_name: str | None,
        detail: str,
        action: str = "serialised",
    ) -> None:
        self.task = task
        self.what = what
        self.type_name = type_name
        self.detail = detail
        self.action = action
        of_type = f" (type {type_name})" if type_name else ""
        super().__init__(f"{what} of task {task!r}{of_type} could not be {action}: {detail}")

    def __reduce__(self):
        return (type(self), (self.task, self.what, self.type_name, self.detail, self.action))


class StaleCodeError(TaskmapError):
    """A worker cannot run the code of ``module`` that the caller runs: the
    module's reload in the worker failed, or its file changed after the
    caller loaded it.  The task fails instead of running other code."""

    def __init__(self, module: str, reason: str) -> None:
        self.module = module
        self.reason = reason
        super().__init__(f"module {module!r} in the worker is not the caller's: {reason}")

    def __reduce__(self):
        return (type(self), (self.module, self.reason))


class RunCancelled(TaskmapError):
    """Raised by a run's :meth:`taskmap.Run.wait` (and ``await``, and the end
    of :meth:`~taskmap.Run.as_completed`) when the run was cancelled: by
    :meth:`taskmap.Run.cancel`, by cancelling the asyncio task that awaited
    it, or by Ctrl-C during ``wait``.  The tasks that finished before keep
    their results in the graph; ``graph.in_progress`` lists those that were
    running."""

    def __init__(self, message: str = "the run was cancelled") -> None:
        super().__init__(message)


class RemoteTaskError(TaskmapError):
    """A task's exception whose class could not be rebuilt in the coordinator.

    Carries the class name, message and traceback text of the original.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = traceback_text
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self):
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class CheckpointError(TaskmapError):
    """A checkpoint store could not be opened, read or written.

    ``path`` is the store's file; the message names it and says what is
    wrong (not an SQLite file, truncated, damaged, written by a newer
    taskmap, a write failed).  A store found damaged is not written to.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"checkpoint store {path!r}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


class RemoteTraceback(Exception):
    """Holds the traceback text of an exception raised in a worker.

    Set as ``__cause__`` of the exception stored in ``graph.results`` so that
    printing the exception shows where it was raised in the worker.
    """

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback_text}"""'


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"
