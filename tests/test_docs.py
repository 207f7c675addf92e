"""Every code block of the documentation runs, so no snippet can rot.

The pages are ``docs/**/*.md`` and ``README.md``; a line ``--8<-- "path"``
(the ``pymdownx.snippets`` include the site is built with) is replaced by the
file it names, so included files (``CHANGELOG.md``, ``benchmarks/README.md``)
are checked as part of the page that shows them.

What happens to a fenced block depends on its language and on an HTML comment
on the line right before its opening fence (invisible on the site and on
GitHub):

* ``python``: executed.  A page's python blocks run in order in one namespace
  (``__name__ == "__main__"``, so ``if __name__ == "__main__":`` blocks run),
  in a fresh temporary working directory, under one per-page time limit.
* ``bash``: run with ``bash -euo pipefail`` in the same directory (where
  ``examples/`` is the repository's, so ``taskmap run examples/pipeline.py``
  works as written), after the page's python blocks before it.
* ``<!-- file: NAME -->``: the block (any language) is the content of a file
  the page talks about; it is written to ``NAME`` in that directory instead of
  being run, for the blocks after it to use.
* ``<!-- not-run: REASON -->``: the block is not run.  A reason is required,
  and a block of a language that runs without one of these comments runs.
* ``text`` (what a command prints), ``json``, ``toml``, ``ini``: shown, not run.

Any other language, or a fence without one, fails: the page must say what its
block is.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import taskmap

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [*sorted(p.relative_to(REPO).as_posix() for p in DOCS.rglob("*.md")), "README.md"]
PAGE_TIMEOUT = 30  # seconds for all the blocks of one page

RUN = {"python", "bash"}
SHOWN = {"text", "json", "toml", "ini"}

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<lang>[^`\s]*)[^`]*$")
MARK = re.compile(r"^\s*<!--\s*(?P<kind>not-run|file)\s*:?\s*(?P<arg>.*?)\s*-->\s*$")
INCLUDE = re.compile(r'^\s*--8<--\s+"(?P<path>[^"]+)"\s*$')


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based, in the page or in the file it includes
    source: str  # the file the block is written in
    lang: str
    code: str
    mark: str | None  # "not-run" | "file" | None
    arg: str  # the reason, or the file name

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _lines(path: str) -> list[tuple[str, int, str]]:
    """(file, line number, text) of a page with its includes expanded."""
    out = []
    for n, text in enumerate((REPO / path).read_text(encoding="utf-8").splitlines(), 1):
        include = INCLUDE.match(text)
        if include:
            out.extend(_lines(include["path"]))
        else:
            out.append((path, n, text))
    return out


def blocks(page: str) -> list[Block]:
    found = []
    lines = _lines(page)
    i = 0
    while i < len(lines):
        source, n, text = lines[i]
        opening = FENCE.match(text)
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        mark = MARK.match(lines[i - 1][2]) if i > 0 else None
        body = []
        i += 1
        while i < len(lines) and lines[i][2].strip() != fence:
            body.append(lines[i][2][indent:])
            i += 1
        i += 1
        code = "\n".join(body) + "\n"
        found.append(
            Block(page, n, source, opening["lang"], code, mark["kind"] if mark else None, mark["arg"] if mark else "")
        )
    return found


ALL = {page: blocks(page) for page in PAGES}


def test_the_pages_have_blocks_and_every_block_says_what_it_is():
    assert sum(len(b) for b in ALL.values()) > 50
    problems = []
    for page_blocks in ALL.values():
        for b in page_blocks:
            if b.mark == "not-run" and not b.arg:
                problems.append(f"{b.where}: `not-run` needs a reason: <!-- not-run: why -->")
            elif b.mark == "file" and not b.arg:
                problems.append(f"{b.where}: `file` needs a file name: <!-- file: name.py -->")
            elif b.mark is None and b.lang not in RUN | SHOWN:
                problems.append(
                    f"{b.where}: a ```{b.lang} block runs nowhere: "
                    f"mark it (not-run: reason) or use one of {sorted(RUN | SHOWN)}"
                )
    assert not problems, "\n".join(problems)


def test_no_page_shows_an_api_as_not_there_yet():
    """Every public name a page shows exists: no block is left out of the
    run for an API that has not landed (load mode's page ran that way until
    issue 22 landed)."""
    for page_blocks in ALL.values():
        for b in page_blocks:
            assert not (b.mark == "not-run" and "lands with issue" in b.arg), b.where
    assert "load" in taskmap.__all__


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["TMPDIR"] = str(tmp)
    env.pop("COLUMNS", None)
    return env


def _runnable(page: str) -> bool:
    return any(b.mark != "not-run" and (b.mark == "file" or b.lang in RUN) for b in ALL[page])


@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)])
def test_the_blocks_of_a_page_run(page, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    namespace: dict = {"__name__": "__main__"}
    deadline = time.monotonic() + PAGE_TIMEOUT
    for b in ALL[page]:
        if b.mark == "not-run" or (b.mark is None and b.lang not in RUN):
            continue
        if b.mark == "file":
            (work / b.arg).write_text(b.code, encoding="utf-8")
            continue
        left = deadline - time.monotonic()
        assert left > 0, f"{page}: its blocks took more than {PAGE_TIMEOUT} s (up to {b.where})"
        if b.lang == "python":
            try:
                exec(compile(b.code, b.where, "exec"), namespace)
            except BaseException as exc:
                raise AssertionError(f"the block at {b.where} raised {exc!r}") from exc
        else:
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", b.code],
                cwd=work,
                env=_env(tmp_path),
                capture_output=True,
                text=True,
                timeout=left,
                check=False,
            )
            assert proc.returncode == 0, (
                f"{b.where}: {shlex.quote(b.code.strip())} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
    assert time.monotonic() < deadline, f"{page}: its blocks took more than {PAGE_TIMEOUT} s"


# -- the reference: every public name, and what CI runs -----------------------------------


def _reference_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((DOCS / "reference").glob("*.md")))


def test_every_public_name_has_a_reference_entry_with_a_docstring():
    text = _reference_text()
    entries = set(re.findall(r"^::: (\S+)", text, re.M))
    missing = [name for name in taskmap.__all__ if f"taskmap.{name}" not in entries]
    assert not missing, f"public names without a `::: taskmap.NAME` entry in docs/reference/: {missing}"
    undocumented = [name for name in taskmap.__all__ if len((getattr(taskmap, name).__doc__ or "").strip()) < 40]
    assert not undocumented, f"public names whose docstring states no contract: {undocumented}"


def test_every_reference_entry_names_something_that_exists():
    """``mkdocs build --strict`` fails on these too; this says which, faster."""
    import importlib

    for target in re.findall(r"^::: (\S+)", _reference_text(), re.M):
        module, _, name = target.rpartition(".")
        try:
            importlib.import_module(target)
            continue
        except ImportError:
            pass
        assert hasattr(importlib.import_module(module), name), target


def test_the_readme_test_command_is_what_ci_runs():
    """The README's test command is ``.ci/run``'s commands, in the same order
    (``python -m X`` and ``X`` count as one; CI's ``--quiet`` and its pip
    upgrade aside), with the docs extra and the strict build of the site."""

    def norm(step: str) -> str:
        step = re.sub(r"\bpython -m (pip|ruff|mypy|mkdocs)\b", r"\1", step)
        return step.replace(" --quiet", "")

    command = next(b.code for b in ALL["README.md"] if b.lang == "bash" and "pytest" in b.code)
    readme = norm(" ".join(command.split()))
    at = 0
    for line in (REPO / ".ci" / "run").read_text().splitlines():
        line = norm(line.strip())
        if not line or line.startswith(("#", "set ", "cd ", "pip install --upgrade pip")):
            continue
        found = readme.find(line.strip("()"), at)
        assert found >= 0, f"{line!r} of .ci/run is not in the README's test command after position {at}"
        at = found + len(line.strip("()"))
    assert "pip install -e '.[test,docs]'" in readme
    assert "mkdocs build --strict" in readme
