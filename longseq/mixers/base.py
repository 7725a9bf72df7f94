"""The Mixer contract: patterns, modes, states and refusals (the registry is in registry.py).

Every token mixer maps ``x: (B, L, D) -> y: (B, L, D)``. A mixer is built for one *pattern* (CAB's taxonomy:
causal/non-causal x self/cross) and, for the causal patterns, runs in three *modes* that compute the same function:
``forward`` on the whole sequence, ``forward_stream`` over chunks carrying a ``State``, and ``step`` one token at a
time. Subclasses implement the underscored hooks (``_forward``, ``_init_state``, ``_forward_stream`` and optionally
``_step``); the public methods here validate inputs once, so every mixer refuses bad calls the same way.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from longseq.state import State

# ----------------------------------------------------------------------------------------------------
# Patterns and modes


class Pattern(StrEnum):
    """CAB's four attention patterns."""

    CAUSAL_SELF = "causal_self"
    NONCAUSAL_SELF = "noncausal_self"
    CAUSAL_CROSS = "causal_cross"
    NONCAUSAL_CROSS = "noncausal_cross"

    @property
    def is_causal(self) -> bool:
        return self in (Pattern.CAUSAL_SELF, Pattern.CAUSAL_CROSS)

    @property
    def is_cross(self) -> bool:
        return self in (Pattern.CAUSAL_CROSS, Pattern.NONCAUSAL_CROSS)

    @classmethod
    def parse(cls, value: Pattern | str) -> Pattern:
        if isinstance(value, Pattern):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(p.value for p in cls)
            raise ValueError(f"pattern={value!r} is not a pattern; allowed: {allowed}") from None


ALL_PATTERNS: frozenset[Pattern] = frozenset(Pattern)
SELF_PATTERNS: frozenset[Pattern] = frozenset({Pattern.CAUSAL_SELF, Pattern.NONCAUSAL_SELF})


class Mode(StrEnum):
    PARALLEL = "parallel"
    STREAM = "stream"
    STEP = "step"


# ----------------------------------------------------------------------------------------------------
# Errors: one meaning each, all ValueError, each naming the mixer, what was asked and what it has.


class PatternNotSupported(ValueError):
    def __init__(self, mixer: str, pattern: Pattern, supported: frozenset[Pattern]) -> None:
        have = ", ".join(sorted(p.value for p in supported)) or "none"
        super().__init__(f"mixer '{mixer}' does not support pattern '{pattern.value}'; it supports: {have}")


class ModeNotSupported(ValueError):
    def __init__(self, mixer: str, mode: Mode, pattern: Pattern) -> None:
        super().__init__(
            f"mixer '{mixer}' cannot run mode '{mode.value}' in pattern '{pattern.value}': streaming and step-by-step "
            f"decoding exist only for causal patterns ({Pattern.CAUSAL_SELF.value}, {Pattern.CAUSAL_CROSS.value}); "
            f"use forward() on the whole sequence"
        )


class SequenceTooLong(ValueError):
    def __init__(self, mixer: str, length: int, max_len: int) -> None:
        super().__init__(f"mixer '{mixer}' got a sequence of length {length} but was built with max_len={max_len}")


class InvalidHyper(ValueError):
    """An unknown hyper-parameter name, or a value outside what the mixer allows."""


class UnknownMixer(ValueError):
    """``build`` was asked for a name that is not registered."""


# Hyper types: pydantic checks them in ``build`` and names the field and the value on failure.
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


def check_ordered(mixer: str, low_name: str, low: float, high_name: str, high: float) -> None:
    """Raise ``InvalidHyper`` unless low <= high (a range given by two hypers, e.g. dt_min and dt_max)."""
    if low > high:
        raise InvalidHyper(f"mixer '{mixer}': {low_name}={low} must be <= {high_name}={high}")


# ----------------------------------------------------------------------------------------------------
# The Mixer


class Mixer(nn.Module):
    """Base class of all token mixers. See docs/design.md §2 and docs/adding-a-mixer.md.

    Class attributes a mixer declares:
        name: set by ``@register``.
        patterns: the patterns the mixer's math supports, when they do not depend on its hypers (else it overrides
            ``supported_patterns``).
        complexity: time complexity of the parallel form, e.g. "O(L^2 d)".
        state_formula: the streaming state size in words, e.g. "2·L·d (K and V)".
        test_hypers: small settings for the contract suite; each window/chunk/landmark count below L/2.
        exact_stream: False only for lossy caches, where streaming equals forward only within ``stream_bound``
            (max abs difference, float64).
        float32_len, float32_tolerance: the contract runs the mixer in float32 at this length and requires its
            outputs within this relative error of float64; a mixer whose known risk is overflow at longer lengths
            declares a longer ``float32_len``.
        autocast_len, bfloat16_tolerance, float16_tolerance: the float32 mixer under ``torch.autocast`` in
            bfloat16 (on the CPU) or float16 (on CUDA) keeps its outputs at this length within this relative error
            (L2 norm over the whole output) of the same mixer and inputs without autocast
            (``tests/test_mixed_precision.py``). A method with a discrete choice that rounding can flip (a VQ
            code, ProbSparse's active queries) declares more: one flip moves a whole output vector.
        stochastic_in_training: True only where randomness in ``train()`` is the method (Performer's redrawn
            features, kernel dropout): the train-mode checks are then skipped.
        exact_gradients: False only for surrogate gradients (straight-through estimators): the finite-difference
            gradient checks are then skipped.
    """

    name: ClassVar[str] = "mixer"
    patterns: ClassVar[frozenset[Pattern]] = ALL_PATTERNS
    complexity: ClassVar[str] = ""
    state_formula: ClassVar[str] = ""
    test_hypers: ClassVar[tuple[dict[str, Any], ...]] = ({},)
    exact_stream: ClassVar[bool] = True
    stream_bound: ClassVar[float] = 0.0
    float32_len: ClassVar[int] = 512
    float32_tolerance: ClassVar[float] = 1e-4
    autocast_len: ClassVar[int] = 256
    bfloat16_tolerance: ClassVar[float] = 0.02  # 8 bits of mantissa: ~0.005 measured for most mixers
    float16_tolerance: ClassVar[float] = 0.005  # 11 bits: ~0.0007 measured (CPU autocast)
    stochastic_in_training: ClassVar[bool] = False
    exact_gradients: ClassVar[bool] = True

    @classmethod
    def supported_patterns(cls, **hyper: Any) -> frozenset[Pattern]:
        return cls.patterns

    def __init__(
        self,
        d_model: int,
        *,
        pattern: Pattern | str = Pattern.CAUSAL_SELF,
        max_len: int | None = None,
        hypers: dict[str, Any] | None = None,
    ) -> None:
        """``hypers`` are the subclass's pattern-relevant hypers, passed to ``supported_patterns``."""
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise InvalidHyper(f"mixer '{self.name}': d_model={d_model!r} must be a positive integer")
        if max_len is not None and (not isinstance(max_len, int) or max_len <= 0):
            raise InvalidHyper(f"mixer '{self.name}': max_len={max_len!r} must be a positive integer or None")
        self.pattern = Pattern.parse(pattern)
        supported = self.supported_patterns(**(hypers or {}))
        if self.pattern not in supported:
            raise PatternNotSupported(self.name, self.pattern, supported)
        self.d_model = d_model
        self.max_len = max_len

    # -- public API: validation, then the subclass hooks -------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Parallel mode. x: (B, L, D); context: (B, S, D) for cross patterns; masks: bool (B, L) / (B, S),
        True = valid. Returns y: (B, L, D) with y = 0 at masked positions."""
        self._check_input("x", x)
        self._check_length(x.shape[1])
        mask = self._check_mask("mask", mask, x)
        context, context_mask = self._check_context(x, context, context_mask)
        return self._forward(x, context=context, context_mask=context_mask, mask=mask)

    def init_state(
        self,
        batch_size: int,
        *,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        max_len: int | None = None,
    ) -> State:
        """Empty streaming state. Cross patterns encode ``context: (B, S, D)`` here, once."""
        self._check_mode(Mode.STREAM)
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"mixer '{self.name}': batch_size={batch_size!r} must be a positive integer")
        if self.pattern.is_cross:
            probe = torch.empty(batch_size, 0, self.d_model, device=self._device(), dtype=self._dtype())
            context, context_mask = self._check_context(probe, context, context_mask)
        elif context is not None or context_mask is not None:
            raise ValueError(f"mixer '{self.name}' in pattern '{self.pattern.value}' takes no context")
        limit = max_len if max_len is not None else self.max_len
        return self._init_state(batch_size, context=context, context_mask=context_mask, max_len=limit)

    def forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None = None) -> tuple[Tensor, State]:
        """Stream mode: the next chunk x: (B, T, D) given the state after the previous chunks.
        Returns (y: (B, T, D), state); the state may be updated in place."""
        self._check_mode(Mode.STREAM)
        self._check_input("x", x)
        mask = self._check_mask("mask", mask, x)
        return self._forward_stream(x, state, mask=mask)

    def step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None = None) -> tuple[Tensor, State]:
        """Step mode: one token x_t: (B, D), mask_t: bool (B,). Returns (y_t: (B, D), state)."""
        self._check_mode(Mode.STEP)
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            shape = tuple(x_t.shape)
            raise ValueError(f"mixer '{self.name}': step expects x_t of shape (B, {self.d_model}), got {shape}")
        if mask_t is not None and (mask_t.dtype != torch.bool or mask_t.shape != x_t.shape[:1]):
            raise ValueError(f"mixer '{self.name}': mask_t must be bool of shape {tuple(x_t.shape[:1])}")
        return self._step(x_t, state, mask_t=mask_t)

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        """Floats per sequence held by the streaming state after ``seq_len`` tokens (and a memory of
        ``context_len`` tokens in cross patterns)."""
        raise ModeNotSupported(self.name, Mode.STREAM, self.pattern)

    @property
    def modes(self) -> tuple[Mode, ...]:
        return modes_for(self.pattern)

    # -- hooks ------------------------------------------------------------------------------------------------

    def _forward(self, x: Tensor, *, context: Tensor | None, context_mask: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        raise ModeNotSupported(self.name, Mode.PARALLEL, self.pattern)

    def _init_state(self, batch_size: int, *, context: Tensor | None, context_mask: Tensor | None,
                    max_len: int | None) -> State:
        raise ModeNotSupported(self.name, Mode.STREAM, self.pattern)

    def _forward_stream(self, x: Tensor, state: State, *, mask: Tensor | None) -> tuple[Tensor, State]:
        raise ModeNotSupported(self.name, Mode.STREAM, self.pattern)

    def _step(self, x_t: Tensor, state: State, *, mask_t: Tensor | None) -> tuple[Tensor, State]:
        y, state = self._forward_stream(x_t[:, None], state, mask=None if mask_t is None else mask_t[:, None])
        return y[:, 0], state

    # -- validation helpers -----------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    def _check_stream(self, state: State, state_type: type[State], n: int) -> State:
        """For stream hooks: ``state`` must be of the mixer's ``state_type`` and carry ``length`` (tokens so far);
        advancing it by ``n`` tokens must stay within ``max_len``."""
        if not isinstance(state, state_type):
            raise TypeError(f"mixer '{self.name}': state must come from its init_state, got {type(state).__name__}")
        if self.max_len is not None and state.length + n > self.max_len:
            raise SequenceTooLong(self.name, state.length + n, self.max_len)
        return state

    def _check_mode(self, mode: Mode) -> None:
        if mode not in self.modes:
            raise ModeNotSupported(self.name, mode, self.pattern)

    def _check_input(self, what: str, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"mixer '{self.name}': {what} must have shape (B, L, {self.d_model}), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"mixer '{self.name}': {what} must be a floating tensor, got {x.dtype}")

    def _check_length(self, length: int) -> None:
        if self.max_len is not None and length > self.max_len:
            raise SequenceTooLong(self.name, length, self.max_len)

    def _check_mask(self, what: str, mask: Tensor | None, x: Tensor) -> Tensor | None:
        if mask is None:
            return None
        if mask.dtype != torch.bool or mask.shape != x.shape[:2]:
            raise ValueError(
                f"mixer '{self.name}': {what} must be a bool tensor of shape {tuple(x.shape[:2])} (True = valid), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        return mask

    def _check_context(self, x: Tensor, context: Tensor | None,
                       context_mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        if not self.pattern.is_cross:
            if context is not None or context_mask is not None:
                raise ValueError(f"mixer '{self.name}' in pattern '{self.pattern.value}' takes no context")
            return None, None
        if context is None:
            raise ValueError(f"mixer '{self.name}' in pattern '{self.pattern.value}' needs context: (B, S, D)")
        self._check_input("context", context)
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"mixer '{self.name}': context batch {context.shape[0]} != x batch {x.shape[0]}")
        return context, self._check_mask("context_mask", context_mask, context)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, pattern={self.pattern.value}, max_len={self.max_len}"


def modes_for(pattern: Pattern) -> tuple[Mode, ...]:
    return (Mode.PARALLEL, Mode.STREAM, Mode.STEP) if pattern.is_causal else (Mode.PARALLEL,)
