"""The fault matrix: every way a task can fail without its own code raising
plainly, each as its own test through the public API.

Each test checks, for the failing task: the type of its result and a message
naming the task (and the type, where a value is to blame), the cause kept as
``__cause__``; that unrelated tasks finish with their correct results; that
descendants get exactly ``'Ancestor task <t> failed; task not run'``; and that
the run returns normally.  Crashes also check that the pool replaced the dead
worker.  Every run is bounded (:func:`bounded`): a run that hangs is stopped
with SIGINT and reported as a hang instead of eating the suite's timeout; the
suite's conftest checks that no child process survives a test.

"Only in the coordinator / only in a worker" is decided by comparing
``os.getpid()`` with the coordinator's pid, which travels inside the value
itself (a module global would be re-evaluated in the worker that imports this
module to unpickle the value).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading
import time

import pytest
from _tasks import a

import taskmap
from taskmap.runtime.pool import get_pool

psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.timeout(60)

RUNNERS = [taskmap.run_parallel, taskmap.run_parallel_async]


def skipped(task: str) -> str:
    return f"Ancestor task {task} failed; task not run"


# -- harness ----------------------------------------------------------------


class RunHung(Exception):
    pass


@contextlib.contextmanager
def bounded(seconds: float):
    """Interrupt the main thread with SIGINT if the block runs past
    ``seconds`` (a hung run), and fail the test saying so.  The coordinator
    treats the interrupt like Ctrl-C: it kills its workers and re-raises."""
    main = threading.main_thread().ident
    fired = threading.Event()
    done = threading.Event()

    def watchdog():
        if done.wait(seconds):
            return
        fired.set()
        # again and again: a KeyboardInterrupt raised where Python swallows it
        # (a gc callback, a __del__) must not leave the run hanging
        while True:
            signal.pthread_kill(main, signal.SIGINT)
            if done.wait(3):
                return

    t = threading.Thread(target=watchdog, daemon=True)
    t.start()
    try:
        yield
    except KeyboardInterrupt:
        if fired.is_set():
            pytest.fail(f"the run did not finish within {seconds} s (hung)", pytrace=False)
        raise
    finally:
        done.set()
        t.join()


def run(runner, graph, seconds: float = 30, **kwargs):
    with bounded(seconds):
        returned = runner(graph, **kwargs)
    assert returned is graph
    assert sorted(graph.done) == sorted(graph.dependencies), "a task got no result"
    return graph


def check_pool_replaced(dead_pid: int, ncores: int = 2) -> None:
    """The pool holds ``ncores`` live workers and the dead one is not among them."""
    workers = get_pool().workers
    assert len(workers) == ncores
    assert all(w.process.is_alive() for w in workers)
    assert dead_pid not in {w.pid for w in workers}
    assert not psutil.pid_exists(dead_pid) or psutil.Process(dead_pid).status() == psutil.STATUS_ZOMBIE


def check_crash(graph, task: str, *, exitcode: int | None = None, sig: int | None = None) -> taskmap.WorkerCrashedError:
    err = graph.results[task]
    assert isinstance(err, taskmap.WorkerCrashedError), repr(err)[:300]
    assert isinstance(err, taskmap.TaskmapError)
    assert err.task == task and f"'{task}'" in str(err)
    assert isinstance(err.pid, int) and err.pid != os.getpid() and str(err.pid) in str(err)
    if exitcode is not None:
        assert err.exitcode == exitcode and f"exit code {exitcode}" in str(err), str(err)
    if sig is not None:
        name = signal.Signals(sig).name
        assert err.exitcode == -sig and err.signal_name == name and name in str(err), str(err)
    return err


def plus(x, y=0):
    return x + y + 1


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return "spun"


async def io_sleep(seconds, value="slept"):
    await asyncio.sleep(seconds)
    return value


def wait_for_file(path, timeout=20.0, lines=1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
            if text.count("\n") >= lines:
                return text
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{path} did not get {lines} lines")


def write_line(path, text):
    with open(path, "a") as f:
        f.write(f"{text}\n")


# -- bad values at each of the four serialisation steps -----------------------


class WontPickle:
    """Raises while being pickled (in whatever process tries)."""

    def __init__(self, why="no pickling for you"):
        self.why = why

    def __reduce__(self):
        raise ValueError(self.why)


def _rebuild_only_in(pid, what):
    if os.getpid() != pid:
        raise RuntimeError(f"{what} must not be unpickled in pid {os.getpid()}")
    return ("rebuilt", what)


def _rebuild_except_in(pid, what):
    if os.getpid() == pid:
        raise RuntimeError(f"{what} must not be unpickled in the coordinator")
    return ("rebuilt", what)


class OnlyInCoordinator:
    """Unpickles in process ``pid`` only: raises when a worker unpickles it."""

    def __init__(self, pid, what="OnlyInCoordinator"):
        self.pid, self.what = pid, what

    def __reduce__(self):
        return (_rebuild_only_in, (self.pid, self.what))


class NotInCoordinator:
    """Unpickles anywhere but in process ``pid``."""

    def __init__(self, pid, what="NotInCoordinator"):
        self.pid, self.what = pid, what

    def __reduce__(self):
        return (_rebuild_except_in, (self.pid, self.what))


def test_coordinator_cannot_serialise_an_argument():
    # a done task's given result that cannot be encoded, fed to a child
    funcs = {"given": a, "child": lambda x: x, "grandchild": lambda x: x, "other": a, "other2": plus}
    deps = {"given": [], "child": ["given"], "grandchild": ["child"], "other": [], "other2": ["other"]}
    graph = taskmap.create_graph(funcs, deps, done=["given"], results={"given": WontPickle("coordinator refuses")})
    run(taskmap.run_parallel, graph, seconds=5, ncores=2)
    err = graph.results["child"]
    assert isinstance(err, taskmap.SerializationError), repr(err)
    assert err.task == "child"
    assert "'child'" in str(err) and "'given'" in str(err) and "WontPickle" in str(err)
    assert "coordinator refuses" in str(err)
    assert isinstance(err.__cause__, Exception)
    assert graph.results["grandchild"] == skipped("child")
    assert graph.results["other2"] == 6
    assert isinstance(graph.results["given"], WontPickle)  # left as given


@pytest.mark.parametrize("runner", RUNNERS)
def test_worker_cannot_deserialise_an_argument(runner):
    me = os.getpid()
    funcs = {
        "make": lambda: OnlyInCoordinator(me, "the parcel"),
        "use": lambda x: x,
        "after": lambda x: x,
        "other": a,
        "other2": plus,
    }
    deps = {"make": [], "use": ["make"], "after": ["use"], "other": [], "other2": ["other"]}
    # 'use' is io-bound so that it is not run straight behind 'make' on the
    # same worker (a cpu chain is, with the value handed over unpickled)
    graph = run(runner, taskmap.create_graph(funcs, deps, io_bound=["use"]), ncores=2)
    # the value itself reached the coordinator fine ...
    assert graph.results["make"] == ("rebuilt", "the parcel")
    # ... but the worker could not unpickle it as the child's argument
    err = graph.results["use"]
    assert isinstance(err, taskmap.SerializationError), repr(err)
    assert err.task == "use" and "'use'" in str(err)
    # names the argument and the stage, not the decoding error's own type
    assert "argument 1 of task 'use' could not be deserialised in the worker" in str(err), str(err)
    assert "DecodeError" not in str(err).split(":")[0]
    assert "the parcel must not be unpickled" in str(err)
    assert isinstance(err.__cause__, Exception)
    assert "the parcel must not be unpickled" in str(err.__cause__)
    assert "_rebuild_only_in" in err.remote_traceback
    assert graph.results["after"] == skipped("use")
    assert graph.results["other2"] == 6


@pytest.mark.parametrize("runner", RUNNERS)
def test_worker_cannot_serialise_a_result(runner):
    funcs = {"bad": lambda: WontPickle("worker refuses"), "child": lambda x: x, "other": a, "other2": plus}
    deps = {"bad": [], "child": ["bad"], "other": [], "other2": ["other"]}
    graph = run(runner, taskmap.create_graph(funcs, deps), ncores=2)
    err = graph.results["bad"]
    assert isinstance(err, taskmap.SerializationError), repr(err)
    assert err.task == "bad" and "'bad'" in str(err) and "result" in str(err)
    assert "WontPickle" in str(err) and "worker refuses" in str(err)
    assert isinstance(err.__cause__, Exception) and "worker refuses" in str(err.__cause__)
    assert graph.results["child"] == skipped("bad")
    assert graph.results["other2"] == 6


def test_unserialisable_result_error_names_the_value_type_as_type_name():
    graph = run(taskmap.run_parallel, taskmap.create_graph({"bad": lambda: WontPickle()}, {"bad": []}), ncores=1)
    err = graph.results["bad"]
    assert isinstance(err, taskmap.SerializationError)
    assert "WontPickle" in err.type_name, err.type_name


@pytest.mark.parametrize("runner", RUNNERS)
def test_coordinator_cannot_deserialise_a_result_names_the_type(runner):
    me = os.getpid()
    funcs = {"bad": lambda: NotInCoordinator(me, "the result")}
    graph = run(runner, taskmap.create_graph(funcs, {"bad": []}), ncores=1)
    err = graph.results["bad"]
    assert isinstance(err, taskmap.SerializationError)
    assert "NotInCoordinator" in str(err), str(err)


@pytest.mark.parametrize("runner", RUNNERS)
def test_coordinator_cannot_deserialise_a_result(runner):
    me = os.getpid()
    funcs = {
        "bad": lambda: NotInCoordinator(me, "the result"),
        "child": lambda x: x,
        "other": a,
        "other2": plus,
    }
    deps = {"bad": [], "child": ["bad"], "other": [], "other2": ["other"]}
    graph = run(runner, taskmap.create_graph(funcs, deps), ncores=2)
    err = graph.results["bad"]
    assert isinstance(err, taskmap.SerializationError), repr(err)
    assert err.task == "bad" and "'bad'" in str(err) and "result" in str(err)
    assert "could not be deserialised in the coordinator" in str(err), str(err)
    assert "the result must not be unpickled in the coordinator" in str(err)
    cause = err.__cause__
    assert isinstance(cause, Exception)
    # the original error, raised right here, is at the end of the chain
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert type(cause) is RuntimeError and "must not be unpickled" in str(cause)
    assert graph.results["child"] == skipped("bad")
    assert graph.results["other2"] == 6


class NeedsTwo(Exception):
    """``args`` is one string, ``__init__`` wants two: pickle cannot rebuild it."""

    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")


def raise_needs_two():
    raise NeedsTwo(17, "cannot be rebuilt")


@pytest.mark.parametrize("runner", RUNNERS)
def test_exception_that_cannot_be_rebuilt_arrives_as_remote_task_error(runner):
    funcs = {"bad": raise_needs_two, "child": lambda x: x, "other": a, "other2": plus}
    deps = {"bad": [], "child": ["bad"], "other": [], "other2": ["other"]}
    graph = run(runner, taskmap.create_graph(funcs, deps), ncores=2)
    err = graph.results["bad"]
    assert isinstance(err, taskmap.RemoteTaskError), repr(err)
    assert err.type_name.endswith("NeedsTwo") and "NeedsTwo" in str(err)
    assert err.message == "code 17: cannot be rebuilt" and err.message in str(err)
    assert "raise_needs_two" in err.remote_traceback and "NeedsTwo" in err.remote_traceback
    assert isinstance(err.__cause__, taskmap.RemoteTraceback)
    assert graph.results["child"] == skipped("bad")
    assert graph.results["other2"] == 6


# -- worker deaths -------------------------------------------------------------


def _no_core_dump():
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def segfault():
    _no_core_dump()
    ctypes.string_at(0)


def exit3():
    os._exit(3)


def raise_memory_error():
    raise MemoryError("out of memory in the task")


def hit_memory_limit():
    """Cap the worker's address space a little above what it uses, then
    allocate past the cap (restoring the cap so the warm pool is unaffected)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), hard))
    try:
        blob = bytearray(1 << 30)
        return len(blob)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


async def io_with_pid(path, seconds, value):
    write_line(path, f"io {os.getpid()}")
    await asyncio.sleep(seconds)
    return value


def crash_graph(killer, tmp_path):
    """'crash' (cpu) kills its worker; 'other' (cpu) runs on the other worker;
    'io' runs on one of them and notes which in ``tmp_path/io``."""
    io_path = str(tmp_path / "io")
    funcs = {
        "crash": killer,
        "child": lambda x=None: x,
        "grandchild": lambda x=None: x,
        "other": lambda: spin(0.2) and 5,
        "other2": plus,
        "io": lambda: io_with_pid(io_path, 0.3, 9),
        "io2": plus,
    }
    deps = {
        "crash": [],
        "child": ["crash"],
        "grandchild": ["child"],
        "other": [],
        "other2": ["other"],
        "io": [],
        "io2": ["io"],
    }
    return taskmap.create_graph(funcs, deps, io_bound=["io"])


def check_others(graph, crashed_pid=None):
    assert graph.results["child"] == skipped("crash")
    assert graph.results["grandchild"] == skipped("crash")
    assert graph.results["other"] == 5 and graph.results["other2"] == 6
    if isinstance(graph.results["io"], taskmap.WorkerCrashedError):
        # it had started on the worker that died, so it fails with it (one
        # that had not started is requeued: see
        # test_io_task_not_started_on_a_crashed_worker_is_not_failed)
        check_crash(graph, "io")
        assert graph.results["io"].pid == crashed_pid
        assert graph.results["io2"] == skipped("io")
    else:
        assert graph.results["io"] == 9 and graph.results["io2"] == 10
    crashed = {t for t, v in graph.results.items() if isinstance(v, taskmap.WorkerCrashedError)}
    assert crashed <= {"crash", "io"}


@pytest.mark.parametrize("runner", RUNNERS)
def test_segfault(runner, tmp_path):
    graph = run(runner, crash_graph(segfault, tmp_path), ncores=2)
    err = check_crash(graph, "crash", sig=signal.SIGSEGV)
    check_others(graph, err.pid)
    check_pool_replaced(err.pid)


@pytest.mark.parametrize("runner", RUNNERS)
def test_os_exit(runner, tmp_path):
    graph = run(runner, crash_graph(exit3, tmp_path), ncores=2)
    err = check_crash(graph, "crash", exitcode=3)
    check_others(graph, err.pid)
    check_pool_replaced(err.pid)


async def block_the_loop(path, seconds):
    write_line(path, f"block {os.getpid()}")
    time.sleep(seconds)  # a blocking call in a coroutine: the loop stalls
    return "blocked"  # (not reached: the worker dies first)


async def note_start(path, value):
    write_line(path, f"started {os.getpid()}")
    return value


def exit_once_seen(path, word):
    wait_for_file(path)
    deadline = time.monotonic() + 20
    while word not in open(path).read() and time.monotonic() < deadline:
        time.sleep(0.005)
    os._exit(3)


def test_io_task_not_started_on_a_crashed_worker_is_not_failed(tmp_path):
    # one worker: 'block' stalls its loop until the worker dies, so 'waiting'
    # (sent in the same message) cannot start before the cpu task 'crash',
    # which waits for block's line, kills the worker.  (It stalled for 1 s: a
    # crash later than that, on a busy machine, let 'waiting' begin there.)
    # (partial keeps them coroutine functions: a lambda returning a coroutine
    # is a plain function, which starts by running in a thread at once)
    path = str(tmp_path / "log")
    funcs = {
        "block": functools.partial(block_the_loop, path, 30),
        "waiting": functools.partial(note_start, path, "ran"),
        "crash": lambda: exit_once_seen(path, "block"),
    }
    deps = {"block": [], "waiting": [], "crash": []}
    graph = taskmap.create_graph(funcs, deps, io_bound=["block", "waiting"])
    run(taskmap.run_parallel_async, graph, ncores=1)
    check_crash(graph, "crash", exitcode=3)
    check_crash(graph, "block", exitcode=3)  # it was running
    started = [line.split() for line in open(path).read().splitlines()]
    assert ["started", str(graph.results["crash"].pid)] not in started  # it never ran there
    assert graph.results["waiting"] == "ran", repr(graph.results["waiting"])


def note_start_and_wait_in_doomed_worker(path, doomed, value, seconds=30):
    """Note the start in ``path``; in the worker whose pid is in the file
    ``doomed`` (or before that file exists), wait until the worker dies (at
    most ``seconds``); elsewhere return at once."""
    write_line(path, f"{value} {os.getpid()}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), open(doomed) as f:
            if f.read().split() not in ([], [str(os.getpid())]):
                break
        time.sleep(0.005)
    return value


def exit_once_lines(path, lines, doomed):
    write_line(doomed, os.getpid())
    wait_for_file(path, lines=lines)
    time.sleep(0.2)  # (the next one, had a thread been free, would begin now)
    os._exit(3)


def test_plain_io_task_waiting_for_a_thread_on_a_crashed_worker_is_not_failed(tmp_path):
    # one worker, whose io threads (IO_THREADS) all run plain functions that
    # wait until the worker dies (they slept 1.5 s: a crash later than that,
    # on a busy machine, freed a thread for the one waiting): one more is
    # handed to the thread pool but waits for a thread.
    # When the cpu task 'crash' kills the worker, the sleeping ones fail (they
    # were running) and the waiting one, which never began, runs again on
    # the replacement worker (it was counted as started, and failed, when it
    # was handed to the pool).
    from taskmap.runtime.worker import IO_THREADS

    path = str(tmp_path / "log")
    n = IO_THREADS + 1
    doomed = str(tmp_path / "doomed")  # the pid of the worker that 'crash' kills
    funcs = {f"s{k}": functools.partial(note_start_and_wait_in_doomed_worker, path, doomed, f"s{k}") for k in range(n)}
    funcs["crash"] = lambda: exit_once_lines(path, IO_THREADS, doomed)
    deps = {name: [] for name in funcs}
    graph = taskmap.create_graph(funcs, deps, io_bound=[f"s{k}" for k in range(n)])
    run(taskmap.run_parallel_async, graph, ncores=1, seconds=60)
    dead = check_crash(graph, "crash", exitcode=3).pid
    began = {}
    for line in open(path).read().splitlines():
        name, pid = line.split()
        began.setdefault(name, []).append(int(pid))
    survivors = [f"s{k}" for k in range(n) if graph.results[f"s{k}"] == f"s{k}"]
    assert len(survivors) == 1, survivors[:5]
    assert dead not in began[survivors[0]]  # it never began in the dead worker
    for k in range(n):
        name = f"s{k}"
        if name != survivors[0]:
            check_crash(graph, name, exitcode=3)
            assert began[name] == [dead]  # it was running there


def write_pid_and_sleep(path):
    write_line(path, os.getpid())
    time.sleep(30)
    return "not killed"


def test_sigkill_from_outside(tmp_path):
    path = str(tmp_path / "pid")
    killed = []

    def killer():
        pid = int(wait_for_file(path).split()[0])
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    graph = run(taskmap.run_parallel, crash_graph(lambda: write_pid_and_sleep(path), tmp_path), ncores=2)
    t.join()
    err = check_crash(graph, "crash", sig=signal.SIGKILL)
    assert err.pid == killed[0]
    check_others(graph, err.pid)
    check_pool_replaced(err.pid)


@pytest.mark.parametrize("runner", RUNNERS)
def test_memory_error_raised(runner, tmp_path):
    graph = run(runner, crash_graph(raise_memory_error, tmp_path), ncores=2)
    err = graph.results["crash"]
    # the worker survives a MemoryError: it is the task's own exception
    assert type(err) is MemoryError and err.args == ("out of memory in the task",)
    assert "raise_memory_error" in err.remote_traceback
    assert isinstance(err.__cause__, taskmap.RemoteTraceback)
    check_others(graph)
    assert len(get_pool().workers) == 2


def test_worker_memory_limit_hit_inside_the_task(tmp_path):
    graph = run(taskmap.run_parallel, crash_graph(hit_memory_limit, tmp_path), ncores=2)
    pids = {w.pid for w in get_pool().workers}
    err = graph.results["crash"]
    # documented: an allocation over the limit raises MemoryError in the
    # task that makes it, and its worker lives on
    assert type(err) is MemoryError, repr(err)
    assert "hit_memory_limit" in err.remote_traceback
    check_others(graph)
    # the pool is sound afterwards
    again = run(taskmap.run_parallel, taskmap.create_graph({"x": lambda: bytes(100 << 20)}, {"x": []}), ncores=2)
    assert len(again.results["x"]) == 100 << 20
    assert {w.pid for w in get_pool().workers} == pids  # no worker was replaced


def allocate(n):
    blob = bytearray(n)
    return len(blob)


@pytest.mark.parametrize("runner", RUNNERS)
def test_worker_memory_limit_option_hit(runner, tmp_path):
    graph = crash_graph(lambda: allocate(1 << 30), tmp_path)
    run(runner, graph, ncores=2, memory_limit=400 << 20)
    pids = {w.pid for w in get_pool().workers}
    err = graph.results["crash"]
    # documented: the allocating task fails with MemoryError and its worker
    # lives on (a crash would be a WorkerCrashedError); the run finishes
    assert type(err) is MemoryError, repr(err)
    assert "allocate" in err.remote_traceback
    check_others(graph)
    # under the limit, the same workers go on
    again = taskmap.create_graph({"x": lambda: allocate(100 << 20)}, {"x": []})
    run(runner, again, ncores=2, memory_limit=400 << 20)
    assert again.results["x"] == 100 << 20
    assert {w.pid for w in get_pool().workers} == pids  # no worker was replaced


# -- crashes around messages ------------------------------------------------------


class MarkWhenDone(taskmap.Observer):
    """In the coordinator: create the file ``path`` once each of ``names``
    has its result (a worker's task can wait for it)."""

    def __init__(self, path, *names):
        self.path, self.left = path, set(names)

    def task_finished(self, event):
        self.left.discard(event.name)
        if not self.left and not os.path.exists(self.path):
            open(self.path, "w").close()


def _exit_once(paths, delay, code):
    """From a thread: once every file in ``paths`` exists (bounded), wait
    ``delay`` seconds and exit."""

    def go():
        for path in paths:
            wait_for_file(path, lines=0)
        time.sleep(delay)
        os._exit(code)

    threading.Thread(target=go, daemon=True).start()


def return_then_crash(*paths):
    _exit_once(paths, 0, 5)
    return "sent before the crash"


def return_pid_then_crash(path, delay):
    _exit_once([path], delay, 5)
    return os.getpid()


def note_and_wait(path, seconds=30):
    """Create ``path``, then wait (for the worker to die) at most ``seconds``."""
    open(path, "w").close()
    time.sleep(seconds)
    return "not killed"


def wait_until_dead(pid, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.01)
    pytest.fail(f"worker {pid} did not die")


def test_worker_crashes_right_after_sending_its_result(tmp_path):
    # one worker: 'first' returns at once and its worker dies once 'victim'
    # runs and the coordinator has the result of 'uses_first' (so first's
    # too); 'queued' waits in the coordinator's queue.  (The worker died 0.2 s
    # after 'first' returned: on a busy machine, before 'victim' started or
    # before the results were out.)
    victim_runs, results_in = str(tmp_path / "victim_runs"), str(tmp_path / "results_in")
    funcs = {
        "first": lambda: return_then_crash(victim_runs, results_in),
        "uses_first": lambda x: x + "!",
        "victim": lambda x: note_and_wait(victim_runs),
        "victim_child": lambda x: x,
        "queued": lambda x: 5,
        "queued2": plus,
    }
    deps = {
        "first": [],
        "uses_first": ["first"],
        "victim": ["first"],
        "victim_child": ["victim"],
        "queued": ["uses_first"],
        "queued2": ["queued"],
    }
    graph = taskmap.create_graph(funcs, deps, io_bound=["uses_first"])
    run(taskmap.run_parallel, graph, ncores=1, observers=[MarkWhenDone(results_in, "uses_first")])
    # the result sent before the crash counts: it is not run again
    assert graph.results["first"] == "sent before the crash"
    assert graph.attempts["first"] == 1
    assert graph.results["uses_first"] == "sent before the crash!"
    # the crash was noticed: it fails what was running then
    err = check_crash(graph, "victim", exitcode=5)
    assert graph.results["victim_child"] == skipped("victim")
    # and the next tasks for that worker were not lost
    assert graph.results["queued"] == 5 and graph.results["queued2"] == 6
    check_pool_replaced(err.pid, ncores=1)


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.02])
def test_worker_crashes_just_after_a_result_next_task_not_lost(delay, tmp_path):
    # the next task is sent to the worker while (or just before) it dies:
    # it is rerun on the replacement (retries cover a start on the dying one).
    # The worker dies ``delay`` after the coordinator got first's result (it
    # died 0.05 s + ``delay`` after first returned: on a busy machine, before
    # that result was out, and first ran twice).
    first_in = str(tmp_path / "first_in")
    funcs = {"first": lambda: return_pid_then_crash(first_in, delay), "next": lambda x: x + 1, "other": a}
    deps = {"first": [], "next": ["first"], "other": []}
    graph = taskmap.create_graph(funcs, deps, io_bound=["next"])
    run(taskmap.run_parallel_async, graph, ncores=1, retries={"next": 2}, observers=[MarkWhenDone(first_in, "first")])
    pid = graph.results["first"]
    assert isinstance(pid, int) and graph.attempts["first"] == 1
    assert graph.results["next"] == pid + 1
    assert graph.results["other"] == 5
    # the run may end before the worker dies: it must not die in another test
    wait_until_dead(pid)


def _find_worker():
    """The worker running this task: the ``self`` of a frame on one of its
    threads' stacks (not ``gc.get_objects()``: a worker freezes its heap, and
    frozen objects are not listed)."""
    from taskmap.runtime.worker import Worker

    for frame in sys._current_frames().values():
        while frame is not None:
            found = frame.f_locals.get("self")
            if isinstance(found, Worker):
                return found
            frame = frame.f_back
    raise LookupError("no worker on any thread's stack")


def crash_while_result_is_sent(size):
    """Return a big result and kill the worker in the middle of sending it:
    the first send of at least ``size`` bytes writes half of them to the
    pipe, then the worker exits (code 6), so the message is surely cut.

    (A watcher thread that looked for a frame inside
    ``Connection._send_bytes`` could also see it after the last byte was
    written, the sending thread waiting for the GIL to return: the whole
    result could then reach the coordinator and the task succeed.  The test
    failed 1 of 32 looped runs.)"""
    conn = _find_worker().conn
    cls = type(conn)
    send = cls._send

    def cut(self, buf, *args):
        if len(buf) < size:
            return send(self, buf, *args)
        half = memoryview(buf)[: len(buf) // 2]
        while half:
            half = half[os.write(self._handle, half) :]
        os._exit(6)

    cls._send = cut  # this worker dies with it
    return b"r" * size


def test_crash_while_a_result_is_being_sent_is_blamed_on_its_task():
    funcs = {"big": lambda: crash_while_result_is_sent(40 << 20), "child": len, "other": a}
    graph = taskmap.create_graph(funcs, {"big": [], "child": ["big"], "other": []})
    # through the pipe (shared memory off): that is where a send can be cut;
    # the shared memory counterpart is in test_shm.py
    run(taskmap.run_parallel, graph, seconds=8, ncores=2, shm_threshold=None)
    err = check_crash(graph, "big", exitcode=6)
    assert graph.results["child"] == skipped("big")
    assert graph.results["other"] == 5
    check_pool_replaced(err.pid)


def kill_all_workers(path, n, began=None, n_began=0):
    """Register this worker's pid, wait for all ``n`` (and for ``n_began``
    lines in the file ``began``), SIGKILL them all."""
    write_line(path, os.getpid())
    pids = [int(p) for p in wait_for_file(path, lines=n).split()]
    if began is not None:
        wait_for_file(began, lines=n_began)
    me = os.getpid()
    for pid in pids:
        if pid != me:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    os.kill(me, signal.SIGKILL)
    time.sleep(10)


def test_every_worker_killed_at_once(tmp_path):
    path = str(tmp_path / "pids")
    # the killers wait until both io tasks began (each notes its first step in
    # 'began'): one that had not yet begun when its worker died is requeued,
    # not failed, and would sleep its 30 s on a replacement
    began = str(tmp_path / "began")
    funcs = {f"k{j}": (lambda: kill_all_workers(path, 2, began, 2)) for j in range(2)}
    deps = {f"k{j}": [] for j in range(2)}
    # children of the killers (one is sent ahead to the killer's worker)
    funcs.update({f"k{j}_child": (lambda x=None: x) for j in range(2)})
    deps.update({f"k{j}_child": [f"k{j}"] for j in range(2)})
    # io tasks in flight on the workers when they die
    funcs.update({f"io{j}": (lambda: io_with_pid(began, 30, "slept")) for j in range(2)})
    deps.update({f"io{j}": [] for j in range(2)})
    funcs.update({f"io{j}_child": (lambda x: x) for j in range(2)})
    deps.update({f"io{j}_child": [f"io{j}"] for j in range(2)})
    # cpu tasks still queued in the coordinator: they run on the replacements
    funcs.update({f"q{j}": (lambda j=j: j * 10) for j in range(4)})
    deps.update({f"q{j}": [] for j in range(4)})
    graph = taskmap.create_graph(funcs, deps, io_bound=["io0", "io1"])
    run(taskmap.run_parallel_async, graph, ncores=2)
    pids = {int(p) for p in open(path).read().split()}
    crashed = {t for t, v in graph.results.items() if isinstance(v, taskmap.WorkerCrashedError)}
    assert crashed == {"k0", "k1", "io0", "io1"}
    for t in crashed:
        err = check_crash(graph, t, sig=signal.SIGKILL)
        assert err.pid in pids
    for j in range(2):
        assert graph.results[f"k{j}_child"] == skipped(f"k{j}")
        assert graph.results[f"io{j}_child"] == skipped(f"io{j}")
    assert [graph.results[f"q{j}"] for j in range(4)] == [0, 10, 20, 30]
    for pid in pids:
        check_pool_replaced(pid)


def big_result_flagged(path, size):
    write_line(path, "sending")
    return b"b" * size


def exit_when_flagged(path):
    wait_for_file(path)
    os._exit(4)


def test_crash_while_a_big_result_is_in_flight(tmp_path):
    path = str(tmp_path / "flag")
    size = 20 << 20
    funcs = {
        "big": lambda: big_result_flagged(path, size),
        "use": len,
        "crash": lambda: exit_when_flagged(path),
        "child": lambda x=None: x,
        "other": a,
    }
    deps = {"big": [], "use": ["big"], "crash": [], "child": ["crash"], "other": []}
    # 'other' runs in an io thread: with a third cpu task ready, 'big' could
    # be sent to wait behind 'crash', which then waited for big's flag in vain
    graph = run(taskmap.run_parallel, taskmap.create_graph(funcs, deps, io_bound=["other"]), ncores=2)
    assert graph.results["big"] == b"b" * size
    assert graph.results["use"] == size
    err = check_crash(graph, "crash", exitcode=4)
    assert graph.results["child"] == skipped("crash")
    assert graph.results["other"] == 5
    check_pool_replaced(err.pid)


def test_crash_of_a_task_sent_ahead_of_a_waiting_one_requeues_the_waiting_one():
    # 'c0' goes ahead of 'lone0' (waiting at the worker) and kills the
    # worker: lone0 never started, so it reruns without spending an attempt
    from test_parallel import jump_graph

    graph = run(taskmap.run_parallel_async, jump_graph(critical=lambda: os._exit(4)), ncores=1)
    check_crash(graph, "c0", exitcode=4)
    assert isinstance(graph.results["lone0"], float)
    assert graph.attempts.get("lone0", 1) == 1
    assert graph.results["c1"] == skipped("c0")
    check_pool_replaced(graph.results["c0"].pid, ncores=1)


async def until_file(path, timeout=20.0):
    """An io task that ends once ``path`` exists (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def exit_while_a_big_message_arrives(min_size, started):
    """Create the file ``started``, then spin (so this worker's reader thread
    gets the GIL only every switch interval and a big message takes a while
    to read) until the reader is in the middle of receiving a message of at
    least ``min_size`` bytes (seen on its stack: ``Connection._recv(size)``),
    then die."""
    open(started, "w").close()
    me = threading.get_ident()
    # a hang guard only: in a good run the message arrives within a second or
    # two, but a machine loaded 8-fold once took more than 20 s
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            while frame is not None:
                if frame.f_code.co_name == "_recv" and frame.f_locals.get("size", 0) >= min_size:
                    os._exit(4)
                frame = frame.f_back
    os._exit(5)


def big_argument_graph(size, tmp_path, use=len):
    # One worker runs 'crash', which dies while the coordinator sends it the
    # 20 MB argument of the io task 'use' (ready once 'gate' is done, which
    # waits until 'crash' runs: it slept 10 ms, and on a busy machine 'use'
    # could arrive before 'crash' began to watch for it).
    started = str(tmp_path / "crash_runs")
    funcs = {
        "crash": lambda: exit_while_a_big_message_arrives(size, started),
        "gate": lambda: until_file(started),
        "big": a,
        "use": use,
        "child": lambda x=None: x,
    }
    deps = {"crash": [], "gate": [], "big": [], "use": ["big", "gate"], "child": ["crash"]}
    return taskmap.create_graph(funcs, deps, io_bound=["gate", "use"], done=["big"], results={"big": b"a" * size})


@pytest.mark.timeout(90)
def test_crash_while_a_big_argument_is_being_sent_to_the_worker(tmp_path):
    size = 20 << 20
    graph = run(taskmap.run_parallel_async, big_argument_graph(size, tmp_path), 60, ncores=1)
    err = check_crash(graph, "crash", exitcode=4)  # 4: it died mid-message
    assert graph.results["child"] == skipped("crash")
    # 'use' never reached the dead worker: it ran on the replacement
    assert graph.results["use"] == size
    assert graph.results["gate"] is None
    check_pool_replaced(err.pid, ncores=1)


@pytest.mark.timeout(90)
def test_task_whose_submission_never_arrived_keeps_its_retries(tmp_path):
    size = 20 << 20
    graph = run(taskmap.run_parallel_async, big_argument_graph(size, tmp_path), 60, ncores=1)
    check_crash(graph, "crash", exitcode=4)
    assert graph.results["use"] == size
    assert graph.attempts["use"] == 1


def _tiny_or_len(*xs):
    return len(xs[0]) if xs and isinstance(xs[0], bytes) else 1


@pytest.mark.timeout(90)
def test_pinned_chain_whose_submission_fails_keeps_its_arguments(tmp_path):
    # One worker.  Tiny cpu tasks first, so that the coordinator sends several
    # cpu tasks ahead; then 'crash' runs and dies while the coordinator sends
    # it 'p' (with a 20 MB argument) and 'c' pinned behind 'p' ('p' waits for
    # 'gate', which waits until 'crash' runs: it slept 0.3 s).
    size = 20 << 20
    started = str(tmp_path / "crash_runs")
    # 'p' shares its function with the tiny tasks: measured tiny, its tasks
    # are queued at a worker that is busy (the depth is per function)
    funcs = {f"tiny{i}": _tiny_or_len for i in range(5)}
    deps = {f"tiny{i}": ([f"tiny{i - 1}"] if i else []) for i in range(5)}
    funcs.update(
        {
            "crash": lambda _: exit_while_a_big_message_arrives(size, started),
            "gate": lambda: until_file(started),
            "big": a,
            "p": _tiny_or_len,
            "c": lambda *xs: xs,
        }
    )
    deps.update({"crash": ["tiny4"], "gate": [], "big": [], "p": ["big", "gate"], "c": ["p"]})
    graph = taskmap.create_graph(funcs, deps, io_bound=["gate"], done=["big"], results={"big": b"a" * size})
    run(taskmap.run_parallel_async, graph, 60, ncores=1)
    check_crash(graph, "crash", exitcode=4)
    assert graph.results["p"] == size
    assert graph.results["c"] == (size,), repr(graph.results["c"])


class _SlowPop(dict):
    """A worker's ``followers`` map whose ``pop`` first yields the cpu thread
    for 20 ms: what a busy machine does to it at any instruction."""

    def pop(self, *args):
        time.sleep(0.02)
        return super().pop(*args)


def slow_down_unpinning():
    _find_worker().followers = _SlowPop(_find_worker().followers)
    return "slowed"


def fail_first_time(path, *xs):
    with open(path, "a+") as f:
        f.seek(0)
        calls = len(f.read())
        f.write("x")
    if calls == 0:
        raise ConnectionError("first attempt fails")
    return "parent"


def test_retried_parent_keeps_the_task_pinned_behind_it(tmp_path):
    # One worker.  'setup' widens the race window; 'p' (after 'gate', so that it
    # travels in a message of its own) fails once and is retried, with 'c'
    # pinned behind it both times.
    path = str(tmp_path / "calls")
    funcs = {
        "setup": slow_down_unpinning,
        "gate": lambda _: io_sleep(0.2, None),
        "p": lambda *_: fail_first_time(path),
        "c": lambda x: x + " child",
    }
    deps = {"setup": [], "gate": ["setup"], "p": ["setup", "gate"], "c": ["p"]}
    graph = taskmap.create_graph(funcs, deps, io_bound=["gate"])
    try:
        run(taskmap.run_parallel_async, graph, seconds=10, ncores=1, retries={"p": 1})
    finally:
        taskmap.runtime.pool.shutdown_pool()  # the slowed-down worker must not serve other tests
    assert graph.results["p"] == "parent" and graph.attempts["p"] == 2
    assert graph.results["c"] == "parent child"


def chatter(n_mb, value):
    chunk = "x" * 1023 + "\n"
    for _ in range(n_mb * 1024):
        sys.stdout.write(chunk)
        sys.stderr.write(chunk)
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, b"raw fd 1\n")
    os.write(2, b"raw fd 2\n")
    return value


async def chatter_io(n_mb, value):
    return chatter(n_mb, value)


def test_megabytes_on_stdout_and_stderr_do_not_disturb_the_protocol(capfd):
    # fresh workers, so that their stdout/stderr are this test's capture
    taskmap.runtime.pool.shutdown_pool()
    funcs = {
        "loud": lambda: chatter(4, "loud"),
        "loud_io": lambda: chatter_io(2, "loud io"),
        "child": lambda x, y: f"{x}+{y}",
        "quiet": a,
        "quiet2": plus,
    }
    deps = {"loud": [], "loud_io": [], "child": ["loud", "loud_io"], "quiet": [], "quiet2": ["quiet"]}
    graph = run(taskmap.run_parallel_async, taskmap.create_graph(funcs, deps, io_bound=["loud_io"]), ncores=2)
    assert graph.results == {"loud": "loud", "loud_io": "loud io", "child": "loud+loud io", "quiet": 5, "quiet2": 6}
    taskmap.runtime.pool.shutdown_pool()  # the workers' streams are this test's capture
    out, err = capfd.readouterr()
    assert len(out) >= 6 << 20 and len(err) >= 6 << 20
    assert "raw fd 1" in out and "raw fd 2" in err


# -- raise_errors with a crash ---------------------------------------------------


def exit_after_pid(path, delay, wait_for=()):
    write_line(path, f"crash {os.getpid()}")
    deadline = time.monotonic() + 20
    # until those tasks run too
    while not all(w in open(path).read() for w in wait_for) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    # when it dies (CLOCK_MONOTONIC: one clock for every process here)
    write_line(path, f"dies {time.monotonic()}")
    os._exit(3)


def slow_with_pid(path):
    write_line(path, f"slow {os.getpid()}")
    spin(30)
    return "finished"


def check_no_busy_process_left(busy_pid):
    """``busy_pid`` (a worker that was running a long task) is gone at once,
    and every child process left is an idle, live pool worker (or loky's
    helper)."""
    gone_by = time.monotonic() + 2
    while time.monotonic() < gone_by:
        if not psutil.pid_exists(busy_pid) or psutil.Process(busy_pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the worker running a long task (pid {busy_pid}) survived the abort")
    pool_pids = {w.pid for w in get_pool().workers}
    for child in psutil.Process().children(recursive=True):
        if child.status() == psutil.STATUS_ZOMBIE:
            continue
        cmd = " ".join(child.cmdline())
        assert child.pid in pool_pids or "resource_tracker" in cmd, (child.pid, cmd)


@pytest.mark.parametrize("runner", RUNNERS)
def test_raise_errors_with_a_crash_raises_promptly_and_leaves_no_process(tmp_path, runner):
    path = str(tmp_path / "pids")
    funcs = {
        # both others run when it dies ('io_slow' has noted its worker, which
        # the checks below read; it waited only for 'slow' and 0.1 s)
        "crash": lambda: exit_after_pid(path, 0.1, wait_for=("slow", "io")),
        "slow": lambda: slow_with_pid(path),
        "io_slow": lambda: io_with_pid(path, 30, "io"),
        "child": lambda x=None: x,
    }
    deps = {"crash": [], "slow": [], "io_slow": [], "child": ["crash"]}
    graph = taskmap.create_graph(funcs, deps, io_bound=["io_slow"])
    with bounded(20), pytest.raises(taskmap.TaskFailedError) as info:
        runner(graph, ncores=2, raise_errors=True)
    raised = time.monotonic()
    pids = dict(line.split() for line in open(path).read().splitlines())
    # promptly: without waiting for 'slow' (30 s), timed from the crash, so
    # that a slow start of the workers on a busy machine is not counted
    assert raised - float(pids["dies"]) < 5, raised - float(pids["dies"])
    crash_pid = int(pids["crash"])
    # what the dead worker was running: 'crash', and 'io_slow' if it ran there
    victims = {"crash"} | ({"io_slow"} if int(pids["io"]) == crash_pid else set())
    error = info.value
    assert isinstance(error, RuntimeError) and error.task in victims
    assert f"'{error.task}'" in str(error) and "check your logs" in str(error)
    cause = error.__cause__
    assert isinstance(cause, taskmap.WorkerCrashedError) and cause.exitcode == 3
    assert cause.pid == crash_pid and cause.task == error.task
    assert graph.results[error.task] is cause
    assert graph.results.get("slow") != "finished"
    check_no_busy_process_left(int(pids["slow"]))


def test_raise_errors_names_the_task_that_was_running_when_its_worker_died(tmp_path):
    path = str(tmp_path / "pids")
    funcs = {
        "crash": lambda: exit_after_pid(path, 0.1, wait_for=("io",)),
        "io_slow": lambda: io_with_pid(path, 30, "io"),
    }
    graph = taskmap.create_graph(funcs, {"crash": [], "io_slow": []}, io_bound=["io_slow"])
    with bounded(20), pytest.raises(taskmap.TaskFailedError) as info:
        taskmap.run_parallel(graph, ncores=1, raise_errors=True)
    assert info.value.task == "crash", str(info.value)


def crash_first_time(path, x):
    """Kill the worker on the first execution, return x + 1 on the next."""
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(5)
    return x + 1


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def warm_both_workers():
    """Two started workers in the pool (a run of one task may start one)."""
    for _ in range(20):
        graph = taskmap.create_graph({"x": lambda: pid_after(0.1), "y": lambda: pid_after(0.1)}, {"x": [], "y": []})
        taskmap.run_parallel(graph, ncores=2)
        if graph.results["x"] != graph.results["y"]:
            return
    raise AssertionError("the pool never had two workers ready")


def quick_then_slow(path):
    """41 at once the first time; the next time (a rerun), 41 after 0.5 s."""
    if os.path.exists(path):
        time.sleep(0.5)
    else:
        open(path, "w").close()
    return 41


def run_until_result_lost(runner, parent: str, make_graph, **kwargs):
    """Run ``make_graph(attempt)`` until ``parent``'s result was lost with a
    crashed worker (it ran twice); return that graph and the earlier ones.
    A quick task's result is normally still batched in the worker when the
    task pinned behind it kills the worker; should it get out before the
    crash (the worker's 1 ms batch timer won the race), the scenario did not
    happen: try again, up to 5 times."""
    earlier = []
    for attempt in range(5):
        warm_both_workers()
        graph = make_graph(attempt)
        run(runner, graph, ncores=2, **kwargs)
        if graph.attempts[parent] == 2:
            return graph, earlier
        earlier.append(graph)
    pytest.fail(f"{parent}'s result was never lost with the worker in 5 tries")


@pytest.mark.parametrize("runner", RUNNERS)
def test_retry_of_a_crashed_pinned_task_waits_for_its_lost_parent(runner, tmp_path):
    # 'b', pinned behind 'a', kills the worker with a's result: 'a' reruns
    # (slowly now), and b's retry must wait for it.  It once went at once to
    # the replacement worker and ran without its argument (b(None) -> TypeError).
    def make_graph(attempt):
        funcs = {
            "a": functools.partial(quick_then_slow, str(tmp_path / f"a{attempt}")),
            "b": functools.partial(crash_first_time, str(tmp_path / f"b{attempt}")),
        }
        return taskmap.create_graph(funcs, {"a": [], "b": ["a"]})

    graph, earlier = run_until_result_lost(runner, "a", make_graph, retries={"b": 1})
    for g in [*earlier, graph]:
        assert g.results == {"a": 41, "b": 42}, g.results
        assert g.attempts["b"] == 2


def always_crash(*args):
    os._exit(7)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_task_that_kills_its_worker_again_does_not_take_its_parents_down(runner):
    # a -> b -> c, all quick cpu tasks: b and c run pinned behind a in one
    # worker, so when c kills it, a's and b's results are still batched there
    # and both rerun.  c's retry must not be pinned behind them again: it
    # once was, killed the worker again with their results, and a -- never at
    # fault, no retries of its own -- failed as "lost".
    funcs = {"a": lambda: 1, "b": lambda x: x + 1, "c": always_crash}
    graph = taskmap.create_graph(funcs, {"a": [], "b": ["a"], "c": ["b"]})
    run(runner, graph, ncores=2, retries={"c": 1})
    assert graph.results["a"] == 1 and graph.results["b"] == 2, graph.results
    check_crash(graph, "c", exitcode=7)
    assert graph.attempts["c"] == 2


def value_then_error(path):
    """1 at once the first time; the next time (a rerun), an error."""
    if os.path.exists(path):
        raise ValueError("failed on its rerun")
    open(path, "w").close()
    return 1


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_pinned_task_that_failed_is_not_withdrawn_again_when_its_lost_parent_fails(runner, tmp_path):
    # 'c', pinned behind 'p', kills the worker with p's result: c fails (it
    # ran, with p's first value) and p reruns, raising this time.  The link
    # "c runs behind p in that worker" once outlived the worker: p's failure
    # then withdrew the failed c as if it had never started, skipped it,
    # counted it finished a second time, and the run returned before 's'
    # finished (or never returned, one task short of zero).
    def make_graph(attempt):
        funcs = {
            "p": functools.partial(value_then_error, str(tmp_path / f"p{attempt}")),
            "c": always_crash,
            "s": functools.partial(sleep_then, 1.0, "slept"),
        }
        return taskmap.create_graph(funcs, {"p": [], "c": ["p"], "s": []})

    graph, earlier = run_until_result_lost(runner, "p", make_graph)  # (every task has a result)
    assert isinstance(graph.results["p"], ValueError), graph.results
    for g in [*earlier, graph]:
        assert g.results["s"] == "slept"
        check_crash(g, "c", exitcode=7)
    for g in earlier:
        assert g.results["p"] == 1
