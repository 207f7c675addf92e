"""The coordinator's codec work for its :class:`~taskmap.scheduling.ledger.Ledger`: a
run's functions pickled once, results and errors decoded, given results
encoded, each failure worded as the user reads it.  (The ledger itself
handles values only as opaque encoded bytes.)"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from taskmap.errors import SerializationError, StaleCodeError, TaskTimeoutError
from taskmap.expand import items_of, result_of
from taskmap.graph import Graph
from taskmap.results import NotKept
from taskmap.runtime import codec, functions
from taskmap.runtime.messages import OUT_TYPE, Stage
from taskmap.scheduling.limits import TaskLimits
from taskmap.scheduling.state import DONE, SchedulingState


def ship_functions(graph: Graph, state: SchedulingState) -> functions.Shipment:
    """The functions of the tasks to run, split into code and data
    (:mod:`taskmap.runtime.functions`); a function that cannot be sent to a worker
    stops the run before it starts, naming the task."""
    funcs, names, status = graph.funcs, state.names, state.state
    try:
        return functions.ship([None if status[i] == DONE else funcs[name] for i, name in enumerate(names)])
    except functions.UnsendableFunction as error:
        func = funcs[names[error.index]]
        raise SerializationError(
            names[error.index], "function", type(func).__qualname__, str(error.__cause__)
        ) from error.__cause__


class CodecValues:
    """The ledger's :class:`~taskmap.scheduling.ledger.Values`: results and errors
    decoded, given results encoded, with the errors a user reads."""

    def __init__(self, graph: Graph, state: SchedulingState, limits: TaskLimits) -> None:
        # a kept big value: a private copy-on-write mapping of its segment,
        # so the caller gets a writable array, no copy
        self.decode: Callable[[bytes], Any] = functools.partial(codec.decode, writable=True)
        self.results = graph.results
        self.names = state.names
        self.limits = limits

    def given(self, i: int, p: int) -> bytes:
        """Encode a result the run did not produce (given in ``results`` or
        cleared by a reset); the error names both tasks."""
        names = self.names
        value = result_of(self.results, names[p])
        try:
            if type(value) is NotKept:
                raise ValueError(
                    f"the result of task {names[p]!r} was not kept (gather=); "
                    f"reset {names[p]!r} too to run {names[i]!r} again"
                )
            return codec.encode(value)
        except Exception as error:
            raise SerializationError(
                names[i], f"argument from task {names[p]!r}", type(value).__qualname__, str(error)
            ) from error

    def items(self, t: int, blob: bytes) -> list[Any]:
        """The items of the result task t expands over; TypeError when it
        has none (a string, a mapping)."""
        return items_of(self.names[t], codec.decode(blob))

    def not_kept(self, i: int) -> NotKept:
        return NotKept(self.names[i])

    def unreadable(self, i: int, outcome: list, error: Exception) -> BaseException:
        failure = SerializationError(
            # the worker names the type of every pickled result
            self.names[i],
            "result",
            outcome[OUT_TYPE] if len(outcome) > OUT_TYPE else None,
            str(error),
            "deserialised in the coordinator",
        )
        failure.__cause__ = error
        return failure

    def error(self, i: int, failure: list) -> BaseException:
        name = self.names[i]
        blob, type_name, message, text, stage = failure
        if stage == Stage.TIMEOUT:
            return TaskTimeoutError(name, self.limits.timeout[i])
        error = codec.decode_exception(blob, type_name, message, text)
        if stage == Stage.RUN or isinstance(error, StaleCodeError):
            return error
        if stage == Stage.ARGS:
            # the worker could not decode the argument it names: the error's
            # type says nothing of the value's (its message names the class)
            wrapped = SerializationError(name, type_name, None, message, "deserialised in the worker")
        else:
            what = {Stage.FUNCTION: "function", Stage.RESULT: "result"}[stage]
            action = "deserialised in the worker" if stage == Stage.FUNCTION else "serialised"
            # (for a function the worker could not load, type_name is the error's)
            of_type = None if stage == Stage.FUNCTION else type_name
            wrapped = SerializationError(name, what, of_type, message, action)
        wrapped.__cause__ = error
        wrapped.remote_traceback = text  # type: ignore[attr-defined]
        return wrapped
