"""The one failure type of media I/O, and the reasons shared by every decoder."""
from __future__ import annotations

import os
import stat

PERMISSION_DENIED = "permission denied"
UNREADABLE = "unreadable"


class DecodeError(Exception):
    """A file that cannot be used; the message is the reason recorded for it."""


def os_reason(err: OSError) -> str:
    """The recorded reason for a file the operating system would not let us read."""
    if isinstance(err, PermissionError):
        return PERMISSION_DENIED
    return f"{UNREADABLE}: {err.strerror or err}"


def may_pass_later(reason: str | None) -> bool:
    """Whether a file skipped for `reason` may read fine next time with the same size and mtime
    (its permissions or its disk changed, which leaves mtime alone): such files are retried."""
    return reason is not None and (reason == PERMISSION_DENIED or reason.startswith(f"{UNREADABLE}: "))


def regular_size(path: str | bytes | os.PathLike) -> int:
    """The size of a regular file; anything else (a FIFO swapped in for a video, a device), or a
    file we may not read, is a `DecodeError` before any decoder can block on it."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DecodeError(os_reason(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError("not a regular file")
    return st.st_size


#: the longest side of a picture decoded (JPEG's own limit): a 69-byte PNG of 100,000,000 × 1
#: pixels passed the pixel limit and Pillow's per-line storage took 3.2 GB to decode it
MAX_SIDE = 65_535


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse a picture (an image, or a video's frames) larger than `max_pixels`, or with a side
    longer than MAX_SIDE, before decoding it."""
    if width * height > max_pixels:
        raise DecodeError(f"too many pixels: {width}x{height} exceeds the limit of {max_pixels:,} (--max-pixels)")
    if max(width, height) > MAX_SIDE:
        raise DecodeError(f"a side too long: {width}x{height}, at most {MAX_SIDE:,} pixels a side")
