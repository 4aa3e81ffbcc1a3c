"""Video keyframes: one pass of PyAV decoding, shot boundaries from a cheap frame difference,
a representative frame per shot plus frames inside long shots so no gap exceeds `max_gap`.

Each keyframe knows its timestamp and its shot's start/end. Frames are kept only at a small
size (what the model needs), so memory stays bounded by the number of keyframes.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image

from .errors import DecodeError, check_pixels, os_reason, regular_size
from .image import DEFAULT_MAX_PIXELS

ANALYSIS_FPS = 8.0  # frames per second compared for cuts; cuts are rarely closer than this
CUT_THRESHOLD = 0.12  # mean absolute RGB difference (0..1) of consecutive thumbnails
FADE_WINDOW = 1.0  # seconds: a dissolve shows as a large change across this window made of small steps
FADE_THRESHOLD = 0.15
FADE_SETTLED = 0.03  # ...and ends when the picture stops changing (which also spares panning shots)
MIN_SHOT = 0.5  # seconds: flashes and flicker shorter than this do not start a shot
SETTLE = 0.3  # seconds into a shot before its first keyframe (past fades and motion blur)
KEEP_SIDE = 384  # keyframes are kept at most this many pixels on the long side
DEFAULT_MAX_GAP = 4.0  # seconds: longest stretch of a shot without a keyframe


@dataclass
class Keyframe:
    timestamp: float
    start: float
    end: float
    image: Image.Image


def _thumb(frame) -> np.ndarray:
    return frame.to_ndarray(width=32, height=18, format="rgb24").astype(np.float32) / 255.0


def _upright(img: Image.Image, rotation: float) -> Image.Image:
    """Apply the stream's display rotation (phone videos), as players do."""
    return img.rotate(rotation, expand=True) if rotation and rotation % 360 else img


def keyframes(path: str, max_gap: float = DEFAULT_MAX_GAP, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Keyframe]:
    import av

    regular_size(path)
    try:
        container = av.open(path, metadata_errors="replace")
    except av.FFmpegError as e:
        raise DecodeError(f"not a readable video: {e.strerror or type(e).__name__}") from None
    except PermissionError as e:
        raise DecodeError(os_reason(e)) from None
    with container:
        if not container.streams.video:
            raise DecodeError("no video stream (audio-only or not a video)")
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        check_pixels(w, h, max_pixels)
        stream.thread_type = "AUTO"
        out = list(_select(_frames(container, stream), max_gap))
    if not out:
        raise DecodeError("no decodable video frames")
    return out


def _frames(container, stream) -> Iterator:
    """Decoded frames with a timestamp; a corrupt tail ends the stream instead of the run."""
    import av

    try:
        for frame in container.decode(stream):
            if frame.time is not None:
                yield frame
    except av.FFmpegError:
        return  # truncated or damaged: keep what decoded so far


def _is_cut(window: deque, thumb: np.ndarray, t: float) -> bool:
    """A hard cut (one big step) or the end of a dissolve (a big change over FADE_WINDOW)."""
    step = np.abs(thumb - window[-1][1]).mean()
    if step > CUT_THRESHOLD:
        return True
    return (step < FADE_SETTLED and t - window[0][0] >= FADE_WINDOW * 0.9
            and np.abs(thumb - window[0][1]).mean() > FADE_THRESHOLD)


def _select(frames: Iterator, max_gap: float) -> Iterator[Keyframe]:
    shot_start, next_analysis, next_key = None, -1.0, 0.0
    first = None  # first frame of the current shot
    window: deque = deque()  # (time, thumbnail) analysed within the last FADE_WINDOW seconds
    pending: list[Keyframe] = []  # keyframes of the current shot (its end is not known yet)
    t = 0.0
    for frame in frames:
        t = float(frame.time)
        if shot_start is None:
            shot_start, next_key, first = t, t + SETTLE, frame
        if t >= next_analysis:
            next_analysis = t + 1.0 / ANALYSIS_FPS
            thumb = _thumb(frame)
            if window and t - shot_start >= MIN_SHOT and _is_cut(window, thumb, t):
                yield from _close(pending, shot_start, t, first)
                pending, shot_start, next_key, first = [], t, t + SETTLE, frame
                window.clear()
            window.append((t, thumb))
            while t - window[0][0] > FADE_WINDOW:
                window.popleft()
        if t >= next_key:
            pending.append(Keyframe(t, shot_start, t, _small(frame)))
            next_key = t + max_gap
    if shot_start is not None:
        yield from _close(pending, shot_start, t, first)


def _close(pending: list[Keyframe], start: float, end: float, first) -> Iterator[Keyframe]:
    """Finish a shot: its keyframes learn where it ends; a shot too short for one gets its first frame."""
    if not pending:
        pending = [Keyframe(float(first.time), start, end, _small(first))]
    for k in pending:
        k.end = end
        yield k


def _small(frame) -> Image.Image:
    scale = min(1.0, KEEP_SIDE / max(frame.width, frame.height))
    img = frame.to_image(width=max(1, round(frame.width * scale)), height=max(1, round(frame.height * scale)))
    return _upright(img, getattr(frame, "rotation", 0) or 0)


def frame_at(path: str, seconds: float) -> Image.Image:
    """The full-size frame shown at `seconds` (for `mmsearch frame` and thumbnails)."""
    import av

    regular_size(path)
    try:
        with av.open(path, metadata_errors="replace") as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            if stream.time_base:
                container.seek(max(0, int(seconds / stream.time_base)), stream=stream, backward=True)
            best = None
            for frame in _frames(container, stream):
                if best is not None and frame.time > seconds + 1e-3:
                    break
                best = frame
            if best is None:
                raise DecodeError(f"no frame at {seconds:.2f}s")
            return _upright(best.to_image(), getattr(best, "rotation", 0) or 0)
    except av.FFmpegError as e:
        raise DecodeError(f"not a readable video: {e.strerror or type(e).__name__}") from None
