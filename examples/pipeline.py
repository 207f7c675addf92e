"""The README's quick-start graph as a pipeline file for the command line.

    taskmap run examples/pipeline.py                 # run it, print the summary
    taskmap run examples/pipeline.py --trace run.json --progress
    taskmap graph examples/pipeline.py --format mermaid

A pipeline file defines the dicts ``funcs`` and ``dependencies`` (and
optionally ``io_bound``), as here, or a graph object made with
``taskmap.create_graph``.  Functions defined in it reach the worker
processes whole (cloudpickle pickles them by value).
"""

import asyncio
import time


async def io_bound_a():
    await asyncio.sleep(0.2)
    return "io_a"


async def io_bound_b(x):
    await asyncio.sleep(0.2)
    return x + " io_b"


async def cpu_bound_a(x):
    time.sleep(0.2)  # stands in for 0.2 s of computation
    return x + " cpu_a"


async def cpu_bound_b():
    time.sleep(0.2)
    return "cpu_b"


funcs = {
    "io_bound_a": io_bound_a,
    "io_bound_b": io_bound_b,
    "cpu_bound_a": cpu_bound_a,
    "cpu_bound_b": cpu_bound_b,
}

dependencies = {
    "io_bound_a": [],
    "io_bound_b": ["cpu_bound_b"],
    "cpu_bound_a": ["io_bound_a"],
    "cpu_bound_b": [],
}

io_bound = ["io_bound_a", "io_bound_b"]
