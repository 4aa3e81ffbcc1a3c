"""Thumbnails: drawn from an image or a video frame as JPEG, and the recently drawn ones kept."""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Callable, Hashable

from PIL import Image

#: bytes of recently drawn thumbnails a `Thumbnails` keeps: ~2,000 of 256 px (8–20 KB each). A
#: page of results asks for the same ones again; without it a flood of requests for one 100 M-pixel
#: image's thumbnail decoded it each time, and other thumbnails waited 12.6 s (median)
CACHE_BYTES = 32 << 20
#: the sizes thumbnails are drawn at from their files; one of another size is scaled from the next
#: larger of these (a flood asking one 100 M-pixel image's thumbnail at ever other sizes decoded
#: the image each time)
SIDES = (64, 128, 256, 512, 1024)


def jpeg(img: Image.Image, size: int) -> bytes:
    """`img` shrunk to fit `size` × `size`, as JPEG."""
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def scaled(data: bytes, size: int) -> bytes:
    """The thumbnail `data` (JPEG) shrunk to fit `size` × `size`."""
    return jpeg(Image.open(io.BytesIO(data)), size)


class Thumbnails:
    """The last thumbnails drawn, at most `limit` bytes, least recently used out first. Drawings
    of one `source` take turns, and a key is drawn once, its other requests waiting for it: a
    burst for one 100 M-pixel image's thumbnail decodes it once, and one at its five sizes decodes
    it five times one after another, not at once (2.4 GB). A failed drawing (None) is kept too, so
    a broken file is not decoded again."""

    def __init__(self, limit: int = CACHE_BYTES):
        self.limit, self.held = limit, 0
        self._kept: OrderedDict[Hashable, bytes | None] = OrderedDict()
        self._turns: dict[Hashable, tuple[threading.Lock, list[int]]] = {}  # a source's turn, and its users
        self._lock = threading.Lock()

    def get(self, key: Hashable, draw: Callable[[], bytes | None], source: Hashable = None) -> bytes | None:
        """The thumbnail kept for `key`, else `draw()`'s, kept; drawn in `source`'s turn (default:
        the key's own)."""
        source = key if source is None else source
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
            turn, users = self._turns.setdefault(source, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with turn:
                with self._lock:
                    if key in self._kept:  # drawn while this request waited its turn
                        return self._kept[key]
                data = draw()
                with self._lock:
                    self._keep(key, data)
                return data
        finally:
            with self._lock:
                users[0] -= 1
                if not users[0]:
                    del self._turns[source]

    def _keep(self, key: Hashable, data: bytes | None) -> None:
        size = len(data or b"")
        if size > self.limit or key in self._kept:  # (kept already: drawn in another source's turn)
            return
        self._kept[key] = data
        self.held += size
        while self.held > self.limit:
            self.held -= len(self._kept.popitem(last=False)[1] or b"")
