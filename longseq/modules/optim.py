"""Per-parameter optimizer settings: a parameter may carry its own learning rate and weight decay.

State-space and long-convolution parameters (S4's ``A``/``B``/``dt``, S4D's, Hyena's implicit filter) train
better with a lower learning rate and no weight decay than the projections around them. A module marks such a
parameter when it creates it::

    self.log_dt = set_optim(nn.Parameter(log_dt), lr=1e-3, weight_decay=0.0)

and ``longseq.train.parameter_groups`` gives every distinct (lr, weight_decay) setting its own AdamW group.

- ``lr`` is an absolute peak learning rate for that parameter, as in the S4 code base's
  ``register("A", ..., lr=0.001)``: it replaces the trainer's ``TrainConfig.lr`` rather than scaling it. The
  warmup+cosine schedule multiplies every group's own base lr by the same factor at each step, so the parameter
  follows the same warmup and decay shape, peaking at its own ``lr`` (the ratio between groups stays constant).
- ``weight_decay`` replaces the trainer's default rule for that parameter (decay on matrices only).

A setting left out (None) keeps the trainer's default. The settings live on the parameter as the attribute
``_optim`` (a dict), the name the S4 code base uses, so modules ported from it need no change.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

OPTIM_ATTRIBUTE = "_optim"
OPTIM_KEYS = ("lr", "weight_decay")


def _check_setting(key: str, value: Any, where: str) -> float:
    """``value`` as a float when it is allowed for ``key`` (lr > 0, weight_decay >= 0, finite), else ValueError."""
    allowed = "> 0" if key == "lr" else ">= 0"
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or (value <= 0 if key == "lr" else value < 0):
        raise ValueError(f"{where} {key}={value!r}: allowed a finite number {allowed}, or None for the trainer's")
    return float(value)


def set_optim(param: nn.Parameter, *, lr: float | None = None, weight_decay: float | None = None) -> nn.Parameter:
    """Give ``param`` its own learning rate and/or weight decay (see the module docstring); returns ``param``.

    Settings given here replace the ones of an earlier call; settings left None keep theirs (or the trainer's
    default). Raises ``ValueError`` for lr <= 0, weight_decay < 0 or a non-finite value, ``TypeError`` when
    ``param`` is not an ``nn.Parameter``.
    """
    if not isinstance(param, nn.Parameter):
        raise TypeError(f"set_optim needs an nn.Parameter, got {type(param).__name__}")
    given = {key: value for key, value in (("lr", lr), ("weight_decay", weight_decay)) if value is not None}
    checked = {key: _check_setting(key, value, "set_optim") for key, value in given.items()}
    setattr(param, OPTIM_ATTRIBUTE, {**optim_settings(param), **checked})
    return param


def optim_settings(param: nn.Parameter) -> dict[str, float]:
    """The optimizer settings ``param`` carries (a copy): a subset of ``{"lr": ..., "weight_decay": ...}``.

    Empty for a parameter without settings. A ``_optim`` attribute set by other code is checked too: an unknown
    key or a bad value raises ``ValueError`` rather than being ignored.
    """
    settings = getattr(param, OPTIM_ATTRIBUTE, None) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"parameter {OPTIM_ATTRIBUTE}={settings!r} must be a dict with keys {', '.join(OPTIM_KEYS)}")
    unknown = sorted(set(settings) - set(OPTIM_KEYS))
    if unknown:
        raise ValueError(f"parameter {OPTIM_ATTRIBUTE} has unknown keys {unknown}; allowed: {', '.join(OPTIM_KEYS)}")
    return {key: _check_setting(key, value, f"parameter {OPTIM_ATTRIBUTE}") for key, value in settings.items()}


__all__ = ["OPTIM_ATTRIBUTE", "OPTIM_KEYS", "optim_settings", "set_optim"]
