"""Incremental indexing: unchanged files cost nothing; add, modify, delete and rename are tracked."""
from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image


def _paths(cli) -> list[str]:
    return sorted(h["path"] for h in cli.json("search", "--image", str(cli.ref), "-k", "1000"))


def test_add_modify_delete_rename(cli, tiny_clip, photos, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for n in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"):
        shutil.copy2(photos / n, lib / n)
    cli.ref = photos / "coffee.png"
    first = cli.json("index", str(lib), "--model", tiny_clip)
    assert (first["new"], first["embedded"]) == (4, 4)

    again = cli.json("index", str(lib))
    assert again["embedded"] == 0 and again["unchanged"] == 4 and again["new"] == 0

    shutil.copy2(photos / "horse.png", lib / "horse.png")  # add
    Image.open(photos / "camera.png").save(lib / "rocket.jpg")  # modify in place
    os.remove(lib / "astronaut.png")  # delete
    os.rename(lib / "chelsea.png", lib / "cat.png")  # rename: same content, new path
    s = cli.json("index", str(lib))
    assert s["removed"] == 2  # astronaut.png and the old chelsea.png
    assert s["reused"] == 1 and s["embedded"] == 2  # cat.png reuses; horse + changed rocket embed
    assert (s["new"], s["updated"], s["unchanged"]) == (2, 1, 1)
    assert _paths(cli) == sorted(str(lib / n) for n in ("cat.png", "coffee.png", "horse.png", "rocket.jpg"))
    hit = cli.json("search", "--image", str(photos / "camera.png"), "-k", "1")[0]
    assert hit["path"] == str(lib / "rocket.jpg") and hit["score"] > 0.9999

    os.utime(lib / "coffee.png", ns=(1, 1))  # touched only: hash matches, nothing re-embedded
    assert cli.json("index", str(lib))["embedded"] == 0


def test_duplicates_share_vectors_and_other_roots_survive(cli, tiny_clip, photos, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy2(photos / "coins.png", a / "coins.png")
    shutil.copy2(photos / "coins.png", a / "same-coins.png")
    shutil.copy2(photos / "moon.png", b / "moon.png")
    cli.ref = photos / "coins.png"
    s = cli.json("index", str(a), "--model", tiny_clip)
    assert s["new"] == 2 and s["embedded"] + s["reused"] == 2
    cli("index", str(b))  # indexing another folder must not sweep the first one away
    assert len(_paths(cli)) == 3
    shutil.rmtree(b)
    s = cli.json("index", str(a))
    assert s["removed"] == 0 and len(_paths(cli)) == 3  # b's file is only swept when b is rescanned
    r = cli("index", str(b), ok=False)  # naming a folder that does not exist is the user's mistake
    assert r.exit_code == 2 and "does not exist" in r.stderr
    s = cli.json("index")  # no PATH: rescan every folder indexed before; the vanished one is swept
    assert s["removed"] == 1 and _paths(cli) == sorted([str(a / "coins.png"), str(a / "same-coins.png")])


def test_unchanged_run_does_not_load_the_model(cli, tiny_clip, photos, tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(photos / "coffee.png", lib / "coffee.png")
    cli("index", str(lib), "--model", tiny_clip)
    from mmsearch.retrieval import index as index_module

    def boom(what="model loaded for an unchanged folder", *a, **k):
        raise AssertionError(what)

    monkeypatch.setattr(index_module, "load_encoder", boom)
    # nor its FAISS index: it was left current by the run before, and reading it only to drop it
    # grew with the index (200k files: 133 → 190 MB)
    monkeypatch.setattr(index_module, "_read_index", lambda *a, **k: boom("FAISS index read for an unchanged folder"))
    assert cli.json("index", str(lib))["unchanged"] == 1


def test_python_api_add_search_remove(tmp_path, tiny_clip, photos):
    from mmsearch import SearchIndex

    lib = tmp_path / "lib"
    (lib / "old").mkdir(parents=True)
    shutil.copy2(photos / "coffee.png", lib / "coffee.png")
    shutil.copy2(photos / "moon.png", lib / "old" / "moon.png")
    idx = SearchIndex(tmp_path / "ix", create=True)
    assert idx.add([str(lib)], model=tiny_clip, progress=False).new == 2
    hit = idx.search(image=str(photos / "moon.png"), k=1)[0]
    assert hit.path == str(lib / "old" / "moon.png") and idx.item(hit.item_id)["kind"] == "image"
    assert idx.remove([str(lib / "old")]) == 1
    assert [h.path for h in idx.search(image=str(photos / "moon.png"), k=5)] == [str(lib / "coffee.png")]
    assert idx.add(progress=False).new == 0  # updating every root does not bring the removed folder back
    assert idx.info()["items"]["image"] == 1
    assert idx.add([str(lib)], progress=False).new == 1  # naming the folder again brings it back


def test_unchanged_run_does_not_even_import_torch(cli, tiny_clip, photos, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(photos / "coffee.png", lib / "coffee.png")
    cli("index", str(lib), "--model", tiny_clip)
    code = ("import sys\nfrom mmsearch.cli.main import main\nsys.argv = ['mmsearch', 'index', sys.argv[1], '--index', sys.argv[2]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code, str(lib), str(cli.index)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "1 unchanged" in r.stdout


def test_item_ids_are_never_reused(tmp_path, tiny_clip, photos):
    """A FAISS index is extended by comparing id sets, so a deleted id must never come back."""
    from sqlalchemy import func, select

    from mmsearch import SearchIndex
    from mmsearch.retrieval.store import Item

    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        shutil.copy2(photos / name, lib / name)
    idx = SearchIndex(tmp_path / "ix", create=True)
    idx.add([str(lib)], model=tiny_clip, progress=False)
    with idx.index.session() as s:
        top = s.scalar(select(func.max(Item.id)))
        newest = s.scalars(select(Item).where(Item.id == top)).one().file.path
    os.remove(newest)  # the item holding the largest id goes...
    shutil.copy2(photos / "horse.png", lib / "horse.png")  # ...and a new one arrives
    idx.add([str(lib)], progress=False)
    with idx.index.session() as s:
        assert s.scalar(select(func.min(Item.id)).where(Item.file.has(path=str(lib / "horse.png")))) > top


def test_caption_links_follow_their_images(cli, tiny_clip, photos, tmp_path):
    """A sidecar caption left in place while its image is renamed (or an image added beside a
    caption) gets its link to the image redone, not kept pointing at a file that is gone."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(photos / "coffee.png", lib / "coffee.png")
    (lib / "coffee.txt").write_text("A cup of coffee.\n")
    (lib / "later.txt").write_text("A caption with no image beside it yet.\n")

    def links() -> dict[str, str | None]:
        hits = cli.json("search", "coffee", "--type", "text", "-k", "10")
        return {os.path.basename(h["path"]): h.get("link_path") for h in hits}

    cli.json("index", str(lib), "--model", tiny_clip)
    assert links() == {"coffee.txt": str(lib / "coffee.png"), "later.txt": None}
    os.rename(lib / "coffee.png", lib / "cup.png")  # the image alone: its caption no longer sits beside it
    shutil.copy2(photos / "moon.png", lib / "later.png")  # an image appears beside a caption
    s = cli.json("index", str(lib))
    assert (s["updated"], s["unchanged"], s["reused"], s["removed"]) == (2, 0, 1, 1)
    assert links() == {"coffee.txt": None, "later.txt": str(lib / "later.png")}
    assert cli.json("index", str(lib))["embedded"] == 0  # settled: the next run re-embeds nothing


@pytest.mark.parametrize("part", [1, None])
def test_the_plan_reads_the_scan_a_part_at_a_time(cli, tiny_clip, photos, tmp_path, monkeypatch, part):
    """The plan compares the scan with the store a part at a time (here, with `part` 1: a folder
    at a time): content moved to another folder is reused, files gone are swept, captions are
    relinked, exactly as when it reads the scan whole."""
    from mmsearch.indexer import plan

    if part:
        monkeypatch.setattr(plan, "PART", part)
    parts: list[int] = []
    split = plan._parts
    monkeypatch.setattr(plan, "_parts", lambda entries, size: (parts.append(len(p)) or p for p in split(entries, size)))
    lib = tmp_path / "lib"
    for folder, files in {"a": ["coffee.png"], "b": ["moon.png", "chelsea.png"], "c": []}.items():
        (lib / folder).mkdir(parents=True)
        for n in files:
            shutil.copy2(photos / n, lib / folder / n)
    (lib / "a" / "coffee.txt").write_text("A cup of coffee.\n")
    (lib / "c" / "later.txt").write_text("A caption with no image beside it yet.\n")

    def links() -> dict[str, str | None]:
        hits = cli.json("search", "coffee", "--type", "text", "-k", "10")
        return {os.path.basename(h["path"]): h.get("link_path") for h in hits}

    cli.ref = photos / "coffee.png"
    cli.json("index", str(lib), "--model", tiny_clip)
    assert parts == ([2, 2, 1] if part else [5])
    assert links() == {"coffee.txt": str(lib / "a" / "coffee.png"), "later.txt": None}
    os.rename(lib / "a" / "coffee.png", lib / "b" / "cup.png")  # to another folder, read in another part
    os.remove(lib / "b" / "moon.png")
    shutil.copy2(photos / "moon.png", lib / "c" / "later.png")  # an image appears beside a caption
    s = cli.json("index", str(lib))
    assert (s["new"], s["updated"], s["unchanged"], s["reused"], s["removed"], s["embedded"]) == (2, 2, 1, 2, 2, 2)
    assert links() == {"coffee.txt": None, "later.txt": str(lib / "c" / "later.png")}
    assert sorted(os.path.relpath(p, lib) for p in _paths(cli)) == ["a/coffee.txt", "b/chelsea.png", "b/cup.png", "c/later.png", "c/later.txt"]
    assert cli.json("index", str(lib))["embedded"] == 0


def test_a_run_rebuilds_the_approximate_index_an_earlier_run_failed_to_build(cli, tiny_clip, image_set, monkeypatch):
    """A run whose FAISS build failed at its end (a Ray cluster lost then) leaves no file for its
    generation; the next run, though nothing changed, builds it rather than leave readers on an
    older one for good."""
    from mmsearch.retrieval import policy
    from mmsearch.retrieval.index import Index

    monkeypatch.setitem(policy.MIN_VECTORS, "hnsw", 10)
    cli("index", str(image_set), "--model", tiny_clip, "--index-type", "hnsw")
    current = Index(str(cli.index)).faiss_file()
    older = os.path.join(os.path.dirname(current), "vectors-0.faiss")
    assert os.path.exists(current) and current != older
    for suffix in ("", ".json"):  # (the index and its plan) what readers find: an older generation's
        os.replace(current + suffix, older + suffix)
    cli("index", str(image_set))
    assert os.path.exists(current)


def test_a_bulk_run_builds_the_digest_index_after_storing(tmp_path, tiny_clip, photos, monkeypatch):
    """A run storing many files (here: 2 or more) drops the content-digest index while it stores
    them and builds it after; one killed meanwhile leaves it missing, and the next run makes it
    again before its plan, which finds renamed content by it. The index holds the digests' first
    8 bytes; an index made before, of whole digests, is replaced by the next run."""
    from sqlalchemy import text

    from mmsearch.indexer import run
    from mmsearch.indexer.options import IndexOptions
    from mmsearch.retrieval.index import Index

    def has_index(s) -> bool:
        return s.scalars(text("SELECT name FROM sqlite_master WHERE name LIKE 'ix_files_digest%'")).all() == ["ix_files_digest8"]

    monkeypatch.setattr(run, "BULK_FILES", 2)
    lib = tmp_path / "lib"
    lib.mkdir()
    for n in ("chelsea.png", "coffee.png", "rocket.jpg"):
        shutil.copy2(photos / n, lib / n)
    index, opts, seen = Index(tmp_path / "index", create=True), IndexOptions(model=tiny_clip), []

    def killed(s, *args):
        seen.append(has_index(s))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.index_paths(index, [str(lib)], opts, embed=killed)
    with index.session() as s:
        assert seen == [False] and not has_index(s)

    def here(s, *args):
        seen.append(has_index(s))
        run._embed_here(s, *args)

    assert run.index_paths(index, [str(lib)], opts, embed=here).embedded == 3
    with index.session() as s:
        assert seen == [False, False] and has_index(s)
    os.rename(lib / "chelsea.png", lib / "cat.png")
    s = run.index_paths(index, [str(lib)], opts, embed=here)
    assert (s.reused, s.embedded) == (1, 0)
    with index.session() as s:  # as mmsearch made it until 2026-12-05
        s.execute(text("DROP INDEX ix_files_digest8"))
        s.execute(text("CREATE INDEX ix_files_digest ON files (digest)"))
        s.commit()
    os.rename(lib / "cat.png", lib / "kitten.png")
    s = run.index_paths(index, [str(lib)], opts, embed=here)
    assert (s.reused, s.embedded) == (1, 0)
    with index.session() as s:
        assert has_index(s)
    with index.session() as s:
        assert has_index(s)
