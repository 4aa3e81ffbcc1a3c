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
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Skip images and videos with more pixels per frame than this (decompression bombs)."),
    max_gap: float = typer.Option(4.0, "--max-gap", min=0.1, help="Videos: longest stretch of a shot without a keyframe, in seconds."),
    json_out: bool = JsonOpt,
):
    """Index (or incrementally update) media folders: new, changed, renamed and deleted files."""
    from indexer.run import index_paths
    from retrieval.index import Index

    idx = Index(index, create=True)
    summary = index_paths(
        idx, paths or [], model, reindex=reindex, batch_size=batch_size, workers=workers,
        exclude=exclude, hidden=hidden, max_pixels=max_pixels, max_gap=max_gap, progress=sys.stderr.isatty(),
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
    image: Optional[str] = typer.Option(None, "--image", help="Search by example image (or a video: its frame at --at) instead of text."),
    at: Optional[float] = typer.Option(None, "--at", help="With --image VIDEO: the frame at this many seconds."),
    kind: Optional[str] = typer.Option(None, "--type", help="Only hits of this kind: image, video or text."),
    per_video: int = typer.Option(3, "--per-video", min=1, help="At most this many moments per video (always separate shots)."),
    k: int = typer.Option(10, "--k", "-k", min=1, help="How many hits."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop hits scoring below this (cosine, -1..1)."),
    queries: Optional[str] = typer.Option(None, "--queries", help="File of text queries, one per line: prints one JSON line per query."),
    index: Optional[str] = IndexOpt,
    json_out: bool = JsonOpt,
):
    """Search the index by text or by an example image; best hits first."""
    from retrieval.errors import UserError
    from retrieval.index import Index
    from retrieval.search import query_vector
    from retrieval.search import search as run_search

    idx = Index(index)
    if queries is not None:
        if query is not None or image is not None:
            raise UserError("--queries cannot be combined with a query text or --image")
        _batch_search(idx, queries, k, min_score, _kinds(kind), per_video)
        return
    kinds = _kinds(kind)
    hits = run_search(idx, query_vector(idx, text=query, image=image, at=at), k=k, min_score=min_score,
                      kinds=kinds, per_video=per_video)
    if json_out:
        typer.echo(json.dumps([h.as_dict() for h in hits]))
        return
    if not hits:
        typer.echo("no results")
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank:>3}  {h.score:6.3f}  {_where(h)}")


def _kinds(kind: str | None) -> set[str] | None:
    from retrieval.errors import UserError

    if kind is None:
        return None
    if kind not in ("image", "video", "text"):
        raise UserError(f"--type must be image, video or text, not {kind!r}")
    return {kind}


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02}:{s % 3600 // 60:02}:{s % 60:02}"


def _where(h) -> str:
    """`video.mp4 @ 00:03:37 (shot 00:03:34–00:03:56)` for moments, the path otherwise."""
    if h.kind != "video":
        return h.path
    shot = f" (shot {_clock(h.start)}–{_clock(h.end)})" if h.start is not None and h.end is not None else ""
    return f"{h.path} @ {_clock(h.timestamp)}{shot}"


def _batch_search(idx, queries: str, k: int, min_score: float | None, kinds: set[str] | None, per_video: int) -> None:
    """One JSON line per query; texts are embedded in batches with the model loaded once."""
    from retrieval.errors import UserError
    from retrieval.search import search as run_search

    try:
        lines = [q.strip() for q in open(queries, encoding="utf-8", errors="replace") if q.strip()]
    except OSError as e:
        raise UserError(f"cannot read {queries}: {e.strerror}") from None
    encoder = idx.encoder()
    for start in range(0, len(lines), 64):
        chunk = lines[start : start + 64]
        for q, vec in zip(chunk, encoder.encode_texts(chunk)):
            hits = run_search(idx, vec, k=k, min_score=min_score, kinds=kinds, per_video=per_video)
            typer.echo(json.dumps({"query": q, "results": [h.as_dict() for h in hits]}))


@app.command()
@user_errors
def train(
    data: str = typer.Option(..., "--data", help="Pairs: .csv/.jsonl/.parquet with image and caption columns, or a folder of images with .txt captions."),
    out: str = typer.Option(..., "--out", help="Where to write the trained checkpoint (lite: a .safetensors head)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model to fine-tune [default: lite]."),
    what: str = typer.Option("projections", "--train", help="open_clip models: which part learns (projections)."),
    epochs: int = typer.Option(15, "--epochs", min=1),
    batch_size: int = typer.Option(256, "--batch-size", min=2),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    dropout: float = typer.Option(0.2, "--dropout", min=0.0, max=0.9),
    val_share: float = typer.Option(0.1, "--val-share", min=0.0, max=0.9, help="Share of captions held out for validation."),
    conse_weight: float = typer.Option(0.5, "--conse-weight", help="lite: weight of the ImageNet-class (ConSE) block beside the learned one."),
    seed: int = typer.Option(0, "--seed"),
    json_out: bool = JsonOpt,
):
    """Fine-tune a model's head on your image–caption pairs (contrastive InfoNCE); prints recall before/after."""
    from retrieval.train import train as run_train

    r = run_train(model, data, out, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                  dropout=dropout, val_share=val_share, seed=seed, conse_weight=conse_weight, what=what,
                  progress=sys.stderr.isatty())
    if json_out:
        typer.echo(json.dumps(r))
        return
    typer.echo(f"trained on {r['train_pairs']} pairs in {r['train_seconds']}s; validation on {r['val_pairs']}:")
    for when in ("val_before", "val_after"):
        m = r[when]
        typer.echo(f"  {when[4:]:6}  text→image {_fmt(m['text_to_image'])}   image→text {_fmt(m['image_to_text'])}")
    typer.echo(f"use it with: --model {r['model']}")


def _fmt(m: dict) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in m.items())


@app.command("eval")
@user_errors
def evaluate(
    data: str = typer.Option(..., "--data", help="Pairs file or folder, as for `train`."),
    model: Optional[str] = typer.Option(None, "--model", help="Model to evaluate [default: lite]."),
    json_out: bool = JsonOpt,
):
    """Text→image and image→text Recall@1/5/10 and MRR on image–caption pairs."""
    from retrieval.train import evaluate as run_eval

    r = run_eval(model, data, progress=sys.stderr.isatty())
    if json_out:
        typer.echo(json.dumps(r))
        return
    typer.echo(f"{r['model']} on {r['pairs']} pairs ({r['unique_captions']} distinct captions)")
    typer.echo(f"  text→image  {_fmt(r['text_to_image'])}")
    typer.echo(f"  image→text  {_fmt(r['image_to_text'])}")


@app.command()
@user_errors
def frame(
    video: str = typer.Argument(..., help="A video file."),
    at: float = typer.Option(..., "--at", min=0.0, help="Timestamp in seconds."),
    out: str = typer.Option(..., "-o", "--out", help="Image file to write (.jpg, .png, ...)."),
):
    """Write the frame of VIDEO shown at a timestamp to an image file."""
    from indexer.decode import DecodeError
    from indexer.video import frame_at
    from retrieval.errors import UserError

    if not os.path.isfile(video):
        raise UserError(f"{video} does not exist")
    try:
        img = frame_at(video, at)
    except DecodeError as e:
        raise UserError(f"{video}: {e}") from None
    try:
        img.save(out)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot write {out}: {e}") from None
    typer.echo(f"{out}  ({img.width}x{img.height}, {_clock(at)})")


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
