"""A warm worker behaves like a fresh one: what a worker process takes from
its caller at the start of each run, and what it puts back after each task.

The original package started fresh processes for every run; the warm pool
does not, so a worker would otherwise keep, across runs, code the caller has
since reloaded, an old working directory, environment and ``sys.path``, and
whatever a task did to its streams.  Data flow::

    caller, at the start of a run          worker, before any task of it
    CallerSetup.snapshot()  --SETUP-->     WorkerSetup.apply(): chdir, environ,
    (only what changed since that          sys.path, reload changed user modules
     worker last heard; nothing when       (dependencies first); a module whose
     nothing changed)                      reload fails, or whose file differs
                                           from the caller's, fails its tasks
                                           (StaleCodeError), never old code
                                           WorkerSetup.after_task(): cwd and
                                           sys.stdout/sys.stderr as before it

A *user module* is one loaded from a ``.py`` file outside the standard
library, site-packages and taskmap itself.  Its *version* is its file's
``(path, mtime_ns, size)``, read when the caller's module object or spec is
new to us (a first import, ``importlib.reload``, or a re-import after
``del sys.modules[name]``), so the version names the code the caller loaded,
not a later edit it never loaded.  A worker compares it with the version of
the copy it imported and reloads that module when they differ, as the caller
did: reloading keeps module globals, class identity and values pickled by
reference right, where pickling modules by value would not.

What a task can still change for the tasks that share its process (and is
not put back): threads it starts, module globals and caches, environment
variables (until the next run), and anything read once at import, such as
``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

from taskmap.errors import StaleCodeError

# (file, st_mtime_ns, st_size): msgpack carries it as a list
Version = tuple[str, int, int]


@functools.cache
def _excluded_roots() -> tuple[str, ...]:
    """Directories whose modules are not the user's: the standard library,
    site-packages (installed packages are not edited between runs), taskmap.
    (Computed on first use: a worker imports this module at start.)"""
    import site
    import sysconfig

    roots = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            roots.add(paths[key])
    for getter in (site.getsitepackages, site.getusersitepackages):
        try:
            found = getter()
        except Exception:  # noqa: BLE001 - some virtualenvs lack these
            continue
        roots.update([found] if isinstance(found, str) else found)
    roots.add(os.path.dirname(os.path.abspath(__file__)))
    return tuple(os.path.join(os.path.abspath(r), "") for r in roots if r)


_NOT_USER_NAMES = frozenset({"__main__", "__mp_main__"})


def user_module_file(name: str, module: Any) -> str | None:
    """The ``.py`` file of a user module, or None for any other module."""
    if name in _NOT_USER_NAMES:
        return None
    try:
        spec = module.__spec__
        origin: str | None = spec.origin if spec is not None and spec.has_location else None
    except Exception:  # noqa: BLE001 - odd objects live in sys.modules too
        return None
    if not origin or not origin.endswith(".py") or origin.startswith(_excluded_roots()):
        return None
    return origin


def file_version(path: str) -> Version | None:
    """(the file's real path, mtime, size): one file reached by two
    spellings (a symlinked directory, a relative ``sys.path`` entry) is one
    version, so a worker that imported it through the other is not stale."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size)


class CallerModules:
    """The versions of the caller's user modules, kept up to date cheaply:
    the whole of ``sys.modules`` is looked at only when its size changed; the
    known user modules are checked by identity (module object and spec)."""

    def __init__(self) -> None:
        # name -> (module, spec, version or None when it is not a user module)
        self._seen: dict[str, tuple[Any, Any, Version | None]] = {}
        self._size = -1
        self._versions: dict[str, Version] = {}

    def versions(self) -> dict[str, Version]:
        """name -> version of every user module imported in this process.
        The same dict object is returned while nothing changed."""
        modules = sys.modules
        changed = False
        for name in list(self._versions):
            module, spec, _ = self._seen[name]
            current = modules.get(name)
            if current is not module or getattr(current, "__spec__", None) is not spec:
                changed = True
                break
        if changed or len(modules) != self._size:
            self._rescan()
        return self._versions

    def _rescan(self) -> None:
        seen = self._seen
        versions: dict[str, Version] = {}
        items = list(sys.modules.items())  # (another thread may import meanwhile)
        for name, module in items:
            try:
                spec = module.__spec__
            except Exception:  # noqa: BLE001
                spec = None
            entry = seen.get(name)
            if entry is None or entry[0] is not module or entry[1] is not spec:
                path = user_module_file(name, module)
                entry = seen[name] = (module, spec, file_version(path) if path else None)
            if entry[2] is not None:
                versions[name] = entry[2]
        present = {name for name, _ in items}
        for name in [n for n in seen if n not in present]:
            del seen[name]
        self._size = len(items)
        if versions != self._versions:
            self._versions = versions


class CallerSetup(NamedTuple):
    """What a worker must share with the caller during a run."""

    cwd: str | None  # None: the caller's directory no longer exists
    environ: dict[bytes, bytes]
    path: list[str]
    modules: dict[str, Version]


_caller_modules = CallerModules()
_last: CallerSetup | None = None


def snapshot() -> CallerSetup:
    """The caller's setup now.  While nothing changed, the previous snapshot
    itself is returned, so comparing it with what a worker heard is an
    identity test."""
    global _last
    try:
        cwd: str | None = os.getcwd()
    except OSError:
        cwd = None
    environ = _environ_bytes()
    modules = _caller_modules.versions()
    last = _last
    if (
        last is not None
        and last.modules is modules
        and last.cwd == cwd
        and last.path == sys.path
        and last.environ == environ
    ):
        return last
    _last = CallerSetup(cwd, dict(environ), list(sys.path), modules)
    return _last


def _environ_bytes() -> dict[bytes, bytes]:
    # os.environb, read through its backing dict where it has one (a C-level
    # compare and copy, ~30x faster than going through the mapping); bytes,
    # because msgpack refuses the surrogate-escaped str os.environ may hold
    if os.name == "posix" and isinstance(getattr(os.environ, "_data", None), dict):
        data: dict[bytes, bytes] = os.environ._data  # type: ignore[attr-defined]  # (CPython's, not typed)
        return data
    return dict(os.environb)


def message_body(heard: CallerSetup | None, now: CallerSetup) -> dict[str, Any] | None:
    """The SETUP message body that brings a worker which heard ``heard``
    (None: nothing yet) to ``now``; None when nothing changed."""
    if heard is now:
        return None
    body: dict[str, Any] = {}
    if heard is None or heard.cwd != now.cwd:
        if now.cwd is not None:
            body["cwd"] = now.cwd
    if heard is None:
        body["environ"] = now.environ
    elif heard.environ != now.environ:
        old, new = heard.environ, now.environ
        body["env_set"] = {k: v for k, v in new.items() if old.get(k) != v}
        body["env_unset"] = [k for k in old if k not in new]
    if heard is None or heard.path != now.path:
        body["path"] = now.path
    if heard is None:
        body["modules"] = now.modules
    elif heard.modules is not now.modules:
        old_m, new_m = heard.modules, now.modules
        changed = {k: v for k, v in new_m.items() if old_m.get(k) != v}
        gone = [k for k in old_m if k not in new_m]
        if changed:
            body["modules"] = changed
        if gone:
            body["modules_gone"] = gone
    return body or None


# -- the worker's side -------------------------------------------------------


class _GuardedStream(io.TextIOWrapper):
    """A worker's sys.stdout/sys.stderr: closing it is noticed (it is rebuilt
    over the same descriptor after the task), at no cost per write."""

    disturbed: list[bool]

    def close(self) -> None:
        self.disturbed[0] = True
        super().close()


def _stream_over(fd: int, like: Any, disturbed: list[bool]) -> _GuardedStream:
    stream = _GuardedStream(
        open(fd, "wb", closefd=False),
        encoding=getattr(like, "encoding", None) or "utf-8",
        errors=getattr(like, "errors", None) or "backslashreplace",
        line_buffering=bool(getattr(like, "line_buffering", False)),
    )
    stream.disturbed = disturbed
    return stream


_disturbed = [False]
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # an audit hook sees every audited event of the process: one comparison
    if event == "os.chdir":
        _disturbed[0] = True


class WorkerSetup:
    """A worker's copy of its caller's setup, and the guard that puts cwd and
    standard streams back after each task.  Used by the worker's reader
    thread (apply, check_imports) and by whichever thread ends a task
    (after_task)."""

    def __init__(self) -> None:
        self.disturbed = _disturbed  # set by a chdir or by closing a guarded stream
        self.stdout: Any = sys.stdout
        self.stderr: Any = sys.stderr
        self.cwd = os.getcwd()
        # the caller's user modules, and the versions of the copies imported here
        self.caller_modules: dict[str, Version] = {}
        self.loaded: dict[str, Version | None] = {}
        # module name -> why its tasks cannot run (StaleCodeError's reason)
        self.broken: dict[str, str] = {}
        self.failed: set[str] = set()  # modules whose last reload here raised
        self.reloads = 0  # how many reloads so far: code resolved by name before one is looked up again

    def guard(self) -> None:
        """Watch this process's cwd and standard streams (in a worker process
        only: it replaces sys.stdout/sys.stderr and adds an audit hook)."""
        global _hooked
        if not _hooked:
            sys.addaudithook(_audit)
            _hooked = True
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, name)
            try:
                stream.flush()
                guarded = _stream_over(fd, stream, self.disturbed)
            except (OSError, ValueError, AttributeError):
                continue  # (no such descriptor: leave the stream as it is)
            setattr(sys, name, guarded)
            setattr(self, name, guarded)

    # -- at the start of a run ----------------------------------------------

    def apply(self, body: dict[str, Any]) -> None:
        """Take the caller's setup (a SETUP message body)."""
        cwd = body.get("cwd")
        if cwd is not None:
            try:
                os.chdir(cwd)
                self.cwd = cwd
            except OSError:
                pass  # (a directory only the caller can enter: tasks see the error)
        if "environ" in body:
            environ = body["environ"]
            for key in [k for k in os.environb if k not in environ]:
                del os.environb[key]
            os.environb.update(environ)
        for key in body.get("env_unset", ()):
            os.environb.pop(key, None)
        if body.get("env_set"):
            os.environb.update(body["env_set"])
        if "path" in body:
            sys.path[:] = body["path"]
            importlib.invalidate_caches()
        for name in body.get("modules_gone", ()):
            self.caller_modules.pop(name, None)
        if "modules" in body:
            self._take_modules({name: tuple(v) for name, v in body["modules"].items()})
        self.disturbed[0] = False

    def _take_modules(self, versions: dict[str, Version]) -> None:
        self.caller_modules.update(versions)
        stale = []
        for name, version in versions.items():
            module = sys.modules.get(name)
            if module is None:
                self.loaded.pop(name, None)
                continue  # imported when a task needs it, then checked
            if name in self.failed:
                stale.append(name)  # half executed: only a reload that works mends it
                continue
            mine = self.loaded[name] if name in self.loaded else self._record(name, module)
            if mine != version:
                stale.append(name)
            else:
                self.broken.pop(name, None)  # the caller caught up with the file
        for name in dependencies_first(stale):
            self._reload(name)

    def new_run(self) -> None:
        """Modules this worker imported that the caller has not: the caller
        would import them from their files now, so a changed file is
        reloaded here too."""
        for name, version in list(self.loaded.items()):
            if name in self.caller_modules or version is None:
                continue
            if (file_version(version[0]) != version or name in self.failed) and name in sys.modules:
                self._reload(name)

    def _record(self, name: str, module: Any) -> Version | None:
        path = user_module_file(name, module)
        version = self.loaded[name] = file_version(path) if path else None
        return version

    def _reload(self, name: str) -> None:
        module = sys.modules.get(name)
        if module is None:
            return
        self.reloads += 1
        try:
            importlib.reload(module)
        except BaseException as error:  # noqa: BLE001 - reported per task
            self._record(name, module)
            self.failed.add(name)
            self.broken[name] = f"reloading it in the worker failed: {type(error).__name__}: {error}"
            return
        self.failed.discard(name)
        self._check(name, self._record(name, module))

    def _check(self, name: str, version: Version | None) -> None:
        wanted = self.caller_modules.get(name)
        if wanted is not None and version != wanted:
            if version is not None and version[0] != wanted[0]:
                self.broken[name] = (
                    f"the worker found it in {version[0]}, the caller has it from {wanted[0]} "
                    "(sys.path now finds another file first); import it from where the caller did"
                )
            else:
                self.broken[name] = (
                    f"its file {wanted[0]} changed after the caller loaded it; "
                    "reload it in the caller (importlib.reload) so both run the same code"
                )
        else:
            self.broken.pop(name, None)

    def check_imports(self) -> None:
        """After functions were loaded: user modules imported meanwhile are
        compared with the caller's copies."""
        loaded = self.loaded
        for name in self.caller_modules:
            if name not in loaded:
                module = sys.modules.get(name)
                if module is not None:
                    self._check(name, self._record(name, module))

    def stale_error(self, func: Any) -> StaleCodeError | None:
        """The error to fail ``func``'s tasks with, if its module is broken."""
        if not self.broken:
            return None
        name = function_module(func)
        reason = self.broken.get(name) if name else None
        return StaleCodeError(name, reason) if name and reason else None  # (no name: no reason)

    # -- after each task ----------------------------------------------------

    def after_task(self) -> None:
        """Put cwd and the standard streams back if a task moved them (the
        test is three loads and compares when nothing happened)."""
        if self.disturbed[0] or sys.stdout is not self.stdout or sys.stderr is not self.stderr:
            self.restore()

    def restore(self) -> None:
        self.disturbed[0] = False
        try:
            if os.getcwd() != self.cwd:
                os.chdir(self.cwd)
        except OSError:
            try:
                os.chdir(self.cwd)
            except OSError:
                pass
        self.disturbed[0] = False  # (our own chdir raised the audit event)
        self.stdout = self._reopened(self.stdout, 1)
        self.stderr = self._reopened(self.stderr, 2)
        sys.stdout, sys.stderr = self.stdout, self.stderr

    def _reopened(self, stream: Any, fd: int) -> Any:
        """``stream``, with a closed guarded stream rebuilt over ``fd``
        (also inside the stand-in that captures task output)."""
        from taskmap.runtime.capture import OwnedStream

        if isinstance(stream, OwnedStream):
            stream.inner = self._reopened(stream.inner, fd)
            return stream
        if isinstance(stream, _GuardedStream) and stream.closed:
            return _stream_over(fd, stream, self.disturbed)
        return stream


def function_module(func: Any) -> str | None:
    """The module whose code ``func`` runs (through partials)."""
    while hasattr(func, "func") and hasattr(func, "args"):  # functools.partial
        func = func.func
    name = getattr(func, "__module__", None)
    return name if isinstance(name, str) else None


def dependencies_first(names: Iterable[str]) -> list[str]:
    """``names`` ordered so that a module comes after the modules among them
    whose objects it holds (``from a import f`` in b: a first)."""
    names = list(names)
    if len(names) < 2:
        return names
    wanted = set(names)
    needs: dict[str, set[str]] = {}
    for name in names:
        module = sys.modules.get(name)
        deps = set()
        for value in list(getattr(module, "__dict__", {}).values()):
            other = value.__name__ if type(value) is type(sys) else getattr(value, "__module__", None)
            if other in wanted and other != name:
                deps.add(other)
        needs[name] = deps
    ordered: list[str] = []
    placed: set[str] = set()

    def place(name: str, path: set[str]) -> None:
        if name in placed or name in path:
            return  # (a cycle: any order)
        path.add(name)
        for dep in sorted(needs[name]):
            place(dep, path)
        placed.add(name)
        ordered.append(name)

    for name in names:
        place(name, set())
    return ordered
