"""Shared fixtures: real data fetched once (cached), one tiny random-weight open_clip checkpoint per session."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))

import fetch  # noqa: E402  (data/fetch.py)

TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """A cache of model exports for this test session alone: tests start as a first-time user
    does, and never touch the user's own cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["MMSEARCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def photos() -> Path:
    return fetch.fetch("photos")


@pytest.fixture(scope="session")
def tuxpaint() -> Path:
    return fetch.fetch("tuxpaint")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """A model spec for a tiny open_clip model whose random-weight checkpoint we write ourselves,
    so the real open_clip loading code runs with no network."""
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("tiny_clip")
    cfg = d / "mmsearch-tiny.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("mmsearch-tiny", pretrained=None)
    ckpt = d / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return f"open_clip:{cfg}:{ckpt}"


@pytest.fixture(scope="session")
def image_set(photos, tuxpaint, tmp_path_factory) -> Path:
    """A small folder of real images: the scikit-image photos plus a dozen Tux Paint stamps."""
    d = tmp_path_factory.mktemp("images")
    for p in sorted(photos.iterdir()):
        shutil.copy2(p, d / p.name)
    stamps = sorted(tuxpaint.rglob("*.png"))[:: max(1, len(list(tuxpaint.rglob("*.png"))) // 12)][:12]
    (d / "stamps").mkdir()
    for p in stamps:
        shutil.copy2(p, d / "stamps" / p.name)
    return d


class Cli:
    """Run `mmsearch` in-process (fast, shares loaded models) against one index directory."""

    def __init__(self, index: Path):
        self.index = index
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True):
        from mmsearch.cli.main import app

        where = ["--index", str(self.index)] if args[0] in ("index", "remove", "search", "info", "describe", "tag") else []
        r = self.runner.invoke(app, [args[0], *where, *args[1:]])
        if ok and r.exit_code != 0:
            raise AssertionError(f"mmsearch {' '.join(args)} -> {r.exit_code}\n{r.output}\n{r.exception!r}")
        return r

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli(tmp_path / "index")


def stored_items(index_dir: Path) -> dict[tuple, np.ndarray]:
    """Every item's vector in the index at `index_dir` by (path, kind, offset, timestamp); fails
    if one is stored twice."""
    from sqlalchemy import select

    from mmsearch.retrieval.index import Index
    from mmsearch.retrieval.store import File, Item, vectors_by_id

    with Index(index_dir).session() as s:
        rows = s.execute(select(Item.id, File.path, Item.kind, Item.offset, Item.timestamp).join(File)).all()
        vectors = vectors_by_id(s, [r[0] for r in rows])
    out: dict[tuple, np.ndarray] = {}
    for item_id, *key in rows:
        assert tuple(key) not in out, f"stored twice: {key}"
        out[tuple(key)] = vectors[item_id]
    return out


def run_mmsearch(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would (separate process, real exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "mmsearch", *args], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})}, **kw,
    )


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """An S3-compatible server (moto) on a free loopback port for the module, reached with
    made-up credentials from the environment (the AWS SDK's usual source; the user's own AWS
    config is hidden); stopped by its process id. Yields HOST:PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on port {port}")
                time.sleep(0.05)
        none = tmp_path_factory.mktemp("aws") / "none"
        with pytest.MonkeyPatch.context() as mp:
            for name, value in [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                                ("AWS_EC2_METADATA_DISABLED", "true"), ("AWS_CONFIG_FILE", str(none)),
                                ("AWS_SHARED_CREDENTIALS_FILE", str(none))]:
                mp.setenv(name, value)
            mp.delenv("AWS_SESSION_TOKEN", raising=False)
            mp.delenv("AWS_PROFILE", raising=False)
            yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
