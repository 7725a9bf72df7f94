"""Model configuration: a validated object, so a wrong value fails at construction naming field, value, allowed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from longseq.mixers import Pattern, available, build, mixer_class, validate_hypers

PositiveInt = Annotated[int, Field(gt=0)]


def parse_layer_unit(layers: str) -> list[str]:
    """The repeating unit of a layer pattern: ``"mamba*3,attention"`` -> ``[mamba, mamba, mamba, attention]``.

    A pattern is comma-separated items ``NAME`` or ``NAME*COUNT`` (COUNT >= 1); whitespace is ignored. Raises
    ``ValueError`` naming the pattern and the bad item. The names are not checked against the registry.
    """
    if not isinstance(layers, str):
        raise ValueError(f"layers={layers!r} must be a layer pattern (a str such as 'mamba*3,attention')")
    unit: list[str] = []
    for item in "".join(layers.split()).split(","):
        name, _, count = item.partition("*")
        if not name or (count and (not count.isdigit() or int(count) == 0)):
            raise ValueError(f"layers={layers!r}: each item is NAME or NAME*COUNT (COUNT >= 1), got {item!r}")
        unit += [name] * (int(count) if count else 1)
    return unit


def parse_layer_pattern(layers: str, n_layers: int) -> list[str]:
    """"mamba*3,attention" with n_layers=8 -> the unit [mamba, mamba, mamba, attention] tiled to 8 layers."""
    unit = parse_layer_unit(layers)
    return [unit[i % len(unit)] for i in range(n_layers)]


class ModelConfig(BaseModel):
    """A backbone of ``n_layers`` blocks, each a token mixer then a GLU MLP, with pre-norm residuals.

    ``layers`` is a layer pattern ("attention", "mamba*3,attention") tiled to ``n_layers``; ``mixer_hypers`` maps a
    mixer name to its hypers (e.g. {"attention": {"n_heads": 2}}).
    """

    model_config = ConfigDict(extra="forbid")

    vocab_size: PositiveInt
    d_model: PositiveInt = 64
    n_layers: PositiveInt = 2
    layers: str = "attention"
    mixer_hypers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    mlp_ratio: Annotated[float, Field(ge=0)] = 4.0  # 0 = no MLP (Zoology's Figure-2 setting)
    norm: Literal["rms", "layer"] = "rms"
    norm_eps: Annotated[float, Field(gt=0)] | None = None  # None = torch's default (RMSNorm: the dtype's eps)
    tie_embeddings: bool = True
    max_len: PositiveInt | None = None
    cross_mixer: str = "attention"  # EncoderDecoder only: the decoder's cross mixer

    @field_validator("layers")
    @classmethod
    def _known_mixers(cls, layers: str) -> str:
        names = {i.name for i in available()}
        for name in dict.fromkeys(parse_layer_unit(layers)):
            if name not in names:
                raise ValueError(f"unknown mixer '{name}'; allowed: {', '.join(sorted(names))}")
        return layers

    @model_serializer(mode="wrap")
    def _omit_unset_norm_eps(self, dump: Any) -> dict[str, Any]:
        # norm_eps came after runs were recorded (their run keys hold the dumped config): left out while unset.
        data = dump(self)
        if self.norm_eps is None:
            data.pop("norm_eps", None)
        return data

    @property
    def layer_names(self) -> list[str]:
        return parse_layer_pattern(self.layers, self.n_layers)

    @model_validator(mode="after")
    def _buildable(self) -> ModelConfig:
        used = set(self.layer_names)
        for name in self.mixer_hypers:
            if name not in used and name != self.cross_mixer:
                raise ValueError(f"mixer_hypers has '{name}', which is not in layers={self.layers!r}")
        for name in sorted(used):
            hypers = validate_hypers(name, self.mixer_hypers.get(name, {}))
            self.mixer_hypers[name] = hypers
            # Build once on the meta device (no memory): cross-field constraints such as d_model divisible by
            # n_heads fail here, at configuration time, not in the middle of a run.
            pattern = hypers.get("pattern") or min(mixer_class(name).supported_patterns(**hypers))
            with torch.device("meta"):
                self.build_mixer(name, Pattern.parse(pattern))
        return self

    def build_mixer(self, name: str, pattern: Pattern) -> torch.nn.Module:
        # Without a model max_len each mixer keeps its own default (unbounded, or its kernel's length).
        bound = {} if self.max_len is None else {"max_len": self.max_len}
        hypers = {**bound, **self.mixer_hypers.get(name, {}), "pattern": pattern}
        return build(name, self.d_model, **hypers)
