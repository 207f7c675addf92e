"""The original package's own test file, unchanged, against this package.

``taskmap==0.0.6`` is downloaded from PyPI (once per session), only its
``taskmap/taskmap_test.py`` is extracted, into a folder with no ``taskmap``
package in it, so ``import taskmap`` there resolves to this repository.  The
file runs in a pytest subprocess (its tests write log files to the working
directory, so that is a temporary directory) and every one of its tests must
pass.  No network is a failure, not a skip: CI has PyPI.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REQUIREMENT = "taskmap==0.0.6"
MEMBER = "taskmap/taskmap_test.py"
# sha256 of taskmap/taskmap_test.py in taskmap-0.0.6-py3-none-any.whl
MEMBER_SHA256 = "2f06cc1f8c3b5361b4677dfd7141a6e0687f6923857448fc54c1429a64a53cd6"

DOWNLOAD_TIMEOUT = 60
SUITE_TIMEOUT = 120
TEST_TIMEOUT = DOWNLOAD_TIMEOUT + SUITE_TIMEOUT + 30

ORIGINAL_TESTS = [
    "test_graph_ready",
    "test_graph_ordered_ready",
    "test_tasks_can_be_marked_done",
    "test_cached_results_are_used",
    "test_graph_ready_after_task_completed",
    "test_mark_as_done_except",
    "test_cyclic_dependency",
    "test_absent_tasks",
    "test_all_names_are_funcs",
    "test_logging_no_write",
    "test_logging_filename_change",
    "test_default_logging_severity_level",
    "test_explicit_logging_severity_level",
    "test_run_pass_args",
    "test_sync_error_handling",
    "test_async_error_handling",
    "test_rebuilding_graph_from_failure",
    "test_get_all_children",
    "test_run_parallel",
    "test_run_async",
    "test_run_parllel_async",
    "test_async_speed",
    "test_parallel_speed",
    "test_async_parallel_speed",
    "test_async_parallel_demo",
]


@dataclass
class SuiteRun:
    error: str | None = None  # why the suite could not run at all
    outcomes: dict = field(default_factory=dict)  # test name -> (outcome, details)
    output: str = ""


def _run(cmd, timeout, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in its own session, the whole group killed on timeout
    (the suite's parallel runners start worker processes)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def _download(into: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        REQUIREMENT,
        "-d",
        str(into),
    ]
    try:
        proc = _run(cmd, DOWNLOAD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`{' '.join(cmd)}` timed out after {DOWNLOAD_TIMEOUT} s:\n{exc.output}") from None
    wheels = sorted(into.glob("taskmap-0.0.6-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {REQUIREMENT} from PyPI (is there no network?); the original "
            f"suite must run, so this is a failure, not a skip.\n`{' '.join(cmd)}` said:\n{proc.stdout}"
        )
    return wheels[0]


def _extract(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MEMBER_SHA256:
        raise RuntimeError(f"{MEMBER} in {wheel.name} has sha256 {digest}, expected {MEMBER_SHA256}")
    into.mkdir()
    path = into / "taskmap_test.py"
    path.write_bytes(data)
    assert not (into / "taskmap").exists()
    return path


def _parse_junit(report: Path) -> dict:
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        outcome, details = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                details = f"{child.get('message', '')}\n{child.text or ''}"
                break
            if child.tag == "skipped":
                outcome, details = "skipped", child.get("message", "")
        outcomes[name] = (outcome, details)
    return outcomes


@pytest.fixture(scope="session")
def original_suite(tmp_path_factory) -> SuiteRun:
    """Download, extract and run the original test file once per session."""
    root = tmp_path_factory.mktemp("original-taskmap")
    result = SuiteRun()
    try:
        wheel = _download(root / "download")
        test_file = _extract(wheel, root / "suite")
    except (RuntimeError, OSError, KeyError, zipfile.BadZipFile) as exc:
        result.error = str(exc)
        return result

    cwd = root / "cwd"  # the original tests write their log files here
    cwd.mkdir()
    report = root / "report.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    where = _run([sys.executable, "-c", "import taskmap; print(taskmap.__file__)"], 30, cwd=cwd, env=env)
    if Path(where.stdout.strip()).resolve() != (REPO / "taskmap" / "__init__.py").resolve():
        result.error = f"`import taskmap` in the suite's environment gives {where.stdout.strip()!r}, not this repo"
        return result

    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        str(test_file),
        "-q",
        f"--junitxml={report}",
        "--timeout=30",
    ]
    try:
        proc = _run(cmd, SUITE_TIMEOUT, cwd=cwd, env=env)
    except subprocess.TimeoutExpired as exc:
        result.error = f"the original suite did not finish within {SUITE_TIMEOUT} s:\n{exc.output}"
        return result
    result.output = proc.stdout
    if not report.exists():
        result.error = f"the original suite produced no report (exit code {proc.returncode}):\n{proc.stdout}"
        return result
    result.outcomes = _parse_junit(report)
    return result


@pytest.mark.timeout(TEST_TIMEOUT)
def test_original_suite_collects_every_test(original_suite):
    if original_suite.error:
        pytest.fail(original_suite.error, pytrace=False)
    assert sorted(original_suite.outcomes) == sorted(ORIGINAL_TESTS), original_suite.output


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("name", ORIGINAL_TESTS)
def test_original(original_suite, name):
    if original_suite.error:
        pytest.fail(original_suite.error, pytrace=False)
    outcome, details = original_suite.outcomes.get(name, ("not run", original_suite.output))
    if outcome != "passed":
        pytest.fail(f"original test {name} {outcome}:\n{details}", pytrace=False)
