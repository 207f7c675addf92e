"""The messages between the coordinator and its workers, all in one place.

Each message is one msgpack array whose first element is its :class:`Kind`.
Values (arguments, results, exceptions) inside messages are already encoded
by :mod:`taskmap.runtime.codec` and travel as msgpack ``bin``, so the coordinator can
forward a parent's result to its children without decoding and re-encoding it.

coordinator -> worker
    ``SUBMIT``   run id, new functions ``{func_id: cloudpickle bytes}`` (each
                 sent once per worker and run), a batch of
                 :class:`Submission` ``[task, func, io, args, after, slots, timeout, release, direct, first]``
                 and the run's shared memory threshold (bytes, or None: off).
                 ``after`` >= 0 pins a cpu task behind a parent sent to the same
                 worker: it runs right after that parent succeeds, with the
                 parent's value inserted into ``args`` at ``slots`` (a chain
                 then needs no round trip per task); it is dropped if the
                 parent fails.  ``timeout`` (seconds or None) is enforced by
                 the worker for io tasks; cpu tasks' limits by the coordinator.
                 ``release``: positions in ``args`` whose shared memory
                 segments this task is the last to read; the worker unlinks
                 them once the function returned.  ``direct``: only the task
                 pinned behind this one reads its value, so a value big
                 enough for shared memory is handed to it in-process and the
                 coordinator gets a stand-in (:func:`codec.encode_handed_over`).
                 ``first``: a cpu task that runs before the cpu tasks already
                 waiting at the worker (it became ready later but is more
                 critical); the others keep their order.  Last, the run's
                 ``capture_level``: the least level of a log record kept as
                 task output (:mod:`taskmap.runtime.capture`).
    ``SETUP``    before a run's first SUBMIT to a worker, when anything changed
                 since it last heard: the caller's cwd, environment (bytes),
                 ``sys.path`` and user-module versions, as a dict of only what
                 changed (see :mod:`taskmap.runtime.process_setup`).
    ``SHUTDOWN`` finish now; the worker exits.
worker -> coordinator
    ``HELLO``    the worker is up and ready for tasks; carries its pid, and
                 the numbers of its descriptors reading what reaches its fds
                 1 and 2 (:mod:`taskmap.runtime.fd_output`; empty when not
                 redirected), which the coordinator opens too.
    ``RESULTS``  a batch of :class:`Outcome` ``[task, ok, payload, start, end(, type)]``
                 (``type`` names a pickled result's type, for error messages);
                 ``payload`` is the encoded value when ``ok``, else a
                 :class:`Failure` ``[error, type_name, message, traceback, stage]``.
    ``OUTPUT``   what tasks wrote: a flat list ``[task, stream, text, ...]``
                 of complete lines (``stream``: 1 stdout, 2 stderr, 0 a log
                 record), sent as soon as written; a task's last lines are
                 sent before its outcome (both under the worker's send lock).

Closing the pipe is also a message: a worker whose pipe reaches EOF exits at
once (its coordinator is gone); a coordinator that reads EOF treats the worker
as crashed.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple, cast

import msgpack


class Kind(IntEnum):
    HELLO = 0
    SUBMIT = 1
    RESULTS = 2
    SHUTDOWN = 4  # (3 was CANCEL: io time limits are kept by the worker itself)
    SETUP = 5
    OUTPUT = 6


class Stage(IntEnum):
    """Where a task failed, so the coordinator can word the error."""

    RUN = 0  # the task's own code raised
    ARGS = 1  # the worker could not decode its arguments
    FUNCTION = 2  # the worker could not load its function
    RESULT = 3  # the worker could not encode its result
    TIMEOUT = 4  # an io task ran past its time limit and was cancelled


# Positions in the msgpack arrays, named: the per-task paths index the arrays
# (building a NamedTuple per task costs more than the task's other
# bookkeeping); everything else may use the NamedTuples below, whose fields
# are in the same order.
MSG_KIND = 0  # every message
HELLO_PID, HELLO_FD_PIPES = 1, 2
SUBMIT_RUN_ID, SUBMIT_FUNCS, SUBMIT_TASKS, SUBMIT_SHM, SUBMIT_CODES, SUBMIT_DROP, SUBMIT_CAPTURE_LEVEL = range(1, 8)
RESULTS_OUTCOMES = 1
OUTPUT_CHUNKS = 1

# Submission
(SUB_TASK, SUB_FUNC, SUB_IO, SUB_ARGS, SUB_AFTER, SUB_SLOTS, SUB_TIMEOUT, SUB_RELEASE, SUB_DIRECT, SUB_FIRST) = range(
    10
)
# Outcome (OUT_TYPE is optional: present only for a pickled result)
OUT_TASK, OUT_OK, OUT_PAYLOAD, OUT_START, OUT_END, OUT_TYPE = range(6)
# Failure
FAIL_ERROR, FAIL_TYPE, FAIL_MESSAGE, FAIL_TRACEBACK, FAIL_STAGE = range(5)


class Submission(NamedTuple):
    task: int
    func: int
    io: bool
    args: list[bytes]  # encoded values
    after: int  # -1, or the parent this task is pinned behind
    slots: list[int]  # where the pinned parent's value goes in args
    timeout: float | None  # io tasks only
    release: list[int]  # args whose segments this task may unlink
    direct: bool  # a big value goes straight to the pinned child, not to shared memory
    first: bool  # a cpu task that runs before those already waiting at the worker


class Failure(NamedTuple):
    error: bytes | None  # the encoded exception, None if it would not round-trip
    type_name: str
    message: str
    traceback: str
    stage: int


class Outcome(NamedTuple):
    task: int
    ok: bool
    payload: object  # bytes when ok, else a Failure as a list
    start: float  # time.monotonic() in the worker, comparable across processes
    end: float
    # optional 6th element: the type name of a pickled result


def pack_hello(pid: int, fd_pipes: list[int] | None = None) -> bytes:
    return cast(bytes, msgpack.packb((Kind.HELLO, pid, fd_pipes or [])))


def pack_submit(
    run_id: int,
    funcs: dict[int, list[Any]],
    submissions: list[list[Any]],
    shm_threshold: int | None = None,
    codes: dict[int, list[Any]] | None = None,
    drop: list[bytes] | None = None,
    capture_level: int = 20,
) -> bytes:
    return cast(
        bytes,
        msgpack.packb(
            (Kind.SUBMIT, run_id, funcs, submissions, shm_threshold, codes or {}, drop or [], capture_level),
            use_bin_type=True,
        ),
    )


def pack_results(outcomes: list[list[Any]]) -> bytes:
    return cast(bytes, msgpack.packb((Kind.RESULTS, outcomes), use_bin_type=True))


def pack_output(chunks: list[Any]) -> bytes:
    """An OUTPUT message: ``chunks`` is ``[task, stream, text, ...]``."""
    return cast(bytes, msgpack.packb((Kind.OUTPUT, chunks), use_bin_type=True))


def pack_setup(body: dict[str, Any]) -> bytes:
    return cast(bytes, msgpack.packb((Kind.SETUP, body), use_bin_type=True))


SHUTDOWN = msgpack.packb((Kind.SHUTDOWN,))


def unpack(data: bytes) -> list[Any]:
    """Decode one message; ``result[0]`` is its Kind (as an int)."""
    return cast(list[Any], msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True))
