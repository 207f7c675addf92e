"""The live page of a ``run_dask`` run, against a real LocalCluster (the one
of test_dask_runner.py): served while the run lasts, its last state agrees
with ``graph.results``, nothing left behind."""

from __future__ import annotations

import json
import threading
import time

import distributed

import taskmap
from taskmap.observe.status import statuses

from test_dashboard import left_by_pages, gated_graph, get, page, read_events  # noqa: E402
from test_dask_runner import local_cluster  # noqa: E402


def test_run_dask_serves_the_page_while_it_runs(tmp_path):
    release = tmp_path / "release"
    with local_cluster() as cluster, distributed.Client(cluster) as client:
        graph = gated_graph(release)
        run = taskmap.start(graph, runner="run_dask", client=client, dashboard=True)
        try:
            url = run.dashboard_url
            assert url is not None
            box: dict = {}
            viewer = threading.Thread(target=lambda: box.setdefault("events", read_events(url)))
            viewer.start()
            deadline = time.monotonic() + 60
            while json.loads(get(page(url, "state"))[1])["state"]["counts"]["running"] < 1:
                assert time.monotonic() < deadline, "no task ever ran"
                time.sleep(0.05)
            release.touch()
            graph = run.wait(timeout=60)
            viewer.join(30)
        finally:
            release.touch()
            run.cancel()
    final = [data for _, event, data in box["events"] if event == "state"][-1]
    assert final["ended"] and final["runner"] == "run_dask"
    expected = statuses(graph)
    assert (
        {k: final["counts"][k] for k in ("done", "failed", "skipped")}
        == {
            "done": sum(s == "done" for s in expected.values()),
            "failed": sum(s == "failed" for s in expected.values()),
            "skipped": sum(s == "skipped" for s in expected.values()),
        }
        == {"done": 4, "failed": 1, "skipped": 1}
    )
    assert not left_by_pages()
