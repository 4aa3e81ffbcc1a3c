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

from retrieval.encoders import DEFAULT_CONSE_WEIGHT

app = typer.Typer(
    help="Cross-modal search over your images, videos and texts: index folders, then search them by text, "
    "by example image, or both at once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

IndexOpt = typer.Option(None, "--index", envvar="MMSEARCH_INDEX", help="Index directory (default: per-user data dir).")
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
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decode threads (or processes); default: up to 4."),
    processes: bool = typer.Option(False, "--processes", help="Decode in worker processes instead of threads: for many-core machines where decoding is the bottleneck (on 2 cores threads measured faster)."),
    exclude: List[str] = typer.Option([], "--exclude", help="Glob on file or folder names/paths to skip; repeatable."),
    hidden: bool = typer.Option(False, "--hidden", help="Also index hidden files and folders."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Skip images and videos with more pixels per frame than this (decompression bombs)."),
    max_gap: float = typer.Option(4.0, "--max-gap", min=0.1, help="Videos: longest stretch of a shot without a keyframe, in seconds."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Caption tables (.csv/.jsonl/.parquet): the text column (default: caption/text/title/description)."),
    path_column: Optional[str] = typer.Option(None, "--path-column", help="Caption tables: a column naming the image each caption describes."),
    index_type: Optional[str] = typer.Option(None, "--index-type", help="FAISS index: auto (by size and memory), flat (exact), hnsw, ivfsq (8-bit codes) or ivfpq (PQ codes); remembered."),
    runtime: str = typer.Option("auto", "--runtime", help="Image tower while indexing: auto (fastest of PyTorch / ONNX Runtime fp32 / int8 whose vectors agree with PyTorch's, measured once per model), torch, onnx or onnx-int8."),
    json_out: bool = JsonOpt,
):
    """Index (or incrementally update) media folders: new, changed, renamed and deleted files."""
    from retrieval.api import SearchIndex

    summary = SearchIndex(index, create=True).add(
        paths or [], model, reindex=reindex, batch_size=batch_size, workers=workers,
        exclude=exclude, hidden=hidden, max_pixels=max_pixels, max_gap=max_gap,
        text_column=text_column, path_column=path_column, index_type=index_type, runtime=runtime,
        processes=processes, progress=sys.stderr.isatty(),
    )
    if json_out:
        typer.echo(json.dumps(summary.as_dict()))
        return
    typer.echo(summary.line())
    for s in summary.skipped:
        typer.echo(f"  skipped {s['path']}: {s['reason']}")


@app.command()
@user_errors
def remove(
    paths: List[str] = typer.Argument(..., help="Files or folders to forget."),
    index: Optional[str] = IndexOpt,
):
    """Forget files or folders; later updates of their indexed parent folder leave them out."""
    from retrieval.api import SearchIndex

    typer.echo(f"removed {SearchIndex(index).remove(paths)} file(s)")


@app.command()
@user_errors
def search(
    query: Optional[str] = typer.Argument(None, help="Text to search for, e.g. \"a dog on a beach\"; or a fused query such as \"2:beach + ref.jpg - people\"."),
    image: List[str] = typer.Option([], "--image", help="Search by example image (or a video: its frame at --at); repeatable."),
    at: Optional[float] = typer.Option(None, "--at", help="With --image VIDEO: the frame at this many seconds."),
    negative: List[str] = typer.Option([], "--not", help="Text to steer away from; repeatable."),
    weight: List[float] = typer.Option([], "--weight", help="Weights of the positive parts, in order (query text first, then each --image)."),
    fusion: str = typer.Option("early", "--fusion", help="How parts combine: early (one fused vector) or late (rank fusion of separate searches)."),
    kind: Optional[str] = typer.Option(None, "--type", help="Only hits of this kind: image, video or text."),
    path: Optional[str] = typer.Option(None, "--path", help="Only files whose path matches this glob, e.g. '*/2024/*' or '*.png'."),
    after: Optional[str] = typer.Option(None, "--after", help="Only files modified on or after this date (YYYY-MM-DD)."),
    before: Optional[str] = typer.Option(None, "--before", help="Only files modified before this date (YYYY-MM-DD)."),
    tag: List[str] = typer.Option([], "--tag", help="Only files carrying this zero-shot tag (see `mmsearch tag`); repeatable."),
    per_video: int = typer.Option(3, "--per-video", min=1, help="At most this many moments per video (always separate shots)."),
    k: int = typer.Option(10, "--k", "-k", min=1, help="How many hits."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop hits scoring below this (cosine, -1..1)."),
    queries: Optional[str] = typer.Option(None, "--queries", help="File of text queries, one per line: prints one JSON line per query."),
    index: Optional[str] = IndexOpt,
    json_out: bool = JsonOpt,
):
    """Search the index by text, by example image, or both at once; best hits first.

    Fused queries mix parts: positives pull, negatives (--not, or "- part") push away. early
    fusion adds the weighted query vectors, which finds items that match all parts at once; late
    fusion searches each part alone and merges the rankings, which keeps items that match one
    part very well."""
    from retrieval.api import SearchIndex
    from retrieval.errors import UserError

    idx = SearchIndex(index)
    filters = dict(kind=kind, path=path, after=after, before=before, tags=tag)
    if queries is not None:
        if query is not None or image:
            raise UserError("--queries cannot be combined with a query text or --image")
        _batch_search(idx, queries, k, dict(filters, min_score=min_score, per_video=per_video))
        return
    hits = idx.search(query, image=image or None, at=at, negative=negative, weights=weight,
                      fusion=fusion, k=k, min_score=min_score, per_video=per_video, **filters)
    _print_hits(hits, json_out)


def _print_hits(hits, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps([h.as_dict() for h in hits]))
        return
    if not hits:
        typer.echo("no results")
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank:>3}  {h.score:6.3f}  {_where(h)}")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02}:{s % 3600 // 60:02}:{s % 60:02}"


def _where(h) -> str:
    """`video.mp4 @ 00:03:37 (shot 00:03:34–00:03:56)` for moments, `"text" (file:offset)` for texts."""
    if h.kind == "text":
        return f"{h.text[:100]!r}  ({h.path}:{h.offset})"
    if h.kind != "video":
        return h.path
    shot = f" (shot {_clock(h.start)}–{_clock(h.end)})" if h.start is not None and h.end is not None else ""
    return f"{h.path} @ {_clock(h.timestamp)}{shot}"


def _batch_search(idx, queries: str, k: int, options: dict) -> None:
    """One JSON line per query; texts are embedded in batches with the model loaded once."""
    from retrieval.errors import UserError

    try:
        with open(queries, encoding="utf-8", errors="replace") as f:
            lines = [q.strip() for q in f if q.strip()]
    except OSError as e:
        raise UserError(f"cannot read {queries}: {e.strerror}") from None
    for q, hits in zip(lines, idx.batch_search(lines, k=k, **options)):
        typer.echo(json.dumps({"query": q, "results": [h.as_dict() for h in hits]}))


@app.command()
@user_errors
def train(
    data: str = typer.Option(..., "--data", help="Pairs: .csv/.jsonl/.parquet with image and caption columns, or a folder of images with .txt captions."),
    out: str = typer.Option(..., "--out", help="Where to write the trained checkpoint (lite: a .safetensors head)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model to fine-tune (default: lite)."),
    what: str = typer.Option("projections", "--train", help="open_clip models: which part learns (projections)."),
    epochs: int = typer.Option(15, "--epochs", min=1),
    batch_size: int = typer.Option(256, "--batch-size", min=2),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    dropout: float = typer.Option(0.2, "--dropout", min=0.0, max=0.9),
    val_share: float = typer.Option(0.1, "--val-share", min=0.0, max=0.9, help="Share of captions held out for validation."),
    conse_weight: float = typer.Option(DEFAULT_CONSE_WEIGHT, "--conse-weight", help="lite: weight of the ImageNet-class (ConSE) block mixed in beside the learned one (not trained)."),
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
    model: Optional[str] = typer.Option(None, "--model", help="Model to evaluate (default: lite)."),
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
def describe(
    image: str = typer.Argument(..., help="An image (or a video, with --at) to caption."),
    at: Optional[float] = typer.Option(None, "--at", help="For a video: the frame at this many seconds."),
    k: int = typer.Option(5, "--k", "-k", min=1, help="How many captions."),
    index: Optional[str] = IndexOpt,
    json_out: bool = JsonOpt,
):
    """Caption an image by retrieval: the indexed texts that match it best."""
    from retrieval.api import SearchIndex

    hits = SearchIndex(index).describe(image, k=k, at=at)
    if json_out:
        typer.echo(json.dumps([h.as_dict() for h in hits]))
        return
    if not hits:
        typer.echo("no texts in the index: index captions (.txt beside images, caption tables) first")
    for h in hits:
        typer.echo(f"{h.score:6.3f}  {h.text}")


@app.command()
@user_errors
def tag(
    paths: Optional[List[str]] = typer.Argument(None, help="Only files under these paths (default: all indexed images and videos)."),
    labels: str = typer.Option(..., "--labels", help="A file with one label per line, or \"cat,dog,car\"."),
    threshold: float = typer.Option(0.3, "--threshold", min=0.0, max=1.0, help="Keep labels scoring at least this (the best label is always kept)."),
    prompt: str = typer.Option("a photo of a {}", "--prompt", help="Template turning a label into a query."),
    index: Optional[str] = IndexOpt,
    json_out: bool = JsonOpt,
):
    """Zero-shot tags: score indexed images and videos against labels, store and print the tags.

    Image scores are a softmax over the labels; a video's are the share of its keyframes that
    each label wins. Tags then filter searches (`search --tag LABEL`) and show in `info`."""
    from retrieval.api import SearchIndex
    from retrieval.tags import read_labels

    result = SearchIndex(index).tag(read_labels(labels), prompt, threshold, paths or None)
    if json_out:
        typer.echo(json.dumps(result))
        return
    for r in result:
        typer.echo(f"{r['path']}: " + ", ".join(f"{t['label']} {t['score']:.2f}" for t in r["tags"]))


@app.command()
@user_errors
def info(index: Optional[str] = IndexOpt, json_out: bool = JsonOpt):
    """Describe the index: model, item counts, skipped files, index type and size."""
    from retrieval.api import SearchIndex

    data = SearchIndex(index).info()
    if json_out:
        typer.echo(json.dumps(data))
        return
    typer.echo(f"index      {data['index']}")
    typer.echo(f"model      {data['model']}  ({data['model_identity']}, {data['dim']}-d)")
    typer.echo("items      " + ", ".join(f"{n} {k}" for k, n in data["items"].items()))
    plan = data["index_plan"]
    tuned = f", {plan['param']}={plan['value']} for recall@10 {plan['recall']:.3f}" if plan["param"] else ""
    typer.echo(f"vectors    {data['vectors']} in {data['index_type']} ({plan['reason']}{tuned})")
    typer.echo(f"size       {data['size_bytes'] / 1e6:.1f} MB")
    if data["tags"]:
        typer.echo("tags       " + ", ".join(f"{label} {n}" for label, n in data["tags"].items()))
    typer.echo(f"skipped    {len(data['skipped'])} file(s)")
    for s in data["skipped"]:
        typer.echo(f"  {s['path']}: {s['reason']}")


@app.command()
@user_errors
def serve(
    index: Optional[str] = IndexOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default keeps the server on this machine."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    token: Optional[str] = typer.Option(None, "--token", envvar="MMSEARCH_TOKEN", help="Require `Authorization: Bearer TOKEN` on every route but /health."),
    max_upload: int = typer.Option(20 << 20, "--max-upload", min=1, help="Largest accepted upload, in bytes."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Largest accepted uploaded image, in pixels."),
):
    """Serve the HTTP API (OpenAPI at /docs) and a search page at / ."""
    import uvicorn

    from cli.server import create_app
    from retrieval.api import SearchIndex

    idx = SearchIndex(index)
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        typer.echo(f"mmsearch: warning: serving {idx.path} on {host} without --token: anyone who can reach it can search", err=True)
    typer.echo(f"serving {idx.path} on http://{host}:{port}/  (API docs at /docs)", err=True)
    uvicorn.run(create_app(idx, token=token, max_upload=max_upload, max_pixels=max_pixels), host=host, port=port, log_level="warning")


def main() -> None:
    """Console entry point: like `app()`, but a usage mistake (unknown option, bad value) is one
    line on stderr too, as the command-line contract promises."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError:  # the help text is already printed
        code = 2
    except ClickException as e:
        hint = f" (see mmsearch {e.ctx.info_name} --help)" if getattr(e, "ctx", None) and e.ctx.parent else " (see mmsearch --help)"
        typer.echo(f"mmsearch: error: {e.format_message()}{hint}", err=True)
        code = e.exit_code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
