"""When, with what and where a photo or video was taken: EXIF DateTimeOriginal (with its offset
when the camera wrote one), the camera model and the GPS position; for videos, the container's
creation time and ISO 6709 location (phones write both). Read from headers alone, never from
pixels (~1 ms a photo), so every file gets it, also in indexes made before it existed.

Capture times are kept as *wall-clock* time where the picture was taken (nanoseconds of that
clock reading, as if it were UTC), plus the UTC offset when known: "photos from July 2019"
means July where they were taken, and a photo without an offset has only its wall clock. A
file without any capture time falls back to its modification time on this machine's clock.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from PIL import Image

#: where a capture time came from (`info` counts them; a hit's `taken_from`)
EXIF, METADATA, FILE_TIME = "exif", "metadata", "file"

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL, _DATETIME = 271, 272, 306
_ORIGINAL, _DIGITIZED, _OFFSET_ORIGINAL, _OFFSET = 36867, 36868, 36881, 36880
#: bytes read from the start of a TIFF-based RAW file for its EXIF (tags and their values sit near the start)
RAW_HEADER = 1 << 20
#: years outside this are unset clocks (1970, 2000-01-01 defaults are kept: they may be real)
_YEARS = range(1900, 2200)


@dataclass
class Capture:
    taken_ns: int | None = None  # wall-clock nanoseconds where taken (see module doc)
    offset_min: int | None = None  # that clock's UTC offset in minutes, when known
    taken_from: str = FILE_TIME
    camera: str | None = None
    lat: float | None = None
    lon: float | None = None

    def with_fallback(self, mtime_ns: int) -> Capture:
        """Itself, or the file's modification time (this machine's wall clock) when nothing
        better was found."""
        if self.taken_ns is None:
            self.taken_ns, self.taken_from = local_wall_ns(mtime_ns), FILE_TIME
        return self


def read_capture(path: str, kind: str) -> Capture:
    """Capture metadata of an image or video file; an empty `Capture` when it has none or the
    header cannot be read (the indexer has already decoded the file: a bad header is no error)."""
    try:
        return _video(path) if kind == "video" else _image(path)
    except Exception:  # noqa: BLE001 (a malformed header must cost its metadata, nothing more)
        return Capture()


def _image(path: str) -> Capture:
    try:
        with Image.open(path) as img:
            return from_exif(img.getexif())
    except Exception:  # noqa: BLE001 (not an image Pillow opens: a camera RAW, perhaps)
        pass
    with open(path, "rb") as f:
        head = f.read(RAW_HEADER)
    if head[:4] not in (b"II*\0", b"MM\0*"):
        return Capture()
    # most camera RAW formats (ARW, NEF, CR2, DNG, PEF, ...) are TIFF files whose first IFD
    # holds the EXIF tags; Pillow parses them without opening the image
    exif = Image.Exif()
    exif.load(head)
    return from_exif(exif)


def from_exif(exif: Image.Exif) -> Capture:
    cap = Capture()
    sub = exif.get_ifd(_EXIF_IFD)
    when = sub.get(_ORIGINAL) or sub.get(_DIGITIZED) or exif.get(_DATETIME)
    if (wall := exif_wall_ns(when)) is not None:
        cap.taken_ns, cap.taken_from = wall, EXIF
        cap.offset_min = parse_offset(sub.get(_OFFSET_ORIGINAL) or sub.get(_OFFSET))
    cap.camera = camera_name(exif.get(_MAKE), exif.get(_MODEL))
    gps = exif.get_ifd(_GPS_IFD)
    if gps:
        cap.lat, cap.lon = gps_position(gps.get(1), gps.get(2), gps.get(3), gps.get(4))
    return cap


def exif_wall_ns(value) -> int | None:
    """``2019:07:14 15:22:01`` (EXIF's format; dashes accepted) as wall-clock nanoseconds."""
    if not isinstance(value, str):
        return None
    m = re.match(r"\s*(\d{4})[:-](\d\d)[:-](\d\d)[ T](\d\d):(\d\d):(\d\d)", value)
    if not m:
        return None
    try:
        year, month, day, hour, minute, second = (int(g) for g in m.groups())
        dt = datetime(year, month, day, hour, minute, second)
    except ValueError:  # 0000:00:00 00:00:00, what cameras without a clock write
        return None
    return wall_ns(dt) if dt.year in _YEARS else None


def parse_offset(value) -> int | None:
    """``+02:00`` / ``-0530`` → minutes east of UTC."""
    m = re.match(r"\s*([+-])(\d\d):?(\d\d)", value) if isinstance(value, str) else None
    if not m:
        return None
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return (minutes if m.group(1) == "+" else -minutes) if minutes <= 14 * 60 else None


def camera_name(make, model) -> str | None:
    """``Canon`` + ``Canon EOS 5D`` → ``Canon EOS 5D``; ``Apple`` + ``iPhone 12`` → ``Apple iPhone 12``."""
    make = make.strip("\x00 ").strip() if isinstance(make, str) else ""
    model = model.strip("\x00 ").strip() if isinstance(model, str) else ""
    if make and model.lower().startswith(make.split()[0].lower()):
        make = ""
    return " ".join(p for p in (make, model) if p)[:100] or None


def gps_position(lat_ref, lat, lon_ref, lon) -> tuple[float | None, float | None]:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals and N/S, E/W references."""
    try:
        la, lo = _degrees(lat), _degrees(lon)
    except (TypeError, ValueError, ZeroDivisionError):
        return None, None
    la = -la if str(lat_ref).upper().startswith("S") else la
    lo = -lo if str(lon_ref).upper().startswith("W") else lo
    if not (-90 <= la <= 90 and -180 <= lo <= 180) or (la == 0 and lo == 0):  # 0,0: an unset receiver
        return None, None
    return round(la, 7), round(lo, 7)


def _degrees(dms) -> float:
    d, m, s = (float(x) for x in dms)
    return d + m / 60 + s / 3600


def _video(path: str) -> Capture:
    import av

    with av.open(path, metadata_errors="replace") as container:
        tags = {k.lower(): v for k, v in container.metadata.items()}
        for stream in container.streams:  # some muxers put creation_time on the streams only
            for k, v in stream.metadata.items():
                tags.setdefault(k.lower(), v)
    cap = Capture()
    # Apple writes the local time with its offset; creation_time is UTC
    local = tags.get("com.apple.quicktime.creationdate")
    if local and (dt := _iso(local)) and dt.tzinfo and dt.year in _YEARS:
        cap.taken_ns, cap.taken_from = wall_ns(dt.replace(tzinfo=None)), METADATA
        cap.offset_min = int(dt.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]
    elif (dt := _iso(tags.get("creation_time", ""))) and dt.year in _YEARS and dt.year > 1970:
        utc = dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)
        cap.taken_ns, cap.taken_from = local_wall_ns(int(utc.timestamp() * 1e9)), METADATA
    cap.camera = camera_name(tags.get("com.apple.quicktime.make") or tags.get("make"),
                             tags.get("com.apple.quicktime.model") or tags.get("model"))
    where = tags.get("com.apple.quicktime.location.iso6709") or tags.get("location") or ""
    if m := re.match(r"\s*([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)", where):
        la, lo = float(m.group(1)), float(m.group(2))
        if -90 <= la <= 90 and -180 <= lo <= 180 and (la, lo) != (0, 0):
            cap.lat, cap.lon = la, lo
    return cap


def _iso(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


def wall_ns(dt: datetime) -> int:
    """A naive wall-clock reading as nanoseconds (the reading taken as if it were UTC)."""
    return calendar.timegm(dt.timetuple()) * 10**9 + dt.microsecond * 1000


def local_wall_ns(epoch_ns: int) -> int:
    """An instant as this machine's local wall-clock nanoseconds."""
    seconds, rest = divmod(epoch_ns, 10**9)
    try:
        dt = datetime.fromtimestamp(seconds)
    except (OverflowError, OSError, ValueError):
        return epoch_ns
    return wall_ns(dt) + rest


def iso_taken(taken_ns: int, offset_min: int | None) -> str:
    """``2019-07-14T15:22:01+02:00`` (no offset part when unknown)."""
    dt = datetime(1970, 1, 1) + timedelta(microseconds=taken_ns // 1000)
    text = dt.isoformat(timespec="seconds")
    if offset_min is None:
        return text
    sign, m = ("+" if offset_min >= 0 else "-"), abs(offset_min)
    return f"{text}{sign}{m // 60:02}:{m % 60:02}"


def distance_km(lat1, lon1, lat2, lon2):
    """Great-circle distance (haversine; numpy arrays or floats)."""
    import numpy as np

    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))

