"""Text in images (OCR): RapidOCR's PP-OCR detection + recognition models (English and Chinese,
shipped inside its wheel) on ONNX Runtime. None of the image models we can ship reads words in
pictures; an OCR engine does, at a price per image (docs/performance.md), so an index runs it
only when asked (`mmsearch index --ocr`, remembered).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: lines recognised with less confidence than this are dropped (RapidOCR's own default is 0.5:
#: on photos without text it then reads leaves and bricks as short strings)
MIN_SCORE = 0.6
#: an image is scaled so its long side is at most this many pixels before detection: text a
#: person could read in a thumbnail-sized view survives, and the cost stays bounded on 48 MP photos
MAX_SIDE = 1600


@dataclass(frozen=True)
class Line:
    text: str
    box: tuple[int, ...]  # x0, y0, x1, y1, x2, y2, x3, y3 in the original image's pixels
    score: float

    def as_list(self) -> list:
        return [self.text, list(self.box), round(self.score, 3)]


_local = threading.local()


def _engine():
    """One engine per thread (ONNX Runtime sessions run concurrently, RapidOCR's Python state
    around them is not shared safely)."""
    engine = getattr(_local, "engine", None)
    if engine is None:
        from rapidocr import RapidOCR

        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        # detection on the image scaled to at most 960 px (RapidOCR's default scales it UP to at
        # least 736 px on the short side): on 200 rendered images (12-72 px text, English and
        # Chinese, plain/gradient/photo backgrounds, some rotated) 193 of 200 queries found vs
        # ~194, at 0.60 instead of 1.47 CPU-seconds an image; recognition still reads the text
        # at full resolution. No angle classifier: upside-down text is rare in photos, and it
        # costs a pass per line.
        engine = RapidOCR(params={"Global.log_level": "critical", "Global.use_cls": False,
                                  "Det.limit_type": "max", "Det.limit_side_len": 960})
        _local.engine = engine
    return engine


def read_text(img: Image.Image) -> list[Line]:
    """The text lines of an RGB image, top to bottom."""
    scale = min(1.0, MAX_SIDE / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.Resampling.BILINEAR)
    result = _engine()(np.asarray(img.convert("RGB")))
    if result.txts is None or result.boxes is None:
        return []
    lines = [Line(t.strip(), tuple(int(round(v / scale)) for v in np.asarray(b).reshape(-1)), float(s))
             for t, b, s in zip(result.txts, result.boxes, result.scores) if s >= MIN_SCORE and t.strip()]
    return sorted(lines, key=lambda line: (line.box[1], line.box[0]))
