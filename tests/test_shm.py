"""Big values through shared memory: the segments (taskmap.runtime.shm), the codec's
out-of-band path, and end to end through the parallel runners, including
every way a run can end badly, each checking that /dev/shm is left clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _processes import start_pipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import taskmap
from taskmap.runtime import codec, shm

pytestmark = [
    pytest.mark.skipif(not shm.available(), reason="needs /dev/shm"),
    pytest.mark.timeout(60),
]

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
RUNNERS = [taskmap.run_parallel, taskmap.run_parallel_async]


def our_segments(pid: int | None = None) -> list[str]:
    return shm.list_segments(f"{shm.NAME_PREFIX}{os.getpid() if pid is None else pid}-")


@pytest.fixture
def writer():
    w = shm.SegmentWriter(shm.coordinator_prefix(), threshold=1000)
    yield w
    shm.remove_all(w.prefix)


# -- the shm module -------------------------------------------------------------


def test_names_say_whose_segment_it_is(writer):
    prefix = shm.coordinator_prefix()
    pid, ticks = prefix[len("taskmap-") :].rstrip("-").split("-")
    assert int(pid) == os.getpid() and int(ticks) > 0
    assert writer.prefix == f"{prefix}{os.getpid()}-"
    assert writer.next_name() != writer.next_name()


def test_write_attach_and_unlink(writer):
    data = np.arange(1000, dtype=np.uint8)
    (h,) = writer.for_task().store([memoryview(data)])
    assert h.offset == 0 and h.length == 1000 and h.name in our_segments()
    m = shm.attach(h.name)
    assert bytes(m[:1000]) == data.tobytes()
    with pytest.raises(TypeError):
        m[0] = 1  # read-only, shared
    cow = shm.attach(h.name, writable=True)
    cow[0] = 99  # private: the segment is unchanged
    assert shm.attach(h.name)[0] == 0
    shm.unlink([h.name])
    assert m[1] == 1  # a mapping outlives the name
    shm.unlink([h.name])  # already gone: ignored
    with pytest.raises(FileNotFoundError, match="is gone"):
        shm.attach(h.name)


def test_sweep_removes_only_segments_of_dead_coordinators(writer):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = f"taskmap-{proc.pid}-12345-{proc.pid}-1"
    reused = f"taskmap-{os.getpid()}-1-{os.getpid()}-1"  # our pid, another start time
    mine = writer.next_name()
    for name in (dead, reused, mine):
        Path(shm.SHM_DIR, name).write_bytes(b"x")
    other = Path(shm.SHM_DIR, f"not-taskmap-{os.getpid()}")
    other.write_bytes(b"x")
    try:
        assert shm.sweep_orphans() >= 2
        left = set(os.listdir(shm.SHM_DIR))
        assert dead not in left and reused not in left
        assert mine in left and other.name in left
    finally:
        other.unlink()


def test_threshold_from_the_environment(monkeypatch):
    monkeypatch.setenv("TASKMAP_SHM_THRESHOLD", "4096")
    assert shm.default_threshold() == 4096
    monkeypatch.setenv("TASKMAP_SHM_THRESHOLD", "off")
    assert shm.default_threshold() is None
    monkeypatch.setenv("TASKMAP_SHM_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="TASKMAP_SHM_THRESHOLD"):
        shm.default_threshold()
    monkeypatch.delenv("TASKMAP_SHM_THRESHOLD")
    assert shm.default_threshold() == shm.DEFAULT_THRESHOLD == 256 << 10


# -- the codec's out-of-band path ------------------------------------------------


def test_numpy_array_comes_back_over_shared_memory_read_only(writer):
    a = np.arange(10_000, dtype=np.float64).reshape(100, 100)
    data = codec.encode(a, writer.for_task())
    assert len(data) < 400  # only the handle travels
    (name,) = codec.segment_names(data)
    b = codec.decode(data)
    assert np.array_equal(a, b) and b.dtype == a.dtype and not b.flags.writeable
    assert b.ctypes.data % shm.ALIGN == 0
    base = b
    while getattr(base, "base", None) is not None and not isinstance(base, (memoryview, shm.Attached)):
        base = base.base
    assert isinstance(base, (memoryview, shm.Attached))  # over the mapping, no copy
    c = codec.decode(data, writable=True)
    c += 1  # copy-on-write: private to this mapping
    assert np.array_equal(codec.decode(data), a)
    assert name in our_segments()


@pytest.mark.parametrize("value", [b"b" * 5000, bytearray(b"a" * 5000), memoryview(b"m" * 5000)])
def test_bytes_like_values_go_out_of_band_and_keep_their_type(writer, value):
    data = codec.encode(value, writer.for_task())
    assert codec.segment_names(data)
    out = codec.decode(data)
    expected = bytes(value) if type(value) is memoryview else value
    assert type(out) is type(expected) and out == expected


def test_several_buffers_share_one_segment_and_small_ones_stay_in_band(writer):
    value = {"big": np.ones(500), "also": np.zeros(300), "small": np.ones(3), "n": 1}
    data = codec.encode(value, writer.for_task())
    assert len(codec.segment_names(data)) == 1
    out = codec.decode(data)
    assert out.keys() == value.keys() and all(np.array_equal(out[k], value[k]) for k in ("big", "also", "small"))
    assert out["small"].flags.writeable  # in-band: an ordinary array


def test_small_values_keep_the_plain_encoding(writer):
    for value in [5, "x", [1, 2], {"a": b"x" * 10}, (1, 2), np.arange(3), b"y" * 999, [b"z" * 5000]]:
        assert codec.encode(value, writer.for_task()) == codec.encode(value)
    assert not our_segments()


def test_a_view_of_a_mapped_segment_is_sent_without_a_copy(writer):
    first = codec.encode(np.arange(1000.0), writer.for_task())
    a = codec.decode(first)
    again = codec.encode(a[100:], writer.for_task())
    assert codec.segment_names(again) == codec.segment_names(first)
    assert len(our_segments()) == 1
    assert np.array_equal(codec.decode(again), np.arange(100.0, 1000.0))


def test_released_inputs_go_before_the_result_is_written(writer):
    first = codec.encode(np.arange(1000.0), writer.for_task())
    (name,) = codec.segment_names(first)
    a = codec.decode(first)
    # the result points into the released input: it stays
    codec.encode(a[1:], writer.for_task([name]))
    assert name in our_segments()
    del a
    segments = writer.for_task([name])
    second = codec.encode(np.ones(1000), segments)
    assert name not in our_segments() and codec.segment_names(second)[0] in our_segments()


def test_shared_memory_full_falls_back_to_the_pipe(writer, monkeypatch):
    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shm, "_write", full)
    data = codec.encode(np.arange(1000.0), writer.for_task())
    assert not codec.segment_names(data)
    assert np.array_equal(codec.decode(data), np.arange(1000.0))


def test_a_gone_segment_is_a_decode_error(writer):
    data = codec.encode(b"x" * 2000, writer.for_task())
    shm.unlink(codec.segment_names(data))
    with pytest.raises(codec.DecodeError, match="shared memory.*is gone"):
        codec.decode(data)


THRESHOLD = 64


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.one_of(
        st.integers(0, 3 * THRESHOLD).map(lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)),
        st.integers(0, 3 * THRESHOLD).map(lambda n: bytearray(b"\x07" * n)),
        hnp.arrays(
            dtype=st.sampled_from([np.uint8, np.int32, np.float64, np.complex128, np.bool_]),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
        ),
    )
)
def test_property_values_of_every_size_round_trip(value):
    w = shm.SegmentWriter(shm.coordinator_prefix(), threshold=THRESHOLD)
    try:
        data = codec.encode(value, w.for_task())
        out = codec.decode(data)
        assert type(out) is type(value)
        if isinstance(value, np.ndarray):
            assert out.dtype == value.dtype and out.shape == value.shape
            assert np.array_equal(out, value, equal_nan=value.dtype.kind in "fc")
            big = value.nbytes >= THRESHOLD and (value.flags.c_contiguous or value.flags.f_contiguous)
        else:
            assert out == value
            big = len(value) >= THRESHOLD
        assert bool(codec.segment_names(data)) == big
        if not big:
            assert data == codec.encode(value)
    finally:
        shm.remove_all(w.prefix)


# -- end to end -----------------------------------------------------------------


def make(n):
    return np.full(n, 1.0)


def add_one(a):
    b = a + 1
    return b


def chain_graph(size=2 * MiB // 8, last=add_one):
    funcs = {"t0": lambda: make(size), "t1": add_one, "t2": add_one, "t3": last}
    deps = {"t0": [], "t1": ["t0"], "t2": ["t1"], "t3": ["t2"]}
    return taskmap.create_graph(funcs, deps)


@pytest.mark.parametrize("runner", RUNNERS)
def test_numpy_chain_keeps_every_result(runner):
    graph = runner(chain_graph(), ncores=2)
    for k in range(4):
        r = graph.results[f"t{k}"]
        assert type(r) is np.ndarray and r.shape == (MiB // 4,) and r[0] == r[-1] == 1.0 + k
        assert r.flags.writeable  # a copy-on-write mapping: writable, no copy
    graph.results["t3"][:] = 0
    assert not our_segments()


@pytest.mark.parametrize("runner", RUNNERS)
def test_numpy_chain_keeps_only_what_is_gathered(runner):
    graph = runner(chain_graph(), ncores=2, gather=["t3"])
    assert graph.results["t3"][0] == 4.0
    for k in range(3):
        assert graph.results[f"t{k}"] == taskmap.NotKept(f"t{k}")
        assert "not kept" in repr(graph.results[f"t{k}"])
    assert not our_segments()


def test_the_same_values_with_shared_memory_off():
    on = taskmap.run_parallel(chain_graph(), ncores=2)
    off = taskmap.run_parallel(chain_graph(), ncores=2, shm_threshold=None)
    for k in range(4):
        assert np.array_equal(on.results[f"t{k}"], off.results[f"t{k}"])


def test_bytes_through_a_chain_and_a_fan_out():
    funcs = {
        "b": lambda: b"\x01" * (3 * MiB),
        "ba": lambda x: bytearray(x[: 2 * MiB]),
        "n1": len,
        "n2": lambda x: x.count(1),
        "sum": lambda x, y, z: (len(x), y, z),
    }
    deps = {"b": [], "ba": ["b"], "n1": ["b"], "n2": ["ba"], "sum": ["ba", "n1", "n2"]}
    graph = taskmap.create_graph(funcs, deps, io_bound=["n1"])
    taskmap.run_parallel_async(graph, ncores=2, gather=["b", "sum"])
    assert graph.results["b"] == b"\x01" * (3 * MiB)
    assert graph.results["sum"] == (2 * MiB, 3 * MiB, 2 * MiB)
    assert not our_segments()


def writeable(a):
    return a.flags.writeable


def identity(a):
    return a


def test_arguments_are_read_only_and_returning_them_copies_nothing():
    funcs = {
        "t0": lambda: make(MiB),
        "w": writeable,
        "same": identity,
        "view": lambda a: a[::2],
        "sum": lambda a: float(a.sum()),
    }
    deps = {"t0": [], "w": ["t0"], "same": ["t0"], "view": ["same"], "sum": ["view"]}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2)
    assert graph.results["w"] is False
    assert np.array_equal(graph.results["same"], graph.results["t0"])
    assert graph.results["sum"] == MiB // 2
    assert not our_segments()


def segments_of(coordinator_pid, *_inputs):
    return shm.list_segments(f"taskmap-{coordinator_pid}-")


def test_a_segment_goes_once_its_readers_finished():
    me = os.getpid()
    funcs = {
        "big": lambda: make(MiB),
        "r1": lambda a: float(a[0]),
        "r2": lambda a: float(a[-1]),
        "later": lambda x, y: segments_of(me),  # runs after both readers
    }
    deps = {"big": [], "r1": ["big"], "r2": ["big"], "later": ["r1", "r2"]}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2, gather=["later"])
    assert graph.results["later"] == []  # released during the run, not only at its end


def test_a_kept_segment_lives_until_the_run_ends():
    me = os.getpid()
    funcs = {"big": lambda: make(MiB), "r1": lambda a: float(a[0]), "later": lambda x: segments_of(me)}
    deps = {"big": [], "r1": ["big"], "later": ["r1"]}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2)
    assert len(graph.results["later"]) == 1  # 'big' is kept: its segment stayed for the caller
    assert graph.results["big"][0] == 1.0 and not our_segments()


def test_a_value_only_its_pinned_child_reads_is_handed_over():
    # not kept, one child, run behind it in the same worker: no segment, and
    # the child gets the parent's own (writable) array
    funcs = {"t0": lambda: make(MiB), "w": writeable}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, {"t0": [], "w": ["t0"]}), ncores=1, gather=["w"])
    assert graph.results["w"] is True
    # kept, the same child reads it from shared memory, read-only
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, {"t0": [], "w": ["t0"]}), ncores=1)
    assert graph.results["w"] is False
    with pytest.raises(codec.DecodeError, match="handed straight"):
        codec.decode(codec.encode_handed_over("7"))


def test_a_rerun_that_needs_a_result_not_kept_says_so():
    graph = taskmap.run_parallel(chain_graph(), ncores=2, gather=["t3"])
    taskmap.reset_tasks(graph, ["t3"])
    taskmap.run_parallel(graph, ncores=2)
    err = graph.results["t3"]
    assert isinstance(err, taskmap.SerializationError) and "not kept" in str(err) and "'t2'" in str(err)


def test_gather_and_threshold_are_checked():
    graph = chain_graph()
    with pytest.raises(TypeError, match="gather"):
        taskmap.run_parallel(graph, gather="t3")
    with pytest.raises(ValueError, match="not in the graph"):
        taskmap.run_parallel(graph, gather=["nope"])
    with pytest.raises(ValueError, match="shm_threshold"):
        taskmap.run_parallel(graph, shm_threshold=0)


def test_checkpoint_stores_the_value_not_the_handle(tmp_path):
    path = tmp_path / "run.db"
    funcs = {"big": lambda: np.arange(MiB // 4, dtype=np.int32), "n": len}
    graph = taskmap.create_graph(funcs, {"big": [], "n": ["big"]}, checkpoint=str(path))
    taskmap.run_parallel(graph, ncores=2)
    again = taskmap.create_graph(funcs, {"big": [], "n": ["big"]}, checkpoint=str(path))
    taskmap.run_parallel(again, ncores=2)  # restored from the store, after the segments are gone
    assert np.array_equal(again.results["big"], np.arange(MiB // 4, dtype=np.int32))
    assert again.results["n"] == MiB // 4
    assert not our_segments()


def test_big_values_under_a_memory_limit():
    # shared read-only mappings do not count against the worker's RLIMIT_DATA
    graph = taskmap.run_parallel(chain_graph(size=64 * MiB // 8), ncores=2, memory_limit=400 * MiB, gather=["t3"])
    assert graph.results["t3"][0] == 4.0
    assert not our_segments()


# -- faults ---------------------------------------------------------------------


def crash_while_writing(listing: str):
    """Return a big result; die while the worker writes it into its segment:
    after the first ``os.pwrite`` into it (noting which segments exist at
    that moment).  (A watcher thread that looked for the writing thread's
    frame every 0.1 ms could miss the whole write on a busy machine.)"""
    pwrite = os.pwrite

    def write_then_die(fd, data, offset):
        n = pwrite(fd, data, offset)
        Path(listing).write_text("\n".join(os.listdir("/dev/shm")))
        os._exit(6)
        return n

    os.pwrite = write_then_die  # this worker dies with it
    return b"r" * (64 * MiB)


def test_worker_dies_while_writing_a_segment(tmp_path):
    listing = str(tmp_path / "listing")
    funcs = {
        "kept": lambda: make(MiB),
        "big": lambda: crash_while_writing(listing),
        "child": len,
        "other": lambda: 5,
    }
    graph = taskmap.create_graph(funcs, {"kept": [], "big": [], "child": ["big"], "other": []})
    taskmap.run_parallel(graph, ncores=2)
    err = graph.results["big"]
    assert isinstance(err, taskmap.WorkerCrashedError) and err.exitcode == 6
    assert graph.results["child"] == "Ancestor task big failed; task not run"
    assert graph.results["other"] == 5 and graph.results["kept"][0] == 1.0
    at_crash = [n for n in Path(listing).read_text().split() if n.startswith(f"taskmap-{os.getpid()}-")]
    assert any(n.startswith(f"taskmap-{os.getpid()}-") and f"-{err.pid}-" in n for n in at_crash), at_crash
    assert not our_segments()


def test_a_crashed_workers_unannounced_segment_goes_at_the_crash(tmp_path):
    """The segment a worker was writing when it died is removed as soon as
    the coordinator notices the death, not at the end of the run."""
    listing = str(tmp_path / "listing")
    seen = {}

    class AtTheCrash(taskmap.observe.observers.Observer):
        def task_finished(self, event):
            if event.name == "big":
                seen["left"] = [n for n in our_segments() if f"-{event.worker}-" in n]

    funcs = {"big": lambda: crash_while_writing(listing), "other": lambda: 5}
    graph = taskmap.create_graph(funcs, {"big": [], "other": []})
    taskmap.run_parallel(graph, ncores=2, observers=[AtTheCrash()])
    err = graph.results["big"]
    assert isinstance(err, taskmap.WorkerCrashedError) and err.exitcode == 6
    at_crash = Path(listing).read_text().split()
    assert any(f"-{err.pid}-" in n for n in at_crash), at_crash  # it was there
    assert seen["left"] == []  # and gone when the crash was recorded
    assert graph.results["other"] == 5 and not our_segments()


SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import taskmap

    def big(i):
        return np.full(4 << 20, float(i))

    def slow(*arrays):
        open(os.path.join(os.environ["MARK_DIR"], str(os.getpid())), "w").close()
        end = time.perf_counter() + 60
        while time.perf_counter() < end:
            pass

    funcs = {f"b{i}": (lambda i=i: big(i)) for i in range(3)}
    funcs.update({f"s{i}": slow for i in range(2)})
    deps = {k: ([] if k.startswith("b") else ["b0", "b1", "b2"]) for k in funcs}
    graph = taskmap.create_graph(funcs, deps)
    print("PID", os.getpid(), flush=True)
    try:
        taskmap.run_parallel_async(graph, ncores=2)
    except KeyboardInterrupt:
        print("INTERRUPTED", sorted(graph.done), flush=True)
        sys.exit(130)
    """
)


def _start(tmp_path):
    proc = start_pipeline(tmp_path, SCRIPT, env={"PYTHONPATH": str(REPO)}, start_new_session=True)
    # three 32 MB results in shared memory, read by the running tasks
    assert len(our_segments(proc.pid)) == 3, our_segments(proc.pid)
    return proc


def _wait_until_clean(pid: int, seconds: float = 10.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := our_segments(pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_interrupted_coordinator_leaves_no_segment(tmp_path, how):
    proc = _start(tmp_path)
    os.kill(proc.pid, signal.SIGINT if how == "sigint" else signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "INTERRUPTED" in out, err
    assert "'b0', 'b1', 'b2'" in out  # finished results kept
    assert not our_segments(proc.pid)  # gone when the process exited


def test_killed_coordinator_segments_are_removed_by_its_workers(tmp_path):
    proc = _start(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not _wait_until_clean(proc.pid), "the workers of a killed coordinator left its segments"


def test_next_coordinator_sweeps_what_a_dead_one_left(tmp_path):
    # a coordinator killed together with its workers: nobody removed its
    # segments.  The coordinator is stopped, its workers killed, the segments
    # checked, and only then the coordinator killed: while it lives no other
    # taskmap process on the machine sweeps them (killed at once, another
    # process's new pool swept them once before the check, looped under load)
    psutil = pytest.importorskip("psutil")
    proc = _start(tmp_path)
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGSTOP)
    for w in workers:
        w.kill()

    def running(w):  # (a dead worker stays a zombie: its parent is stopped)
        try:
            return w.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(running(w) for w in workers):
        time.sleep(0.01)
    left = our_segments(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert left, "the segments should be left behind"
    from taskmap.runtime.pool import WorkerPool

    WorkerPool()  # a new pool (no worker started yet) sweeps what dead coordinators left
    assert not our_segments(proc.pid)
