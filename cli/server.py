"""`mmsearch serve`: the HTTP API and the web page, a thin FastAPI shell over `SearchIndex`.

Security: binds to loopback unless told otherwise; with a token every route but `/health` and
the static page needs ``Authorization: Bearer``; files are served only for indexed items, by id,
never by a client-supplied path; uploads have a size limit and the indexer's pixel limit.
"""
from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import List, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from retrieval.api import SearchIndex
from retrieval.errors import UserError

PAGE = Path(__file__).parent / "web" / "index.html"
DEFAULT_MAX_UPLOAD = 20 << 20


def create_app(index: SearchIndex, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               max_pixels: int | None = None) -> FastAPI:
    app = FastAPI(title="mmsearch", description="Cross-modal search over images, video moments and texts.",
                  version="0.1.0")

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(UserError)
    async def user_error(_: Request, e: UserError):
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException):
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
    def search_get(
        q: str = Query(..., description="Text query; compact fused syntax like '2:beach - people' works too."),
        k: int = Query(10, ge=1, le=1000),
        type: Optional[str] = Query(None, description="image, video or text"),
        path: Optional[str] = Query(None, description="glob on the file path"),
        after: Optional[str] = None,
        before: Optional[str] = None,
        tag: List[str] = Query([]),
        negative: List[str] = Query([], alias="not"),
        min_score: Optional[float] = None,
        fusion: str = "early",
        per_video: int = Query(3, ge=1),
    ) -> list[dict]:
        _text_only(q)
        hits = index.search(q, negative=negative, k=k, kind=type, path=path, after=after, before=before,
                            tags=tag, min_score=min_score, fusion=fusion, per_video=per_video)
        return [h.as_dict() for h in hits]

    @app.post("/search", dependencies=[Depends(authorised)])
    async def search_post(request: Request) -> list[dict]:
        """multipart/form-data with an ``image`` file and/or a ``query`` field (JSON), or a JSON body:
        ``{"q": "...", "not": [...], "weights": [...], "k": 10, "type": "image", "fusion": "early", ...}``."""
        ctype = request.headers.get("content-type", "")
        length = int(request.headers.get("content-length") or 0)
        if length > max_upload:
            raise HTTPException(413, f"request larger than {max_upload} bytes")
        image = None
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_part_size=max_upload)
            upload = form.get("image")
            if upload is not None and not isinstance(upload, str):
                image = await upload.read(max_upload + 1)
                if len(image) > max_upload:
                    raise HTTPException(413, f"upload larger than {max_upload} bytes")
            raw = form.get("query") or "{}"
        else:
            raw = (await request.body()).decode("utf-8", errors="replace") or "{}"
        try:
            query = json.loads(raw)
            assert isinstance(query, dict)
        except (ValueError, AssertionError):
            raise HTTPException(400, "query must be a JSON object") from None
        q = query.get("q")
        if q is not None:
            _text_only(str(q))
        allowed = {"not", "weights", "k", "type", "path", "after", "before", "tags", "min_score", "fusion", "per_video"}
        unknown = set(query) - allowed - {"q"}
        if unknown:
            raise HTTPException(400, f"unknown query fields: {sorted(unknown)}")
        try:
            opts = dict(negative=[str(x) for x in query.get("not", [])], weights=[float(x) for x in query.get("weights", [])],
                        k=max(1, min(1000, int(query.get("k", 10)))), kind=query.get("type"), path=query.get("path"),
                        after=query.get("after"), before=query.get("before"), tags=[str(x) for x in query.get("tags", [])],
                        min_score=query.get("min_score"), fusion=str(query.get("fusion", "early")),
                        per_video=max(1, int(query.get("per_video", 3))))
        except (TypeError, ValueError):
            raise HTTPException(400, "malformed query fields") from None
        hits = index.search(None if q is None else str(q), image=image, max_pixels=max_pixels, **opts)
        return [h.as_dict() for h in hits]

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


def _text_only(q: str) -> None:
    """Over HTTP a query is text: a compact part naming a file on the server is refused, so a
    client can never make the server read a path of its choosing."""
    from retrieval.search import parse_compact

    if any(p.image is not None for p in parse_compact(q)):
        raise HTTPException(400, "file paths are not accepted in queries over HTTP; upload the image instead")
