"""Walk the user's paths: recursive, symlinks followed without loops, hidden and excluded names
skipped. A URI root (`s3://bucket/prefix`) is listed through pyarrow.fs instead (media/fetch.py),
by the same rules; its entries' paths are the objects' URIs."""
from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..errors import UserError
from ..media.errors import os_reason
from ..media.files import display_path, is_uri, location, under
from ..media.kinds import kind_of

#: the kind of an entry for a folder that could not be listed: its files are neither seen nor
#: swept, and it is recorded as skipped with the reason
FOLDER = "folder"


@dataclass(slots=True)
class Entry:
    """A candidate file. ``error`` is set when it exists but cannot be used (broken link, not a
    file), and for a folder (kind FOLDER) that could not be listed. A scan holds one a file
    until the plan is made: with slots 334 bytes each, key included, not 430. ``key``: the path's
    bytes, made once (every plan reads it; a bulk merge ~5 times a file)."""

    path: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    error: str | None = None
    key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.key = os.fsencode(self.path)


def _excluded(path: str, name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)


def _entry(path: str, kind: str) -> Entry:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Entry(path, kind, error="broken symlink" if os.path.islink(path) else "file vanished")
    except OSError as e:
        return Entry(path, kind, error=f"cannot stat: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return Entry(path, kind, error="not a regular file")
    return Entry(path, kind, st.st_size, st.st_mtime_ns)


def given_root(path: str) -> str:
    """A root the user names, as the index keeps it (absolute; a URI as given, with its options:
    a later run opens it again), once it is known to be there: else a one-line UserError."""
    if not is_uri(path):
        if not os.path.exists(path := os.path.abspath(path)):
            raise UserError(f"{display_path(path)} does not exist")
        return path
    import pyarrow as pa
    from pyarrow.fs import FileType

    from ..media.fetch import first_line, open_root

    try:  # (told by its location, not the root: its options may hold a secret)
        fs, base = open_root(path)
        found = fs.get_file_info(base).type != FileType.NotFound
    except (OSError, ValueError, pa.ArrowException) as e:
        raise UserError(f"cannot open {location(path)}: {first_line(e, path)}") from None
    if not found:
        raise UserError(f"{location(path)} does not exist")
    return path


def scan(roots: Iterable[str], exclude: Iterable[str] = (), hidden: bool = False) -> Iterator[Entry]:
    """Yield every supported media file under `roots` (absolute paths, not resolved, so a
    symlinked folder keeps the name the user sees). Directories are visited once by inode; one
    that cannot be listed comes as a FOLDER entry with the reason."""
    exclude = list(exclude)
    seen_dirs: set[tuple[int, int]] = set()
    roots = list(roots)
    uris, listed = {location(r) for r in roots if is_uri(r)}, set()
    for root in roots:
        if is_uri(root):  # listed once: a root inside another one given is listed with it
            if (loc := location(root)) not in listed and not under(loc, uris - {loc}):
                listed.add(loc)
                yield from _objects(root, exclude, hidden)
            continue
        root = os.path.abspath(root)
        if not os.path.lexists(root):  # a vanished root: its stored files get swept
            continue
        if not os.path.isdir(root):
            kind = kind_of(root)
            if kind:
                yield _entry(root, kind)
            continue
        unlisted: list[OSError] = []  # os.walk reports folders it cannot list here, and goes on
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unlisted.append):
            yield from _folders(unlisted)
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(
                d for d in dirnames
                if (hidden or not d.startswith(".")) and not _excluded(os.path.join(dirpath, d), d, exclude)
            )
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                kind = kind_of(name)
                if kind and (hidden or not name.startswith(".")) and not _excluded(path, name, exclude):
                    yield _entry(path, kind)
        yield from _folders(unlisted)


def _objects(root: str, exclude: list[str], hidden: bool) -> Iterator[Entry]:
    """The objects under a URI root (or the root itself, an object), in one recursive listing
    (S3: a request a thousand keys); one that cannot be listed is a FOLDER entry with the reason."""
    import pyarrow as pa
    from pyarrow.fs import FileSelector, FileType

    from ..media.fetch import first_line, open_root

    loc = location(root)
    try:
        fs, base = open_root(root)
        info = fs.get_file_info(base)
        if info.type != FileType.Directory:  # an object, or nothing (a vanished root: its stored files get swept)
            kind = kind_of(base)
            if info.type == FileType.File and kind:
                yield Entry(loc, kind, info.size or 0, info.mtime_ns or 0)
            return
        found = fs.get_file_info(FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, ValueError, pa.ArrowException) as e:
        yield Entry(loc, FOLDER, error=f"cannot list: {first_line(e, root)}")
        return
    for info in sorted((i for i in found if i.type == FileType.File), key=lambda i: i.path):
        names = info.path[len(base):].strip("/").split("/")
        if (kind := kind_of(names[-1])) and _listed(loc, names, exclude, hidden):
            yield Entry(f"{loc}/{'/'.join(names)}", kind, info.size or 0, info.mtime_ns or 0)


def _listed(loc: str, names: list[str], exclude: list[str], hidden: bool) -> bool:
    """Whether an object (its names below the root `loc`) is kept by the rules a folder's files
    follow: no hidden or excluded name on its way, folders included."""
    if not hidden and any(n.startswith(".") for n in names):
        return False
    return not exclude or not any(_excluded(f"{loc}/{'/'.join(names[:i + 1])}", n, exclude) for i, n in enumerate(names))


def _folders(errors: list[OSError]) -> Iterator[Entry]:
    while errors:
        err = errors.pop(0)
        yield Entry(os.fsdecode(err.filename), FOLDER, error=os_reason(err))
