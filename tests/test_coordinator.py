"""The coordinator's pure helpers (the runs themselves: test_parallel.py,
test_faults.py, test_fault_matrix.py)."""

from __future__ import annotations

from taskmap.scheduling.ledger import finished_before_crash


def test_tasks_before_the_running_one_had_finished():
    assert finished_before_crash([1, 2, 3, 4], marker=3, last_finished=2) == {1, 2}
    assert finished_before_crash([1, 2, 3], marker=1, last_finished=7) == set()


def test_with_nothing_running_tasks_up_to_the_last_finished():
    assert finished_before_crash([1, 2, 3], marker=-1, last_finished=2) == {1, 2}
    # (the last finished was reported already: none of these ran)
    assert finished_before_crash([1, 2, 3], marker=-1, last_finished=9) == set()


def test_a_task_sent_first_ran_only_if_the_slot_proves_it():
    # the worker held [r=1, q=3] when task 2 (with 5 pinned behind it) was
    # sent to run before q: expected order [1, 2, 5, 3]
    order, first = [1, 2, 5, 3], [[2, 5]]
    # q running, and 2's chain finished last: it ran before q
    assert finished_before_crash(order, marker=3, last_finished=5, sent_first=first) == {1, 2, 5}
    # q running, r finished last: q had started before 2 arrived, 2 never ran
    assert finished_before_crash(order, marker=3, last_finished=1, sent_first=first) == {1}
    # 5 running: 2 ran
    assert finished_before_crash(order, marker=5, last_finished=2, sent_first=first) == {1, 2}
    # 2 running: r ran, q had not started
    assert finished_before_crash(order, marker=2, last_finished=1, sent_first=first) == {1}
    # nothing running, q finished last: whether 2 ran is unknown; counted as
    # not started (it reruns with its attempt refunded, never fails as lost)
    assert finished_before_crash(order, marker=-1, last_finished=3, sent_first=first) == {1, 3}
