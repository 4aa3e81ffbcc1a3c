"""HTTP API: contract, security, uploads, concurrency with a running indexer, and the web page
driven in headless Chromium."""
from __future__ import annotations

import contextlib
import io
import os
import select
import shutil
import socket
import threading
import time
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from videos import write_video

from mmsearch.cli.server import create_app

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(photos, tmp_path_factory):
    from mmsearch import SearchIndex
    from mmsearch.cli.server import create_app

    lib = tmp_path_factory.mktemp("served")
    for n in ("chelsea.png", "coffee.png", "rocket.jpg", "horse.png", "astronaut.png", "coins.png"):
        shutil.copy2(photos / n, lib / n)
    (lib / "coffee.txt").write_text("A cup of coffee on a saucer.\n")
    write_video(lib / "clip.mp4", [(Image.open(photos / "rocket.jpg"), 2.0), (Image.open(photos / "horse.png"), 2.0)], size=(320, 240))
    idx = SearchIndex(tmp_path_factory.mktemp("srv") / "ix", create=True)
    idx.add([str(lib)], progress=False)
    app = create_app(idx, token=TOKEN, max_upload=2 << 20, max_pixels=5_000_000)
    client = TestClient(app, base_url="http://localhost", headers={"Authorization": f"Bearer {TOKEN}"})
    return idx, lib, client, TestClient(app, base_url="http://localhost")


def test_health_and_auth(served):
    _, _, client, anon = served
    assert anon.get("/health").json() == {"status": "ok"}
    assert anon.head("/health").status_code == 200  # (what monitors send)
    for method, url in (("get", "/search?q=cat"), ("get", "/info"), ("get", "/items/1"), ("get", "/thumb/1"), ("post", "/search")):
        r = getattr(anon, method)(url)
        assert r.status_code == 401 and "error" in r.json(), url
        r = getattr(anon, method)(url, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, url
    assert client.get("/info").status_code == 200
    assert anon.get("/").status_code == 200 and "<form" in anon.get("/").text  # the static page holds no data
    assert anon.get("/openapi.json").status_code == 401  # with a token the API description is private too
    assert client.get("/openapi.json").json()["info"]["title"] == "mmsearch" and anon.get("/docs").status_code == 404
    # the scheme's case does not matter, and a UTF-8 token works (header bytes arrive as Latin-1)
    assert client.get("/info", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    utf8 = TestClient(create_app(served[0], token="pässwörd"), base_url="http://localhost")
    assert utf8.get("/info", headers={"Authorization": b"Bearer " + "pässwörd".encode()}).status_code == 200
    assert utf8.get("/info", headers={"Authorization": b"Bearer " + b"passwort"}).status_code == 401


def test_search_contract_and_filters(served):
    _, lib, client, _ = served
    hits = client.get("/search", params={"q": "a cat", "k": 3, "type": "image"}).json()
    assert len(hits) == 3 and hits[0]["path"] == str(lib / "chelsea.png")
    assert len(client.get("/search", params={"q": "a cat", "k": 8}).json()) == 8  # all kinds
    assert all({"path", "score", "kind", "item_id"} <= set(h) for h in hits)
    videos = client.get("/search", params={"q": "a horse", "type": "video"}).json()
    assert videos and all(h["kind"] == "video" and "timestamp" in h and "start" in h for h in videos)
    texts = client.get("/search", params={"q": "coffee", "type": "text"}).json()
    assert texts[0]["text"].startswith("A cup of coffee")
    assert client.get("/search", params={"q": "x", "type": "sound"}).status_code == 400
    assert client.get("/search", params={"q": "x", "k": 0}).status_code == 400
    assert client.get("/search", params={"q": "a cat", "not": "a cat"}).status_code == 400  # parts cancel out


def test_items_and_thumbnails(served, monkeypatch):
    idx, lib, client, _ = served
    hit = client.get("/search", params={"q": "a rocket", "type": "image", "k": 1}).json()[0]
    item = client.get(f"/items/{hit['item_id']}").json()
    assert item["path"] == hit["path"] and item["width"] > 0
    r = client.get(f"/thumb/{hit['item_id']}", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) == 64
    drawn, draw = [], idx._draw  # sizes between those drawn from the file are scaled from the next larger
    monkeypatch.setattr(idx, "_draw", lambda item, f, side: drawn.append(side) or draw(item, f, side))
    for size in (100, 110, 128, 120, 110):
        assert max(Image.open(io.BytesIO(idx.thumbnail(hit["item_id"], size))).size) == size
    assert drawn == [128]
    moment = client.get("/search", params={"q": "a horse", "type": "video", "k": 1}).json()[0]
    assert Image.open(io.BytesIO(client.get(f"/thumb/{moment['item_id']}").content)).size == (256, 192)
    text = client.get("/search", params={"q": "coffee", "type": "text", "k": 1}).json()[0]
    assert client.get(f"/thumb/{text['item_id']}").status_code == 404
    assert client.get("/items/999999").status_code == 404


TRAVERSALS = ["../../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
              "..%252f..%252fetc%252fpasswd", "/etc/passwd", "....//....//etc/passwd", "..\\..\\etc\\passwd"]


@pytest.mark.parametrize("evil", TRAVERSALS)
def test_no_path_traversal_anywhere(served, evil):
    _, _, client, _ = served
    responses = [client.get(f"/items/{evil}"), client.get(f"/thumb/{evil}"), client.get(f"/{evil}"),
                 client.get("/search", params={"q": evil}), client.get("/search", params={"q": "x", "path": evil}),
                 client.get("/search", params={"q": f"a cat + {evil}"}), client.get("/search", params={"q": "cat", "tag": evil}),
                 client.post("/search", json={"q": f"x + {evil}"}), client.post("/search", json={"q": "x", "path": evil}),
                 client.get(f"/thumb/1?size={evil}")]
    for r in responses:
        assert r.status_code < 500, (evil, r.url, r.text)
        assert "root:" not in r.text
        if r.status_code == 200 and r.headers["content-type"].startswith("application/json"):
            body = r.json()
            paths = [h["path"] for h in body] if isinstance(body, list) else [body.get("path", "")]
            assert all(not p.startswith("/etc") for p in paths)
    # server files are refused by syntax, whether or not they exist: no oracle of the server's disk
    for q in ("a cat + @/etc/passwd", "a cat + @/no/such/file", "@/etc/hostname"):
        r = client.get("/search", params={"q": q})
        assert r.status_code == 400 and "file paths are not accepted" in r.json()["error"], q
    assert client.get("/search", params={"q": "a cat + /etc/passwd"}).status_code == 200  # a text part


def test_uploads(served, photos):
    _, lib, client, _ = served
    png = (photos / "coffee.png").read_bytes()
    r = client.post("/search", files={"image": ("x.png", png, "image/png")}, data={"query": '{"k": 2, "type": "image"}'})
    assert r.status_code == 200 and r.json()[0]["path"] == str(lib / "coffee.png") and r.json()[0]["score"] > 0.999
    fused = client.post("/search", files={"image": ("x.png", png)}, data={"query": '{"q": "a cat", "fusion": "late", "k": 3}'})
    assert fused.status_code == 200 and len(fused.json()) == 3
    assert client.post("/search", json={"q": "a cat", "k": 2, "type": "image"}).json()[0]["path"] == str(lib / "chelsea.png")
    bad = [
        client.post("/search", files={"image": ("x.png", b"not an image at all", "image/png")}),
        client.post("/search", files={"image": ("x.png", png[: len(png) // 3], "image/png")}),
        client.post("/search", files={"image": ("x.png", b"", "image/png")}),
        client.post("/search", content=b"{not json", headers={"content-type": "application/json"}),
        client.post("/search", json={"q": "x", "bogus": 1}),
        client.post("/search", json=["a list"]),
        client.post("/search", json={"q": "x", "k": "many"}),
    ]
    big = io.BytesIO()
    Image.new("L", (3000, 2000), 0).save(big, "PNG")  # 6 Mpx over a 5 Mpx limit, tiny file
    bad.append(client.post("/search", files={"image": ("bomb.png", big.getvalue(), "image/png")}))
    for r in bad:
        assert r.status_code == 400 and "error" in r.json(), r.text
    r = client.post("/search", files={"image": ("huge.png", b"\x89PNG" + os.urandom(3 << 20), "image/png")})
    assert r.status_code == 413


def test_server_sees_concurrent_indexing_without_restart(served, photos, tmp_path):
    idx, _, client, _ = served
    more = tmp_path / "more"
    more.mkdir()
    rng = __import__("numpy").random.default_rng(1)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype="uint8")).save(more / f"n{i:02}.png")
    before = client.get("/info").json()["vectors"]
    from mmsearch import SearchIndex

    writer = threading.Thread(target=lambda: SearchIndex(idx.path).add([str(more)], batch_size=2, progress=False))
    writer.start()
    seen = []
    while writer.is_alive():
        r = client.get("/search", params={"q": "noise", "k": 100})
        assert r.status_code == 200
        seen.append(client.get("/info").json()["vectors"])
    writer.join()
    after = client.get("/info").json()["vectors"]
    assert after == before + 24 and seen == sorted(seen)  # commits appear, never go backwards
    assert len(client.get("/search", params={"q": "noise", "path": f"{more}/*", "k": 100}).json()) == 24


def test_hostile_bodies_are_capped_and_typed(served):
    _, _, client, _ = served
    chunks = (b"x" * 65536 for _ in range(64))  # 4 MiB, chunked: no Content-Length to refuse early
    r = client.post("/search", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "error" in r.json()
    r = client.post("/search", content=b'{"q": "a cat"}', headers={"content-type": "text/plain"})  # a cross-site form
    assert r.status_code == 415
    r = client.post("/search", files={"query": ("q.json", b'{"q": "a cat"}', "application/json")})  # query sent as a file
    assert r.status_code == 400
    malformed = [{"q": "x", "path": 123}, {"q": "x", "before": True}, {"q": "x", "min_score": "0.5"}, {"q": "x", "k": 10**400},
                 {"q": "x", "per_video": 1e300}, {"q": "x", "fusion": "bogus"}, {"q": "x", "path": "*" * 50_000},
                 {"q": "x", "k": 1001}, {"q": "x + " * 20 + "y"}, {"q": "x", "tags": [1]}, {"q": "x", "image": ["/etc/passwd"]}]
    for body in malformed:
        r = client.post("/search", json=body)
        assert r.status_code == 400 and isinstance(r.json()["error"], str), (body, r.status_code, r.text)
    for raw in (b'{"q": "x", "weights": [Infinity]}', b'{"q": "x", "min_score": NaN}', b'{"q": "x", "k": 1e999}'):
        r = client.post("/search", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, raw
    for params in ({"q": "x", "min_score": "nan"}, {"q": "x", "k": "1e999"}, {"q": "x", "after": "yesterday"},
                   {"q": "x", "bogus": "1"}, {"q": "x", "k": ["1", "2"]}):
        assert client.get("/search", params=params).status_code == 400, params
    # read as meant: one negative text (not four letters), dates before 1970 and the epoch itself
    assert client.post("/search", json={"q": "a cat", "not": "blue"}).json() == \
        client.post("/search", json={"q": "a cat", "not": ["blue"]}).json()
    assert len(client.get("/search", params={"q": "a cat", "after": "1900-01-01", "k": 3}).json()) == 3
    assert client.get("/search", params={"q": "a cat", "before": "1970-01-02"}).json() == []
    # bounded work whatever the size: many tags, many parts, huge weights, a flood of bad values
    for body in ({"q": "cat", "tags": ["a"] * 1000}, {"q": "a + " * 100_000 + "b"}, {"q": "9" * 400 + ":cat + dog"},
                 {"q": "cat + dog", "weights": [1e308, 1e308]}, {"q": "cat", "not": ["x"] * 100}):
        r = client.post("/search", json=body)
        assert r.status_code == 400, (str(body)[:80], r.status_code, r.text[:200])
    r = client.get("/search", params=[("q", "cat")] + [("tag", "a")] * 1000)
    assert r.status_code == 400 and "at most 32" in r.json()["error"]
    r = client.post("/search", json={"q": "cat", "f" * 100_000: 1, **{f"x{i}": 1 for i in range(10_000)}})
    assert r.status_code == 400 and len(r.content) < 1000 and r.json()["error"].endswith("(and 9998 more)")
    # never a 500: ids beyond SQLite's integers, unknown routes and methods answer in JSON
    for url in ("/items/100000000000000000000", "/thumb/100000000000000000000", "/items/-1", "/nowhere"):
        r = client.get(url)
        assert r.status_code == 404 and "error" in r.json(), url
    r = client.delete("/search")
    assert r.status_code == 405 and "error" in r.json()


def test_host_header_must_name_the_server(served):
    idx, _, _, _ = served
    app = create_app(idx)
    for host, code in (("localhost", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200), ("evil.example", 400),
                       ("localhost.evil.example", 400), ("", 400), ("[::1]evil", 400), ("[::1]:80@evil", 400),
                       ("localhost:abc", 400), ("localhost:99999", 400), ("localhost:65535", 200)):
        r = TestClient(app).get("/health", headers={"host": host})
        assert r.status_code == code, host
        if code == 400:
            assert "Host" in r.json()["error"]
    assert TestClient(create_app(idx, hosts=["*"])).get("/health", headers={"host": "any.example"}).status_code == 200
    assert TestClient(create_app(idx, hosts=["search.lan"])).get("/health", headers={"host": "search.lan:80"}).status_code == 200


def test_model_work_does_not_block_other_requests(served, monkeypatch):
    """An upload's decoding and the model run in the thread pool: /health answers meanwhile
    (on a real server: the test client gives each request an event loop of its own)."""
    import httpx

    idx, _, _, _ = served
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    real = type(idx).search

    def slow_search(self, *args, **kwargs):
        started.set()
        release.wait(10)
        try:
            return real(self, *args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(type(idx), "search", slow_search)
    with _serving(create_app(idx)) as (url, _):
        worker = threading.Thread(target=lambda: httpx.post(f"{url}/search", json={"q": "a cat"}, timeout=60))
        worker.start()
        assert started.wait(30)
        r = httpx.get(f"{url}/health", timeout=60)  # waits for the search to time out and finish if it holds the loop
        blocked = finished.is_set()
        release.set()
        worker.join()
    assert r.status_code == 200 and not blocked


def test_connections_and_their_work_are_bounded(served, monkeypatch):
    """On a real server (the test client has no connections): a response sent before its body
    was read whole closes the connection (else the server drains an endless chunked body); silent
    connections and heads that never end are closed; a body has deadlines, and large ones take
    turns (a few an address) that small ones need not wait for; a client that reads no responses
    is cut off; thumbnails wait their turn on the event loop, not in a worker thread; beyond the
    connection limit a new connection displaces the slowest waiting on its client, or is closed if
    none waits; one client address's connections beyond its limit are closed as they arrive."""
    import httpx

    from mmsearch.cli import server

    idx = served[0]
    for name, value in (("IDLE_SECONDS", 2), ("MIN_BODY_RATE", 1000), ("MAX_CONNECTIONS", 4), ("THUMBS_AT_ONCE", 1),
                        ("BODIES_AT_ONCE", 2), ("BODIES_PER_CLIENT", 1), ("WAIT_SECONDS", 1)):
        monkeypatch.setattr(server, name, value)
    entered, release = threading.Event(), threading.Event()
    real = type(idx).thumbnail

    def slow_thumbnail(self, *args):
        entered.set()
        release.wait(20)
        return real(self, *args)

    monkeypatch.setattr(type(idx), "thumbnail", slow_thumbnail)
    with _serving(create_app(idx)) as (url, port):
        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), timeout=10)

        def connect_from(address: str) -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0))

        with connect() as c:  # refused early, the chunked body endless: answered and closed
            c.sendall(b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n10000\r\n" + b"x" * 65536 + b"\r\n")
            head = _response(c)
            assert head.startswith(b"HTTP/1.1 415") and b"connection: close" in head.lower() and _closed(c)
        with connect() as c:  # a body that stops coming: 408, closed
            c.sendall(b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"q\"")
            t0 = time.monotonic()
            assert _response(c).startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 5 and _closed(c)
        with connect() as c:  # a body never silent but slower than MIN_BODY_RATE: 408 after IDLE_SECONDS
            c.sendall(b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 10000\r\n\r\n")
            t0 = time.monotonic()
            while not select.select([c], [], [], 0.25)[0] and time.monotonic() - t0 < 8:
                c.sendall(b" " * 10)
            assert _response(c).startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 3
        with connect() as c:  # keep-alive as before: two requests on one connection; then silence closes it
            for _ in range(2):
                c.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert _response(c).startswith(b"HTTP/1.1 200")
            assert _closed(c)
        with connect() as c:  # silent from the start: closed too
            assert _closed(c)
        with connect() as c:  # a head that never ends, however it drips: closed
            t0 = time.monotonic()
            with contextlib.suppress(OSError):  # (a send fails once the server has closed)
                while time.monotonic() - t0 < 10:
                    c.sendall(b"GET /heal"[: 1 + int(time.monotonic() - t0) % 8])
                    time.sleep(0.25)
            assert time.monotonic() - t0 < 5
        big = (b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Content-Length: 1000000\r\n\r\n")
        with connect() as a, connect() as b, connect_from("127.0.0.2") as c:
            a.sendall(big)  # large bodies take turns (two here, one an address); a small one never waits
            time.sleep(0.3)
            t0 = time.monotonic()
            assert httpx.post(f"{url}/search", json={"q": "a cat", "k": 1}, timeout=10).status_code == 200
            assert time.monotonic() - t0 < 1
            b.sendall(big)
            c.sendall(big + b'{"q": "a cat", "k": 1}'.ljust(1_000_000))  # another address: a turn
            assert _response(c).startswith(b"HTTP/1.1 200")
            assert _response(b).startswith(b"HTTP/1.1 503")  # no turn within WAIT_SECONDS
            assert _response(a).startswith(b"HTTP/1.1 408")  # silent for IDLE_SECONDS
        for pages in (2000, 300):  # pipelined requests, no response read: reset after IDLE_SECONDS,
            with socket.socket() as c:  # whether their pages wait here (~13 MB) or in the kernel (~2 MB)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                c.settimeout(10)
                c.connect(("127.0.0.1", port))
                c.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" * pages)
                time.sleep(4.5)
                with pytest.raises(ConnectionResetError):  # (closed, the kernel went on sending them)
                    while c.recv(1 << 20):
                        pass
        thumb_id = _an_image_id(idx)
        with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
            drawing = threading.Thread(target=lambda: a.get(f"{url}/thumb/{thumb_id}"))
            drawing.start()
            assert entered.wait(10)
            r = b.get(f"{url}/thumb/{thumb_id}")  # the one turn is taken: 503 after WAIT_SECONDS
            assert r.status_code == 503 and r.headers["retry-after"] and "error" in r.json()
            assert b.get(f"{url}/health").status_code == 200
            release.set()
            drawing.join()
        entered.clear()
        release.clear()
        monkeypatch.setattr(server, "WAIT_SECONDS", 10)
        busy = [connect() for _ in range(4)]  # the limit reached, every connection being served:
        for c in busy:                        # one draws a thumbnail, three wait for their turn
            c.sendall(b"GET /thumb/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % thumb_id)
        assert entered.wait(10)
        time.sleep(0.3)
        with connect() as c:  # a new connection is closed as it arrives
            c.settimeout(0.5)
            assert c.recv(1) == b""
        release.set()
        for c in busy:
            assert _response(c).startswith(b"HTTP/1.1 200")
            c.close()
        # the limit reached by connections waiting on their clients: a new one displaces the one
        # feeding the server slowest, not the one heard from least recently
        js = b'{"q": "a cat", "k": 1}'
        fast = connect()  # half its body sent at once, then a pause
        fast.sendall(b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 30000\r\n\r\n" + b" " * 15000)
        drips = [connect() for _ in range(3)]  # heads dripping
        try:
            for byte in b"GET /heal":
                for d in drips:
                    d.sendall(bytes([byte]))
                time.sleep(0.05)
            with connect() as c:
                c.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert _response(c).startswith(b"HTTP/1.1 200")
            drips[0].settimeout(0.5)
            assert drips[0].recv(1) == b""  # the oldest of the slowest
            fast.sendall(b" " * (15000 - len(js)) + js)
            assert _response(fast).startswith(b"HTTP/1.1 200")
        finally:
            for c in (fast, *drips):
                c.close()
        monkeypatch.setattr(server, "MAX_PER_CLIENT", 2)  # one address's connections beyond: closed on arrival

        mine = [connect_from("127.0.0.2") for _ in range(2)]
        try:
            with connect_from("127.0.0.2") as c:
                c.settimeout(0.5)
                assert c.recv(1) == b""  # (at once: not by the head's deadline)
            with connect_from("127.0.0.3") as c:
                c.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert _response(c).startswith(b"HTTP/1.1 200")
        finally:
            for c in mine:
                c.close()


def test_the_connection_displaced_is_the_slowest_waiting_on_its_client():
    """`_slowest`: bytes a second since the connection began its wait (credited a request head's
    bytes, at least 1 s counted), the oldest of equals; never one being served, one whose body
    waits for its turn, or one closing."""
    from types import SimpleNamespace

    import h11

    from mmsearch.cli.server import _slowest

    def conn(state=h11.IDLE, got=0, since=0.0, paused=False, closing=False):
        return SimpleNamespace(conn=SimpleNamespace(their_state=state), got=got, since=since,
                               flow=SimpleNamespace(read_paused=paused),
                               transport=SimpleNamespace(is_closing=lambda: closing))

    upload = conn(h11.SEND_BODY, got=3_000_000, since=0.0)  # 300 KB/s for 10 s
    drip = conn(h11.SEND_BODY, got=200, since=0.0)  # 20 B/s
    fresh = conn(h11.IDLE, got=100, since=9.9)  # 100 bytes of a head in its first 0.1 s
    assert _slowest([upload, fresh, drip], now=10.0) is drip
    idle, older = conn(since=5.0), conn(since=2.0)  # keep-alive connections waiting for a request
    assert _slowest([upload, idle, older], now=10.0) is older
    opened, heal = conn(since=9.95), conn(got=9, since=6.0)  # nothing read yet; "GET /heal" in 4 s
    assert _slowest([opened, heal], now=10.0) is heal
    queued = conn(h11.SEND_BODY, got=10, since=0.0, paused=True)
    served = conn(h11.DONE, since=0.0)
    closing = conn(closing=True)
    assert _slowest([queued, served, closing], now=10.0) is None
    assert _slowest([queued, served, closing, upload], now=10.0) is upload
def _an_image_id(idx) -> int:
    return idx.search("a cat", k=1, type="image")[0].item_id


def _response(c: socket.socket) -> bytes:
    """The head of one whole response read from `c` (its body read too)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += c.recv(65536)
    return head


def _closed(c: socket.socket) -> bool:
    """Whether the server closes `c` (nothing more comes) within 5 s."""
    t0 = time.monotonic()
    return c.recv(65536) == b"" and time.monotonic() - t0 < 5


@contextmanager
def _serving(app):
    """`app` on a real uvicorn server on loopback with `mmsearch serve`'s settings, stopped after."""
    import uvicorn

    from mmsearch.cli.server import config

    port = _free_port()
    server = uvicorn.Server(config(app, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_page_in_headless_chromium(served):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (.ci/run does)")
        pytest.skip("needs Debian chromium + chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    idx, lib, _, _ = served
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        _browse(driver, create_app(idx, token=TOKEN), lib)
    finally:
        driver.quit()


def _browse(driver, app, lib) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    with _serving(app) as (url, _):
        driver.get(f"{url}/")
        Select(driver.find_element(By.ID, "type")).select_by_value("image")
        driver.find_element(By.ID, "q").send_keys("a cat\n")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "token").is_displayed())  # 401: asks for the token
        driver.find_element(By.ID, "token").send_keys(TOKEN + "\n")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#results img')];"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"))
        first = driver.find_element(By.CSS_SELECTOR, "#results .hit .where").text
        assert first == "chelsea.png"
        Select(driver.find_element(By.ID, "type")).select_by_value("video")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: "@ 00:00:0" in d.find_element(By.ID, "results").text)
        driver.save_screenshot(str(lib.parent / "page.png"))
