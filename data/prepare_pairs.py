#!/usr/bin/env python3
"""Build the image–caption pair files the shipped ``lite`` head is trained and measured on.

    python data/prepare_pairs.py            # writes $MMSEARCH_DATA/pairs/*.csv and prints them

* ``tux_train.csv`` / ``tux_test.csv`` — Tux Paint stamps with their one-line captions, split by
  folder (a fixed hash of the folder name; ~20% held out), so near-duplicate groups (coins,
  letters, signs) never straddle the split.
* ``clipart.csv`` — OpenClipart drawings: SVG title when it is specific, else the file-name words
  plus its first keywords; at most 3 drawings per identical caption (titles are often collection names).
* ``train.csv`` — clipart + tux_train: what `mmsearch train` fits the shipped head on.
* ``pysio_test.csv`` — pysiogame's labelled drawings ("a picture of a {label}"): test only.
"""
from __future__ import annotations

import collections
import csv
import hashlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import fetch  # noqa: E402

TEST_SHARE = 0.2
MAX_PER_CAPTION = 3
_GENERIC = re.compile(r"^(untitled|open clip art library|image|drawing|clipart|icon|\d+)$", re.I)


def held_out(group: str) -> bool:
    return int(hashlib.sha1(group.encode()).hexdigest(), 16) % 1000 < TEST_SHARE * 1000


def words_of(name: str) -> str:
    return " ".join(w for w in re.split(r"[_\-\s.]+", re.sub(r"\d+", " ", name)) if len(w) > 1).strip()


def tuxpaint() -> tuple[list, list]:
    root = fetch.fetch("tuxpaint")
    train, test = [], []
    for png in sorted(root.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if not txt.exists():
            continue
        caption = txt.read_text(errors="replace").strip().splitlines()[0].strip() if txt.read_text(errors="replace").strip() else ""
        if not caption:
            continue
        (test if held_out(str(png.parent.relative_to(root))) else train).append((str(png), caption))
    return train, test


def _svg_text(svg: Path) -> tuple[str, list[str]]:
    s = svg.read_text(errors="replace")[:20000]
    titles = re.findall(r"<dc:title>([^<]*)</dc:title>", s)
    subject = re.search(r"<dc:subject>(.*?)</dc:subject>", s, re.S)
    keywords = re.findall(r"<rdf:li>([^<]*)</rdf:li>", subject.group(1)) if subject else []
    return (titles[0].strip() if titles else ""), [k.strip() for k in keywords if k.strip()]


def clipart() -> list:
    root = fetch.fetch("openclipart")
    raw = []
    for png in sorted((root / "png").rglob("*.png")):
        svg = root / "svg" / png.parent.name / (png.stem + ".svg")
        title, keywords = _svg_text(svg) if svg.exists() else ("", [])
        raw.append((png, title, keywords))
    title_count = collections.Counter(t.lower() for _, t, _ in raw)
    per_caption: collections.Counter = collections.Counter()
    out = []
    for png, title, keywords in raw:
        if title and not _GENERIC.match(title) and title_count[title.lower()] <= MAX_PER_CAPTION:
            caption = title
        else:  # the file name says what this drawing is; keywords add the topic
            caption = ", ".join(filter(None, [words_of(png.stem), *keywords[:3]]))
        if not caption or per_caption[caption.lower()] >= MAX_PER_CAPTION:
            continue
        per_caption[caption.lower()] += 1
        out.append((str(png), caption))
    return out


def pysiogame() -> list:
    root = fetch.fetch("pysiogame") / "art4apps"
    return [(str(p), f"a picture of a {words_of(p.stem)}") for p in sorted(root.rglob("*.jpg"))]


def write(path: Path, rows: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    print(f"{path}  ({len(rows)} pairs)")


def main() -> None:
    out = fetch.ROOT / "pairs"
    out.mkdir(parents=True, exist_ok=True)
    tux_train, tux_test = tuxpaint()
    clip = clipart()
    write(out / "tux_train.csv", tux_train)
    write(out / "tux_test.csv", tux_test)
    write(out / "clipart.csv", clip)
    write(out / "train.csv", clip + tux_train)
    write(out / "pysio_test.csv", pysiogame())


if __name__ == "__main__":
    main()
