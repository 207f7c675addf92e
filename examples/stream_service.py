"""A small web service that runs a graph per request and streams each task's
result as it finishes (taskmap.start: a run as a handle).

    python examples/stream_service.py              # serves on 127.0.0.1:8765
    curl -N 'http://127.0.0.1:8765/report?cities=6'

``GET /report?cities=N&delay=S``: a graph per request.  For each of N cities
it fetches readings (an io task: ``await asyncio.sleep(S)`` stands in for an
HTTP call, a bit longer per city) and summarises them (a cpu task), then
writes a report over every city.  The response is NDJSON, chunked: one line
``{"task": ..., "status": ..., "result": ...}`` per task as it finishes,
then ``{"done": true, "seconds": ...}``.  The event loop serving requests
never blocks: it awaits the run and takes its results with ``async for``.
A client that disconnects cancels its run (its workers' tasks stop).
``GET /stats`` says how many runs finished, were cancelled, and run now.

Standard library only (asyncio streams); taskmap runs the graphs on worker
processes, two requests at once on workers of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import signal
import time
import urllib.parse

import taskmap

STATS = {"finished": 0, "cancelled": 0, "running": 0}


# -- the graph of one request ---------------------------------------------------


async def fetch_readings(city: int, delay: float) -> list[float]:
    """Stands in for an HTTP call to a weather API."""
    await asyncio.sleep(delay * (1 + city / 4))
    return [math.sin(city + k / 10) * 10 + 15 for k in range(2_000)]


def summarise(readings: list[float]) -> dict:
    mean = sum(readings) / len(readings)
    spread = math.sqrt(sum((r - mean) ** 2 for r in readings) / len(readings))
    return {"mean": round(mean, 3), "spread": round(spread, 3), "n": len(readings)}


def report(*summaries: dict) -> dict:
    return {"cities": len(summaries), "warmest": max(s["mean"] for s in summaries)}


def build_graph(cities: int, delay: float) -> taskmap.Graph:
    funcs: dict = {"report": report}
    deps: dict = {"report": []}
    for c in range(cities):
        funcs[f"fetch{c}"] = functools.partial(fetch_readings, c, delay)
        funcs[f"summary{c}"] = summarise
        deps[f"fetch{c}"] = []
        deps[f"summary{c}"] = [f"fetch{c}"]
        deps["report"].append(f"summary{c}")
    return taskmap.create_graph(funcs, deps, io_bound=[f"fetch{c}" for c in range(cities)])


def line_of(task, result) -> dict:
    if isinstance(result, BaseException):
        return {"task": task, "status": "failed", "error": repr(result)}
    if isinstance(result, str) and result.startswith("Ancestor task"):
        return {"task": task, "status": "skipped", "reason": result}
    if isinstance(result, list):  # the readings: too long for a line
        result = f"{len(result)} readings"
    return {"task": task, "status": "done", "result": result}


# -- the HTTP side ------------------------------------------------------------------


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # headers
        method, target, _ = request.decode("latin-1").split(" ", 2)
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query))
        if method == "GET" and url.path == "/report":
            await stream_report(reader, writer, int(query.get("cities", 6)), float(query.get("delay", 0.1)))
        elif method == "GET" and url.path == "/stats":
            await respond(writer, 200, json.dumps(STATS).encode())
        else:
            await respond(writer, 404, b'{"error": "not found"}')
    except (ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def respond(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()


async def stream_report(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cities: int, delay: float) -> None:
    # the client closing its end (EOF) cancels this handler, and so its run,
    # even while no result is ready to be written
    handler = asyncio.current_task()
    assert handler is not None

    def cancel_handler(_: asyncio.Task) -> None:
        handler.cancel()

    client_gone = asyncio.create_task(reader.read(1))
    client_gone.add_done_callback(cancel_handler)
    try:
        await _stream_report(writer, cities, delay)
    finally:
        client_gone.remove_done_callback(cancel_handler)
        client_gone.cancel()


async def _stream_report(writer: asyncio.StreamWriter, cities: int, delay: float) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    started = time.monotonic()
    run = taskmap.start(build_graph(cities, delay), "run_parallel_async", ncores=2)
    STATS["running"] += 1
    try:
        async for task, result in run.as_completed():
            await send_chunk(writer, line_of(task, result))
        await run
        await send_chunk(writer, {"done": True, "seconds": round(time.monotonic() - started, 3)})
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        STATS["finished"] += 1
    except (ConnectionError, asyncio.CancelledError):
        # the client went away (or the server stops): so does its run
        run.cancel()
        with contextlib.suppress(taskmap.RunCancelled):
            await run
        STATS["cancelled"] += 1
        raise
    finally:
        STATS["running"] -= 1


async def send_chunk(writer: asyncio.StreamWriter, obj: dict) -> None:
    data = json.dumps(obj).encode() + b"\n"
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()  # raises ConnectionError once the client is gone


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(handle, host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"serving on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(f"stopped: {json.dumps(STATS)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
