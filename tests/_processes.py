"""Helpers shared by the tests that kill processes: die at a chosen moment
inside a worker, and start a pipeline script in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest


def exit_when_a_thread_is_in(
    function: str, condition: Callable, exitcode: int, before_exit: Callable | None = None, seconds: float = 10
) -> None:
    """From a watcher thread, ``os._exit(exitcode)`` as soon as another thread
    of this process runs ``function`` with ``condition(frame.f_locals)`` true,
    after calling ``before_exit()`` (checked every 0.1 ms for ``seconds``; not
    seen: the process lives on and the test fails on its own)."""

    def watch():
        me = threading.get_ident()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for ident, frame in sys._current_frames().items():
                while ident != me and frame is not None:
                    if frame.f_code.co_name == function and condition(frame.f_locals):
                        if before_exit is not None:
                            before_exit()
                        os._exit(exitcode)
                    frame = frame.f_back
            time.sleep(0.0001)

    threading.Thread(target=watch, daemon=True).start()


def start_pipeline(tmp_path: Path, script: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """Run ``script`` (a pipeline that prints ``PID <pid>`` and whose slow
    tasks each create a file in ``$MARK_DIR``) in a new process; return it
    once two slow tasks run, i.e. both workers are busy."""
    path = tmp_path / "pipeline.py"
    path.write_text(script)
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MARK_DIR": str(marks), **(env or {})},
        **popen,
    )
    line = proc.stdout.readline()
    assert line.startswith("PID"), line + proc.stderr.read()
    # a busy child may only be a worker still importing, before any task ran
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(marks.iterdir())) < 2:
        time.sleep(0.02)
    if len(list(marks.iterdir())) < 2:
        proc.kill()
        proc.communicate()
        pytest.fail("the slow tasks never started on both workers")
    return proc
