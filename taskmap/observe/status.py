"""What state each task of a graph is in after a run, read from the graph.

The graph keeps no per-task state of its own, only ``done`` and
``results``, so the status is derived as the runners write them:

* ``failed``: done, and its result is an exception;
* ``skipped``: done, and its result is the ancestor string
  (``'Ancestor task <task> failed; task not run'``);
* ``failed`` too: an expanded task (``create_graph(expand=...)``) whose list
  holds an element's exception or ancestor string;
* ``done``: done otherwise (also a task given as done when the graph was made);
* ``not run``: not in ``done`` (not reached yet, or the run was stopped).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from taskmap.scheduling.state import ancestor_failed_message

if TYPE_CHECKING:
    from taskmap.graph import Graph

# The one vocabulary of a task's outcome, used by the observers' events, the
# summary, the trace, the exports and the checkpoint store.  (The scheduling
# state's TaskState is another thing: where a task is during a run; its
# final members DONE, FAILED and SKIPPED end as these statuses.)
DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"
NOT_RUN = "not run"
STATUSES = (DONE, FAILED, SKIPPED, NOT_RUN)

_PREFIX, _SUFFIX = ancestor_failed_message("\0").split("\0")


def is_ancestor_message(value: object) -> bool:
    """Whether ``value`` is the result the runners give a skipped task."""
    return isinstance(value, str) and value.startswith(_PREFIX) and value.endswith(_SUFFIX)


def task_status(graph: Graph, task: Hashable) -> str:
    """The status of one task (one of :data:`STATUSES`)."""
    if task not in graph.done:
        return NOT_RUN
    result = graph.results.get(task)
    if isinstance(result, BaseException):
        return FAILED
    if is_ancestor_message(result):
        return SKIPPED
    if type(result) is list and task in graph.expand and any(_unfinished_element(v) for v in result):
        return FAILED  # an expanded task counts as failed when an element failed or was skipped
    return DONE


def _unfinished_element(value: object) -> bool:
    return isinstance(value, BaseException) or is_ancestor_message(value)


def statuses(graph: Graph) -> dict:
    """Every task of the graph -> its status, in graph order."""
    return {task: task_status(graph, task) for task in graph.dependencies}
