#!/usr/bin/env python3
"""Build the image–caption pair files the shipped ``lite`` head is trained and measured on.

    python data/prepare_pairs.py [train] [test]   # writes $MMSEARCH_DATA/pairs/*.csv, prints them

``test`` needs only Tux Paint and pysiogame; ``train`` (the default writes both) also OpenClipart
and the emoji drawings.

* ``tux_train.csv`` / ``tux_test.csv`` — Tux Paint stamps with their one-line captions, split by
  folder (a fixed hash of the folder name; ~20% held out), so similar stamps never straddle the
  split; the near-duplicate groups (letters, sign-language hands, coins, music symbols) only train.
* ``clipart.csv`` — OpenClipart drawings: SVG title when it is specific, else the file-name words
  without the author's name, plus the drawing's folder (its topic); at most 3 drawings per
  identical caption (titles are often collection names).
* ``emoji.csv`` — emoji drawings in two styles (Apple's, Google's) named by CLDR's short names
  ("man pilot", "cheese wedge"): the everyday objects, animals, people and actions that clipart
  titles cover thinly (measured over 3 seeds: Tux held-out text→image R@10 0.59 → 0.64–0.66).
* ``train.csv`` — clipart + emoji + tux_train: what `mmsearch train` fits the shipped head on.
* ``pysio_test.csv`` — pysiogame's labelled drawings ("a picture of a {label}"): test only.
"""
from __future__ import annotations

import collections
import csv
import hashlib
import html
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import fetch  # noqa: E402

TEST_SHARE = 0.2
# near-identical pictures told apart only by a detail (letters, sign-language hands, coin values,
# music notes): unanswerable for any image encoder, so they train but are never measured
NEAR_DUPLICATE_GROUPS = ("symbols/alphabets", "symbols/money", "symbols/music")
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
        folder = str(png.parent.relative_to(root))
        measurable = not folder.startswith(NEAR_DUPLICATE_GROUPS)
        (test if held_out(folder) and measurable else train).append((str(png), caption))
    return train, test


def _svg_text(svg: Path) -> tuple[str, set[str]]:
    """(work title, words of the author's name) from an OpenClipart SVG's metadata."""
    s = svg.read_text(errors="replace")[:20000]
    creator = re.search(r"<dc:creator>.*?<dc:title>([^<]*)</dc:title>", s, re.S)
    author = html.unescape(creator.group(1)).strip() if creator else ""
    s = re.sub(r"<dc:(creator|rights|publisher)>.*?</dc:\1>", "", s, flags=re.S)
    title = re.search(r"<dc:title>([^<]*)</dc:title>", s)
    title = html.unescape(title.group(1)).strip() if title else ""
    return ("" if title.lower() == author.lower() else title), set(author.lower().split())


def clipart() -> list:
    """Caption = the drawing's title when it is specific, else its file-name words without the
    author's name, plus the folder (topic) it sits in: "daisy, flowers"."""
    root = fetch.fetch("openclipart")
    raw = []
    for png in sorted((root / "png").rglob("*.png")):
        svg = root / "svg" / png.parent.name / (png.stem + ".svg")
        title, author = _svg_text(svg) if svg.exists() else ("", set())
        raw.append((png, title, author))
    title_count = collections.Counter(t.lower() for _, t, _ in raw)
    per_caption: collections.Counter = collections.Counter()
    out = []
    for png, title, author in raw:
        if title and not _GENERIC.match(title) and title_count[title.lower()] <= MAX_PER_CAPTION:
            name = title
        else:
            name = " ".join(w for w in words_of(png.stem).split() if w.lower() not in author)
        topic = words_of(png.parent.name)
        caption = ", ".join(filter(None, [name, topic if topic.lower() not in name.lower() else ""]))
        if not name or per_caption[caption.lower()] >= MAX_PER_CAPTION:
            continue
        per_caption[caption.lower()] += 1
        out.append((str(png), caption))
    return out


def pysiogame() -> list:
    root = fetch.fetch("pysiogame") / "art4apps"
    return [(str(p), f"a picture of a {words_of(p.stem)}") for p in sorted(root.rglob("*.jpg"))]


def emoji() -> list:
    root = fetch.fetch("emoji")
    with open(root / "labels.csv", newline="") as f:
        return [(str(root / r["image"]), r["name"]) for r in csv.DictReader(f)]


def write(path: Path, rows: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    print(f"{path}  ({len(rows)} pairs)")


def main(sets: list[str]) -> None:
    """Write the pair files of the named groups: ``test`` (tux_test, pysio_test), ``train`` (all)."""
    out = fetch.ROOT / "pairs"
    out.mkdir(parents=True, exist_ok=True)
    tux_train, tux_test = tuxpaint()
    write(out / "tux_test.csv", tux_test)
    write(out / "pysio_test.csv", pysiogame())
    if "train" in sets:
        clip = clipart()
        write(out / "tux_train.csv", tux_train)
        write(out / "clipart.csv", clip)
        emo = emoji()
        write(out / "emoji.csv", emo)
        write(out / "train.csv", clip + emo + tux_train)


if __name__ == "__main__":
    main(sys.argv[1:] or ["train", "test"])
