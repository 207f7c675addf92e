"""The ``taskmap`` command line (also ``python -m taskmap``).

::

    taskmap run pipeline.py[:name] [--ncores N] [--runner R] [--progress | --no-progress]
                [--trace FILE] [--raise-errors] [--checkpoint FILE] [--summary | --no-summary]
                [--limit NAME=N ...] [--rate NAME=R ...] [--output pass|prefix|capture]
                [--capture-level LEVEL] [--dashboard] [--dashboard-port PORT]
    taskmap graph pipeline.py[:name] [--format dot|mermaid|svg|png|pdf] [-o FILE] [--checkpoint FILE]
    taskmap rerun-failed pipeline.py[:name] --checkpoint FILE [the options of run]

A pipeline file defines a graph object or the dicts ``funcs`` and
``dependencies`` (and optionally ``io_bound``): see :mod:`taskmap.loader`.

Tasks' output is shown with each line prefixed ``[task] `` (``--output
prefix``, the default here; the library's is ``pass``), and a failed task's
last lines are printed under its failure.

Exit status: 0 when every task succeeded; 1 when a task failed (or was
skipped, or not run); 2 for a usage error or a pipeline file that cannot be
loaded (reported as ``file:line: message``); 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from taskmap import __version__
from taskmap.errors import TaskFailedError, TaskmapError
from taskmap.graph import Graph
from taskmap.loader import (
    PipelineError,
    describe_exception,
    load_graph,
    show_path,
    split_spec,
    where_raised,
)
from taskmap.observe.status import DONE, FAILED, statuses
from taskmap.runtime.capture import tail_lines

OK = 0
TASK_FAILED = 1
USAGE = 2
INTERRUPTED = 130

RUNNERS = ("parallel-async", "parallel", "async", "sequential")


class UsageError(Exception):
    """A command line that cannot be carried out (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the
    exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse reported
        return exit_.code if isinstance(exit_.code, int) else USAGE
    try:
        return args.command(args)
    except (PipelineError, UsageError) as exc:
        print(f"taskmap: error: {exc}", file=sys.stderr)
        return USAGE


# -- the parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmap",
        description="Run a taskmap pipeline, draw its graph, rerun its failed tasks.",
        epilog="A pipeline file defines a graph (`graph = taskmap.create_graph(...)`) or the "
        "dicts `funcs` and `dependencies` (and optionally `io_bound`). "
        "Exit status: 0 all tasks succeeded, 1 a task failed, 2 usage or pipeline "
        "error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"taskmap {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    pipeline = argparse.ArgumentParser(add_help=False)
    pipeline.add_argument(
        "pipeline",
        metavar="PIPELINE.py[:NAME]",
        help="the pipeline file; NAME picks a graph (or a function returning one) in it",
    )

    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("run options")
    group.add_argument(
        "--ncores",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker processes of the parallel runners (default: half the cores for parallel-async, all for parallel)",
    )
    group.add_argument(
        "--runner",
        choices=RUNNERS,
        default="parallel-async",
        help="parallel-async: run_parallel_async (default); parallel: "
        "run_parallel; async: run_async (one event loop, this process); "
        "sequential: run (one task at a time, this process)",
    )
    group.add_argument(
        "--limit",
        action="append",
        type=_named_number(int),
        default=[],
        metavar="NAME=N",
        help="at most N tasks using resource NAME (create_graph(uses=...)) at once; repeatable",
    )
    group.add_argument(
        "--rate",
        action="append",
        type=_named_number(float),
        default=[],
        metavar="NAME=R",
        help="at most R starts a second of tasks using resource NAME; repeatable",
    )
    group.add_argument(
        "--shm-threshold",
        type=_shm_threshold,
        default="auto",
        metavar="SIZE",
        help="parallel runners: results with buffers of at least SIZE bytes "
        "(suffix K or M allowed) travel through shared memory; 'off' "
        "sends everything through the pipes (default: "
        "$TASKMAP_SHM_THRESHOLD, else 256K)",
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    group.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the run's timeline to FILE (Chrome trace-event JSON; "
        "open it in https://ui.perfetto.dev or chrome://tracing)",
    )
    group.add_argument(
        "--dashboard",
        action="store_true",
        help="serve a live page of the run on 127.0.0.1 while it lasts; its address, "
        "with the token it needs, is printed on stderr when the run starts",
    )
    group.add_argument(
        "--dashboard-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="the live page's port (implies --dashboard; default: a free one)",
    )
    group.add_argument(
        "--output",
        choices=("pass", "prefix", "capture"),
        default="prefix",
        help="what is shown of what tasks print and log: prefix (default): each line "
        "as '[task] line'; pass: each line as it is; capture: nothing (a failed "
        "task's last lines are printed under its failure all the same)",
    )
    group.add_argument(
        "--capture-level",
        default="INFO",
        metavar="LEVEL",
        help="the least level of a log record kept as a task's output (default INFO; "
        "a record is kept only when its logger emits it)",
    )
    group.add_argument("--raise-errors", action="store_true", help="stop at the first failed task")
    group.add_argument(
        "--summary",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print the summary table after the run (default: on)",
    )

    run = commands.add_parser(
        "run",
        parents=[pipeline, options],
        help="run a pipeline",
        description="Run every task of a pipeline and print a summary.",
    )
    run.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="FILE",
        help="record each outcome in this checkpoint store (created if missing); "
        "a rerun with the same FILE keeps what succeeded",
    )
    run.add_argument(
        "--take-over",
        action="store_true",
        help="take over the checkpoint store's hold left by a run on another "
        "host (a shared filesystem) that is known to be gone",
    )
    run.set_defaults(command=cmd_run)

    from taskmap.loadmode.cli import add_parser as add_load_parser

    add_load_parser(commands, _positive_int, _named_number)

    graph = commands.add_parser(
        "graph",
        parents=[pipeline],
        help="print or draw the graph of a pipeline",
        description="Print the graph of a pipeline as Graphviz DOT or mermaid text, or draw "
        "it with Graphviz's `dot` program (svg, png, pdf: needs -o and Graphviz).",
    )
    graph.add_argument(
        "--format",
        "-f",
        default="dot",
        choices=("dot", "mermaid", "svg", "png", "pdf"),
        help="output format (default: dot)",
    )
    graph.add_argument(
        "--output", "-o", type=Path, default=None, metavar="FILE", help="write to FILE instead of stdout"
    )
    graph.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="FILE",
        help="colour the tasks by what this checkpoint store holds (done, failed, "
        "skipped below a failure, not run); the store is only read",
    )
    graph.set_defaults(command=cmd_graph)

    rerun = commands.add_parser(
        "rerun-failed",
        parents=[pipeline, options],
        help="rerun the failed tasks recorded in a checkpoint store",
        description="Rerun the tasks whose last outcome in the checkpoint store is a failure, "
        "with their descendants (and tasks the last run did not finish); stored "
        "successes are restored, not rerun.",
    )
    rerun.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        metavar="FILE",
        help="the checkpoint store a `taskmap run --checkpoint FILE` wrote",
    )
    rerun.add_argument(
        "--take-over",
        action="store_true",
        help="take over the checkpoint store's hold left by a run on another "
        "host (a shared filesystem) that is known to be gone",
    )
    rerun.set_defaults(command=cmd_rerun_failed)
    return parser


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {n}")
    return n


# -- the commands -----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """``taskmap run``: load, run, report."""
    _check_trace_path(args.trace)
    graph = load_graph(args.pipeline)
    if args.checkpoint is None:
        return run_and_report(graph, args)
    store = _open_store(args.checkpoint, args.take_over)
    try:
        graph.checkpoint = store
        return run_and_report(graph, args)
    finally:
        store.close()


def cmd_rerun_failed(args: argparse.Namespace) -> int:
    """``taskmap rerun-failed``: rerun what the checkpoint store says failed."""
    _check_trace_path(args.trace)
    if not args.checkpoint.is_file():
        raise UsageError(
            f"no checkpoint store at {args.checkpoint}; record one with "
            f"`taskmap run {args.pipeline} --checkpoint {args.checkpoint}`"
        )
    graph = load_graph(args.pipeline)
    store = _open_store(args.checkpoint, args.take_over)
    try:
        failed = store.failed_tasks()
        if not failed:
            print(f"no failed tasks in {show_path(args.checkpoint)}: nothing to rerun")
            return OK
        print(
            f"rerunning {len(failed)} failed {'task' if len(failed) == 1 else 'tasks'} "
            f"and their descendants: {', '.join(map(str, failed))}",
            file=sys.stderr,
        )
        for task in failed:
            entry = store.entry(task)
            if entry is not None and entry.output:
                print(f"last output of {task} when it failed:", file=sys.stderr)
                _print_indented(entry.output)
        graph.checkpoint = store
        return run_and_report(graph, args)
    finally:
        store.close()


def cmd_graph(args: argparse.Namespace) -> int:
    """``taskmap graph``: the graph as text, or drawn by Graphviz."""
    from taskmap.observe.export import render, to_dot, to_mermaid

    graph = load_graph(args.pipeline)
    status = None
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise UsageError(f"no checkpoint store at {args.checkpoint}")
        store = _open_store(args.checkpoint)
        try:
            status = store.statuses(graph)
        finally:
            store.close()
    if args.format in ("dot", "mermaid"):
        text = to_dot(graph, status=status) if args.format == "dot" else to_mermaid(graph, status=status)
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
        return OK
    if args.output is None:
        raise UsageError(f"--format {args.format} draws a picture: give a file with -o FILE")
    try:
        render(graph, args.output, args.format, status)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from exc
    return OK


# -- running and reporting ------------------------------------------------------------


def run_and_report(graph: Graph, args: argparse.Namespace) -> int:
    """Run ``graph`` with the run options of ``args``; print the failures to
    stderr and the summary to stdout; return the exit status."""
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    runner = _runner(args.runner, args.ncores, args.shm_threshold)
    status = OK
    stopped: BaseException | None = None
    bounds: dict[str, Any] = {}
    if args.limit:
        bounds["limits"] = dict(args.limit)
    if args.rate:
        bounds["rates"] = dict(args.rate)
    if args.dashboard_port is not None:
        bounds["dashboard"] = args.dashboard_port
    elif args.dashboard:
        bounds["dashboard"] = True  # (the page's address is printed on stderr by taskmap.observe.dashboard)
    try:
        runner(
            graph,
            raise_errors=args.raise_errors,
            progress=progress,
            trace=args.trace,
            summary=args.summary,
            output=args.output,
            capture_level=args.capture_level,
            **bounds,
        )
    except TaskFailedError as exc:
        stopped = exc
        status = TASK_FAILED
    except KeyboardInterrupt:
        print("taskmap: interrupted", file=sys.stderr)
        status = INTERRUPTED
    except (TaskmapError, ValueError) as exc:  # a function that cannot be sent, a bad --limit
        raise UsageError(str(exc)) from exc

    pipeline = split_spec(args.pipeline)[0]
    by_status = statuses(graph)
    for task, st in by_status.items():
        if st == FAILED:
            error = graph.results[task]
            where = where_raised(error, pipeline)
            at = f" ({where})" if where else ""
            print(f"FAILED {task}: {type(error).__name__}: {error}{at}", file=sys.stderr)
            text = graph.output.get(task)
            if text:
                print(f"  its last output ({_CLI_TAIL_LINES} lines at most):", file=sys.stderr)
                _print_indented(tail_lines(text, _CLI_TAIL_LINES, 4000))
    if stopped is not None:
        print(f"taskmap: stopped at the first failure (--raise-errors): {stopped}", file=sys.stderr)
        cause = stopped.__cause__
        text = getattr(cause, "remote_traceback", None)
        if isinstance(text, str):
            # the pipeline's functions reach the workers by value, where
            # cloudpickle names their file <dynamic-code>: name it again
            text = text.replace('File "<dynamic-code>"', f'File "{show_path(pipeline)}"')
            print(text.rstrip(), file=sys.stderr)
        elif cause is not None:
            print(describe_exception(cause), file=sys.stderr)
    if args.summary:
        from taskmap.observe.summary import summarize

        print(summarize(graph), end="")
    if args.trace is not None and args.trace.exists():
        print(
            f"trace written to {show_path(args.trace)} (open it in https://ui.perfetto.dev or chrome://tracing)",
            file=sys.stderr,
        )
    if status == OK and any(st != DONE for st in by_status.values()):
        status = TASK_FAILED
    return status


_CLI_TAIL_LINES = 20


def _print_indented(text: str) -> None:
    for line in text.splitlines():
        print(f"    {line}", file=sys.stderr)


def _runner(
    kind: str, ncores: int | None, shm_threshold: int | Literal["auto"] | None = "auto"
) -> Callable[..., Graph]:
    from taskmap import runners

    if kind == "parallel-async":
        return lambda graph, **kw: runners.run_parallel_async(graph, ncores=ncores, shm_threshold=shm_threshold, **kw)
    if kind == "parallel":
        return lambda graph, **kw: runners.run_parallel(graph, ncores=ncores, shm_threshold=shm_threshold, **kw)
    if kind == "async":
        return runners.run_async
    return runners.run


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, not {n}")
    return n


def _named_number(kind: type) -> Callable[[str], tuple[str, Any]]:
    """``NAME=NUMBER`` for ``--limit``/``--rate``."""

    def parse(text: str) -> tuple[str, Any]:
        name, sep, number = text.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, not {text!r}")
        try:
            return name.strip(), kind(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{number!r} is not a {kind.__name__}") from None

    return parse


def _shm_threshold(text: str) -> int | Literal["auto"] | None:
    """``--shm-threshold``: ``auto`` (the runners' default), or what
    :func:`taskmap.runtime.shm.parse_threshold` reads (bytes, K or M, ``off``)."""
    if text.strip().lower() == "auto":
        return "auto"
    from taskmap.runtime.shm import parse_threshold

    try:
        return parse_threshold(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _check_trace_path(path: Path | None) -> None:
    if path is not None and not path.parent.resolve().is_dir():
        raise UsageError(f"--trace {path}: directory {path.parent} does not exist")


def _open_store(path: Path, take_over: bool = False):
    """The checkpoint store at ``path`` (taskmap.checkpoint, imported only when used)."""
    try:
        from taskmap.checkpoint import open_checkpoint
    except ImportError as exc:  # pragma: no cover - an install without the module
        raise UsageError(f"checkpoint stores are not available: {exc}") from exc
    try:
        return open_checkpoint(path, take_over=take_over)
    except TaskmapError as exc:  # CheckpointError: not a store, damaged, newer schema
        raise UsageError(str(exc)) from exc
