"""Write small test videos with PyAV whose shot boundaries are known exactly."""
from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
from PIL import Image

CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(path: Path, shots: list[tuple[Image.Image, float]], fps: int = 10, size=(160, 120),
                crossfade: float = 0.0, pts_jitter: bool = False, metadata: dict | None = None) -> list[tuple[float, float]]:
    """Each shot is one still picture held for its duration, with slight motion so it is real
    video; returns the true (start, end) of every shot. `crossfade` seconds blend into each next
    shot; `pts_jitter` makes the frame rate variable; `metadata` are container tags (e.g.
    creation_time, as cameras write it)."""
    frames, bounds, t = [], [], 0.0
    arrays = [np.asarray(img.convert("RGB").resize(size)) for img, _ in shots]
    for n, ((_, dur), arr) in enumerate(zip(shots, arrays)):
        bounds.append((t, t + dur))
        count = int(round(dur * fps))
        for i in range(count):
            a = np.roll(arr, i % 4, axis=1)
            fade_start = count - int(crossfade * fps)
            if crossfade and n + 1 < len(arrays) and i >= fade_start:
                w = (i - fade_start + 1) / (int(crossfade * fps) + 1)
                a = (a * (1 - w) + arrays[n + 1] * w).astype(np.uint8)
            frames.append(a)
        t += dur
    with av.open(str(path), "w") as c:
        c.metadata.update(metadata or {})
        s = c.add_stream(CODEC, rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.codec_context.time_base = s.time_base = __import__("fractions").Fraction(1, fps * 10)
        pts = 0
        for i, a in enumerate(frames):
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts = pts
            pts += 10 if not pts_jitter else (5 if i % 3 == 0 else 12)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return bounds


def rotate_90(path: Path, out: Path) -> None:
    """Copy an MP4, setting its track's display matrix to a 90° rotation (as phones do)."""
    b = bytearray(path.read_bytes())
    i = b.find(b"tkhd")
    assert b[i + 4] == 0, "tkhd version 0 expected"
    b[i + 44 : i + 80] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    out.write_bytes(bytes(b))


def write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_empty_stream(path: Path) -> None:
    """A container whose video stream holds no frames at all."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(CODEC, rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
