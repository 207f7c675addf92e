"""The HTTP side of the live page: a standard-library server on 127.0.0.1
that serves the page's files, a JSON snapshot and a Server-Sent Events
stream, to requests that carry the run's token.

Each run with a page has its own listening socket (:class:`PageServer`),
open exactly while the run lasts: bound when the run starts, closed before
the run returns.  One thread per process (``taskmap-dashboard``,
:class:`PageThread`, started with the first page and kept, as the worker
pool is) accepts connections on every live page's socket and calls each
page's ``tick`` callback (the dashboard's coalescing clock) while someone
watches it; each request is handled in a thread of ``ThreadingHTTPServer``.
A run thus pays no thread start, join or hand-over for its page: starting
and stopping a page registers and unregisters its socket from the run's own
thread (about a tenth of a millisecond in all, socket included).  With
nobody watching, the thread sleeps in ``select`` with no timeout: it never
polls.

Nothing here runs on the coordinator's thread except :meth:`PageServer.start`,
:meth:`PageServer.stop` and :meth:`PageServer.tick_in`.  :meth:`stop`
returns once the page's socket is closed and every request thread of the
page has ended: a run leaves no socket and no request thread behind.

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
import sys
import threading
import time
import traceback
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

    def wants_ticks(self) -> bool:
        """Whether ``tick`` should go on being called (someone watches)."""
        raise NotImplementedError


class PageServer(ThreadingHTTPServer):
    """Serves one run's page on ``127.0.0.1:port`` (0: a free port) to
    requests whose query holds ``token=<token>``; others get 403.

    The socket is bound by the constructor (``OSError`` when the port is
    taken).  ``tick`` is called on the page thread after :meth:`tick_in`
    and then every ``period`` seconds while ``source.wants_ticks()``,
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
        self.due: float | None = None  # when the page thread calls tick next (None: not before asked)
        self._files = _page_files(self.token)
        self._started = False
        super().__init__((HOST, port), _Handler)

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
        """Start accepting connections on the page thread; returns at once."""
        self._started = True
        page_thread().add(self)

    def tick_in(self, seconds: float = 0.0) -> None:
        """Call ``tick`` on the page thread in ``seconds``, then every
        ``period`` while the source wants ticks.  Any thread."""
        self.due = time.monotonic() + seconds
        page_thread().wake()

    def stop(self) -> None:
        """Stop accepting, wait for every request thread, close the socket.
        Call once the source's streams have been told to end."""
        try:
            if self._started:
                self._started = False
                page_thread().remove(self)
        finally:
            self.server_close()  # closes the listening socket, joins request threads

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a viewer that went away mid-response is not an error of the run;
        # the server prints nothing (taskmap writes to stderr only when asked)
        pass


def _page_files(token: str) -> dict[str, bytes]:
    files = {name: asset(name) for name in ASSETS}
    # the page links its script and style with the token (or they would be refused)
    files["index.html"] = files["index.html"].replace(b"{{token}}", token.encode())
    return files


class PageThread:
    """The one thread of this process that serves every live page: it
    waits in ONE ``select`` over a wake-up socket and each page's listening
    socket, with the nearest due tick as its timeout; a page is ticked only
    while its source :meth:`~PageSource.wants_ticks` (someone watches) or
    after :meth:`PageServer.tick_in`, so with nobody watching it sleeps
    without a timeout: it never polls.

    :meth:`add` and :meth:`remove` are called from the run's thread and do
    not wake the thread: the socket is registered with the epoll selector
    directly (the kernel takes a registration while another thread waits),
    and ``_lock``, which the thread holds only while it serves or ticks a
    page, keeps a page from being removed in the middle of either.  If the
    thread ever dies (a bug), pages are neither served nor ticked.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        # (other selectors do not see a socket registered while they wait)
        self._wake_on_add = not isinstance(self._selector, selectors.EpollSelector)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self.pages: dict[PageServer, None] = {}  # the live ones (the tests read it)
        self.alive = True
        self.wakeups = 0  # (how often select returned: the tests' check that it does not poll)
        self.thread = threading.Thread(target=self._serve, name="taskmap-dashboard", daemon=True)
        self.thread.start()

    def add(self, server: PageServer) -> None:
        """Serve ``server`` from now on (returns at once)."""
        with self._lock:
            self.pages[server] = None
            self._selector.register(server.socket, selectors.EVENT_READ, server)
        if self._wake_on_add:
            self.wake()

    def remove(self, server: PageServer) -> None:
        """Stop serving ``server``; once this returns the thread no longer
        touches it (it waits only if the thread is serving or ticking it)."""
        with self._lock:
            if self.pages.pop(server, 0) is None:
                self._selector.unregister(server.socket)

    def wake(self) -> None:
        """Make the thread look again at the pages' ticks."""
        try:
            self._wake_w.send(b"x")
        except OSError:  # (its buffer is full: it is awake already)
            pass

    def _serve(self) -> None:
        selector, pages, lock = self._selector, self.pages, self._lock
        try:
            while True:
                with lock:
                    dues = [p.due for p in pages if p.due is not None]
                ready = selector.select(max(0.0, min(dues) - time.monotonic()) if dues else None)
                self.wakeups += 1
                for key, _ in ready:
                    if key.fileobj is self._wake_r:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    with lock:
                        if key.data in pages:  # (not removed meanwhile)
                            self._guarded(key.data, key.data.handle_request)
                now = time.monotonic()
                with lock:
                    for page in [p for p in pages if p.due is not None and p.due <= now]:
                        self._guarded(page, page.tick)
                        page.due = time.monotonic() + page.period if page.source.wants_ticks() else None
        finally:
            self.alive = False

    def _guarded(self, page: PageServer, call: Callable[[], object]) -> None:
        """One page's request or tick (``_lock`` held); a page that raises
        is dropped (its run goes on without it) and says why on stderr, the
        others go on."""
        try:
            call()
        except Exception:  # noqa: BLE001 - one page's bug must not stop the others
            if self.pages.pop(page, 0) is None:
                self._selector.unregister(page.socket)
            print("taskmap: the live page stopped on an error:", file=sys.stderr)
            traceback.print_exc()


_page_thread: PageThread | None = None
_page_thread_lock = threading.Lock()


def page_thread() -> PageThread:
    """This process's page thread, started on first use (and again, were it dead)."""
    global _page_thread
    with _page_thread_lock:
        if _page_thread is None or not _page_thread.alive:
            _page_thread = PageThread()
        return _page_thread


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
