"""Helpers shared by the tests that kill processes: start a pipeline script
in its own process, once its slow tasks say they run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def start_pipeline(tmp_path: Path, script: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """Run ``script`` (a pipeline that prints ``PID <pid>`` and whose slow
    tasks each create a file in ``$MARK_DIR``) in a new process; return it
    once two slow tasks run, i.e. both workers are busy."""
    path = tmp_path / "pipeline.py"
    # Ctrl-C raises KeyboardInterrupt in the script, as from a terminal, even
    # when pytest itself was started with SIGINT ignored (a shell's
    # background job): the ignored signal would be inherited, and the tests
    # that interrupt the pipeline with SIGINT would wait for it in vain
    path.write_text("import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n" + script)
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
