"""The one failure type of media I/O, and the reasons shared by every decoder."""
from __future__ import annotations


class DecodeError(Exception):
    """A file that cannot be used; the message is the reason recorded for it."""


def os_reason(err: OSError) -> str:
    """The recorded reason for a file the operating system would not let us read."""
    if isinstance(err, PermissionError):
        return "permission denied"
    return f"unreadable: {err.strerror or err}"


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse a picture (an image, or a video's frames) larger than `max_pixels` before decoding it."""
    if width * height > max_pixels:
        raise DecodeError(f"too many pixels: {width}x{height} exceeds the limit of {max_pixels:,} (--max-pixels)")
