"""taskmap: run a dependency graph of functions and coroutines on one machine.

io-bound tasks overlap their waits on asyncio loops, cpu-bound tasks keep every
core busy, and nothing polls.  A drop-in replacement for the original
``taskmap`` package.  See README.md for the tour and DESIGN for the contract.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

# Every public name is imported when first used.  Each worker process imports
# this package (its code lives in taskmap.runtime.worker), and would otherwise pay for
# the graph model, the runners, the checkpoint store and the Dask runner at
# every start: ~50 ms of a fresh pool's start on the development machine.
_LAZY = {
    "CheckpointError": "errors",
    "RemoteTaskError": "errors",
    "RemoteTraceback": "errors",
    "RunCancelled": "errors",
    "SerializationError": "errors",
    "StaleCodeError": "errors",
    "TaskFailedError": "errors",
    "TaskmapError": "errors",
    "TaskTimeoutError": "errors",
    "WorkerCrashedError": "errors",
    "Element": "expand",
    "Graph": "graph",
    "create_graph": "graph",
    "get_all_children": "graph",
    "get_ready_tasks": "graph",
    "mark_as_done": "graph",
    "mark_as_done_except": "graph",
    "reset_failed_tasks": "graph",
    "reset_tasks": "graph",
    "in_progress": "observe.logs",
    "Observer": "observe.observers",
    "RunInfo": "observe.observers",
    "TaskEvent": "observe.observers",
    "RunRecord": "observe.record",
    "TaskRecord": "observe.record",
    "NotKept": "results",
    "run": "runners",
    "run_async": "runners",
    "run_parallel": "runners",
    "run_parallel_async": "runners",
    "TaskState": "scheduling.state",
    "Run": "handle",
    "start": "handle",
    "open_checkpoint": "checkpoint",
    "run_dask": "dask.runner",
    "to_dot": "observe.export",
    "to_mermaid": "observe.export",
    "LoadReport": "loadmode.report",
    "LoadRun": "loadmode.runner",
    "load": "loadmode.runner",
    "start_load": "loadmode.runner",
    "Summary": "observe.summary",
    "summarize": "observe.summary",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from taskmap.checkpoint import open_checkpoint
    from taskmap.dask.runner import run_dask
    from taskmap.errors import (
        CheckpointError,
        RemoteTaskError,
        RemoteTraceback,
        RunCancelled,
        SerializationError,
        StaleCodeError,
        TaskFailedError,
        TaskmapError,
        TaskTimeoutError,
        WorkerCrashedError,
    )
    from taskmap.expand import Element
    from taskmap.graph import (
        Graph,
        create_graph,
        get_all_children,
        get_ready_tasks,
        mark_as_done,
        mark_as_done_except,
        reset_failed_tasks,
        reset_tasks,
    )
    from taskmap.handle import Run, start
    from taskmap.loadmode.report import LoadReport
    from taskmap.loadmode.runner import LoadRun, load, start_load
    from taskmap.observe.export import to_dot, to_mermaid
    from taskmap.observe.logs import in_progress
    from taskmap.observe.observers import Observer, RunInfo, TaskEvent
    from taskmap.observe.record import RunRecord, TaskRecord
    from taskmap.observe.summary import Summary, summarize
    from taskmap.results import NotKept
    from taskmap.runners import run, run_async, run_parallel, run_parallel_async
    from taskmap.scheduling.state import TaskState


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'taskmap' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CheckpointError",
    "Element",
    "Graph",
    "LoadReport",
    "LoadRun",
    "NotKept",
    "Observer",
    "RemoteTaskError",
    "RemoteTraceback",
    "Run",
    "RunCancelled",
    "RunInfo",
    "RunRecord",
    "SerializationError",
    "StaleCodeError",
    "Summary",
    "TaskEvent",
    "TaskFailedError",
    "TaskRecord",
    "TaskState",
    "TaskTimeoutError",
    "TaskmapError",
    "WorkerCrashedError",
    "create_graph",
    "get_all_children",
    "get_ready_tasks",
    "in_progress",
    "load",
    "mark_as_done",
    "mark_as_done_except",
    "open_checkpoint",
    "reset_failed_tasks",
    "reset_tasks",
    "run",
    "run_async",
    "run_dask",
    "run_parallel",
    "run_parallel_async",
    "start",
    "start_load",
    "summarize",
    "to_dot",
    "to_mermaid",
]
