"""The base of mmsearch's typed option sets (`SearchRequest`, `IndexOptions`): pydantic models that
refuse unknown fields, infinities and NaN, turn a bad value into a one-line `UserError`, and
give the command line each option's default and help."""
from __future__ import annotations

from typing import Any, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, ValidationError, model_validator

from .errors import UserError


class Validated(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, populate_by_name=True,
                              protected_namespaces=())

    @classmethod
    def of(cls, *, as_flags: bool = False, **fields: Any) -> Self:
        """Validated from Python values (numbers and dates may come as strings, as from a query
        string); a bad value is a `UserError` naming the field (`as_flags`: as a command-line flag)."""
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            raise invalid(e, as_flags) from None

    @classmethod
    def from_json(cls, body: str | bytes) -> Self:
        """Validated strictly from a JSON object: ``"k": "5"`` or ``"path": 123`` is an error, not a guess."""
        try:
            return cls.model_validate_json(body, strict=True)
        except ValidationError as e:
            raise invalid(e) from None

    @model_validator(mode="before")
    @classmethod
    def _named_once(cls, fields: Any) -> Any:
        """A field given under two of its names (``{"kind": "image", "type": "video"}``) is an
        error, as a repeated query parameter is: else one name silently won."""
        if isinstance(fields, dict):
            for name in cls.model_fields:
                if len(given := [n for n in cls.names(name) if n in fields]) > 1:
                    raise ValueError(f"{name} given twice: as {' and as '.join(given)}")
        return fields

    @classmethod
    def names(cls, name: str) -> list[str]:
        """Every name a field is accepted under: its own, then its aliases."""
        alias = cls.model_fields[name].validation_alias
        return list(dict.fromkeys([name, *(a for a in alias.choices if isinstance(a, str))])) \
            if isinstance(alias, AliasChoices) else [name]

    @classmethod
    def default(cls, name: str) -> Any:
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def help(cls, name: str) -> str:
        return cls.model_fields[name].description or ""


#: errors named in one message: a request with a million bad values got a 137 MB answer
MAX_ERRORS = 3


def invalid(error: ValidationError, as_flags: bool = False) -> UserError:
    """A pydantic `ValidationError` as one line naming each bad field, e.g. ``k: Input should be
    greater than or equal to 1`` (``--k: ...`` `as_flags`)."""
    errors = error.errors(include_url=False)
    parts = []
    for e in errors[:MAX_ERRORS]:
        where = ".".join(str(x) for x in e["loc"]) or "request"
        if as_flags and e["loc"]:
            where = "QUERY" if e["loc"][0] == "q" else "--" + str(e["loc"][0]).replace("_", "-")
        parts.append(f"{where[:60]}: {e['msg'].removeprefix('Value error, ')[:200]}")  # a name is the client's: never echoed whole
    more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
    return UserError("; ".join(parts) + more)
