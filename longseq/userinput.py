"""User text in, user text out: command-line and spec values parsed one way, errors described one way."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import pydantic
import yaml

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_REPR_LIMIT = 60


def coerce_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: number-like strings become numbers, the rest is unchanged."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and not re.search(r"[.eE]", value) else number
    return value


def parse_scalar(text: str) -> Any:
    """One value typed by a user, as YAML reads it (``8``, ``0.5``, ``1e-3``, ``true``, ``null``, ``'quoted'``,
    anything else a string). Lists and mappings are refused with a ``ValueError``."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"value {text!r} is not a YAML scalar") from None
    if isinstance(value, dict | list):
        raise ValueError(f"value {text!r} must be a number, string or bool (or null)")
    return coerce_number(value)


def parse_assignment(item: str, what: str, form: str = "KEY=VALUE") -> tuple[str, str]:
    """``"n_heads=2"`` -> ``("n_heads", "2")``: the key and the value's text, both stripped, for the caller to parse.

    ``what`` names the item in errors (``"--hyper"``, ``"grid item"``) and ``form`` is the shape they show.
    Raises ``ValueError`` when there is no ``=``, no key or no value.
    """
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise ValueError(f"{what} {item!r} must look like {form}")
    return key, value


def parse_assignments(
    items: Iterable[str], what: str, form: str = "KEY=VALUE", parse_value: Callable[[str], Any] = parse_scalar
) -> dict[str, Any]:
    """``["n_heads=2", "impl=math"]`` -> ``{"n_heads": 2, "impl": "math"}``, in the items' order.

    Each item goes through ``parse_assignment``, its value through ``parse_value`` (default: one YAML scalar).
    Raises ``ValueError`` naming the item for a malformed item, a key given twice or a value ``parse_value``
    refuses.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, text = parse_assignment(item, what, form)
        if key in out:
            raise ValueError(f"{what} {item!r}: key {key!r} is given twice; give each key once")
        try:
            out[key] = parse_value(text)
        except ValueError as error:
            raise ValueError(f"{what} {item!r}: {error}") from None
    return out


def short_repr(value: object) -> str:
    """repr, cut to a length that fits in a one-line error message."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def describe_error(error: BaseException) -> str:
    """One line: pydantic errors as ``field: message (got value)``, others as their message."""
    if isinstance(error, pydantic.ValidationError):
        parts = []
        for item in error.errors(include_url=False):
            where = ".".join(str(p) for p in item["loc"])
            message = str(item["msg"]).removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = f"unknown field (value {short_repr(item['input'])})"
            elif where and item["type"] != "value_error" and not isinstance(item.get("input"), dict):
                # pydantic's own messages ("Input should be greater than 0") do not show the value; ours do.
                message += f" (got {short_repr(item['input'])})"
            parts.append(f"{where}: {message}" if where else message)
        return " ".join("; ".join(parts).split())
    return " ".join((str(error).strip() or type(error).__name__).split())
