"""The package layout shows what runs where: a worker process imports the
runtime's light modules only, never the graph model, the runners, the
scheduling state, observability, the checkpoint store or Dask."""

from __future__ import annotations

import taskmap
from taskmap.runtime.pool import shutdown_pool

LIGHT = {
    "taskmap",
    "taskmap.errors",
    "taskmap.runtime",
    "taskmap.runtime.capture",
    "taskmap.runtime.codec",
    "taskmap.runtime.fd_output",
    "taskmap.runtime.functions",
    "taskmap.runtime.messages",
    "taskmap.runtime.process_setup",
    "taskmap.runtime.shm",
    "taskmap.runtime.slot",
    "taskmap.runtime.worker",
}
HEAVY = ("sqlite3", "tqdm", "dask", "distributed", "hypothesis")


def _probe_source() -> str:
    return (
        "def probe(*_):\n"
        "    import sys\n"
        "    return sorted(name for name in sys.modules\n"
        "                  if name.split('.')[0] in ('taskmap', 'sqlite3', 'tqdm', 'dask', 'distributed', 'hypothesis'))\n"
    )


def test_a_worker_imports_only_the_light_runtime_modules():
    namespace: dict = {}
    exec(_probe_source(), namespace)
    probe = namespace["probe"]
    probe.__module__ = "__main__"  # (travels by value: no test module is imported there)
    for runner in (taskmap.run_parallel, taskmap.run_parallel_async):
        shutdown_pool()  # fresh workers: earlier tests' functions imported their modules there
        graph = taskmap.create_graph({"cpu": probe, "io": probe}, {"cpu": [], "io": []}, io_bound=["io"])
        graph = runner(graph, ncores=1)
        for lane in ("cpu", "io"):
            loaded = set(graph.results[lane])
            assert loaded <= LIGHT, sorted(loaded - LIGHT)
            assert not [m for m in loaded if m.split(".")[0] in HEAVY]
