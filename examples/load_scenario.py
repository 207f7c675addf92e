"""Load mode (``taskmap.load``): a shop scenario -- log in, then browse and
search at once, then check out -- started 100 times a second on an open-loop
schedule against a small HTTP service this script starts on loopback.

    pip install -e '.[load]'
    python examples/load_scenario.py              # a 5 s run, then the report
    taskmap load examples/load_scenario.py --rate 200 --duration 10s --fail-if 'scenario.p99<250ms'
        # (against a service already running: python examples/load_scenario.py --serve --port 8080)

The service answers each request after ``--delay`` ms (20 by default) and
records how long it took to serve each one (``GET /stats``), so what taskmap
reports can be checked against what the service measured itself.
``GET /stall?seconds=1`` makes it hold every request for that long from now
(a pause, as a garbage collection or a lock would make).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import taskmap

URL_VARIABLE = "TASKMAP_LOAD_URL"  # where make_scenario sends its requests

# -- the scenario: what the load runs, an instance per arrival ---------------

_sessions: dict = {}  # event loop -> its aiohttp session (one per worker's loop)


async def call(base: str, path: str, *parents: object) -> int:
    """GET ``base + path`` with the worker's shared session (its connections
    kept alive); an HTTP error status raises."""
    import aiohttp

    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        session = _sessions[loop] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async with session.get(base + path) as response:
        if response.status >= 400:
            print(f"GET {path}: HTTP {response.status} {await response.text()}")
        response.raise_for_status()
        await response.read()
        return response.status


def scenario(base: str, fail_every: int = 0, stall_at: int = -1):
    """``make_scenario`` for the service at ``base``: instance i logs in,
    browses and searches at once, then checks out.  ``fail_every``: every
    so many instances check out at a path the service refuses (HTTP 500);
    ``stall_at``: that instance stalls the service for a second first."""

    def make_scenario(i: int) -> taskmap.Graph:
        checkout = "/fail" if fail_every and i % fail_every == fail_every - 1 else "/checkout"
        funcs = {
            "login": functools.partial(call, base, "/login"),
            "browse": functools.partial(call, base, "/browse"),
            "search": functools.partial(call, base, "/search"),
            "checkout": functools.partial(call, base, checkout),
        }
        deps = {"login": [], "browse": ["login"], "search": ["login"], "checkout": ["browse", "search"]}
        if i == stall_at:
            funcs["stall"] = functools.partial(call, base, "/stall?seconds=1")
            deps = {"stall": [], **deps}
        return taskmap.create_graph(funcs, deps, io_bound=list(deps))

    return make_scenario


def make_scenario(i: int) -> taskmap.Graph:
    """The scenario ``taskmap load examples/load_scenario.py`` runs: against
    the service at $TASKMAP_LOAD_URL (default http://127.0.0.1:8080)."""
    return scenario(os.environ.get(URL_VARIABLE, "http://127.0.0.1:8080"))(i)


# -- the service: answers after a known delay, measures itself ---------------


def serve(port: int, delay: float) -> None:
    """Serve HTTP/1.1 (GET, keep-alive) on 127.0.0.1:port (0: any free port,
    printed first) until stdin closes.  A bare asyncio protocol, so the
    service adds as little as it can to the delay it injects; it times each
    request from its head's arrival to its answer's write."""
    served: dict[str, list[float]] = {}  # path -> seconds each request took here
    arrivals: dict[str, list[float]] = {}  # path -> when each request arrived (monotonic)
    stall = {"until": 0.0}

    def stats() -> bytes:
        out = {}
        for path, took in served.items():
            ordered = sorted(took)
            times = arrivals[path]
            out[path] = {
                "count": len(took),
                "p50": ordered[len(ordered) // 2],
                "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                "arrivals": sorted(times),
            }
        return json.dumps(out).encode()

    class Http(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                asyncio.get_running_loop().create_task(self.answer(target, time.monotonic()))

        def reply(self, status: int, body: bytes) -> None:
            reason = {200: "OK", 500: "Internal Server Error"}[status]
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: text/plain\r\n\r\n".encode()
                + body
            )

        async def answer(self, target: str, start: float) -> None:
            path, _, query = target.partition("?")
            if path == "/stats":
                self.reply(200, stats())
                return
            if path == "/stall":
                stall["until"] = start + float(query.partition("=")[2] or 1)
            wait = stall["until"] - start
            if wait > 0:
                await asyncio.sleep(wait)
            await asyncio.sleep(delay)
            if path == "/fail":
                self.reply(500, b"out of stock")
            else:
                self.reply(200, b"ok")
            arrivals.setdefault(path, []).append(start)
            served.setdefault(path, []).append(time.monotonic() - start)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Http, "127.0.0.1", port, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        # until whoever started us closes our stdin (or dies)
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())


class Service:
    """The service in a child process (``python load_scenario.py --serve``)."""

    def __init__(self, delay: float = 0.02) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", "--port", "0", "--delay", str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the service did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line)}"

    def stats(self) -> dict:
        """What the service served, per path: count, p50/p99 seconds, and
        when each request arrived (monotonic, sorted)."""
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as response:
            return json.loads(response.read())

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def service(delay: float = 0.02) -> Iterator[Service]:
    s = Service(delay)
    try:
        yield s
    finally:
        s.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="only run the service (until stdin closes)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds the service takes per request")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--ncores", type=int, default=None)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.port, args.delay)
        return 0
    with service(args.delay) as s:
        report = taskmap.load(
            scenario(s.url, fail_every=50), rate=args.rate, duration=args.duration, ncores=args.ncores
        )
        print(report.table())
        served = s.stats()
    print("the service's own p50:", {path: round(v["p50"] * 1e3, 2) for path, v in sorted(served.items())}, "ms")
    for name, examples in report.examples().items():
        e = examples[0]
        print(f"e.g. {name} failed ({e['type']}): {e['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
