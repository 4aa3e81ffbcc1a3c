"""A search request: every option of a search with its default, limits and help, in one place.

The Python API, the command line and both HTTP routes build a `SearchRequest`, so each option is
validated once, the same way everywhere (the CLI reads its defaults and help from here too).
Over HTTP, JSON bodies are validated strictly (``"k": "5"`` or ``"path": 123`` is an error, not a
guess) and query strings as strings; infinities and NaN are refused everywhere.
"""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator

from ..validated import Validated

#: most hits one HTTP request may ask for (bounded work per request; the API and CLI have no limit)
MAX_HTTP_K = 1000
DEFAULT_PER_VIDEO = 3
#: most parts in one query (texts, images, negatives): each costs a model forward (300 parts in a
#: 1.2 KB URL took 6.7 s)
MAX_PARTS = 16
#: most tags a search filters by: each is a subquery (SQLite refused ~1,000 at once, with a 500)
MAX_TAGS = 32
#: largest weight of a query part: weights are relative, and 1e308 overflowed the fused vector
MAX_WEIGHT = 1e4
#: longest `path` glob: SQLite's GLOB is linear in the pattern, and no real path glob is this long
MAX_GLOB = 1024

Fusion = Literal["early", "late"]
Mode = Literal["hybrid", "semantic", "lexical"]
Kind = Literal["image", "video", "text"]


class SearchRequest(Validated):
    """One search: a text (plain, or compact fused syntax), example images, or both; with filters."""

    q: str | None = Field(None, description='Text to search for, e.g. "a dog on a beach"; or a fused query '
                          'such as "2:beach + ref.jpg - people".')
    image: list[str] = Field([], max_length=MAX_PARTS, description="Search by example image (or a video: its frame at --at); "
                             "repeatable. Files on this machine: not accepted over HTTP.")
    at: float | None = Field(None, ge=0, description="With --image VIDEO: the frame at this many seconds.")
    negative: list[str] = Field([], max_length=MAX_PARTS, validation_alias=AliasChoices("negative", "not"),
                                description="Text to steer away from; repeatable.")
    weights: list[Annotated[float, Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT)]] = Field([], max_length=MAX_PARTS, validation_alias=AliasChoices("weights", "weight"),
                                 description="Weights of the positive parts, in order (query text first, then each image).")
    fusion: Fusion = Field("early", description="How parts combine: early (one fused vector) or late "
                           "(rank fusion of separate searches).")
    k: int = Field(10, ge=1, description="How many hits.")
    min_score: float | None = Field(None, ge=-1, le=1, description="Drop hits scoring below this (cosine, -1..1).")
    kind: Kind | None = Field(None, validation_alias=AliasChoices("kind", "type"),
                              description="Only hits of this kind: image, video or text.")
    path: str | None = Field(None, max_length=MAX_GLOB, description="Only files whose path matches this glob, "
                             "e.g. '*/2024/*' or '*.png'.")
    after: date | None = Field(None, description="Only files modified on or after this date (YYYY-MM-DD).")
    before: date | None = Field(None, description="Only files modified before this date (YYYY-MM-DD).")
    taken_after: date | None = Field(None, description="Only photos and videos taken on or after this date (YYYY-MM-DD, "
                                     "where they were taken; files without a capture time: their modification date).")
    taken_before: date | None = Field(None, description="Only photos and videos taken before this date (YYYY-MM-DD).")
    near: tuple[float, float, float] | None = Field(None, description="Only photos and videos taken within KM kilometres "
                                                    "of LAT,LON (GPS position in their metadata), given as LAT,LON,KM.")
    mode: Mode = Field("hybrid", description="semantic (meaning, by the model), lexical (words in file names, texts, "
                       "captions and text read in images), or hybrid: both, merged by rank (semantic alone when no "
                       "words match). Lexical search needs a plain text query.")
    tags: list[str] = Field([], max_length=MAX_TAGS, validation_alias=AliasChoices("tags", "tag"),
                            description="Only files carrying this zero-shot tag (see `mmsearch tag`); repeatable.")
    per_video: int = Field(DEFAULT_PER_VIDEO, ge=1, description="At most this many moments per video (always separate shots).")

    @field_validator("image", "negative", "tags", mode="before")
    @classmethod
    def _one(cls, value: Any) -> Any:
        """A single string where a list goes is a list of one (``"not": "blue"``, ``image="a.jpg"``)."""
        return [value] if isinstance(value, str) else value

    @field_validator("near", mode="before")
    @classmethod
    def _near_text(cls, value: Any) -> Any:
        """``"48.85,2.35,5"`` → (48.85, 2.35, 5.0); a JSON array is left to the type check."""
        if isinstance(value, str):
            try:
                value = tuple(float(v) for v in value.split(","))
            except ValueError:
                raise ValueError(f"wants LAT,LON,KM such as 48.85,2.35,5, not {value[:40]!r}") from None
            if len(value) != 3:
                raise ValueError("wants three numbers LAT,LON,KM, such as 48.85,2.35,5")
        return tuple(value) if isinstance(value, list) else value

    @field_validator("near")
    @classmethod
    def _near(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None:
            lat, lon, km = value
            if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 < km <= 20_100):
                raise ValueError("wants a latitude in -90..90, a longitude in -180..180 and a distance of 0-20100 km")
        return value

    @field_validator("after", "before", "taken_after", "taken_before", mode="before")
    @classmethod
    def _day(cls, value: Any) -> Any:
        """A date, a datetime (its day), or an ISO date string; an empty string is no date."""
        if value == "":
            return None
        if isinstance(value, str):  # also what strict JSON validation sees
            try:
                return datetime.fromisoformat(value).date()
            except ValueError:
                raise ValueError(f"wants a date like 2024-06-30, not {value[:40]!r}") from None
        return value.date() if isinstance(value, datetime) else value


def _repeatable() -> frozenset[str]:
    """Every name a repeatable field is accepted under (its own and its aliases)."""
    return frozenset(n for name, f in SearchRequest.model_fields.items()
                     if f.annotation is not None and str(f.annotation).startswith("list") for n in SearchRequest.names(name))


#: the query-string names that may repeat (`tag=a&tag=b`), derived once from the fields
REPEATABLE = _repeatable()
