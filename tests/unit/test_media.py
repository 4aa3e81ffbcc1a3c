"""media/: text passages, sidecar captions, caption tables, file kinds, path keys, digests, reasons."""
from __future__ import annotations

import hashlib
import os
import struct
import zlib

import pytest

from mmsearch.media import files, text
from mmsearch.media.errors import MAX_SIDE, DecodeError, check_pixels, may_pass_later, os_reason
from mmsearch.media.files import display_path, file_digest, under
from mmsearch.media.kinds import (
    IMAGE_EXTS,
    ITEM_KINDS,
    KIND_BY_EXT,
    TABLE_EXTS,
    TEXT_EXTS,
    VIDEO_EXTS,
    is_table,
    kind_of,
)
from mmsearch.media.text import PASSAGE_CHARS, TextOptions, passages, sidecar_of, text_units

# --- passages ------------------------------------------------------------------------------------


def _offsets_point_at_pieces(body: str, ps: list[tuple[int, str]]) -> None:
    for off, piece in ps:
        assert body[off:].startswith(piece[:20]), (off, piece[:20], body[off : off + 20])


def test_short_text_is_one_passage():
    assert passages("A dog on a beach. It runs!") == [(0, "A dog on a beach. It runs!")]


def test_leading_and_trailing_space_stripped_offset_at_first_character():
    assert passages("  hello world. second.\n") == [(2, "hello world. second.")]


@pytest.mark.parametrize("body", ["", "   ", "\n\n\n", " \n \n\t\n"])
def test_blank_text_has_no_passages(body):
    assert passages(body) == []


def test_long_text_cut_at_sentence_boundaries():
    body = "".join(f"Sentence number {i:02} is here. " for i in range(60))  # 27 chars + 1 space each
    ps = passages(body)
    # 17 sentences fit in 500 characters (27 + 16 * 28 = 475); the 18th would overflow
    assert [len(p) for _, p in ps] == [475, 475, 475, 251]
    assert ps[0][1].startswith("Sentence number 00 ") and ps[0][1].endswith("Sentence number 16 is here.")
    assert ps[1][1].startswith("Sentence number 17 ") and ps[1][1].endswith("Sentence number 33 is here.")
    assert ps[3][1].endswith("Sentence number 59 is here.")
    assert [o for o, _ in ps] == [0, 17 * 28, 34 * 28, 51 * 28]
    _offsets_point_at_pieces(body, ps)
    # nothing lost, nothing repeated
    assert " ".join(p for _, p in ps) == body.strip()


def test_every_passage_within_the_limit():
    body = "\n\n".join(" ".join(f"Word{j} of paragraph {i}." for j in range(7)) for i in range(40))
    ps = passages(body)
    assert len(ps) > 3
    assert all(0 < len(p) <= PASSAGE_CHARS for _, p in ps)
    _offsets_point_at_pieces(body, ps)
    assert sorted(o for o, _ in ps) == [o for o, _ in ps] and len({o for o, _ in ps}) == len(ps)


def test_paragraphs_without_punctuation_are_not_cut_mid_word():
    para1, para2 = "a" * 300, "b" * 300
    body = f"{para1}\n\n{para2}"
    assert passages(body) == [(0, para1), (302, para2)]


def test_sentence_longer_than_a_passage_is_cut():
    body = "x" * 1200
    assert passages(body) == [(0, "x" * 500), (500, "x" * 500), (1000, "x" * 200)]


def test_long_sentence_after_a_short_one():
    body = "Intro.\n\n" + "y" * 1100 + ". End."
    ps = passages(body)
    assert [(o, len(p)) for o, p in ps] == [(0, 6), (8, 500), (508, 500), (1008, 106)]
    assert ps[-1][1].endswith("y. End.")
    _offsets_point_at_pieces(body, ps)


def test_offsets_with_indented_first_line_and_single_newlines():
    body = "   Title line\nsecond line of it.\n\n" + "Filler sentence here. " * 30 + "\n\nLast one."
    ps = passages(body)
    assert ps[0][0] == 3 and ps[0][1].startswith("Title line\nsecond line")
    assert ps[-1][1].endswith("Last one.")
    _offsets_point_at_pieces(body, ps)


@pytest.mark.parametrize("body, expected", [
    ("\n\n  hello", (4, "hello")),
    ("A" * 499 + ".\n\n   Next para.", (505, "Next para.")),
], ids=["at the start", "after a full passage"])
def test_offset_of_indented_paragraph_after_a_blank_line(body, expected):
    ps = passages(body)
    assert ps[-1] == expected
    _offsets_point_at_pieces(body, ps)


# --- sidecar captions and text files -------------------------------------------------------------


def test_sidecar_is_the_same_named_image(tmp_path):
    (tmp_path / "photo.txt").write_text("a caption")
    (tmp_path / "photo.jpg").write_bytes(b"x")
    (tmp_path / "other.png").write_bytes(b"x")
    assert sidecar_of(str(tmp_path / "photo.txt")) == str(tmp_path / "photo.jpg")


def test_sidecar_with_upper_case_extension_and_video(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "a.PNG").write_bytes(b"x")
    (tmp_path / "clip.txt").write_text("x")
    (tmp_path / "clip.mp4").write_bytes(b"x")
    assert sidecar_of(str(tmp_path / "a.txt")) == str(tmp_path / "a.PNG")
    assert sidecar_of(str(tmp_path / "clip.txt")) == str(tmp_path / "clip.mp4")


def test_no_sidecar(tmp_path):
    (tmp_path / "alone.txt").write_text("x")
    (tmp_path / "dir.txt").write_text("x")
    (tmp_path / "dir.jpg").mkdir()  # a folder is not the image
    (tmp_path / "alone.pdf").write_bytes(b"x")  # not a media kind
    assert sidecar_of(str(tmp_path / "alone.txt")) is None
    assert sidecar_of(str(tmp_path / "dir.txt")) is None


def test_sidecar_of_relative_path_is_absolute(tmp_path, monkeypatch):
    (tmp_path / "p.txt").write_text("x")
    (tmp_path / "p.webp").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert sidecar_of("p.txt") == str(tmp_path / "p.webp")


def test_text_file_units_link_to_sidecar(tmp_path):
    (tmp_path / "photo.txt").write_text("  A red bicycle.  ")
    (tmp_path / "photo.jpg").write_bytes(b"x")
    assert text_units(str(tmp_path / "photo.txt")) == [
        {"kind": "text", "text": "A red bicycle.", "offset": 2, "link_path": str(tmp_path / "photo.jpg")}]


def test_markdown_without_sidecar_and_bad_utf8(tmp_path):
    (tmp_path / "n.md").write_bytes(b"caf\xe9 au lait")
    assert text_units(str(tmp_path / "n.md")) == [
        {"kind": "text", "text": "caf\ufffd au lait", "offset": 0, "link_path": None}]


def test_empty_text_file_refused(tmp_path):
    (tmp_path / "e.txt").write_text(" \n\n ")
    with pytest.raises(DecodeError, match="^no text$"):
        text_units(str(tmp_path / "e.txt"))


def test_too_large_text_file_refused(tmp_path, monkeypatch):
    (tmp_path / "big.txt").write_text("12345")
    monkeypatch.setattr(text, "MAX_TEXT_BYTES", 4)
    with pytest.raises(DecodeError, match="^text file larger than"):
        text_units(str(tmp_path / "big.txt"))
    monkeypatch.setattr(text, "MAX_TEXT_BYTES", 5)
    assert [u["text"] for u in text_units(str(tmp_path / "big.txt"))] == ["12345"]


# --- caption tables ------------------------------------------------------------------------------


def test_csv_rows_link_relative_to_the_table(tmp_path):
    d = tmp_path / "set"
    d.mkdir()
    (d / "caps.csv").write_text(
        "caption,image\n"
        "  A dog. ,img/dog.jpg\n"   # row 0
        ",img/none.jpg\n"           # row 1: no text, skipped
        "A cat.,/abs/cat.jpg\n"     # row 2: absolute link kept
        "   ,x.jpg\n"               # row 3: blank text, skipped
        "Bird,\n"                   # row 4: no link
        "Up.,../up.jpg\n"           # row 5: normalised
    )
    assert text_units(str(d / "caps.csv")) == [
        {"kind": "text", "text": "A dog.", "offset": 0, "link_path": str(d / "img" / "dog.jpg")},
        {"kind": "text", "text": "A cat.", "offset": 2, "link_path": "/abs/cat.jpg"},
        {"kind": "text", "text": "Bird", "offset": 4, "link_path": None},
        {"kind": "text", "text": "Up.", "offset": 5, "link_path": str(tmp_path / "up.jpg")},
    ]


def test_tsv_with_text_and_path_columns(tmp_path):
    (tmp_path / "t.tsv").write_text("path\ttext\tother\na.png\tfirst, with comma\tz\nb.png\tsecond\tz\n")
    units = text_units(str(tmp_path / "t.tsv"))
    assert [(u["text"], u["offset"], u["link_path"]) for u in units] == [
        ("first, with comma", 0, str(tmp_path / "a.png")), ("second", 1, str(tmp_path / "b.png"))]


def test_jsonl_title_and_file_columns(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"file": "x.jpg", "title": "One"}\n{"file": "y.jpg", "title": null}\n'
                                      '{"file": "z.jpg", "title": "Three"}\n')
    units = text_units(str(tmp_path / "t.jsonl"))
    assert [(u["text"], u["offset"], u["link_path"]) for u in units] == [
        ("One", 0, str(tmp_path / "x.jpg")), ("Three", 2, str(tmp_path / "z.jpg"))]


def test_caption_column_preferred_over_text(tmp_path):
    (tmp_path / "t.csv").write_text("text,caption\nnot this,this one\n")
    assert [u["text"] for u in text_units(str(tmp_path / "t.csv"))] == ["this one"]


def test_named_columns(tmp_path):
    (tmp_path / "t.csv").write_text("desc,pic,caption\nmine,p.jpg,default\n")
    units = text_units(str(tmp_path / "t.csv"), TextOptions(text_column="desc", path_column="pic"))
    assert units == [{"kind": "text", "text": "mine", "offset": 0, "link_path": str(tmp_path / "p.jpg")}]


def test_table_without_text_column_refused(tmp_path):
    (tmp_path / "t.csv").write_text("name,image\nx,a.jpg\n")
    with pytest.raises(DecodeError, match=r"^no text column \(caption/text/title/description\); pass --text-column$"):
        text_units(str(tmp_path / "t.csv"))
    with pytest.raises(DecodeError, match="no text column"):
        text_units(str(tmp_path / "t.csv"), TextOptions(text_column="missing"))


def test_missing_named_path_column_refused(tmp_path):
    (tmp_path / "t.csv").write_text("caption,image\nx,a.jpg\n")
    with pytest.raises(DecodeError, match="^no column 'pic'$"):
        text_units(str(tmp_path / "t.csv"), TextOptions(path_column="pic"))


def test_table_with_no_text_rows_refused(tmp_path):
    (tmp_path / "t.csv").write_text("caption,image\n,a.jpg\n  ,b.jpg\n")
    with pytest.raises(DecodeError, match="^no text in the table$"):
        text_units(str(tmp_path / "t.csv"))


def test_unreadable_table(tmp_path):
    (tmp_path / "t.jsonl").write_text("{not json\n")
    with pytest.raises(DecodeError, match="^unreadable table: "):
        text_units(str(tmp_path / "t.jsonl"))


# --- kinds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, kind", [
    ("a.jpg", "image"), ("/x/B.JPEG", "image"), ("c.Png", "image"), ("d.tiff", "image"),
    ("v.mp4", "video"), ("v.MKV", "video"), ("v.webm", "video"),
    ("n.txt", "text"), ("n.MD", "text"), ("t.csv", "text"), ("t.JSONL", "text"), ("t.parquet", "text"),
    ("x.pdf", None), ("x.svg", None), ("noext", None), ("a.tar.gz", None), ("dir.jpg/file", None), ("jpg", None),
])
def test_kind_of(path, kind):
    assert kind_of(path) == kind


@pytest.mark.parametrize("path, table", [
    ("t.csv", True), ("t.TSV", True), ("t.jsonl", True), ("t.Parquet", True),
    ("t.txt", False), ("t.md", False), ("t.jpg", False), ("csv", False),
])
def test_is_table(path, table):
    assert is_table(path) is table


def test_every_extension_has_exactly_one_kind():
    groups = {"image": IMAGE_EXTS, "video": VIDEO_EXTS, "text": TEXT_EXTS}
    for a in groups:
        for b in groups:
            if a < b:
                assert not groups[a] & groups[b], (a, b)
    assert set(KIND_BY_EXT) == IMAGE_EXTS | VIDEO_EXTS | TEXT_EXTS
    for kind, exts in groups.items():
        assert all(KIND_BY_EXT[e] == kind for e in exts)
    assert TABLE_EXTS <= TEXT_EXTS
    assert set(KIND_BY_EXT.values()) == set(ITEM_KINDS)
    assert all(e.startswith(".") and e == e.lower() for e in KIND_BY_EXT)


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, roots, expected", [
    ("/a/b", ["/a/b"], True),
    ("/a/b/c.jpg", ["/a/b"], True),
    ("/a/b/c/d/e.jpg", ["/a/b"], True),
    ("/a/bc", ["/a/b"], False),
    ("/a/bc/d.jpg", ["/a/b"], False),
    ("/a", ["/a/b"], False),
    ("/a/b/c.jpg", ["/a/b/"], True),
    ("/a/b", ["/a/b/"], True),
    ("/a/bc", ["/a/b/"], False),
    ("/x/y.jpg", ["/"], True),
    ("/a/b/c.jpg", ["/z", "/a"], True),
    ("/a/b/c.jpg", [], False),
    ("/a/b/c.jpg", ["/a/b/c.jpg"], True),
])
def test_under(path, roots, expected):
    assert under(path, roots) is expected
    assert under(os.fsencode(path), roots) is expected


def test_under_with_non_utf8_bytes():
    key = b"/data/caf\xe9/x.jpg"
    assert under(key, ["/data"])
    assert under(key, [os.fsdecode(b"/data/caf\xe9")])
    assert not under(key, [os.fsdecode(b"/data/caf\xe8")])
    assert not under(key, ["/data/caf"])
    assert under(os.fsdecode(key), [os.fsdecode(b"/data/caf\xe9/")])


def test_under_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert under(str(tmp_path / "sub" / "a.jpg"), ["sub"])
    assert not under(str(tmp_path / "subway" / "a.jpg"), ["sub"])


def test_file_digest_of_small_file_is_its_blake2b(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"hello world")
    b.write_bytes(b"hello world")
    c.write_bytes(b"hello world!")
    expected = hashlib.blake2b(b"hello world", digest_size=16).hexdigest()
    assert file_digest(a) == file_digest(str(b)) == file_digest(os.fsencode(str(b))) == expected
    assert file_digest(c) != expected
    assert len(expected) == 32


def test_file_digest_of_large_file_samples_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "FULL_HASH_LIMIT", 64)
    monkeypatch.setattr(files, "_CHUNK", 16)
    data = bytes(range(256)) * 4  # 1,024 bytes: sampled at (1024 - 16) * i // 15, 16 bytes each
    p = tmp_path / "big"
    p.write_bytes(data)
    h = hashlib.blake2b(digest_size=16)
    h.update(b"1024")
    for i in range(16):
        start = (1024 - 16) * i // 15
        h.update(data[start : start + 16])
    assert file_digest(p) == h.hexdigest()
    assert file_digest(p) != hashlib.blake2b(data, digest_size=16).hexdigest()
    # a byte inside a sample (the first, bytes 0..15) changes it; one between samples (40: the
    # second sample starts at 1008 // 15 = 67) does not
    changed = bytearray(data)
    changed[0] ^= 1
    p.write_bytes(bytes(changed))
    assert file_digest(p) != h.hexdigest()
    unsampled = bytearray(data)
    unsampled[40] ^= 1
    p.write_bytes(bytes(unsampled))
    assert file_digest(p) == h.hexdigest()
    # the size is part of it
    p.write_bytes(data + b"\0")
    assert file_digest(p) != h.hexdigest()


def test_file_digest_at_the_limit_hashes_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "FULL_HASH_LIMIT", 100)
    monkeypatch.setattr(files, "_CHUNK", 16)
    data = os.urandom(100)
    (tmp_path / "f").write_bytes(data)
    assert file_digest(tmp_path / "f") == hashlib.blake2b(data, digest_size=16).hexdigest()


def test_display_path():
    assert display_path("/photos/café 日本.jpg") == "/photos/café 日本.jpg"
    assert display_path(os.fsdecode(b"/photos/caf\xe9.jpg")) == "/photos/caf\ufffd.jpg"


# --- errors --------------------------------------------------------------------------------------


def test_os_reason():
    assert os_reason(PermissionError(13, "Permission denied")) == "permission denied"
    assert os_reason(OSError(5, "Input/output error")) == "unreadable: Input/output error"
    assert os_reason(IsADirectoryError(21, "Is a directory")) == "unreadable: Is a directory"
    assert os_reason(OSError("odd")) == "unreadable: odd"


def test_only_reasons_of_the_operating_system_are_retried():
    """A file we could not read may read next time; a broken file with the same bytes will not
    (a bad caption table, "unreadable table: ...", was re-parsed and bumped the index every run)."""
    assert may_pass_later(os_reason(PermissionError(13, "x"))) and may_pass_later(os_reason(OSError(5, "EIO")))
    for reason in ("unreadable table: ParserError: x", "not a recognised image format", "permission", None, ""):
        assert not may_pass_later(reason), reason


def test_check_pixels():
    check_pixels(100, 100, 10_000)  # exactly at the limit is fine
    with pytest.raises(DecodeError) as e:
        check_pixels(100, 101, 10_000)
    assert str(e.value) == "too many pixels: 100x101 exceeds the limit of 10,000 (--max-pixels)"


def _thin_png(width: int, height: int) -> bytes:
    """A PNG's signature and header, and a few bytes of its pixels: what a hostile client uploads."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


@pytest.mark.parametrize("size", [(100_000_000, 1), (1, 100_000_000), (65_536, 10)])
def test_a_side_too_long_is_refused_before_decoding(size, tmp_path):
    """100,000,000 x 1 passes the pixel limit; decoding it took 3.2 GB (1 x 100M) or raised
    MemoryError, a 500 over HTTP. A side is at most MAX_SIDE."""
    from mmsearch.media.image import DEFAULT_MAX_PIXELS, load_image, load_image_bytes

    data = _thin_png(*size)
    with pytest.raises(DecodeError, match="a side too long"):
        load_image_bytes(data)
    (tmp_path / "thin.png").write_bytes(data)
    with pytest.raises(DecodeError, match="a side too long"):
        load_image(tmp_path / "thin.png")
    check_pixels(MAX_SIDE, 10, DEFAULT_MAX_PIXELS)  # the longest side allowed
    with pytest.raises(DecodeError, match="20000x20000 exceeds the limit of 100,000,000"):
        check_pixels(20_000, 20_000, 100_000_000)


def test_a_large_upload_is_reduced_before_it_is_copied():
    import io

    from PIL import Image

    from mmsearch.media.image import UPLOAD_SIDE, load_image_bytes

    buf = io.BytesIO()
    Image.new("RGBA", (4 * UPLOAD_SIDE + 100, 2 * UPLOAD_SIDE + 300), (0, 0, 255, 0)).save(buf, "PNG")
    img = load_image_bytes(buf.getvalue())
    assert img.mode == "RGB" and UPLOAD_SIDE <= min(img.size) < 2 * UPLOAD_SIDE
    assert img.info["source_size"] == (4 * UPLOAD_SIDE + 100, 2 * UPLOAD_SIDE + 300)
    small = io.BytesIO()
    Image.new("RGB", (640, 480)).save(small, "PNG")
    assert load_image_bytes(small.getvalue()).size == (640, 480)  # nothing to reduce
    # modes Pillow cannot reduce are converted, then reduced: a 12 KB 1-bit PNG of 10,000² was held
    # whole as 400 MB of RGB; a transparent palette colour is still white
    for mode, extra in (("P", {"transparency": 0}), ("1", {}), ("I;16", {})):
        odd = io.BytesIO()
        Image.new(mode, (4 * UPLOAD_SIDE + 100, 2 * UPLOAD_SIDE + 300)).save(odd, "PNG", **extra)
        img = load_image_bytes(odd.getvalue())
        assert img.mode == "RGB" and UPLOAD_SIDE <= min(img.size) < 2 * UPLOAD_SIDE, mode
        assert img.getpixel((0, 0)) == ((255, 255, 255) if extra else (0, 0, 0)), mode


def test_thumbnails_keep_the_recent_within_their_bytes():
    from mmsearch.media.thumbnails import Thumbnails

    drawn: list[str] = []

    def draw(key: str, size: int = 40):
        def drawing():
            drawn.append(key)
            return None if key == "broken" else key.encode() * size
        return drawing

    cache = Thumbnails(limit=100)
    for key in ("a", "b", "a", "broken", "broken"):  # a and b fit (80 bytes); a failure is kept too
        cache.get(key, draw(key))
    assert drawn == ["a", "b", "broken"] and cache.held == 80
    assert cache.get("c", draw("c")) == b"c" * 40  # 120 bytes: the least recently used (b) goes
    assert cache.held == 80 and cache.get("b", draw("b")) == b"b" * 40 and drawn[-1] == "b"
    assert cache.get("huge", draw("huge", 101)) == b"huge" * 101 and cache.held == 80  # never kept, nothing pushed out


def test_a_thumbnail_asked_for_at_once_is_drawn_once():
    import threading
    import time

    from mmsearch.media.thumbnails import Thumbnails

    cache, calls = Thumbnails(), []

    def slow() -> bytes:
        calls.append(1)
        time.sleep(0.3)
        return b"jpeg"

    got: list[bytes | None] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", slow))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [b"jpeg"] * 8 and len(calls) == 1
    active, most, counting = [0], [0], threading.Lock()

    def counted() -> bytes:
        with counting:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.2)
        with counting:
            active[0] -= 1
        return b"jpeg"

    for sources, expected in ((("s", "s", "s"), 1), (("s", "t", "u"), 3)):  # one source's drawings take turns
        most[0] = 0
        threads = [threading.Thread(target=cache.get, args=((expected, i), counted, source))
                   for i, source in enumerate(sources)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert most[0] == expected
    with pytest.raises(ZeroDivisionError):  # a drawing that raises is not kept, and frees its key
        cache.get("bad", lambda: 1 // 0)
    assert cache.get("bad", lambda: b"ok") == b"ok"
