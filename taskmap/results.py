"""Options of a parallel run about its results: which ones come back to the
caller (``gather=``) and from what size they travel through shared memory
(``shm_threshold=``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from taskmap.graph import Graph
from taskmap.runtime import shm

GatherSpec = bool | Collection
ThresholdSpec = int | None | Literal["auto"]


class NotKept:
    """The result of a task a parallel run did not keep (``gather=``).

    Its value went to the task's children, not to the caller; to rerun a
    child later, reset this task too (its value is no longer anywhere).
    """

    __slots__ = ("task",)

    def __init__(self, task) -> None:
        self.task = task

    def __repr__(self) -> str:
        return f"<result of task {self.task!r} not kept (gather=)>"

    def __eq__(self, other) -> bool:
        return type(other) is NotKept and other.task == self.task

    def __hash__(self) -> int:
        return hash((NotKept, self.task))


def resolve_gather(graph: Graph, gather: GatherSpec) -> frozenset | None:
    """The names whose results a run keeps; None: all of them.

    ``True``: every result (the default); ``False``: none; a collection of
    task names: those.  Refused with a checkpoint store, which records
    every result.
    """
    if gather is True:
        return None
    if gather is not False and (isinstance(gather, str) or not isinstance(gather, Collection)):
        raise TypeError(f"gather must be True, False or a collection of task names, not {gather!r}")
    names = frozenset(gather or ())
    unknown = [t for t in names if t not in graph.dependencies]
    if unknown:
        raise ValueError(f"gather names tasks that are not in the graph: {unknown[:10]!r}")
    if graph.checkpoint is not None:
        raise ValueError("a checkpoint store records every result: use gather=True")
    return names


def resolve_threshold(threshold: ThresholdSpec) -> int | None:
    """Bytes from which a buffer travels through shared memory; None: never.

    ``"auto"``: the environment variable ``TASKMAP_SHM_THRESHOLD`` (bytes,
    or ``off``) if set, else 256 KiB; off where ``/dev/shm`` is missing.
    """
    if threshold == "auto":
        return shm.default_threshold()
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"shm_threshold must be a number of bytes >= 1, None or 'auto', not {threshold!r}")
    return threshold if shm.available() else None
