"""Unit tests of the expanding scheduling state (create_graph(expand=...)):
event sequences in, queues and news out, no runner and no process."""

from __future__ import annotations

import pytest

from taskmap.expand import Element
from taskmap.scheduling.expansion import ExpandingState
from taskmap.scheduling.state import FINISHED, IllegalTransition, TaskState

ETL = {
    "list_files": [],
    "config": [],
    "parse": ["list_files", "config"],
    "clean": ["parse"],
    "total": ["clean"],
}
OVER = {"parse": "list_files", "clean": "parse"}


def make(deps=ETL, expand=OVER, done=(), done_elements=None, io_bound=()) -> ExpandingState:
    return ExpandingState(deps, io_bound, done, None, None, expand, done_elements)


def check(s: ExpandingState) -> None:
    """The invariants the ledger's check asks of a state between events."""
    for i in range(len(s.names)):
        assert s.remaining[i] == s.expected_remaining(i), (s.names[i], s.remaining[i], s.expected_remaining(i))
    assert s.unfinished == sum(1 for x in s.state if x not in FINISHED)
    assert not s.to_expand


def step(s: ExpandingState, name, ok=True) -> list:
    """Start and finish the ready task ``name``; returns what failing skipped."""
    i = s.index[name]
    s.started(i)
    if ok:
        s.finished(i)
        return []
    return [s.names[k] for k in s.failed(i)]


def ready(s: ExpandingState) -> list:
    return sorted((str(s.names[i]) for i in range(len(s.state)) if s.state[i] == TaskState.READY), key=str)


def test_a_collector_waits_for_its_count_then_runs_as_elements():
    s = make()
    s.start()
    assert ready(s) == ["config", "list_files"]
    step(s, "config")
    step(s, "list_files")
    parse = s.index["parse"]
    assert s.to_expand == [parse]  # the runner's turn: count the items
    s.expand(parse, 3)
    check(s)
    assert ready(s) == ["parse[0]", "parse[1]", "parse[2]"]
    assert s.state[parse] == TaskState.EXPANDED
    # clean expanded with parse's count at once, its elements each behind one of parse's
    clean = s.index["clean"]
    assert s.state[clean] == TaskState.EXPANDED
    assert [s.names[p] for p in s.parents[s.index[Element("clean", 1)]]] == [Element("parse", 1)]
    # parse's elements take config as their argument, the item in list_files' place
    assert [s.names[p] for p in s.parents[s.index[Element("parse", 0)]]] == ["config"]
    assert s.item_pos[parse] == 0
    news = s.take_news()
    assert [(s.names[t], n) for t, _, n in news.expanded] == [("parse", 3), ("clean", 3)]
    assert not news.collected


def test_element_wise_chaining_has_no_barrier():
    s = make()
    s.start()
    step(s, "config")
    step(s, "list_files")
    s.expand(s.index["parse"], 3)
    step(s, Element("parse", 0))
    check(s)
    # clean[0] is ready while parse[1] and parse[2] have not run
    assert "clean[0]" in ready(s) and "parse[2]" in ready(s)
    step(s, Element("clean", 0))
    assert s.state[s.index["total"]] == TaskState.WAITING
    for k in (1, 2):
        step(s, Element("parse", k))
        step(s, Element("clean", k))
        check(s)
    news = s.take_news()
    assert [s.names[t] for t in news.collected] == ["parse", "clean"]
    assert ready(s) == ["total"]  # takes clean's list: after all of clean
    step(s, "total")
    assert s.all_finished
    check(s)


def test_a_failed_element_skips_its_chain_and_the_list_takers_only():
    s = make()
    s.start()
    step(s, "config")
    step(s, "list_files")
    s.expand(s.index["parse"], 4)
    step(s, Element("parse", 0))
    skipped = step(s, Element("parse", 2), ok=False)
    check(s)
    assert sorted(map(str, skipped)) == ["clean[2]", "total"]
    # the others still run
    for k in (1, 3):
        step(s, Element("parse", k))
    for k in (0, 1, 3):
        step(s, Element("clean", k))
    check(s)
    assert s.all_finished
    assert s.state[s.index["parse"]] == TaskState.FAILED
    assert s.state[s.index["clean"]] == TaskState.FAILED  # one of its elements was skipped
    assert s.cause[s.index[Element("clean", 2)]] == s.index[Element("parse", 2)]


def test_empty_gives_zero_elements_and_completes_at_once():
    s = make()
    s.start()
    step(s, "config")
    step(s, "list_files")
    s.expand(s.index["parse"], 0)
    check(s)
    news = s.take_news()
    assert [s.names[t] for t in news.collected] == ["parse", "clean"]
    assert ready(s) == ["total"]


def test_a_failed_expansion_skips_the_whole_tasks_below():
    s = make()
    s.start()
    step(s, "config")
    step(s, "list_files")
    skipped = s.fail_expansion(s.index["parse"])
    assert sorted(s.names[i] for i in skipped) == ["clean", "total"]
    assert s.all_finished
    check(s)
    with pytest.raises(IllegalTransition):
        s.expand(s.index["parse"], 2)


def test_a_failed_mapped_dependency_skips_the_expanded_tasks_whole():
    s = make()
    s.start()
    skipped = step(s, "list_files", ok=False)
    assert sorted(map(str, skipped)) == ["clean", "parse", "total"]
    step(s, "config")
    assert s.all_finished and not s.take_news().expanded


def test_done_elements_of_an_earlier_run_are_kept():
    s = make(done=["list_files", "config"], done_elements={"parse": b"\x01\x00\x01", "clean": b"\x01\x00\x00"})
    s.start()
    parse = s.index["parse"]
    s.expand(parse, 3)
    check(s)
    # parse[1] reruns; clean[0] is kept, clean[2] runs at once (parse[2] is done)
    assert ready(s) == ["clean[2]", "parse[1]"]
    assert s.remaining[parse] == 1


def test_an_element_record_of_another_count_is_void():
    s = make(done=["list_files", "config"], done_elements={"parse": b"\x01\x01"})
    s.start()
    s.expand(s.index["parse"], 3)
    assert ready(s) == ["parse[0]", "parse[1]", "parse[2]"]


def test_a_late_expansion_below_a_failed_element_skips_it_for_that_element():
    # clean also needs 'late', which finishes after parse[1] failed
    deps = {**ETL, "late": [], "clean": ["parse", "late"]}
    s = make(deps)
    s.start()
    step(s, "config")
    step(s, "list_files")
    s.expand(s.index["parse"], 2)
    assert s.state[s.index["clean"]] == TaskState.WAITING  # waits for late
    step(s, Element("parse", 1), ok=False)
    step(s, "late")
    check(s)
    news = s.take_news()
    assert [(str(s.names[e]), str(s.names[r])) for e, r in news.skipped] == [
        ("clean[1]", "parse[1]"),
        ("total", "parse[1]"),
    ]
    assert ready(s) == ["parse[0]"]


def test_elements_inherit_lane_and_priority_and_retry_like_tasks():
    s = make(io_bound=["parse"])
    s.start()
    step(s, "config")
    step(s, "list_files")
    s.expand(s.index["parse"], 2)
    e = s.index[Element("parse", 1)]
    assert s.is_io[e] and s.priority[e] == s.priority[s.index["parse"]]
    assert s.pop_io() is not None
    s.started(e)
    s.requeue(e)  # a retry
    check(s)
    assert s.state[e] == TaskState.READY


def test_a_static_graph_state_is_not_an_expanding_one():
    from taskmap.scheduling.state import SchedulingState

    assert not SchedulingState({"a": []}).expanding
    assert make().expanding
