"""Objects under URI roots (`s3://bucket/prefix`, `gs://…`, `file:///dir`): their filesystems,
and a local copy of one object for the decoders, which all read local files.

A root is what `pyarrow.fs.FileSystem.from_uri` opens, or else an fsspec protocol (through
pyarrow's `FSSpecHandler`, when fsspec and its plugin are installed). Its query string holds the
filesystem's options (`s3://media/photos?endpoint_override=127.0.0.1:9000&scheme=http`): the
index keeps the root as given (meta "roots"), while its files are stored by their plain URIs
(`s3://media/photos/a.jpg`). A process that fetches objects `remember`s the roots first (the
scan does, by opening them; a Ray actor gets them with its run), so that each object is opened
with its root's options. Credentials come from the filesystem's usual sources (for S3 the AWS
environment variables and config files), which keeps them out of the index.

An S3 root's requests have timeouts (`S3_CONNECT_TIMEOUT`, `S3_REQUEST_TIMEOUT`; the query's
`connect_timeout=` and `request_timeout=`, in seconds, override them), so that a store that
accepts connections but never answers fails a listing or a fetch in ~31 s instead of pyarrow's
own 99 s an operation; a GCS root's retries stop after `GCS_RETRY_LIMIT` unless its query says.
"""
from __future__ import annotations

import functools
import os
import tempfile
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator

from .errors import PERMISSION_DENIED, UNREADABLE, DecodeError
from .files import is_uri, location, under
from .kinds import extension

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

#: the largest object copied for decoding: a local run fetches `--workers` at a time into the
#: temporary folder, so a bigger one (an hour of 4K video) is skipped rather than fill the disk
MAX_FETCH = 4 << 30
#: the largest object fetched to draw a thumbnail (api.SearchIndex.thumbnail): a server's client
#: asks by item id, and each request must stay cheap; a bigger object (a long video) has none
MAX_THUMBNAIL_FETCH = 64 << 20
#: bytes copied a read
_CHUNK = 8 << 20

#: each remembered root's location → the root as given (with its options)
_roots: dict[str, str] = {}

# S3 timeouts, in seconds. pyarrow's own (FileSystem.from_uri: the AWS SDK's 1 s to connect and 3 s
# without a byte, and arrow's retry strategy: 31 tries 0.2 s apart) stall 99 s an operation on a
# store that accepts connections but never answers. The request timeout bounds a stall, not a
# whole request: pyarrow documents it as a socket read timeout, ignored off Windows and macOS, but
# on Linux the SDK's curl client sets it as CURLOPT_LOW_SPEED_TIME, so a transfer is dropped only
# once it has run that long below 1 byte/s (curl's speed over its last few seconds), and an object
# of any size downloads at any real speed (tests/test_uri.py checks both: a black-holed endpoint
# fails, a download several times longer than the timeout does not). 10 s is three times what
# pyarrow waits for a byte today (S3 answers a GET's first byte or a 1000-key listing in well
# under a second); 10 s to connect outlasts two lost SYNs (sent again after 1 s and 3 s), where the
# SDK's 1 s gives up at the first.
#: seconds to set up a connection to an S3 store (`connect_timeout=` in the root's query)
S3_CONNECT_TIMEOUT = 10.0
#: seconds an S3 transfer may stall (no byte received) (`request_timeout=` in the root's query)
S3_REQUEST_TIMEOUT = 10.0
#: tries of an S3 request (the AWS SDK's standard retry mode: throttling, 5xx, network errors and
#: timeouts; the backoff before a retry is up to 1 s, then 2 s). A store that never answers fails
#: an operation (the listing, a fetch's HEAD or read) after S3_ATTEMPTS x the request timeout and
#: up to 3 s: 30-33 s by default; a host that drops every packet after S3_ATTEMPTS x the connect
#: timeout and as much
S3_ATTEMPTS = 3
_TIMEOUT_KEYS = ("connect_timeout", "request_timeout")
#: seconds a GCS operation is tried again after a failure (`retry_limit_seconds=` in the root's
#: query, as pyarrow takes it; the GCS client's own default is 15 minutes). pyarrow has no GCS
#: timeouts: the client drops a request after 120 s without a byte (its stall timeout, fixed), so a
#: store that never answers fails an operation in ~120 s with this limit, and went on trying (over
#: 330 s measured, up to 15 minutes) without it
GCS_RETRY_LIMIT = 60.0


def remember(roots: Iterable[str]) -> None:
    """Open later fetches under these URI roots with their options (local paths are ignored)."""
    _roots.update((location(r), r) for r in roots if is_uri(r))


def remembered() -> list[str]:
    """The URI roots this process knows, to hand to another process (`remember` there)."""
    return list(_roots.values())


def open_root(root: str) -> tuple[FileSystem, str]:
    """The filesystem of a URI root and the root's path in it; the root is remembered. Raises
    ValueError for a URI no filesystem takes, OSError when its filesystem cannot be set up."""
    remember([root])
    return _filesystem(root)


def locate(uri: str) -> tuple[FileSystem, str]:
    """The filesystem and path of an object: by the remembered root it lies under (the longest),
    with that root's options; else by the URI alone."""
    roots = [loc for loc in _roots if under(uri, [loc])]
    if not roots:
        return _filesystem(uri)
    loc = max(roots, key=len)
    fs, base = _filesystem(_roots[loc])
    return fs, base + uri[len(loc):]


@functools.lru_cache(maxsize=64)
def _filesystem(uri: str) -> tuple[FileSystem, str]:
    """(cached: an S3 filesystem sets up a client; one serves every object and thread)"""
    import pyarrow as pa
    from pyarrow.fs import FileSystem, FSSpecHandler, PyFileSystem

    scheme = uri.partition("://")[0]
    timeouts: dict[str, float] = {}
    if scheme == "s3":  # (pyarrow's URI parser refuses the timeouts: they are taken out, and set after)
        uri, timeouts = _timeouts(uri)
    elif scheme in ("gs", "gcs") and "retry_limit_seconds" not in _keys(uri):
        uri += f"{'&' if '?' in uri else '?'}retry_limit_seconds={GCS_RETRY_LIMIT:g}"
    try:
        fs, path = FileSystem.from_uri(uri)
    except pa.ArrowInvalid as e:
        if not str(e).startswith("Unrecognized filesystem type"):
            raise ValueError(str(e)) from None
        try:
            import fsspec

            other, path = fsspec.core.url_to_fs(uri)
        except Exception as err:  # (fsspec raises what its plugin raises: TypeError, AttributeError, ...)
            scheme = uri.partition("://")[0]
            raise ValueError(f"no filesystem for {scheme}:// (pyarrow has s3, gs, hdfs and file; others need fsspec "
                             f"and its plugin: {err})") from None
        fs = PyFileSystem(FSSpecHandler(other))
    if scheme == "s3":
        fs = _with_timeouts(fs, **timeouts)
    return fs, path.rstrip("/") or path


def _keys(uri: str) -> set[str]:
    """The option names in a URI's query."""
    from urllib.parse import unquote

    query = uri.partition("?")[2]
    return {unquote(pair.partition("=")[0]) for pair in query.split("&")} if query else set()


def _timeouts(uri: str) -> tuple[str, dict[str, float]]:
    """An S3 URI without its timeout options, and their values (seconds; the defaults for those
    not given). A value that is not a number of seconds above 0 is a one-line ValueError."""
    from urllib.parse import unquote

    base, mark, query = uri.partition("?")
    timeouts = {"connect_timeout": S3_CONNECT_TIMEOUT, "request_timeout": S3_REQUEST_TIMEOUT}
    if not mark:
        return uri, timeouts
    kept = []
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if unquote(key) not in _TIMEOUT_KEYS:
            kept.append(pair)
            continue
        try:
            seconds = float(unquote(value))
        except ValueError:
            seconds = float("nan")
        if not 0 < seconds < float("inf"):
            raise ValueError(f"{unquote(key)} must be a number of seconds above 0, not {unquote(value)!r}")
        timeouts[unquote(key)] = seconds
    return (f"{base}?{'&'.join(kept)}" if kept else base), timeouts


def _with_timeouts(fs: FileSystem, connect_timeout: float, request_timeout: float) -> FileSystem:
    """The S3 filesystem `from_uri` made, with the same options (its pickling state: endpoint,
    scheme, region, credentials, ...) and these timeouts and S3_ATTEMPTS tries."""
    from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem

    if not isinstance(fs, S3FileSystem):
        return fs
    rebuild, (options,) = fs.__reduce__()
    options = dict(options, connect_timeout=connect_timeout, request_timeout=request_timeout,
                   retry_strategy=AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))
    return rebuild(options)


@contextmanager
def fetched(path: str, size: int | None = None, limit: int | None = None) -> Iterator[str]:
    """A local file with the content of `path`: the path itself when it is local (no cost), else
    a temporary copy of the object (with its extension: decoders choose by it), removed after.
    An object that cannot be fetched (gone, denied, the network) or is larger than `limit`
    (`size` when known, else as it is copied; default MAX_FETCH) is a `DecodeError` with the reason."""
    if not is_uri(path):
        yield path
        return
    limit = MAX_FETCH if limit is None else limit
    if size is not None and size > limit:
        raise DecodeError(_too_large(limit))
    fd, local = tempfile.mkstemp(prefix="mmsearch-", suffix=extension(path))
    try:
        with os.fdopen(fd, "wb") as out:
            _copy(path, out, limit)
        yield local
    finally:
        os.unlink(local)


def _copy(uri: str, out, limit: int) -> None:
    import pyarrow as pa

    try:
        fs, path = locate(uri)
        with fs.open_input_stream(path) as src:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                if out.tell() > limit:
                    raise DecodeError(_too_large(limit))
    except (OSError, ValueError, pa.ArrowException) as e:
        # pyarrow's I/O errors are OSErrors (a missing object, S3's access and network errors):
        # "unreadable" is tried again by the next run (media/errors.py), as a network error should be
        raise DecodeError(PERMISSION_DENIED if isinstance(e, PermissionError) else f"{UNREADABLE}: {first_line(e)}") from None


def _too_large(limit: int) -> str:
    return f"object larger than {f'{limit / 2**30:g} GiB' if limit >= 2**30 else f'{limit / 2**20:g} MiB'}: not fetched"


def first_line(e: BaseException, root: str | None = None) -> str:
    """The first line of an error's message; naming `root` by its location (pyarrow quotes a
    URI it cannot parse whole, credentials and all)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line.replace(root, location(root)) if root else line
