"""One import name and layers that import only downward: checked on the source and on a built wheel."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mmsearch"
#: each layer and what it may import of mmsearch (leaf modules `errors`, `validated` and `paths` are open to all)
MAY_IMPORT = {
    "media": {"media"},
    "retrieval": {"media", "retrieval", "errors", "validated", "paths"},
    "indexer": {"media", "retrieval", "indexer", "errors", "validated", "paths"},
    "api": {"media", "retrieval", "indexer", "errors", "validated", "paths"},
    "cli": {"media", "retrieval", "indexer", "api", "cli", "errors", "validated", "paths", "__init__"},
}


def _imports(path: Path) -> set[str]:
    """The first component under mmsearch of every mmsearch module `path` imports."""
    package = path.relative_to(ROOT).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                names = base + (node.module.split(".") if node.module else [])
                # `from .. import x`: x is a module when a file or folder has its name, else a name of the package
                targets = [names] if node.module else [
                    base + [a.name] if ROOT.joinpath(*base, a.name).exists() or ROOT.joinpath(*base, a.name + ".py").exists()
                    else base + ["__init__"] for a in node.names]
            else:
                targets = [node.module.split(".")] if node.module else []
            for t in targets:
                if t[:1] == ["mmsearch"]:
                    found.add(t[1] if len(t) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mmsearch.")}
    return found


def test_layers_import_only_downward():
    bad = []
    for path in PKG.rglob("*.py"):
        layer = path.relative_to(PKG).parts[0].removesuffix(".py")
        if layer not in MAY_IMPORT:
            continue
        for target in _imports(path) - MAY_IMPORT[layer] - {layer}:
            bad.append(f"{path.relative_to(ROOT)} imports mmsearch.{target}")
    assert not bad, bad
    # the check sees relative imports: retrieval/search.py reads media through `..media`
    assert "media" in _imports(PKG / "retrieval" / "search.py")


def test_wheel_installs_one_name_and_searches_from_outside_the_checkout(tmp_path, photos):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("mmsearch-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    top = sorted(p.name for p in site.iterdir() if p.name != "bin")
    assert top[0] == "mmsearch" and len(top) == 2 and top[1].startswith("mmsearch-") and top[1].endswith(".dist-info"), top
    assert (site / "mmsearch" / "retrieval" / "encoders" / "weights" / "lite-head.safetensors").is_file()
    assert (site / "mmsearch" / "cli" / "web" / "index.html").is_file()

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "MMSEARCH_INDEX": str(tmp_path / "ix")}
    run = subprocess.run([sys.executable, "-m", "mmsearch", "index", str(photos)], cwd=outside, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    code = ("import mmsearch, sys; from mmsearch import SearchIndex\n"
            "hits = SearchIndex(sys.argv[1]).search('a cup of coffee', k=3)\n"
            "print(mmsearch.__file__); print(hits[0].path)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ix")], cwd=outside, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    where, best = r.stdout.split()
    assert where.startswith(str(site)) and best == str(photos / "coffee.png")
