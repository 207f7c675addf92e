"""Suite-wide checks: every test that starts processes leaves none behind."""

from __future__ import annotations

import os

import pytest


def _children() -> set[int]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a test dependency
        return set()
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


def _is_pool_worker_or_helper(pid: int) -> bool:
    """Warm-pool workers and loky's resource tracker may outlive a test;
    they are checked once, at the end of the session."""
    from taskmap.runtime.pool import pool_worker_pids

    if pid in pool_worker_pids():
        return True
    try:
        import psutil

        cmd = " ".join(psutil.Process(pid).cmdline())
    except Exception:  # noqa: BLE001 - it ended meanwhile
        return True
    return "resource_tracker" in cmd


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Fail a test that leaves a child process other than the warm pool."""
    before = _children()
    yield
    leaked = {pid for pid in _children() - before if not _is_pool_worker_or_helper(pid)}
    if leaked:
        import psutil

        for pid in leaked:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        pytest.fail(f"test left child processes behind: {sorted(leaked)}")


@pytest.fixture(autouse=True, scope="session")
def pool_shuts_down_cleanly():
    """At the end of the session the warm pool stops and no worker survives."""
    yield
    from taskmap.runtime.pool import shutdown_pool

    shutdown_pool()
    survivors = {pid for pid in _children() if not _is_pool_worker_or_helper(pid)}
    assert not survivors, f"processes survived the pool's shutdown: {sorted(survivors)}"
