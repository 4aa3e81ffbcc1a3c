"""`mmsearch serve`: the HTTP API and the web page, a thin FastAPI shell over `SearchIndex`.

Security (clients are assumed hostile): binds to loopback unless told otherwise and answers only
requests whose Host names it (DNS rebinding); with a token every route but `/health` and the
static page needs ``Authorization: Bearer`` (OpenAPI too; `/docs` is then off); files are served
only for indexed items, by id, never by a client-supplied path, and a query naming a file is
refused by its syntax; bodies are capped while they stream in; JSON is taken only as
``application/json`` (a cross-site form cannot send it); model work runs in the thread pool, never
on the event loop. Every request's work is bounded: connections (`MAX_CONNECTIONS`,
`MAX_PER_CLIENT`), silence (`IDLE_SECONDS`), a body's pace (`MIN_BODY_RATE`) and memory
(`BODIES_AT_ONCE` × --max-upload, `BODIES_PER_CLIENT`), thumbnails drawn at once
(`THUMBS_AT_ONCE`). Every error is JSON ``{"error": ...}``.
"""
from __future__ import annotations

import asyncio
import ctypes
import hmac
import re
import socket
import struct
from collections import Counter
from contextlib import asynccontextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, TypeVar

import anyio
import h11
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import __version__
from ..api import SearchIndex
from ..errors import UserError
from ..media.image import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD
from ..retrieval.request import MAX_HTTP_K, REPEATABLE, SearchRequest
from ..retrieval.search import parse_compact

T = TypeVar("T")
PAGE = Path(__file__).parent / "web" / "index.html"
#: Host names every server answers to: its own loopback names
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
#: connections held at once. At the limit a new connection displaces the one that is feeding the
#: server slowest (the fewest bytes a second since it began its request or its wait for one: an
#: idle keep-alive connection, a slowloris), never one whose request the server is working on or
#: whose body waits for its turn; and is closed as it arrives if there is none. (uvicorn's
#: limit_concurrency counted waiting connections: 130 that sent `GET /heal` every 4.5 s made 99 %
#: of a normal client's requests 503; 21,000 held connections flooded stderr with accept errors.)
MAX_CONNECTIONS = 512
#: connections one client address may hold; a new one beyond is closed as it arrives, before any of
#: its bytes are read (600 connections dripping a body a byte every 50 ms from one address, each
#: displaced one reopened at once, had the event loop at 100 % and a normal client timing out)
MAX_PER_CLIENT = 128
#: bytes a connection is credited in `_slowest`, about a request head
HEAD_CREDIT = 1024
#: seconds a client may keep the server waiting: for a request's head to arrive whole (from the
#: connection's opening or its last response: 512 connections that each sent `GET /heal` held the
#: server), for the next bytes of a body (408), for the client to read a response
IDLE_SECONDS = 5
#: bytes a second a request body must average once IDLE_SECONDS have passed (408 after): 20 MB may
#: take 5 min, and a body dripping a byte every 4 s no longer holds its connection and turn 60 s
MIN_BODY_RATE = 64 << 10
#: requests with a body over SMALL_BODY bytes (or chunked) served at once, each holding up to
#: --max-upload and its copies until its search is done (300 clients each sending 19.9 MB of a
#: 20 MB body held 6.6 GB; 120 read bodies waiting for the decoder, 5.6 GB). Small bodies (a JSON
#: search) need no turn: 16 clients holding large bodies unsent delayed every POST search 60 s
BODIES_AT_ONCE = 16
#: of those, turns one client address may hold: 16 connections from one address, each sending
#: just over MIN_BODY_RATE (1.1 MiB/s in all), held every turn for minutes (uploads got 503)
BODIES_PER_CLIENT = 4
SMALL_BODY = 64 << 10
#: thumbnails drawn at once, each in a worker thread: an object under a URI root waits on its store,
#: and 120 requests with the store down held every thread (/health answered after 124 s)
THUMBS_AT_ONCE = 8
#: seconds a request waits for its turn (a thumbnail, a large body) before 503
WAIT_SECONDS = 10


def create_app(index: SearchIndex, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               max_pixels: int = DEFAULT_MAX_PIXELS, hosts: Iterable[str] = LOOPBACK) -> FastAPI:
    """The app for `index`. `hosts`: the names requests may give in their Host header (``*``: any)."""
    app = FastAPI(title="mmsearch", description="Cross-modal search over images, video moments and texts.",
                  version=__version__, docs_url=None if token else "/docs", redoc_url=None,
                  openapi_url=None if token else "/openapi.json")
    allowed = {h.lower() for h in hosts}
    if "*" not in allowed:
        app.add_middleware(HostCheck, allowed=allowed)
    app.add_middleware(CloseUnread)  # (the outermost: HostCheck answers early too)
    bodies, thumbs = _Turns("uploads", BODIES_AT_ONCE, BODIES_PER_CLIENT), _Turns("thumbnails", THUMBS_AT_ONCE)

    def authorised(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # header values arrive decoded as Latin-1: their bytes are compared with the token's UTF-8
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), token.encode())):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    if token is not None:  # the API description is behind the token too
        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorised)])
        def openapi() -> dict:
            return app.openapi()

    @app.exception_handler(UserError)
    async def user_error(_: Request, e: UserError):
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)  # ours, and the router's 404 and 405
    async def http_error(_: Request, e: StarletteHTTPException):
        return JSONResponse({"error": e.detail}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError):
        where = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        return JSONResponse({"error": where}, status_code=422)

    @app.get("/health")
    async def health() -> dict:  # (on the event loop: it answers while every worker thread is busy)
        return {"status": "ok"}

    # (HEAD: what monitors send; out of the API description, where it repeated GET's operation id)
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/search", dependencies=[Depends(authorised)])
    def search_get(request: Request) -> list[dict]:
        """Fields of a search request as query parameters: ``q``, ``k``, ``type``, ``path``, ``after``,
        ``before``, ``min_score``, ``fusion``, ``per_video``; ``tag``, ``not`` and ``weights`` repeatable."""
        return [h.as_dict() for h in index.search(_over_http(query_request(request.query_params)))]

    @app.post("/search", dependencies=[Depends(authorised)])
    async def search_post(request: Request) -> list[dict]:
        """A JSON body (``application/json``) with the fields of a search request, e.g.
        ``{"q": "beach", "not": ["people"], "weights": [2], "k": 10, "type": "image"}``; or
        ``multipart/form-data`` with an ``image`` file and/or a ``query`` field holding that JSON."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "multipart/form-data"):
            raise HTTPException(415, "send application/json or multipart/form-data")
        declared = request.headers.get("content-length", "")
        small = declared.isdigit() and int(declared) <= SMALL_BODY and "transfer-encoding" not in request.headers
        client = request.client.host if request.client else ""
        async with nullcontext() if small else bodies.turn(client):  # (held until the search is done)
            return await _search_post(request, ctype)

    async def _search_post(request: Request, ctype: str) -> list[dict]:
        request._body = await _capped_body(request, max_upload)  # what form() and body() then read
        image = None
        if ctype == "multipart/form-data":
            form = await request.form(max_part_size=max_upload)
            upload, field = form.get("image"), form.get("query") or "{}"
            if not isinstance(field, str) or isinstance(upload, str):
                raise HTTPException(400, "send the image as a file and the query as a text field")
            image = None if upload is None else await upload.read()
            body: str | bytes = field
        else:
            body = request._body or b"{}"
        # validation too: a body of a million bad values costs seconds, and the loop serves everyone
        def search() -> list[dict]:
            return [h.as_dict() for h in index.search(_over_http(SearchRequest.from_json(body)), upload=image,
                                                      max_pixels=max_pixels)]

        return await run_in_threadpool(search if image is None else _trimmed(search))

    @app.get("/items/{item_id}", dependencies=[Depends(authorised)])
    def item(item_id: int) -> dict:
        found = index.item(item_id)
        if found is None:
            raise HTTPException(404, f"no item {item_id}")
        return found

    @app.get("/thumb/{item_id}", dependencies=[Depends(authorised)],
             responses={200: {"content": {"image/jpeg": {}}}}, response_class=Response)
    async def thumb(item_id: int, size: int = Query(256, ge=16, le=1024)) -> Response:
        async with thumbs.turn():
            data = await run_in_threadpool(_trimmed(index.thumbnail), item_id, size)
        if data is None:
            raise HTTPException(404, f"no thumbnail for item {item_id}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/info", dependencies=[Depends(authorised)])
    def info() -> dict:
        return index.info()

    return app


def query_request(params) -> SearchRequest:
    """A search request from query parameters (repeatable fields collect every value)."""
    fields: dict[str, Any] = {}
    for key, value in params.multi_items():
        if key in REPEATABLE:
            fields.setdefault(key, []).append(value)
        elif key in fields:
            raise UserError(f"{key}: given more than once")
        else:
            fields[key] = value
    return SearchRequest.of(**fields)


def _over_http(req: SearchRequest) -> SearchRequest:
    """Over HTTP a query is text and uploads: a request naming files on the server is refused,
    so a client can never make the server read a path of its choosing."""
    if req.image or (req.q is not None and any(p.image is not None for p in parse_compact(req.q))):
        raise HTTPException(400, "file paths are not accepted in queries over HTTP; upload the image instead")
    if req.k > MAX_HTTP_K:
        raise HTTPException(400, f"k: at most {MAX_HTTP_K} hits a request")
    return req


async def _capped_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it grows past `limit` bytes, whether or not it
    declared a Content-Length: a chunked body is counted as it streams in. Never silent for
    IDLE_SECONDS, and at least MIN_BODY_RATE on average after them (408)."""
    if int(request.headers.get("content-length") or 0) > limit:
        raise HTTPException(413, f"request larger than {limit} bytes")
    body, chunks, start = bytearray(), request.stream(), anyio.current_time()
    try:
        while True:
            behind = start + IDLE_SECONDS + len(body) / MIN_BODY_RATE - anyio.current_time()
            with anyio.fail_after(max(0, min(IDLE_SECONDS, behind))):
                chunk = await anext(chunks, None)
            if chunk is None:
                break
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"request larger than {limit} bytes")
    except ClientDisconnect:  # gone mid-body: nobody to answer, nothing to log
        raise HTTPException(400, "the client left before its request was whole") from None
    except TimeoutError:
        raise HTTPException(408, f"the request body went silent for {IDLE_SECONDS} s, or came slower "
                                 f"than {MIN_BODY_RATE >> 10} KiB/s") from None
    return bytes(body)


class _Turns:
    """`total` turns at `what` (as the 503 names it), at most `each` of them held by one client
    address; waited for on the event loop (never in a worker thread) at most WAIT_SECONDS."""

    def __init__(self, what: str, total: int, each: int | None = None):
        self.what, self.all, self.each = what, anyio.Semaphore(total), each
        self.mine: dict[str, tuple[anyio.Semaphore, list[int]]] = {}  # an address's turns, and its waiters

    @asynccontextmanager
    async def turn(self, address: str = "") -> AsyncIterator[None]:
        """One turn, for a client at `address`."""
        if self.each is None:
            async with self._taken([self.all]):
                yield
            return
        mine, users = self.mine.setdefault(address, (anyio.Semaphore(self.each), [0]))
        users[0] += 1
        try:
            async with self._taken([mine, self.all]):
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self.mine[address]

    @asynccontextmanager
    async def _taken(self, turns: list[anyio.Semaphore]) -> AsyncIterator[None]:
        taken: list[anyio.Semaphore] = []
        try:
            try:
                with anyio.fail_after(WAIT_SECONDS):
                    for turn in turns:
                        await turn.acquire()
                        taken.append(turn)
            except TimeoutError:
                raise HTTPException(503, f"too many {self.what} at once: try again shortly",
                                    headers={"Retry-After": "5"}) from None
            yield
        finally:
            for turn in reversed(taken):
                turn.release()


class CloseUnread:
    """A response sent before its request's body was read whole (413, 415, 401, a wrong Host...)
    closes the connection: kept open, the server would read and drop the rest of the body, and a
    chunked one has no end (uvicorn took in 80 GiB in 20 s at ~0.9 core after a 413)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        whole = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0").strip() in (b"0", b"")

        async def receiving() -> Message:
            nonlocal whole
            message = await receive()
            whole = whole or message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and not whole:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receiving, sending)


class HostCheck:
    """Answer only requests whose Host header names this server: a web page on another site that
    rebinds its own domain to 127.0.0.1 (DNS rebinding) then gets 400, never an answer."""

    def __init__(self, app: ASGIApp, allowed: set[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and host_name(dict(scope["headers"]).get(b"host", b"").decode("latin-1")) not in self.allowed:
            await JSONResponse({"error": "this server does not answer to that Host (see --allow-host)"},
                               status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` → ``[::1]``; "" for anything
    that is not a name or a bracketed address with an optional port (0–65535)."""
    m = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]@/\s]+)(?::(\d{1,5}))?", host.strip().lower())
    return m.group(1) if m and int(m.group(2) or 0) <= 65535 else ""


def config(app: ASGIApp, host: str, port: int) -> Config:
    """uvicorn's settings for `app`: the limits above, and `_Connection` as its protocol."""
    return Config(app, host=host, port=port, log_level="warning", http=_Connection,
                  timeout_keep_alive=IDLE_SECONDS)


class _Connection(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the deadlines and limits it lacks. Its keep-alive timer
    closes a connection silent after a response, but any byte cancels it: here a request's head
    must arrive whole within IDLE_SECONDS of the connection's opening or its last response, and a
    response the client does not read for IDLE_SECONDS closes it (`_close`: with a reset when the
    client has not taken what was sent). Connections are limited per client address
    (MAX_PER_CLIENT) and in all (MAX_CONNECTIONS, `_displace`)."""

    head: asyncio.TimerHandle | None = None
    stalled: asyncio.TimerHandle | None = None
    address: str | None = None  # the client's, once its connection counts towards its limit
    since, got = 0.0, 0  # when this connection began its request or its wait for one; bytes since

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.since, held = self.loop.time(), _held(self.server_state)
        address = (transport.get_extra_info("peername") or ("",))[0]
        # (counted from `held`: `connections` has those just refused too, until their close is done)
        if held[address] >= MAX_PER_CLIENT or (held.total() >= MAX_CONNECTIONS and not self._displace()):
            transport.close()
            return
        self.address = address
        held[address] += 1
        self._await_head()

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        super().data_received(data)
        if self.head is not None and self.conn.their_state is not h11.IDLE:  # a request's head is in
            self.head.cancel()
            self.head = None

    def on_response_complete(self) -> None:
        self.since, self.got = self.loop.time(), 0
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:  # (else pipelined: in)
            self._await_head()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.stalled = self.loop.call_later(IDLE_SECONDS, self._close)

    def resume_writing(self) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.head, self.stalled):
            if timer is not None:
                timer.cancel()
        if self.address is not None:
            held = _held(self.server_state)
            held[self.address] -= 1
            if not held[self.address]:
                del held[self.address]
        super().connection_lost(exc)

    def timeout_keep_alive_handler(self) -> None:  # (uvicorn's, for a connection idle after a response)
        if not self.transport.is_closing():
            self._close()

    def _close(self) -> None:
        """Close; with a reset if the client has not taken all that was sent: closed, the kernel
        keeps trying to send it as an orphan socket (a client that pipelined 2 MB of pages and
        read none left 1.9 MB a connection in the kernel, after its close)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None and _unsent(sock):
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()

    def _displace(self) -> bool:
        """Close the other connection feeding the server slowest; False if there is none."""
        victim = _slowest([c for c in self.connections if c is not self], self.loop.time())
        if victim is not None:
            victim.transport.close()
        return victim is not None

    def _await_head(self) -> None:
        if self.head is not None:
            self.head.cancel()
        self.head = self.loop.call_later(IDLE_SECONDS, self._no_head)

    def _no_head(self) -> None:
        self.head = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._close()


def _unsent(sock: Any) -> int:
    """Bytes sent on `sock` that the peer has not taken (Linux's SIOCOUTQ); 0 where unknown (Windows)."""
    try:
        import fcntl
        import termios

        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)))[0]
    except (ImportError, OSError):
        return 0


def _slowest(connections: Iterable[Any], now: float) -> Any:
    """Of `connections` (`_Connection`s), the one that feeds the server the fewest bytes a second
    while it waits on its client, for a request's head or body bytes it is reading (the oldest of
    equals); None if none waits. One whose request is being served, whose body waits for its turn
    (reading paused), or that is closing is never chosen."""
    waiting = [c for c in connections if c.conn.their_state in (h11.IDLE, h11.SEND_BODY)
               and not c.flow.read_paused and not c.transport.is_closing()]
    # (a connection is credited a request head's bytes: one just opened, whose first bytes are not
    # read yet, ranked below a partial-head slowloris, and 268 were displaced at once)
    return min(waiting, key=lambda c: ((c.got + HEAD_CREDIT) / max(now - c.since, 1.0), c.since), default=None)


def _held(state: Any) -> Counter[str]:
    """Connections held per client address on the server of `state` (uvicorn's ServerState)."""
    if not hasattr(state, "held"):
        state.held = Counter()
    return state.held


def fewer_arenas() -> None:
    """glibc gives threads that allocate at once arenas of their own (up to 8 a core) and keeps
    their freed memory: after 16 concurrent 100 M-pixel uploads a server kept 5.4 GB; with 2
    arenas (as MALLOC_ARENA_MAX=2) 1.0 GB. Called before the server's threads start."""
    if _LIBC is not None:
        _LIBC.mallopt(-8, 2)  # (M_ARENA_MAX)


def _trimmed(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn`, then the memory its decoding freed given back to the system: glibc keeps freed pages
    of a large image in the heap (16 concurrent 100 M-pixel uploads: 1.0 GB kept, 0.2 GB trimmed)."""
    def trimmed(*args: Any) -> T:
        try:
            return fn(*args)
        finally:
            if _LIBC is not None:
                _LIBC.malloc_trim(0)
    return trimmed


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc's, else AttributeError)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()
