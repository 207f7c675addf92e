"""The HTTP side of the live page: a standard-library server on 127.0.0.1
that serves the page's files, a JSON snapshot and a Server-Sent Events
stream, to requests that carry the run's token.

One thread of its own (``taskmap-dashboard``) accepts connections and calls
a ``tick`` callback on a fixed period (the dashboard's coalescing clock);
each request is handled in a thread of ``ThreadingHTTPServer``.  Nothing here
runs on the coordinator's thread except :meth:`PageServer.start` and
:meth:`PageServer.stop`.  :meth:`stop` returns once the accepting thread and
every request thread have ended and the listening socket is closed: a run
leaves no thread and no socket behind.  It does not wait for the
``serve_forever`` poll interval (half a second): a socket pair wakes the
accepting thread at once.

Every response says ``Cache-Control: no-store`` and ``Referrer-Policy:
no-referrer`` (the token is in the URL), and the page's
``Content-Security-Policy`` allows nothing but this server: no CDN, no
outside request.
"""

from __future__ import annotations

import functools
import json
import secrets
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
WRITE_TIMEOUT = 5.0  # seconds a stalled viewer may block one write before it is dropped

# file name -> content type; the page's files, shipped in the package
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def asset(name: str) -> bytes:
    """The bytes of one of the page's files (``taskmap/observe/dashboard_assets``),
    read once per process."""
    return resources.files("taskmap.observe").joinpath("dashboard_assets", name).read_bytes()


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event: ``data`` as JSON on one line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


class PageSource:
    """What the server serves besides its files (the dashboard implements it)."""

    def snapshot(self) -> dict[str, Any]:
        """The whole current state, for ``/state``."""
        raise NotImplementedError

    def subscribe(self) -> Iterator[bytes]:
        """The ``/events`` stream: Server-Sent Events, ending with the run."""
        raise NotImplementedError


class PageServer(ThreadingHTTPServer):
    """Serves one run's page on ``127.0.0.1:port`` (0: a free port) to
    requests whose query holds ``token=<token>``; others get 403.

    ``tick`` is called every ``period`` seconds on the server's thread
    between :meth:`start` and :meth:`stop`.
    """

    daemon_threads = False  # request threads are joined by server_close()
    block_on_close = True
    allow_reuse_address = False  # (a fixed port of another live server must fail)
    timeout = 0.1  # handle_request()'s wait, were the connection gone before it is accepted

    def __init__(self, port: int, source: PageSource, tick: Callable[[], None], period: float) -> None:
        self.token = secrets.token_urlsafe(18)
        self.source = source
        self.tick = tick
        self.period = period
        self._files = {name: asset(name) for name in ASSETS}
        # the page links its script and style with the token (or they would be refused)
        self._files["index.html"] = self._files["index.html"].replace(b"{{token}}", self.token.encode())
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        try:
            super().__init__((HOST, port), _Handler)
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks the resolver for the host's full name
        # (a reverse lookup that can hang on a closed network): not needed
        socketserver.TCPServer.server_bind(self)
        self.server_name = HOST
        self.server_port = self.server_address[1]

    @property
    def url(self) -> str:
        """The page's address, token included."""
        return f"http://{HOST}:{self.server_port}/?token={self.token}"

    def start(self) -> None:
        """Start accepting connections (and ticking) in a thread of its own."""
        self._thread = threading.Thread(target=self._serve, name="taskmap-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, wait for every request thread, close every socket.
        Call once the source's streams have been told to end."""
        if self._thread is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:  # (its reader is gone: the thread has ended already)
                pass
            self._thread.join()
            self._thread = None
        try:
            self.server_close()  # closes the listening socket, joins request threads
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            due = time.monotonic() + self.period
            while True:
                ready = selector.select(max(0.0, due - time.monotonic()))
                if any(key.fileobj is self._wake_r for key, _ in ready):
                    return
                if ready:
                    self.handle_request()  # (readable: it accepts at once; see ``timeout``)
                if time.monotonic() >= due:
                    self.tick()
                    due = time.monotonic() + self.period

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a viewer that went away mid-response is not an error of the run;
        # the server prints nothing (taskmap writes to stderr only when asked)
        pass


class _Handler(BaseHTTPRequestHandler):
    """GET ``/`` (the page), ``/dashboard.js``, ``/dashboard.css``,
    ``/state`` (JSON), ``/events`` (Server-Sent Events); each with the token."""

    server: PageServer
    timeout = WRITE_TIMEOUT  # (the socket's timeout: a stalled viewer cannot hold the run's end)
    server_version = "taskmap-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # nothing on stderr per request

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        token = parse_qs(url.query).get("token", [""])[0]
        if not secrets.compare_digest(token.encode(), self.server.token.encode()):
            self._reply(HTTPStatus.FORBIDDEN, b"forbidden: this page needs the token of its URL\n", "text/plain")
            return
        path = url.path.lstrip("/") or "index.html"
        if path in ASSETS:
            self._reply(HTTPStatus.OK, self.server._files[path], ASSETS[path])
        elif path == "state":
            body = json.dumps(self.server.source.snapshot(), separators=(",", ":"), default=str).encode()
            self._reply(HTTPStatus.OK, body, "application/json")
        elif path == "events":
            self._stream()
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _headers(self, status: HTTPStatus, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Content-Type-Options", "nosniff")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", PAGE_POLICY)

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self._headers(status, content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self._headers(HTTPStatus.OK, "text/event-stream")
        self.end_headers()
        stream = self.server.source.subscribe()
        try:
            for chunk in stream:
                self.wfile.write(chunk)
        except OSError:  # the viewer went away or stalled past the timeout
            pass
        finally:
            stream.close()  # type: ignore[attr-defined]
