"""`mmsearch serve`: the HTTP API and the web page, a thin FastAPI shell over `SearchIndex`.

Security (clients are assumed hostile): binds to loopback unless told otherwise and answers only
requests whose Host names it (DNS rebinding); with a token every route but `/health` and the
static page needs ``Authorization: Bearer`` (OpenAPI too; `/docs` is then off); files are served
only for indexed items, by id, never by a client-supplied path, and a query naming a file is
refused by its syntax; bodies are capped while they stream in; JSON is taken only as
``application/json`` (a cross-site form cannot send it); model work runs in the thread pool, never
on the event loop. Every error is JSON ``{"error": ...}``.
"""
from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Any, Iterable

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..api import SearchIndex
from ..errors import UserError
from ..media.image import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD
from ..retrieval.request import MAX_HTTP_K, REPEATABLE, SearchRequest
from ..retrieval.search import parse_compact

PAGE = Path(__file__).parent / "web" / "index.html"
#: Host names every server answers to: its own loopback names
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def create_app(index: SearchIndex, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               max_pixels: int = DEFAULT_MAX_PIXELS, hosts: Iterable[str] = LOOPBACK) -> FastAPI:
    """The app for `index`. `hosts`: the names requests may give in their Host header (``*``: any)."""
    app = FastAPI(title="mmsearch", description="Cross-modal search over images, video moments and texts.",
                  version=__version__, docs_url=None if token else "/docs", redoc_url=None,
                  openapi_url=None if token else "/openapi.json")
    allowed = {h.lower() for h in hosts}
    if "*" not in allowed:
        app.add_middleware(HostCheck, allowed=allowed)

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
    def health() -> dict:
        return {"status": "ok"}

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
        return await run_in_threadpool(lambda: [h.as_dict() for h in index.search(
            _over_http(SearchRequest.from_json(body)), upload=image, max_pixels=max_pixels)])

    @app.get("/items/{item_id}", dependencies=[Depends(authorised)])
    def item(item_id: int) -> dict:
        found = index.item(item_id)
        if found is None:
            raise HTTPException(404, f"no item {item_id}")
        return found

    @app.get("/thumb/{item_id}", dependencies=[Depends(authorised)],
             responses={200: {"content": {"image/jpeg": {}}}}, response_class=Response)
    def thumb(item_id: int, size: int = Query(256, ge=16, le=1024)) -> Response:
        data = index.thumbnail(item_id, size)
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
    declared a Content-Length: a chunked body is counted as it streams in."""
    if int(request.headers.get("content-length") or 0) > limit:
        raise HTTPException(413, f"request larger than {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"request larger than {limit} bytes")
    except ClientDisconnect:  # gone mid-body: nobody to answer, nothing to log
        raise HTTPException(400, "the client left before its request was whole") from None
    return bytes(body)


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
    that is not a name or a bracketed address with an optional numeric port."""
    m = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]@/\s]+)(?::\d{1,5})?", host.strip().lower())
    return m.group(1) if m else ""
