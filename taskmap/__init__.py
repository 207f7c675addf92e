"""taskmap: run a dependency graph of functions and coroutines on one machine.

io-bound tasks overlap their waits on asyncio loops, cpu-bound tasks keep every
core busy, and nothing polls.  A drop-in replacement for the original
``taskmap`` package.  See README.md for the tour and DESIGN for the contract.
"""

from .checkpoint import open_checkpoint
from .dask_runner import run_dask
from .errors import (
    CheckpointError,
    RemoteTaskError,
    RemoteTraceback,
    SerializationError,
    TaskFailedError,
    TaskmapError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from .export import to_dot, to_mermaid
from .graph import (
    Graph,
    create_graph,
    get_all_children,
    get_ready_tasks,
    mark_as_done,
    mark_as_done_except,
    reset_failed_tasks,
    reset_tasks,
)
from .logs import in_progress
from .observers import Observer, RunInfo, TaskEvent
from .record import RunRecord, TaskRecord
from .results import NotKept
from .runners import run, run_async, run_parallel, run_parallel_async
from .state import TaskState
from .summary import Summary, summarize

__version__ = "0.1.0.dev0"

__all__ = [
    "CheckpointError",
    "Graph",
    "NotKept",
    "Observer",
    "RemoteTaskError",
    "RemoteTraceback",
    "RunInfo",
    "RunRecord",
    "SerializationError",
    "Summary",
    "TaskFailedError",
    "TaskRecord",
    "TaskState",
    "TaskEvent",
    "TaskTimeoutError",
    "TaskmapError",
    "WorkerCrashedError",
    "create_graph",
    "get_all_children",
    "get_ready_tasks",
    "in_progress",
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
    "summarize",
    "to_dot",
    "to_mermaid",
]
