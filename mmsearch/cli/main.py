"""`mmsearch` commands. Each one parses arguments, calls the Python API, and prints.

User mistakes (`UserError`) become one line on stderr and exit code 2 (3: another process is
indexing into the same index), never a traceback.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from contextlib import contextmanager
from functools import wraps
from typing import Any, Iterator, List

import typer

from ..errors import IndexBusy, UserError
from ..indexer.options import IndexOptions
from ..media.image import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD
from ..retrieval.encoders import DEFAULT_CONSE_WEIGHT
from ..retrieval.request import SearchRequest
from ..validated import Validated

app = typer.Typer(
    help="Cross-modal search over your images, videos and texts: index folders, then search them by text, "
    "by example image, or both at once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: how `info` names where capture times came from
CAPTURE_SOURCES = {"exif": "EXIF", "metadata": "video metadata", "file": "file time (none in the file)"}
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
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"mmsearch: error: {e}", err=True)
            raise typer.Exit(3 if isinstance(e, IndexBusy) else 2) from None
        except KeyboardInterrupt:
            typer.echo("mmsearch: interrupted (everything committed so far is kept)", err=True)
            raise typer.Exit(130) from None
        except Exception as e:  # the index database unreadable (damaged pages, a full disk): as SQLite or SQLAlchemy says it
            cause = getattr(e, "orig", e)
            if type(cause) not in (sqlite3.DatabaseError, sqlite3.OperationalError):
                raise
            typer.echo(f"mmsearch: error: the index database: {cause}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _option(options: type[Validated], name: str, *flags: str, default: Any = ..., **kw: Any) -> Any:
    """A command-line option whose default and help come from the typed option set."""
    return typer.Option(options.default(name) if default is ... else default, *flags, help=options.help(name), **kw)


@app.command()
@user_errors
def index(
    paths: List[str] | None = typer.Argument(None, help="Folders or files to index (recursively), or URIs of objects and prefixes that pyarrow.fs opens (s3://bucket/prefix, gs://..., file:///dir; options as a query: s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http&request_timeout=10; see docs/distributed.md). None: update every folder indexed before."),
    index: str | None = IndexOpt,
    model: str | None = _option(IndexOptions, "model", "--model"),
    reindex: bool = _option(IndexOptions, "reindex", "--reindex"),
    batch_size: int = _option(IndexOptions, "batch_size", "--batch-size"),
    workers: int | None = _option(IndexOptions, "workers", "--workers", default=None),
    processes: bool = _option(IndexOptions, "processes", "--processes"),
    exclude: List[str] = _option(IndexOptions, "exclude", "--exclude"),
    hidden: bool = _option(IndexOptions, "hidden", "--hidden"),
    max_pixels: int = _option(IndexOptions, "max_pixels", "--max-pixels"),
    max_gap: float = _option(IndexOptions, "max_gap", "--max-gap"),
    text_column: str | None = _option(IndexOptions, "text_column", "--text-column"),
    path_column: str | None = _option(IndexOptions, "path_column", "--path-column"),
    index_type: str | None = _option(IndexOptions, "index_type", "--index-type"),
    runtime: str = _option(IndexOptions, "runtime", "--runtime"),
    ocr: bool | None = _option(IndexOptions, "ocr", "--ocr/--no-ocr"),
    watch: bool = typer.Option(False, "--watch", help="After indexing, keep watching the folders (PATHs, or every folder indexed before; --exclude and --hidden apply) and update the index as files appear, change, move or go: one update per burst of changes (0.5 s after the last event, at most 3 s into a long copy), with the model kept loaded. Searches work meanwhile. Ctrl-C or SIGTERM stops (exit code 0)."),
    ray: str | None = typer.Option(None, "--ray", metavar="ADDRESS", help="Embed on a Ray cluster (needs mmsearch's ray extra): 'local' starts one on this machine for this run, 'auto' joins the one `ray start` runs here, HOST:PORT names a cluster's head. Scanning and the index stay here; every node needs mmsearch with the index's model, and the index and the media at the same paths (a shared filesystem), or the media under URI roots (s3://...) that every node can reach. An interrupted run resumes from what its nodes finished. See docs/distributed.md."),
    json_out: bool = JsonOpt,
):
    """Index (or incrementally update) media folders: new, changed, renamed and deleted files."""
    from ..api import SearchIndex

    fields = dict(model=model, reindex=reindex, batch_size=batch_size, workers=workers, processes=processes,
                  exclude=exclude, hidden=hidden, max_pixels=max_pixels, max_gap=max_gap, text_column=text_column,
                  path_column=path_column, index_type=index_type, runtime=runtime, ocr=ocr, progress=sys.stderr.isatty())
    opts = IndexOptions.of(as_flags=True, **{k: v for k, v in fields.items() if v is not None})

    def report(summary) -> None:
        if json_out:
            typer.echo(json.dumps(summary.as_dict()))
            return
        typer.echo(summary.line())
        for s in summary.skipped:
            typer.echo(f"  skipped {_printable(s['path'])}: {s['reason']}")

    if ray is not None and watch:
        raise UserError("--ray cannot be combined with --watch: watch updates embed on this machine")
    idx = SearchIndex(index, create=True)
    if watch:  # said before the first run, not after it
        from ..indexer.watch import local_only

        local_only(paths or json.loads(idx.index.meta("roots") or "[]"))
    with _stopped_by_sigterm():  # (a run killed by SIGTERM left fetched copies, and a `--ray local` cluster)
        report(idx.add(paths or [], opts) if ray is None else _on_ray(idx, paths or [], opts, ray))
    if watch:
        _watch(idx.index, paths or [], opts, report)


def _on_ray(idx, paths: list[str], opts: IndexOptions, address: str):
    """`index --ray`: the run with its embed stage on a Ray cluster (indexer/distributed.py)."""
    from ..indexer.distributed import RayAdder, RayStage
    from ..indexer.run import index_paths

    stage = RayStage(address)
    # an IVF index the run builds is built on the cluster too; set for the run, not only when
    # something is embedded: a retype (--index-type) or a rebuild after removals builds as well
    idx.index.adder = RayAdder(address, idx.index)
    summary = index_paths(idx.index, [os.path.expanduser(p) for p in paths], opts, embed=stage)
    if stage.resumed:
        typer.echo(f"resumed {stage.resumed} file(s) embedded by an interrupted run", err=True)
    return summary


def _watch(index, paths: list[str], opts: IndexOptions, report) -> None:
    """Update the index on every burst of changes until Ctrl-C or SIGTERM, which end it with exit
    code 0: an update they interrupt keeps what it committed, as any interrupted run does."""
    from ..indexer.watch import Watch

    try:
        with _stopped_by_sigterm(), Watch(index, paths, opts) as watching:
            typer.echo(f"watching {', '.join(map(_printable, watching.roots))} for changes (Ctrl-C to stop)", err=True)
            for update in watching:
                if isinstance(update, UserError):
                    typer.echo(f"mmsearch: error: {update}", err=True)
                else:
                    report(update)
    except KeyboardInterrupt:
        typer.echo("stopped watching", err=True)


@contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM stops as Ctrl-C does (KeyboardInterrupt): what is committed stays, and `finally`
    blocks run (temporary copies removed, child processes and a local Ray cluster stopped)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
@user_errors
def remove(
    paths: List[str] = typer.Argument(..., help="Files or folders to forget."),
    index: str | None = IndexOpt,
):
    """Forget files or folders; later updates of their indexed parent folder leave them out."""
    from ..api import SearchIndex

    typer.echo(f"removed {SearchIndex(index).remove(paths)} file(s)")


@app.command()
@user_errors
def search(
    query: str | None = typer.Argument(None, help=SearchRequest.help("q")),
    image: List[str] = _option(SearchRequest, "image", "--image"),
    at: float | None = _option(SearchRequest, "at", "--at"),
    negative: List[str] = _option(SearchRequest, "negative", "--not"),
    weight: List[float] = _option(SearchRequest, "weights", "--weight"),
    fusion: str = _option(SearchRequest, "fusion", "--fusion"),
    kind: str | None = _option(SearchRequest, "kind", "--type"),
    path: str | None = _option(SearchRequest, "path", "--path"),
    after: str | None = _option(SearchRequest, "after", "--after"),
    before: str | None = _option(SearchRequest, "before", "--before"),
    tag: List[str] = _option(SearchRequest, "tags", "--tag"),
    taken_after: str | None = _option(SearchRequest, "taken_after", "--taken-after"),
    taken_before: str | None = _option(SearchRequest, "taken_before", "--taken-before"),
    near: str | None = _option(SearchRequest, "near", "--near", metavar="LAT,LON,KM"),
    mode: str = _option(SearchRequest, "mode", "--mode"),
    per_video: int = _option(SearchRequest, "per_video", "--per-video"),
    k: int = _option(SearchRequest, "k", "--k", "-k"),
    min_score: float | None = _option(SearchRequest, "min_score", "--min-score"),
    queries: str | None = typer.Option(None, "--queries", help="File of text queries, one per line: prints one JSON line per query."),
    index: str | None = IndexOpt,
    json_out: bool = JsonOpt,
):
    """Search the index by text, by example image, or both at once; best hits first.

    Fused queries mix parts: positives pull, negatives (--not, or "- part") push away. early
    fusion adds the weighted query vectors, which finds items that match all parts at once; late
    fusion searches each part alone and merges the rankings, which keeps items that match one
    part very well."""
    from ..paths import default_index_dir
    from ..retrieval.encoders.query import preload

    texts = (query is not None or queries is not None) and mode != "lexical"  # lexical search needs no model
    preload(index or default_index_dir(), texts=texts, images=bool(image), ahead=[query] if texts and query else [])
    from ..api import SearchIndex

    # keys as the flags are spelled (aliases), so that a bad value's message names the flag
    request = SearchRequest.of(as_flags=True, q=query, image=image, at=at, weight=weight, fusion=fusion, type=kind, path=path,
                               after=after, before=before, tag=tag, per_video=per_video, k=k, min_score=min_score,
                               taken_after=taken_after, taken_before=taken_before, near=near, mode=mode,
                               **{"not": negative})
    idx = SearchIndex(index)
    if queries is not None:
        if query is not None or image:
            raise UserError("--queries cannot be combined with a query text or --image")
        _batch_search(idx, queries, request)
        return
    _print_hits(idx.search(request), json_out)


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


def _printable(path: str) -> str:
    """A path as one line of output: control characters (a newline in a file name) escaped, so
    that a name cannot forge lines of what we print."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in path)


def _where(h) -> str:
    """`video.mp4 @ 00:03:37 (shot 00:03:34–00:03:56)` for moments, `"text" (file:offset)` for texts."""
    path = _printable(h.path)
    if h.kind == "text":
        return f"{h.text[:100]!r}  ({path}:{h.offset})"
    about = (f"  taken {h.taken[:10]}" if h.taken else "") + (f"  {_printable(h.ocr[:60])!r}" if h.ocr else "")
    if h.kind != "video":
        return path + about
    shot = f" (shot {_clock(h.start)}–{_clock(h.end)})" if h.start is not None and h.end is not None else ""
    return f"{path} @ {_clock(h.timestamp)}{shot}{about}"


def _batch_search(idx, queries: str, request: SearchRequest) -> None:
    """One JSON line per query; texts are embedded in batches with the model loaded once."""
    try:
        with open(queries, encoding="utf-8", errors="replace") as f:
            lines = [q.strip() for q in f if q.strip()]
    except OSError as e:
        raise UserError(f"cannot read {queries}: {e.strerror}") from None
    for q, hits in zip(lines, idx.batch_search(lines, request)):
        typer.echo(json.dumps({"query": q, "results": [h.as_dict() for h in hits]}))


@app.command()
@user_errors
def train(
    data: str = typer.Option(..., "--data", help="Pairs: .csv/.jsonl/.parquet with image and caption columns, or a folder of images with .txt captions."),
    out: str = typer.Option(..., "--out", help="Where to write the trained checkpoint (lite: a .safetensors head)."),
    model: str | None = typer.Option(None, "--model", help="Model to fine-tune (default: lite)."),
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
    from ..retrieval.train import train as run_train

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
    model: str | None = typer.Option(None, "--model", help="Model to evaluate (default: lite)."),
    json_out: bool = JsonOpt,
):
    """Text→image and image→text Recall@1/5/10 and MRR on image–caption pairs."""
    from ..retrieval.train import evaluate as run_eval

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
    from ..media.errors import DecodeError
    from ..media.video import frame_at

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
    at: float | None = typer.Option(None, "--at", help="For a video: the frame at this many seconds."),
    k: int = typer.Option(5, "--k", "-k", min=1, help="How many captions."),
    index: str | None = IndexOpt,
    json_out: bool = JsonOpt,
):
    """Caption an image by retrieval: the indexed texts that match it best."""
    from ..api import SearchIndex

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
    paths: List[str] | None = typer.Argument(None, help="Only files under these paths (default: all indexed images and videos)."),
    labels: str = typer.Option(..., "--labels", help="A file with one label per line, or \"cat,dog,car\"."),
    threshold: float = typer.Option(0.3, "--threshold", min=0.0, max=1.0, help="Keep labels scoring at least this (the best label is always kept)."),
    prompt: str = typer.Option("a photo of a {}", "--prompt", help="Template turning a label into a query."),
    index: str | None = IndexOpt,
    json_out: bool = JsonOpt,
):
    """Zero-shot tags: score indexed images and videos against labels, store and print the tags.

    Image scores are a softmax over the labels; a video's are the share of its keyframes that
    each label wins. Tags then filter searches (`search --tag LABEL`) and show in `info`."""
    from ..api import SearchIndex
    from ..retrieval.tags import read_labels

    result = SearchIndex(index).tag(read_labels(labels), prompt, threshold, paths or None)
    if json_out:
        typer.echo(json.dumps(result))
        return
    for r in result:
        typer.echo(f"{r['path']}: " + ", ".join(f"{t['label']} {t['score']:.2f}" for t in r["tags"]))


@app.command()
@user_errors
def info(index: str | None = IndexOpt, json_out: bool = JsonOpt):
    """Describe the index: model, item counts, skipped files, index type and size."""
    from ..api import SearchIndex

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
    if data["taken_from"]:
        sources = ", ".join(f"{n} from {CAPTURE_SOURCES.get(k, k)}" for k, n in sorted(data["taken_from"].items()))
        typer.echo(f"taken      {sources}; {data['located']} with a GPS position")
    ocr = data["ocr"]
    typer.echo(f"ocr        {'on' if ocr['on'] else 'off'}: text read in {ocr['images_read']} image(s), "
               f"{ocr['with_text']} with text")
    typer.echo(f"skipped    {len(data['skipped'])} file(s)")
    for s in data["skipped"]:
        typer.echo(f"  {_printable(s['path'])}: {s['reason']}")


@app.command()
@user_errors
def serve(
    index: str | None = IndexOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default keeps the server on this machine."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    token: str | None = typer.Option(None, "--token", envvar="MMSEARCH_TOKEN", help="Require `Authorization: Bearer TOKEN` on every route but /health and the page (/docs is then off)."),
    allow_host: List[str] = typer.Option([], "--allow-host", help="Also answer requests that name the server so in their Host header (besides localhost and --host), e.g. its DNS name; '*' answers any. Repeatable."),
    max_upload: int = typer.Option(DEFAULT_MAX_UPLOAD, "--max-upload", min=1, help="Largest accepted request body (an upload), in bytes."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Largest accepted uploaded image, in pixels."),
):
    """Serve the HTTP API (OpenAPI at /docs) and a search page at / ."""
    import uvicorn

    from ..api import SearchIndex
    from .server import LOOPBACK, config, create_app, fewer_arenas

    if token is not None and not token.strip():
        raise UserError("--token (or MMSEARCH_TOKEN) is empty: give a token, or leave it unset to serve without one")
    idx = SearchIndex(index)
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        typer.echo(f"mmsearch: warning: serving {idx.path} on {host} without --token: anyone who can reach it can search", err=True)
    wildcard = host in ("0.0.0.0", "::")
    if wildcard and not allow_host:
        typer.echo("mmsearch: warning: on every address, requests must name this machine by a name given with --allow-host", err=True)
    hosts = [*LOOPBACK, *allow_host, *([] if wildcard else [f"[{host}]" if ":" in host else host])]
    typer.echo(f"serving {idx.path} on http://{host}:{port}/", err=True)
    app = create_app(idx, token=token, max_upload=max_upload, max_pixels=max_pixels, hosts=hosts)
    fewer_arenas()
    uvicorn.Server(config(app, host, port)).run()


def main() -> None:
    """Like `app()`, but a usage mistake (unknown option, bad value) is one line on stderr too, as
    the command-line contract promises; ends with SystemExit (callers in-process can catch it)."""
    sys.exit(_run())


def console() -> None:
    """The `mmsearch` command and `python -m mmsearch`: `main`, then out of the process without
    the interpreter's teardown, which spent 0.2–0.3 s of a one-shot query freeing ONNX sessions
    and modules (`lite` text query 1.06 → 0.87 s). Everything is committed by then, and the
    output is flushed first."""
    from ..retrieval.encoders import openclip_import

    openclip_import.LEAVE_OUT = True  # (this process is ours: open_clip without what its model leaves unused)
    code = _run()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader stopped reading (`| head -1`): its choice, not a failure
            pass
    os._exit(code)


def _run() -> int:
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError:  # the help text is already printed
        code = 2
    except ClickException as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see mmsearch {ctx.info_name} --help)" if ctx and ctx.parent else " (see mmsearch --help)"
        typer.echo(f"mmsearch: error: {e.format_message()}{hint}", err=True)
        code = e.exit_code
    return code if isinstance(code, int) else 0
