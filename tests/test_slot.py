"""The shared slot between the coordinator and a worker (no process needed:
both ends can be the same process)."""

from taskmap.runtime.slot import IO_RING, RunningSlot


def test_a_fresh_slot_names_no_task_and_no_io_task_began():
    slot = RunningSlot()
    try:
        assert slot.value == -1 and slot.last_finished == -1
        assert not slot.io_began(0, sent=1)
        assert not slot.io_began(5, sent=6)
    finally:
        slot.close()


def test_io_flags_say_which_io_tasks_began_in_any_order():
    slot = RunningSlot()
    try:
        flags = slot.io_flags()
        flags[3] = 1  # task 3 began before task 2 (say, a plain function's thread was late)
        assert slot.io_began(3, sent=4)
        assert not slot.io_began(2, sent=4)
        flags[IO_RING - 1] = 1
        assert slot.io_began(IO_RING - 1, sent=IO_RING)
        del flags  # (a view must go before the slot closes)
    finally:
        slot.close()


def test_a_flag_the_ring_may_have_reused_counts_as_began():
    # task n's flag is reused by task n + IO_RING, whose arrival clears it:
    # once that task was sent, task n's flag tells nothing, and a task of
    # unknown state counts as begun: a crash fails the tasks that were running
    # (one of them may have caused it), and requeues only those that surely
    # were not
    slot = RunningSlot()
    try:
        assert not slot.io_began(7, sent=7 + IO_RING)
        assert slot.io_began(7, sent=7 + IO_RING + 1)
    finally:
        slot.close()
