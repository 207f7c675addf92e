"""Restore: deciding what stays.  What a restore did (:class:`RestoreReport`),
and the plan it follows: which stored results are kept, which tasks rerun,
which rows are deleted (see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from taskmap.checkpoint.schema import NOT_STORED, row_checksum
from taskmap.expand import Element, items_of
from taskmap.observe.status import DONE, FAILED, NOT_RUN, SKIPPED
from taskmap.scheduling.state import topological_order

if TYPE_CHECKING:
    from taskmap.checkpoint.fingerprints import TaskFingerprints


class RestoreReport:
    """What :meth:`CheckpointStore.restore` did to a graph.

    ``restored``: tasks done by the store's word: their stored result was
    put into the graph (or was there already, from a run in this process);
    ``rerun``: tasks taken out of ``graph.done`` (or never in it) because they
    or an ancestor failed, changed or were damaged, and whose rows were
    deleted; ``damaged``: task -> why its row could not be used (a subset of
    ``rerun``).
    """

    __slots__ = ("damaged", "rerun", "restored")

    def __init__(self) -> None:
        self.restored: list = []
        self.rerun: list = []
        self.damaged: dict = {}

    def __repr__(self) -> str:
        return (
            f"RestoreReport(restored={len(self.restored)} tasks, rerun={len(self.rerun)} tasks, "
            f"damaged={self.damaged!r})"
        )


class _Plan(NamedTuple):
    report: RestoreReport
    values: list  # (task, decoded value), parents first
    delete: list  # keys of rows to delete
    # (expanded task, its list with the stored elements' results, a flag per element)
    elements: list


def plan_restore(graph: Any, rows: list, fingerprints: TaskFingerprints) -> _Plan:
    from taskmap.runtime import codec

    if not rows:  # a new store: nothing to restore, nothing to take back
        return _Plan(RestoreReport(), [], [], [])
    deps = graph.dependencies
    done, results = graph.done, graph.results
    by_task: dict = {}
    by_element: dict = {}
    for row in rows:
        try:
            task = codec.decode(row[0])
            if task in deps:
                by_task[task] = row
            elif type(task) is Element and task.task in graph.expand:
                by_element[task] = row
        except (codec.DecodeError, TypeError):
            continue  # a damaged or unhashable key: no task to give it to
    report = RestoreReport()
    values: list = []
    delete: list = []
    kept: set = set()
    rerun: set = set()
    for task in topological(deps):
        parents = deps[task]
        row = by_task.get(task)
        if row is None:
            if any(p in rerun for p in parents):
                rerun.add(task)
            elif task in done:
                kept.add(task)  # given by the caller, or finished before the store knew
            continue
        key, stored_fp, status, payload, checksum = row
        ok = all(p in kept for p in parents) and bytes(stored_fp) == fingerprints.entry(task)[1]
        if ok and row_checksum(key, stored_fp, status, payload) != checksum:
            ok = False
            report.damaged[task] = "checksum mismatch"
        if ok and status == DONE and payload is not None:
            if task in done and task in results:
                kept.add(task)  # already here from a run in this process
                report.restored.append(task)
                continue
            try:
                value = codec.decode(payload)
            except codec.DecodeError as exc:
                report.damaged[task] = f"its value does not decode: {exc}"
            else:
                kept.add(task)
                values.append((task, value))
                report.restored.append(task)
                continue
        elif ok and status == NOT_STORED and task in done and task in results:
            kept.add(task)  # the codec refused it, but this process still has it
            continue
        rerun.add(task)
        delete.append(key)
    # tasks without rows below a rerun task were added to ``rerun`` above;
    # report them all, in graph order
    report.rerun = [t for t in deps if t in rerun]
    elements = _plan_elements(graph, by_element, fingerprints, kept, dict(values)) if by_element else []
    return _Plan(report, values, delete, elements)


def _plan_elements(graph: Any, rows: dict, fingerprints: TaskFingerprints, kept: set, restored: dict) -> list:
    """The stored elements of expanded tasks that are not done whole, kept
    when everything their task depends on is kept, their row is sound and
    their function unchanged, and (along a chain of expansion) the element
    they pair with is kept: a resumed run reruns only the others."""
    from taskmap.runtime import codec

    deps, expand, results = graph.dependencies, graph.expand, graph.results
    count: dict = {}  # expanded task -> its number of elements, where known
    flags_of: dict = {}
    out = []
    for task in topological(deps):
        mapped = expand.get(task)
        if mapped is None or task in kept:
            continue
        if not all(p in kept for p in deps[task] if p != mapped):
            continue
        if mapped in kept:
            try:
                n = len(items_of(task, restored[mapped] if mapped in restored else results.get(mapped)))
            except TypeError:
                continue
            above = None
        elif mapped in count:
            n, above = count[mapped], flags_of[mapped]
        else:
            continue
        values: list = [None] * n
        flags = bytearray(n)
        for k in range(n):
            row = rows.get(Element(task, k))
            if row is None or (above is not None and not above[k]):
                continue
            key, stored_fp, status, payload, checksum = row
            if status != DONE or payload is None or bytes(stored_fp) != fingerprints.entry(Element(task, k))[1]:
                continue
            if row_checksum(key, stored_fp, status, payload) != checksum:
                continue
            try:
                values[k] = codec.decode(payload)
            except codec.DecodeError:
                continue
            flags[k] = 1
        count[task], flags_of[task] = n, flags
        out.append((task, values, flags))
    return out


def plan_statuses(graph: Any, rows: list, fingerprints: TaskFingerprints) -> dict:
    """What ``rows`` (key, fingerprint, status) say of each task of
    ``graph``, as :meth:`CheckpointStore.statuses` documents: ``done`` (a
    stored result a run would keep), ``failed``, ``skipped`` (below a
    failure) or ``not run`` (no row, or one a run would not keep)."""
    stored = {bytes(key): (bytes(fp), status) for key, fp, status in rows}
    deps = graph.dependencies
    out: dict = {}
    for task in topological(deps):
        parents = [out[p] for p in deps[task]]
        key, fingerprint = fingerprints.entry(task)
        row = stored.get(key)
        if any(p in (FAILED, SKIPPED) for p in parents):
            out[task] = SKIPPED
        elif row is None or row[0] != fingerprint or any(p != DONE for p in parents):
            out[task] = NOT_RUN
        else:
            out[task] = FAILED if row[1] == FAILED else DONE if row[1] == DONE else NOT_RUN
    return out


def topological(deps: Mapping) -> list:
    """Tasks ordered so each comes after its dependencies."""
    names = list(deps)
    index = {task: i for i, task in enumerate(names)}
    parents = [[index[p] for p in deps[task]] for task in names]
    children: list[list[int]] = [[] for _ in names]
    for i, ps in enumerate(parents):
        for p in ps:
            children[p].append(i)
    return [names[i] for i in topological_order(parents, children)]
