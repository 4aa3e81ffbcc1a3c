"""Roots given as URIs (media/fetch.py, indexer/scan.py): listed through pyarrow.fs, each object
fetched to a temporary file for the decoders and hashed there. `file://` URIs for the layer
itself; a real S3-compatible server (moto, started by the module on loopback) and the real
`lite` model for an index run end to end."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import s3_client
from PIL import Image
from sqlalchemy import select

from mmsearch.indexer.scan import FOLDER, scan
from mmsearch.media import fetch
from mmsearch.media.errors import DecodeError
from mmsearch.media.files import file_digest, location, under
from mmsearch.media.image import load_image
from mmsearch.retrieval.index import Index
from mmsearch.retrieval.store import File


def test_file_uris_are_listed_and_fetched(photos, tmp_path, monkeypatch):
    d = tmp_path / "media"
    for name in ["a.png", "sub/b.png", "sub/skip/c.png", ".hidden/d.png", "sub/.e.png", "notes.txt", "other.xyz"]:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos / "horse.png", d / name)
    root = f"file://{d}/"
    entries = list(scan([root], exclude=["skip"]))
    assert [(e.path, e.kind, e.size, e.mtime_ns) for e in entries] == [
        (f"file://{d}/{name}", kind, os.stat(d / name).st_size, os.stat(d / name).st_mtime_ns)
        for name, kind in [("a.png", "image"), ("notes.txt", "text"), ("sub/b.png", "image")]]
    assert len(list(scan([root], hidden=True))) == 6  # hidden folders and files too; the excluded one still not
    assert len(list(scan([root, f"file://{d}/sub?", f"file://{d}/a.png"]))) == 4  # roots inside a root: listed once
    assert [e.path for e in scan([f"file://{d}/sub/b.png"])] == [f"file://{d}/sub/b.png"]  # an object as a root
    assert list(scan([f"file://{d}/gone"])) == []  # a vanished root: its stored files get swept
    [unlisted] = scan(["nosuch://bucket/x"])  # cannot be listed: kept as it is, with the reason
    assert unlisted.kind == FOLDER and unlisted.error and unlisted.error.startswith("cannot list: no filesystem for nosuch://")

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the copies go
    local = str(d / "a.png")
    with fetch.fetched(local) as path:  # a local file costs nothing
        assert path == local
    with fetch.fetched(f"file://{d}/a.png") as path:  # an object: a copy, with its extension, gone after
        assert path != local and path.endswith(".png") and Path(path).read_bytes() == (d / "a.png").read_bytes()
    assert not os.path.exists(path)
    with pytest.raises(DecodeError, match=r"^unreadable: .*gone\.png"), fetch.fetched(f"file://{d}/gone.png"):
        pass
    monkeypatch.setattr(fetch, "MAX_FETCH", 1000)  # larger objects are refused: by their listed size, or as they copy
    for size in (os.path.getsize(local), None):
        with pytest.raises(DecodeError, match="^object larger than"), fetch.fetched(f"file://{d}/a.png", size):
            pass
    assert not os.listdir(scratch)  # no copy left behind

    # stored paths are plain URIs: a root's options and credentials are not part of them
    assert location("s3://KEY:SECRET@media/lib/?endpoint_override=127.0.0.1:9000") == "s3://media/lib"
    assert under(b"s3://media/lib/a.jpg", ["s3://media/lib?scheme=http"])
    assert not under(b"s3://media/library/a.jpg", ["s3://media/lib"]) and not under(b"/media/lib/a.jpg", ["s3://media/lib"])
    assert not under(b"s3://media/lib/q/a.jpg", [b"s3://media/lib/q?x.png"])  # roots as bytes: exact keys


@pytest.fixture(scope="module")
def bucket(s3_server, photos, tmp_path_factory) -> dict[str, str]:
    """A bucket of real photos under lib/ (one in lib/sub/, one with the EXIF of a camera), a
    corrupt image and a text; the objects' names → local files with their bytes."""
    d = tmp_path_factory.mktemp("upload")
    files = {name: photos / name for name in ["coffee.png", "horse.png", "rocket.jpg", "astronaut.png"]}
    files["sub/chelsea.png"] = photos / "chelsea.png"
    exif = Image.Exif()
    exif[271], exif[272] = "Canon", "Canon EOS 5D"
    exif.get_ifd(0x8769).update({36867: "2019:07:14 15:22:01", 36881: "+02:00"})
    Image.open(photos / "motorcycle_left.png").convert("RGB").save(d / "motorcycle.jpg", exif=exif)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (d / "note.txt").write_text("A red bicycle leans against a brick wall.")
    files |= {p.name: p for p in d.iterdir()}
    client = s3_client(s3_server)
    client.create_bucket(Bucket="media")
    for name, path in files.items():
        client.upload_file(str(path), "media", f"lib/{name}")
    return {name: str(path) for name, path in files.items()}


def test_an_s3_prefix_is_indexed_searched_updated_and_swept(cli, s3_server, bucket, photos, monkeypatch):
    root = f"s3://media/lib/?endpoint_override={s3_server}&scheme=http&region=us-east-1&connect_timeout=5&request_timeout=20"
    summary = cli.json("index", root)
    with pytest.raises(DecodeError) as bad:  # what a local run records for the same bytes
        load_image(bucket["corrupt.jpg"])
    assert summary["new"] == 7 and summary["embedded"] == 7
    assert summary["skipped"] == [{"path": "s3://media/lib/corrupt.jpg", "reason": str(bad.value)}]

    hits = cli.json("search", "a cat", "-k", "3")  # (no name says so: the picture does)
    assert hits[0]["path"] == "s3://media/lib/sub/chelsea.png" and hits[0]["kind"] == "image"
    [same] = cli.json("search", "--image", str(photos / "rocket.jpg"), "-k", "1")
    assert same["path"] == "s3://media/lib/rocket.jpg" and same["score"] > 0.999
    assert cli.json("search", "bicycle against a wall", "--type", "text", "-k", "1")[0]["path"] == "s3://media/lib/note.txt"
    with Index(cli.index).session() as s:
        stored = {f.path: f for f in s.scalars(select(File))}
        # hashed where fetched, as the bytes hash locally; capture metadata read from the object
        assert all(stored[f"s3://media/lib/{n}"].digest == file_digest(p) for n, p in bucket.items() if n != "corrupt.jpg")
        moto = stored["s3://media/lib/motorcycle.jpg"]
        assert (moto.taken_from, moto.camera, moto.offset_min) == ("exif", "Canon EOS 5D", 120)

    again = cli.json("index")  # no PATH: every root indexed before, opened with its options
    assert (again["unchanged"], again["embedded"], again["skipped"]) == (8, 0, [])

    monkeypatch.setattr(fetch, "_roots", {})  # as in a fresh server process: the options come from the index
    from mmsearch.api import SearchIndex

    assert SearchIndex(cli.index).thumbnail(hits[0]["item_id"])[:2] == b"\xff\xd8"  # a JPEG
    # a server's client asks by id: an object larger than a thumbnail's bound is not fetched for one
    monkeypatch.setattr(fetch, "MAX_THUMBNAIL_FETCH", 1000)
    assert SearchIndex(cli.index).thumbnail(hits[0]["item_id"]) is None

    client = s3_client(s3_server)
    client.delete_object(Bucket="media", Key="lib/horse.png")
    client.upload_file(str(photos / "camera.png"), "media", "lib/coffee.png")  # overwritten
    changed = cli.json("index")
    assert (changed["removed"], changed["updated"], changed["embedded"], changed["unchanged"]) == (1, 1, 1, 6)
    paths = [h["path"] for h in cli.json("search", "a horse", "-k", "10")]
    assert "s3://media/lib/horse.png" not in paths and len(paths) == 6  # (the corrupt one is no item)
    assert cli.json("search", "--image", str(photos / "camera.png"), "-k", "1")[0]["path"] == "s3://media/lib/coffee.png"

    assert cli("remove", "s3://media/lib/sub/").stdout.strip() == "removed 1 file(s)"
    assert cli.json("index")["removed"] == 0  # the removed prefix stays out of updates of its root
    assert "s3://media/lib/sub/chelsea.png" not in {h["path"] for h in cli.json("search", "a cat", "-k", "10")}

    # a "?" in a key is the key's, not a root's options: removing that object removes it alone, for good
    client.upload_file(str(photos / "horse.png"), "media", "lib/q?x.png")
    client.upload_file(str(photos / "coffee.png"), "media", "lib/q/inner.png")
    assert cli.json("index")["new"] == 2
    assert cli("remove", "s3://media/lib/q?x.png").stdout.strip() == "removed 1 file(s)"
    assert (cli.json("index")["removed"], cli.json("index")["new"]) == (0, 0)
    with Index(cli.index).session() as s:
        stored = set(s.scalars(select(File.path)))
    assert "s3://media/lib/q/inner.png" in stored and "s3://media/lib/q?x.png" not in stored

    r = cli("index", root, "--watch", ok=False)  # what cannot work with a URI says so in one line
    assert r.exit_code == 2 and r.stderr.strip().startswith("mmsearch: error: cannot watch s3://media/lib: --watch follows local folders only")
    r = cli("index", "--watch", ok=False)  # every root indexed before: refused before the run, not after it
    assert r.exit_code == 2 and r.stdout == "" and r.stderr.strip().startswith("mmsearch: error: cannot watch s3://media/lib")
    r = cli("index", f"s3://media/nothing-here?endpoint_override={s3_server}&scheme=http&region=us-east-1", ok=False)
    assert r.exit_code == 2 and r.stderr.strip() == "mmsearch: error: s3://media/nothing-here does not exist"


def test_text_in_objects_is_read_also_when_their_root_is_not_named(s3_server, tmp_path, monkeypatch):
    """The OCR pass reads every unread image of the index: an object under a root this run did not
    name is fetched with that root's options (it was stored as "no text" for good), and one that
    cannot be fetched is left unread for a later run."""
    import importlib

    from PIL import ImageDraw, ImageFont

    from mmsearch import SearchIndex

    fonts = importlib.import_module("fetch").fetch("fonts")  # data/fetch.py (media.fetch is `fetch` here)
    img = Image.new("RGB", (640, 360), "white")
    ImageDraw.Draw(img).text((30, 150), "Parcel ZX-9031 delivered", font=ImageFont.truetype(str(fonts / "DejaVuSans-Bold.ttf"), 40),
                             fill="black")
    img.save(tmp_path / "label.png")
    client = s3_client(s3_server)
    client.create_bucket(Bucket="signs")
    client.upload_file(str(tmp_path / "label.png"), "signs", "p/label.png")
    idx = SearchIndex(tmp_path / "index", create=True)
    root = f"s3://signs/p?endpoint_override={s3_server}&scheme=http&region=us-east-1"
    assert idx.add([root]).embedded == 1
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(fetch, "_roots", {})  # a later process, naming another root: the store is down
    monkeypatch.setattr(fetch, "remember", lambda roots: None)
    assert idx.add([str(tmp_path / "empty")], ocr=True).ocr_images == 0  # not fetched: left unread
    monkeypatch.undo()
    monkeypatch.setattr(fetch, "_roots", {})  # the same, the store up: fetched with the index's roots
    assert idx.add([str(tmp_path / "empty")], ocr=True).ocr_images == 1
    assert [h.path for h in idx.search("zx9031", mode="lexical")] == ["s3://signs/p/label.png"]


def test_s3_roots_get_timeouts_and_keep_their_options():
    """pyarrow's URI parser refuses timeouts: they are taken out of the query and set on the
    filesystem it made, with every other option it read (seen in its pickling state)."""
    def options(root: str) -> tuple[str, dict]:
        fs, path = fetch._filesystem(root)
        return path, fs.__reduce__()[1][0]

    path, o = options("s3://KEY:SECRET@media/lib/?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1")
    assert path == "media/lib" and (o["connect_timeout"], o["request_timeout"]) == (10, 10)  # the defaults
    assert (o["endpoint_override"], o["scheme"], o["region"], o["access_key"], o["secret_key"]) == (
        "127.0.0.1:9000", "http", "eu-west-1", "KEY", "SECRET")
    path, o = options("s3://media/lib?connect_timeout=2.5&region=eu-west-1&request_timeout=45&allow_delayed_open=true")
    assert path == "media/lib" and (o["connect_timeout"], o["request_timeout"], o["region"], o["allow_delayed_open"]) == (
        2.5, 45, "eu-west-1", True)
    for bad in ["request_timeout=abc", "connect_timeout=0", "connect_timeout=-1", "request_timeout=nan", "request_timeout"]:
        with pytest.raises(ValueError, match=r"^(connect|request)_timeout must be a number of seconds above 0, not '[^\n]*'$"):
            fetch._filesystem(f"s3://media/lib?region=eu-west-1&{bad}")
    assert location("s3://media/lib/?scheme=http&request_timeout=5") == "s3://media/lib"  # stored paths: plain
    # GCS has no timeouts in pyarrow; its retries after a failure stop after a minute, or as the root says
    assert options("gs://media/lib?scheme=http&endpoint_override=127.0.0.1:9000")[1]["retry_time_limit"].total_seconds() == 60
    assert options("gs://media/lib?retry_limit_seconds=7")[1]["retry_time_limit"].total_seconds() == 7


@contextmanager
def _endpoint(forward_to: str | None = None, step: int = 0, pause: float = 0.0):
    """A TCP endpoint on loopback, closed after. Without `forward_to` it is a black hole: it
    accepts every connection and never answers. Else it relays to HOST:PORT and passes the
    answers on `step` bytes at a time, `pause` seconds apart (a slow link)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop, held = threading.Event(), []

    def pipe(src: socket.socket, dst: socket.socket, step: int, pause: float) -> None:
        try:
            while data := src.recv(step or 65536):
                dst.sendall(data)
                time.sleep(pause)
        except OSError:
            pass

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            if forward_to:
                host, _, port = forward_to.rpartition(":")
                up = socket.create_connection((host, int(port)))
                held.append(up)
                threading.Thread(target=pipe, args=(conn, up, 0, 0.0), daemon=True).start()
                threading.Thread(target=pipe, args=(up, conn, step, pause), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        server.close()
        for conn in held:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def test_a_store_that_never_answers_fails_in_bounded_time(cli, s3_server, monkeypatch):
    """Timeouts in the root's query bound each request; the AWS SDK's 3 tries and their backoff
    (up to 1 s, then 2 s) stay within what media/fetch.py documents: here 3 x 1 s + 3 s."""
    from concurrent.futures import ThreadPoolExecutor

    def fetch_one() -> float:  # an object under that root (remembered with its options): unreadable
        start = time.monotonic()
        with pytest.raises(DecodeError, match="^unreadable: .*Timeout was reached"), fetch.fetched("s3://media/lib/a.png"):
            pass
        return time.monotonic() - start

    monkeypatch.setattr(fetch, "_roots", {})
    with _endpoint() as hole, ThreadPoolExecutor(1) as pool:
        root = f"s3://media/lib?endpoint_override={hole}&scheme=http&region=us-east-1&connect_timeout=1&request_timeout=1"
        fetch.remember([root])
        fetching = pool.submit(fetch_one)  # (at the same time as the run: the test waits once)
        start = time.monotonic()
        r = cli("index", root, ok=False)
        took = time.monotonic() - start
        [line] = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and line.startswith("mmsearch: error: cannot open s3://media/lib: ") and "Timeout was reached" in line
        assert 2.5 <= took < 12 and 2.5 <= fetching.result() < 12, (took, fetching.result())  # three tries, not pyarrow's ~100 s
    r = cli("index", f"s3://media/lib?endpoint_override={s3_server}&scheme=http&region=us-east-1&request_timeout=soon", ok=False)
    assert r.exit_code == 2 and r.stderr.strip() == (
        "mmsearch: error: cannot open s3://media/lib: request_timeout must be a number of seconds above 0, not 'soon'")


def test_a_slow_download_outlasts_the_request_timeout(s3_server, monkeypatch):
    """The request timeout is a stall timeout (no byte for that long), not a whole request's: an
    object that takes several times as long to arrive is fetched whole."""
    monkeypatch.setattr(fetch, "_roots", {})
    client = s3_client(s3_server)
    client.create_bucket(Bucket="slow")
    client.put_object(Bucket="slow", Key="p/blob.bin", Body=(data := os.urandom(40_000)))
    with _endpoint(s3_server, step=4000, pause=0.25) as link:  # ~2.5 s for the object
        fetch.remember([f"s3://slow/p?endpoint_override={link}&scheme=http&region=us-east-1&request_timeout=1"])
        start = time.monotonic()
        with fetch.fetched("s3://slow/p/blob.bin") as path:
            assert Path(path).read_bytes() == data
        assert time.monotonic() - start > 2
