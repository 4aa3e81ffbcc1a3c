"""HTTP API: contract, security, uploads, concurrency with a running indexer, and the web page
driven in headless Chromium."""
from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from videos import write_video

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
    client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    return idx, lib, client, TestClient(app)


def test_health_and_auth(served):
    _, _, client, anon = served
    assert anon.get("/health").json() == {"status": "ok"}
    for method, url in (("get", "/search?q=cat"), ("get", "/info"), ("get", "/items/1"), ("get", "/thumb/1"), ("post", "/search")):
        r = getattr(anon, method)(url)
        assert r.status_code == 401 and "error" in r.json(), url
        r = getattr(anon, method)(url, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, url
    assert client.get("/info").status_code == 200
    assert anon.get("/").status_code == 200 and "<form" in anon.get("/").text  # the static page holds no data
    assert anon.get("/openapi.json").json()["info"]["title"] == "mmsearch"


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


def test_items_and_thumbnails(served):
    idx, lib, client, _ = served
    hit = client.get("/search", params={"q": "a rocket", "type": "image", "k": 1}).json()[0]
    item = client.get(f"/items/{hit['item_id']}").json()
    assert item["path"] == hit["path"] and item["width"] > 0
    r = client.get(f"/thumb/{hit['item_id']}", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) == 64
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
    assert client.get("/search", params={"q": "a cat + /etc/passwd"}).status_code == 400  # server files refused


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_page_in_headless_chromium(served):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (.ci/run does)")
        pytest.skip("needs Debian chromium + chromium-driver")
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    from mmsearch.cli.server import create_app

    idx, lib, _, _ = served
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(idx, token=TOKEN), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
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
    finally:
        driver.quit()
        server.should_exit = True
