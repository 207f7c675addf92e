"""Loading a pipeline file for the command line: the module, and the graph in it.

A pipeline file is a Python file that defines either a graph object
(``graph = taskmap.create_graph(...)``) or the dicts ``funcs`` and
``dependencies`` (and, optionally, the list ``io_bound``), as the arguments
of :func:`taskmap.create_graph`.  ``path.py:name`` picks the graph (or a
function taking no arguments that returns one) named ``name``; without a
name, a graph named ``graph``, else the only graph in the module, else
``funcs``/``dependencies``.

The file is imported under its own name (the file's directory first on
``sys.path``, so it can import modules beside it; ``if __name__ ==
"__main__":`` blocks do not run), and registered with cloudpickle to be
pickled by value: worker processes, which cannot import it, receive its
functions whole.

Errors in the file (a syntax error, an exception while importing it) raise
:class:`PipelineError`, whose message is ``file:line: Type: message`` and
the offending source line, without a long traceback.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType

import cloudpickle

from taskmap.graph import Graph, create_graph

_loaded = itertools.count(1)


class PipelineError(Exception):
    """A pipeline file that cannot be loaded or holds no usable graph."""


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``'dir/pipe.py:graph'`` -> ``(Path('dir/pipe.py'), 'graph')``; the
    name is optional."""
    path, sep, name = spec.rpartition(":")
    if sep and name.isidentifier() and path:
        return Path(path), name
    return Path(spec), None


def load_graph(spec: str) -> Graph:
    """The graph a pipeline spec (``file.py[:name]``) defines."""
    path, name = split_spec(spec)
    module = load_module(path)
    return find_graph(module, name, path)


def load_module(path: Path) -> ModuleType:
    """Import the pipeline file at ``path`` (see the module docstring)."""
    if not path.is_file():
        raise PipelineError(f"{path}: no such file")
    path = path.resolve()
    name = path.stem if path.stem.isidentifier() else "pipeline"
    if name in sys.modules:
        # never replace a module already imported (a stdlib module, a second pipeline)
        name = f"taskmap_pipeline_{next(_loaded)}_{name}"
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PipelineError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report where, not how we got there
        del sys.modules[name]
        raise PipelineError(describe_exception(exc, path)) from exc
    cloudpickle.register_pickle_by_value(module)
    return module


def find_graph(module: ModuleType, name: str | None, path: Path) -> Graph:
    """The graph of a loaded pipeline module (see the module docstring)."""
    shown = show_path(path)
    if name is not None:
        if not hasattr(module, name):
            raise PipelineError(f"{shown}: defines no {name!r}{_graphs_hint(module)}")
        obj = getattr(module, name)
        if isinstance(obj, Graph):
            return obj
        if callable(obj):
            try:
                obj = obj()
            except Exception as exc:
                raise PipelineError(describe_exception(exc, path)) from exc
            if isinstance(obj, Graph):
                return obj
            raise PipelineError(f"{shown}: {name}() returned a {type(obj).__name__}, not a taskmap graph")
        raise PipelineError(f"{shown}: {name!r} is a {type(obj).__name__}, not a taskmap graph")
    graphs = {k: v for k, v in vars(module).items() if isinstance(v, Graph)}
    if isinstance(graphs.get("graph"), Graph):
        return graphs["graph"]
    if len(graphs) == 1:
        return next(iter(graphs.values()))
    if len(graphs) > 1:
        raise PipelineError(
            f"{shown}: defines several graphs ({', '.join(sorted(graphs))}); choose one as {shown}:NAME"
        )
    funcs, deps = getattr(module, "funcs", None), getattr(module, "dependencies", None)
    if isinstance(funcs, dict) and isinstance(deps, dict):
        try:
            return create_graph(funcs, deps, io_bound=getattr(module, "io_bound", None), name=path.stem)
        except (ValueError, TypeError) as exc:
            raise PipelineError(f"{shown}: invalid graph: {exc}") from exc
    raise PipelineError(
        f"{shown}: defines no taskmap graph: expected a graph object "
        "(e.g. `graph = taskmap.create_graph(...)`) or dicts named `funcs` and "
        "`dependencies` (and optionally a list `io_bound`)"
    )


def _graphs_hint(module: ModuleType) -> str:
    graphs = sorted(k for k, v in vars(module).items() if isinstance(v, Graph))
    return f" (its graphs: {', '.join(graphs)})" if graphs else ""


def show_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the current directory when it is below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def describe_exception(exc: BaseException, path: Path | None = None) -> str:
    """``file:line: Type: message`` and the source line, for an exception
    raised by user code.  The line is the last frame in ``path`` (the
    pipeline file) when there is one, else where it was raised."""
    if isinstance(exc, SyntaxError) and exc.filename:
        text = f"{show_path(exc.filename)}:{exc.lineno}: SyntaxError: {exc.msg}"
        if exc.text:
            text += f"\n    {exc.text.strip()}"
        return text
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return f"{type(exc).__name__}: {exc}"
    in_file = [f for f in frames if path is not None and _same_file(f.filename, path)]
    frame = in_file[-1] if in_file else frames[-1]
    text = f"{show_path(frame.filename)}:{frame.lineno}: {type(exc).__name__}: {exc}"
    deepest = frames[-1]
    if deepest is not frame:
        text += f" (raised at {show_path(deepest.filename)}:{deepest.lineno})"
    if frame.line:
        text += f"\n    {frame.line.strip()}"
    return text


_FRAME_LINE = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)', re.MULTILINE)


def where_raised(error: BaseException, pipeline: Path | None = None) -> str | None:
    """``file:line`` where a task's exception was raised: from its own
    traceback, or from the worker's traceback text for a task that ran in a
    worker process.  None when unknown.

    cloudpickle (3.1) names the file of every function it pickles by value
    ``<dynamic-code>``; the functions of a loaded pipeline are the ones
    pickled by value, so such a frame is reported as ``pipeline`` when given.
    """
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    if frames:
        return f"{show_path(frames[-1].filename)}:{frames[-1].lineno}"
    text = getattr(error, "remote_traceback", None)
    if isinstance(text, str):
        found = list(_FRAME_LINE.finditer(text))
        if found:
            last = found[-1]
            filename = last["file"]
            if filename == "<dynamic-code>" and pipeline is not None:
                filename = str(pipeline)
            return f"{show_path(filename)}:{last['line']}"
    return None


def _same_file(filename: str, path: Path) -> bool:
    try:
        return Path(filename).resolve() == path.resolve()
    except OSError:
        return False
