"""The heap is frozen during a run (taskmap.heap): the objects alive at the
start are out of the collector's way, and handed back at the end."""

import gc
import threading
import weakref

import pytest

import taskmap
from taskmap import Observer

RUNNERS = {
    "run": taskmap.run,
    "run_async": taskmap.run_async,
    "run_parallel_async": lambda g, **kw: taskmap.run_parallel_async(g, ncores=1, **kw),
}


class SeesTheFreeze(Observer):
    def __init__(self):
        self.counts = []

    def run_started(self, graph, info):
        self.counts.append(gc.get_freeze_count())

    def task_finished(self, event):
        self.counts.append(gc.get_freeze_count())


def one():
    return 1


def graph(n=3):
    return taskmap.create_graph({f"t{i}": one for i in range(n)}, {f"t{i}": [] for i in range(n)})


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_run_freezes_the_heap_and_hands_it_back(runner):
    assert gc.get_freeze_count() == 0
    seen = SeesTheFreeze()
    RUNNERS[runner](graph(), observers=[seen])
    assert len(seen.counts) == 4 and all(c > 0 for c in seen.counts), seen.counts
    assert gc.get_freeze_count() == 0


def test_a_cycle_dropped_during_a_run_is_collected_after_it():
    class Node:
        pass

    node = Node()
    node.me = node  # a reference cycle: only the collector frees it
    gone = weakref.ref(node)
    holder = [node]
    del node

    class Drops(Observer):
        def run_started(self, graph, info):
            holder.clear()  # garbage now, but frozen: not collected during the run
            gc.collect()
            assert gone() is not None

    taskmap.run(graph(), observers=[Drops()])
    gc.collect()
    assert gone() is None


def test_runs_at_once_share_one_freeze_until_the_last_ends():
    begun, release = threading.Event(), threading.Event()

    async def waits():
        import asyncio

        begun.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        return 1

    slow = taskmap.start(taskmap.create_graph({"w": waits}, {"w": []}, io_bound=["w"]), runner="run_async")
    try:
        assert begun.wait(30)
        taskmap.run(graph())  # starts and ends inside the other run
        assert gc.get_freeze_count() > 0  # (the first run still runs)
    finally:
        release.set()
        slow.wait(30)
    assert gc.get_freeze_count() == 0


def test_a_process_that_froze_its_heap_itself_is_left_as_it_was():
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        taskmap.run(graph())
        # still frozen, and nothing more (reference counting may have freed some)
        assert 0 < gc.get_freeze_count() <= count
    finally:
        gc.unfreeze()


def test_a_process_with_the_collector_off_is_left_as_it_was():
    gc.disable()
    try:
        seen = SeesTheFreeze()
        taskmap.run(graph(), observers=[seen])
        assert seen.counts and not any(seen.counts) and not gc.isenabled()
    finally:
        gc.enable()
