"""The observer hooks: every runner reports the same events, in order."""

import os
import time

import pytest
from _tasks import boom

import taskmap
from taskmap import Observer

RUNNERS = {
    "run": lambda g, **kw: taskmap.run(g, **kw),
    "run_async": lambda g, **kw: taskmap.run_async(g, **kw),
    "run_parallel": lambda g, **kw: taskmap.run_parallel(g, ncores=2, **kw),
    "run_parallel_async": lambda g, **kw: taskmap.run_parallel_async(g, ncores=2, **kw),
}


class Recorder(Observer):
    def __init__(self):
        self.calls = []
        self.events = {}
        self.started = {}

    def run_started(self, graph, info):
        self.calls.append(("run_started", info))

    def task_started(self, name, worker, lane, when):
        self.calls.append(("task_started", name))
        self.started[name] = (worker, lane, when)

    def task_finished(self, event):
        self.calls.append(("task_finished", event.name))
        assert event.name not in self.events, "a task reported twice"
        self.events[event.name] = event

    def run_finished(self, graph, error):
        self.calls.append(("run_finished", error))


def ok(*args):
    return sum(args) + 1


def build():
    funcs = {"a": ok, "b": ok, "c": boom, "d": ok, "e": ok}
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["c"], "e": ["b"]}
    return taskmap.create_graph(funcs, deps, io_bound=["b"])


@pytest.mark.parametrize("runner", RUNNERS)
def test_every_runner_reports_each_task_once_with_its_outcome(runner):
    rec = Recorder()
    before = time.monotonic()
    graph = RUNNERS[runner](build(), observers=[rec])
    after = time.monotonic()

    kinds = [c[0] for c in rec.calls]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    info = rec.calls[0][1]
    assert info.runner == runner and sorted(info.tasks) == list("abcde")
    assert info.coordinator_pid == os.getpid()
    assert rec.calls[-1][1] is None

    ev = rec.events
    assert sorted(ev) == list("abcde")
    assert {n: e.status for n, e in ev.items()} == {
        "a": "done",
        "b": "done",
        "c": "failed",
        "d": "skipped",
        "e": "done",
    }
    assert ev["b"].lane == "io" and ev["a"].lane == "cpu"
    assert ev["e"].value == 3 and graph.results["e"] == 3
    assert isinstance(ev["c"].value, ValueError)
    assert ev["d"].failed_ancestor == "c" and ev["d"].start is None
    assert set(rec.started) == set("abce")  # a skipped task never starts
    for name in "abce":
        e = ev[name]
        assert before <= e.start <= e.end <= after, (name, e)
        assert e.attempts == 1
        worker, lane, when = rec.started[name]
        assert worker == e.worker and lane == e.lane and before <= when <= after
    # a child starts after its parent ended
    assert ev["b"].start >= ev["a"].end and ev["e"].start >= ev["b"].end
    if runner.startswith("run_parallel"):
        assert ev["a"].worker != os.getpid()
        assert ev["a"].payload is not None
    else:
        assert ev["a"].worker == os.getpid()
    # task_finished of a parent precedes task_started of its child
    order = rec.calls.index
    assert order(("task_finished", "a")) < order(("task_started", "b"))


@pytest.mark.parametrize("runner", RUNNERS)
def test_run_finished_hears_the_error_that_stops_the_run(runner):
    rec = Recorder()
    with pytest.raises(taskmap.TaskFailedError):
        RUNNERS[runner](build(), observers=[rec], raise_errors=True)
    last = rec.calls[-1]
    assert last[0] == "run_finished" and isinstance(last[1], taskmap.TaskFailedError)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_run_with_nothing_left_to_run_is_still_a_run(runner):
    graph = RUNNERS[runner](build())
    first = graph.last_run
    rec = Recorder()
    RUNNERS[runner](graph, observers=[rec])
    assert [c[0] for c in rec.calls] == ["run_started", "run_finished"]
    assert rec.calls[0][1].tasks == []
    assert graph.last_run is not first and graph.last_run.ended is not None
    assert graph.last_run.done_before == len(graph.dependencies)


def test_retried_task_reports_only_its_final_outcome_with_attempts(tmp_path):
    marker = tmp_path / "tries"

    def flaky():
        n = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(n + 1))
        if n < 2:
            raise OSError("flaky")
        return n

    rec = Recorder()
    graph = taskmap.create_graph({"f": flaky}, {"f": []})
    taskmap.run_parallel_async(graph, ncores=1, retries=3, observers=[rec])
    assert graph.results["f"] == 2
    assert rec.events["f"].status == "done" and rec.events["f"].attempts == 3
    assert [c for c in rec.calls if c[0] == "task_started"] == [("task_started", "f")] * 3


def test_an_observer_that_raises_stops_the_run():
    class Broken(Observer):
        def task_finished(self, event):
            raise RuntimeError("observer bug")

    rec = Recorder()
    with pytest.raises(RuntimeError, match="observer bug"):
        taskmap.run(build(), observers=[Broken(), rec])
    assert rec.calls[-1][0] == "run_finished"  # every observer still hears the end


# -- batches: an observer that takes starts and outcomes whole ----------------


class BatchRecorder(Observer):
    """Keeps the batches themselves and reads them only after the run, in
    another thread: what the live page does."""

    def __init__(self):
        self.started_batches = []
        self.finished_batches = []

    def tasks_started(self, batch):
        self.started_batches.append(batch)

    def tasks_finished(self, batch):
        self.finished_batches.append(batch)


def wide():
    # 200 independent tasks, then one child of all: results arrive batched
    funcs = {f"t{i}": ok for i in range(200)}
    deps = {f"t{i}": [] for i in range(200)}
    funcs["last"] = ok
    deps["last"] = [f"t{i}" for i in range(0, 200, 20)]
    funcs["bad"] = boom
    deps["bad"] = []
    funcs["after_bad"] = ok
    deps["after_bad"] = ["bad"]
    return taskmap.create_graph(funcs, deps)


@pytest.mark.parametrize("runner", RUNNERS)
def test_batch_hooks_hear_every_start_and_outcome_once_read_later_elsewhere(runner):
    batches, single = BatchRecorder(), Recorder()
    graph = RUNNERS[runner](wide(), observers=[batches, single])
    got = {}

    def read():  # after the run, in another thread
        got["started"] = [item for b in batches.started_batches for item in b]
        got["finished"] = [event for b in batches.finished_batches for event in b]

    import threading

    t = threading.Thread(target=read)
    t.start()
    t.join()
    finished = {e.name: e for e in got["finished"]}
    assert len(finished) == len(got["finished"]) == len(graph.dependencies)
    # the same events as the observer that takes them one by one
    assert finished == single.events
    assert {n: e.value for n, e in finished.items() if e.status == "done"} == {
        n: v for n, v in graph.results.items() if n not in ("bad", "after_bad")
    }
    assert finished["after_bad"].status == "skipped" and finished["bad"].status == "failed"
    started = {name: (worker, lane, when) for name, worker, lane, when in got["started"]}
    assert len(started) == len(got["started"]) == len(graph.dependencies) - 1  # (a skipped task never starts)
    assert started == single.started
    # every item also by index and slice, as a Sequence
    for b in batches.finished_batches + batches.started_batches:
        assert list(b) == [b[k] for k in range(len(b))] == list(b[:])
    if runner.startswith("run_parallel"):
        # outcomes that arrived together came as one batch: fewer batches than tasks
        assert len(batches.finished_batches) < len(graph.dependencies) / 2, len(batches.finished_batches)
        assert len(batches.started_batches) < len(graph.dependencies) / 2, len(batches.started_batches)


def test_a_run_calls_only_the_hooks_an_observer_overrides():
    class OnlyOutcomes(Observer):
        def task_finished(self, event):
            pass

    class OnlyBatches(Observer):
        def tasks_started(self, batch):
            pass

    observers = taskmap.observe.observers.Observers([Observer(), OnlyOutcomes(), OnlyBatches()])
    assert len(observers.started) == 1 and len(observers.finished) == 1
    assert len(observers.started_batch) == 1 and len(observers.finished_batch) == 1
    assert not taskmap.observe.observers.Observers([Observer()]).finished


class OrderByBatch(Observer):
    def __init__(self):
        self.calls = []

    def tasks_started(self, batch):
        self.calls.extend(("start", name) for name, *_ in batch)

    def tasks_finished(self, batch):
        self.calls.extend(("end", e.name) for e in batch)


class OrderByTask(Observer):
    def __init__(self):
        self.calls = []

    def task_started(self, name, worker, lane, when):
        self.calls.append(("start", name))

    def task_finished(self, event):
        self.calls.append(("end", event.name))


@pytest.mark.parametrize("runner", ["run_parallel", "run_parallel_async"])
@pytest.mark.parametrize("kind", [OrderByTask, OrderByBatch], ids=["per_task", "batches"])
def test_a_task_is_told_started_before_its_outcome_and_after_its_parents(runner, kind):
    # a chain: each child is sent pinned behind its parent and starts when the
    # parent's result arrives, often in the same message as its own result
    observer = kind()
    funcs = {f"c{i}": ok for i in range(30)}
    deps = {f"c{i}": ([f"c{i - 1}"] if i else []) for i in range(30)}
    RUNNERS[runner](taskmap.create_graph(funcs, deps), observers=[observer])
    calls = observer.calls
    assert len(calls) == 60
    for i in range(30):
        assert calls.index(("start", f"c{i}")) < calls.index(("end", f"c{i}")), calls
    if kind is OrderByTask:  # (told per task: the exact order, parents first)
        for i in range(1, 30):
            assert calls.index(("end", f"c{i - 1}")) < calls.index(("start", f"c{i}")), calls


def test_an_observer_hearing_starts_and_outcomes_per_task_asks_for_the_exact_order():
    Observers = taskmap.observe.observers.Observers
    assert not Observers([OrderByBatch()]).exact_order
    assert Observers([OrderByBatch(), OrderByTask()]).exact_order
    assert not Observers([Recorder.__base__()]).exact_order

    class OnlyEnds(Observer):
        def task_finished(self, event):
            pass

    assert not Observers([OnlyEnds(), OrderByBatch()]).exact_order


class AnyThreadBatches(BatchRecorder):
    """A batch observer that may be handed batches from any thread (as the
    live page): the in-process runners hold events for it."""

    _batches_from_any_thread = True

    def run_started(self, graph, info):
        self.flush = info.flush


@pytest.mark.parametrize("runner", ["run", "run_async"])
def test_in_process_runs_hold_events_for_any_thread_batch_observers_in_order(runner):
    held = AnyThreadBatches()
    graph = RUNNERS[runner](wide(), observers=[held])
    assert held.flush is not None  # (the observer may ask for what is held)
    from taskmap.observe.observers import HELD_BATCH

    # every start and outcome once, in batches of at most HELD_BATCH ...
    batches = held.started_batches + held.finished_batches
    assert all(len(b) <= HELD_BATCH for b in batches)
    assert len(batches) < len(graph.dependencies) / 2
    started = [name for b in held.started_batches for name, *_ in b]
    finished = [e.name for b in held.finished_batches for e in b]
    assert sorted(started) == sorted(n for n in graph.dependencies if n != "after_bad")
    assert sorted(finished) == sorted(graph.dependencies)
    # ... that are the same events as told one at a time
    single = Recorder()
    RUNNERS[runner](wide(), observers=[single])
    assert {e.name: (e.status, repr(e.value), e.lane) for b in held.finished_batches for e in b} == {
        n: (e.status, repr(e.value), e.lane) for n, e in single.events.items()
    }


def test_held_events_keep_their_order_and_a_flush_from_another_thread_hands_them_over():
    import threading

    from taskmap.observe.observers import HELD_BATCH, Observers, TaskEvent

    observer = AnyThreadBatches()
    calls = []
    observer.tasks_started = lambda batch: calls.append(("start", [item[0] for item in batch]))
    observer.tasks_finished = lambda batch: calls.append(("end", [e.name for e in batch]))
    observers = Observers([observer])
    flush = observers.hold()
    assert flush is not None
    observers.task_started("a", 1, "cpu", 0.0)
    observers.task_finished(TaskEvent("a", "done", "cpu", 0.0, 1.0, 1))
    observers.task_started("b", 1, "cpu", 1.0)
    assert calls == []  # held
    t = threading.Thread(target=flush)  # (what the live page's thread does)
    t.start()
    t.join()
    # the starts, then the outcomes (a task's start before its own outcome)
    assert calls == [("start", ["a", "b"]), ("end", ["a"])]
    # a batch fills up: handed over at once; another event first hands over the held ones
    for k in range(HELD_BATCH):
        observers.task_started(f"s{k}", 1, "cpu", 2.0)
    assert calls[-1] == ("start", [f"s{k}" for k in range(HELD_BATCH)])
    observers.task_finished(TaskEvent("b", "failed", "cpu", 1.0, 2.0, 1))
    observers.tasks_added("x", ["x[0]"])
    assert calls[-1] == ("end", ["b"])
    observers.task_started("c", 1, "cpu", 3.0)
    observers.run_finished(None, None)  # type: ignore[arg-type]
    assert calls[-1] == ("start", ["c"])
    flush()  # (late, from the page: nothing more, and nothing held any more)
    observers.task_started("d", 1, "cpu", 4.0)
    assert calls[-1] == ("start", ["d"])


def test_events_are_told_as_they_come_when_some_observer_cannot_take_them_from_another_thread():
    from taskmap.observe.observers import Observers

    assert Observers([AnyThreadBatches()]).hold() is not None
    assert Observers([AnyThreadBatches(), BatchRecorder()]).hold() is None  # (its hooks: the run's thread only)
    assert Observers([AnyThreadBatches(), OrderByTask()]).hold() is None
    assert Observers([AnyThreadBatches(), Observer()]).hold() is not None  # (hears nothing)
    assert Observers([Observer()]).hold() is None  # (nobody to hold them for)
