"""The mixer registry: ``@register`` a class by name, ``build`` it with validated hypers, ``available()`` lists all.

Hypers are validated with pydantic against the constructor's signature, so an unknown name or an ill-typed value
fails naming the field, the value and what is allowed, with a "did you mean" for typos.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from collections.abc import Callable
from typing import Any

import pydantic

from longseq.mixers.base import InvalidHyper, Mixer, Mode, Pattern, UnknownMixer, modes_for

_REGISTRY: dict[str, type[Mixer]] = {}
_BASE_ARGS = ("self", "d_model")


@dataclasses.dataclass(frozen=True)
class MixerInfo:
    name: str
    cls: type[Mixer]
    patterns: frozenset[Pattern]
    impls: tuple[str, ...]
    complexity: str
    state_formula: str

    @property
    def modes(self) -> tuple[Mode, ...]:
        return tuple(dict.fromkeys(m for p in sorted(self.patterns) for m in modes_for(p)))


def register(name: str) -> Callable[[type[Mixer]], type[Mixer]]:
    """Class decorator: ``@register("mamba")`` makes the mixer buildable by name and part of the contract suite."""

    def deco(cls: type[Mixer]) -> type[Mixer]:
        if name in _REGISTRY:
            raise ValueError(f"a mixer named '{name}' is already registered ({_REGISTRY[name].__qualname__})")
        params = inspect.signature(cls.__init__).parameters.values()
        if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            raise TypeError(f"mixer '{name}': __init__ must list its hypers explicitly (no *args/**kwargs)")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def mixer_class(name: str) -> type[Mixer]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownMixer(f"unknown mixer '{name}'{hint}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def hyper_names(cls: type[Mixer]) -> list[str]:
    """The keyword hypers a mixer accepts (pattern and max_len included)."""
    return [n for n in inspect.signature(cls.__init__).parameters if n not in _BASE_ARGS]


def _hyper_model(cls: type[Mixer]) -> type[pydantic.BaseModel]:
    """A pydantic model of the constructor's keyword arguments, so values are type-checked with clear errors."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    fields: dict[str, Any] = {}
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname in _BASE_ARGS:
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[pname] = (hints.get(pname, Any), default)
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return pydantic.create_model(f"{cls.__name__}Hypers", __config__=config, **fields)


def validate_hypers(name: str, hypers: dict[str, Any]) -> dict[str, Any]:
    """Check ``hypers`` against mixer ``name``'s constructor: unknown names and ill-typed values raise
    ``InvalidHyper`` naming the field, the value and what is allowed. Returns the coerced values."""
    cls = mixer_class(name)
    allowed = hyper_names(cls)
    for key in hypers:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InvalidHyper(f"mixer '{name}' has no hyper '{key}'{hint}; allowed: {', '.join(allowed)}")
    try:
        model = _hyper_model(cls).model_validate(hypers)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidHyper(
            f"mixer '{name}': {field}={err.get('input')!r} is invalid: {err['msg']}"
        ) from None
    return {k: getattr(model, k) for k in hypers}


def build(name: str, d_model: int, **hypers: Any) -> Mixer:
    """Build mixer ``name`` with validated hypers, e.g. ``build("attention", 64, pattern="causal_self")``."""
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model <= 0:
        raise InvalidHyper(f"mixer '{name}': d_model={d_model!r} must be a positive integer")
    return mixer_class(name)(d_model, **validate_hypers(name, hypers))


def impl_choices(cls: type[Mixer]) -> tuple[str, ...]:
    """The values of the mixer's ``impl`` hyper (alternative computations of the same function), read from its
    ``Literal`` type, so they are spelled once; () for a mixer without one."""
    hint = typing.get_type_hints(cls.__init__).get("impl")
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else ()


def info(name: str) -> MixerInfo:
    cls = mixer_class(name)
    return MixerInfo(
        name=name,
        cls=cls,
        patterns=cls.supported_patterns(),
        impls=impl_choices(cls),
        complexity=cls.complexity,
        state_formula=cls.state_formula,
    )


def available() -> list[MixerInfo]:
    """Every registered mixer, sorted by name, with its patterns, modes, impls, complexity and state size."""
    return [info(n) for n in sorted(_REGISTRY)]
