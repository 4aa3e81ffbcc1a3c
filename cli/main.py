"""`mmsearch` commands. Each one parses arguments, calls the Python API, and prints.

User mistakes (`UserError`) become one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import json
import os
import sys
from functools import wraps
from typing import List, Optional

import typer

app = typer.Typer(
    help="Cross-modal search over your images: index folders, then search them by text or by example image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

IndexOpt = typer.Option(None, "--index", envvar="MMSEARCH_INDEX", help="Index directory [default: per-user data dir].")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # library chatter; our own messages go through typer.echo


def user_errors(fn):
    """Turn expected failures into a one-line message and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from retrieval.errors import UserError

        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"mmsearch: error: {e}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.echo("mmsearch: interrupted (everything committed so far is kept)", err=True)
            raise typer.Exit(130)

    return wrapper


@app.command()
@user_errors
def index(
    paths: Optional[List[str]] = typer.Argument(None, help="Folders or files to index (recursively). None: update every folder indexed before."),
    index: Optional[str] = IndexOpt,
    model: Optional[str] = typer.Option(None, "--model", help="lite (default, offline) | open_clip:ARCH:TAG | open_clip:ARCH:/path/ckpt.pt"),
    reindex: bool = typer.Option(False, "--reindex", help="Re-embed everything, e.g. to switch an existing index to another --model."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per model forward."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decode threads [default: up to 4]."),
    exclude: List[str] = typer.Option([], "--exclude", help="Glob on file or folder names/paths to skip; repeatable."),
    hidden: bool = typer.Option(False, "--hidden", help="Also index hidden files and folders."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Skip images with more pixels than this (decompression bombs)."),
    json_out: bool = JsonOpt,
):
    """Index (or incrementally update) media folders: new, changed, renamed and deleted files."""
    from indexer.run import index_paths
    from retrieval.index import Index

    idx = Index(index, create=True)
    summary = index_paths(
        idx, paths or [], model, reindex=reindex, batch_size=batch_size, workers=workers,
        exclude=exclude, hidden=hidden, max_pixels=max_pixels, progress=sys.stderr.isatty(),
    )
    if json_out:
        typer.echo(json.dumps(summary.as_dict()))
        return
    typer.echo(summary.line())
    for s in summary.skipped:
        typer.echo(f"  skipped {s['path']}: {s['reason']}")


@app.command()
@user_errors
def search(
    query: Optional[str] = typer.Argument(None, help="Text to search for, e.g. \"a dog on a beach\"."),
    image: Optional[str] = typer.Option(None, "--image", help="Search by example image instead of text."),
    k: int = typer.Option(10, "--k", "-k", min=1, help="How many hits."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop hits scoring below this (cosine, -1..1)."),
    index: Optional[str] = IndexOpt,
    json_out: bool = JsonOpt,
):
    """Search the index by text or by an example image; best hits first."""
    from retrieval.index import Index
    from retrieval.search import query_vector
    from retrieval.search import search as run_search

    idx = Index(index)
    hits = run_search(idx, query_vector(idx, text=query, image=image), k=k, min_score=min_score)
    if json_out:
        typer.echo(json.dumps([h.as_dict() for h in hits]))
        return
    if not hits:
        typer.echo("no results")
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank:>3}  {h.score:6.3f}  {h.path}")


@app.command()
@user_errors
def info(index: Optional[str] = IndexOpt, json_out: bool = JsonOpt):
    """Describe the index: model, item counts, skipped files, index type and size."""
    from retrieval.index import Index

    data = Index(index).info()
    if json_out:
        typer.echo(json.dumps(data))
        return
    typer.echo(f"index      {data['index']}")
    typer.echo(f"model      {data['model']}  ({data['model_identity']}, {data['dim']}-d)")
    typer.echo("items      " + ", ".join(f"{n} {k}" for k, n in data["items"].items()))
    typer.echo(f"vectors    {data['vectors']} in {data['index_type']}")
    typer.echo(f"size       {data['size_bytes'] / 1e6:.1f} MB")
    typer.echo(f"skipped    {len(data['skipped'])} file(s)")
    for s in data["skipped"]:
        typer.echo(f"  {s['path']}: {s['reason']}")


if __name__ == "__main__":
    app()
