"""The registry and the refusals: each bad request fails with its own error and a message naming what was asked."""

from __future__ import annotations

import pkgutil
from typing import Literal

import pytest
import torch

from longseq.mixers import (
    InvalidHyper,
    Mixer,
    ModeNotSupported,
    Pattern,
    PatternNotSupported,
    SequenceTooLong,
    UnknownMixer,
    available,
    build,
)
from longseq.mixers.registry import _REGISTRY, impl_choices, register


def test_available_lists_attention_with_its_properties():
    (info,) = [i for i in available() if i.name == "attention"]
    assert info.patterns == frozenset(Pattern)
    assert info.impls == ("sdpa", "math")
    assert [m.value for m in info.modes] == ["parallel", "stream", "step"]
    assert info.complexity and info.state_formula


def test_typo_in_a_hyper_names_it_and_suggests():
    with pytest.raises(InvalidHyper, match=r"no hyper 'n_head' \(did you mean 'n_heads'\?\)"):
        build("attention", 16, n_head=2)


@pytest.mark.parametrize(("hypers", "fragment"), [
    ({"n_heads": -1}, "n_heads=-1"),
    ({"impl": "flash"}, "impl='flash'"),
    ({"dropout": 1.5}, "dropout=1.5"),
    ({"n_heads": 3}, "not divisible by n_heads=3"),
    ({"pattern": "sideways"}, "pattern='sideways'"),
])
def test_invalid_values_name_field_and_value(hypers, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build("attention", 16, **hypers)


def test_unknown_mixer_lists_available():
    with pytest.raises(UnknownMixer, match=r"unknown mixer 'atention' \(did you mean 'attention'\?\).*available"):
        build("atention", 16)


def test_unsupported_pattern_is_refused_with_what_is_supported():
    class CausalOnly(Mixer):
        @classmethod
        def supported_patterns(cls, **hyper):
            return frozenset({Pattern.CAUSAL_SELF})

        def __init__(self, d_model: int, *, pattern: Pattern | str = Pattern.CAUSAL_SELF,
                     max_len: int | None = None) -> None:
            super().__init__(d_model, pattern=pattern, max_len=max_len)

    register("test_causal_only")(CausalOnly)
    try:
        with pytest.raises(PatternNotSupported, match="'test_causal_only' does not support pattern "
                                                      "'noncausal_cross'; it supports: causal_self"):
            build("test_causal_only", 16, pattern="noncausal_cross")
    finally:
        del _REGISTRY["test_causal_only"]


def test_streaming_a_noncausal_pattern_is_refused():
    m = build("attention", 16, pattern="noncausal_self")
    with pytest.raises(ModeNotSupported, match="'attention' cannot run mode 'stream' in pattern 'noncausal_self'"):
        m.init_state(1)
    with pytest.raises(ModeNotSupported, match="mode 'step'"):
        m.step(torch.randn(1, 16), None)


def test_exceeding_max_len_is_refused():
    m = build("attention", 16, max_len=8)
    with pytest.raises(SequenceTooLong, match="length 9 but was built with max_len=8"):
        m(torch.randn(1, 9, 16))


def test_register_refuses_kwargs_constructors_and_duplicates():
    class Sloppy(Mixer):
        def __init__(self, d_model: int, **kwargs) -> None:
            super().__init__(d_model)

    with pytest.raises(TypeError, match="explicitly"):
        register("test_sloppy")(Sloppy)
    with pytest.raises(ValueError, match="already registered"):
        register("attention")(Sloppy)


def test_bad_inputs_are_refused_clearly():
    m = build("attention", 16)
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, 16\), got \(1, 9, 8\)"):
        m(torch.randn(1, 9, 8))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        m(torch.randn(1, 9, 16), mask=torch.ones(1, 9))
    cross = build("attention", 16, pattern="causal_cross")
    with pytest.raises(ValueError, match="needs context"):
        cross(torch.randn(1, 9, 16))
    with pytest.raises(ValueError, match="takes no context"):
        m(torch.randn(1, 9, 16), context=torch.randn(1, 3, 16))


def test_every_module_under_mixers_is_imported_and_registers_a_mixer():
    """A mixer file that ``longseq/mixers/__init__.py`` forgets to import would silently leave the contract suite.
    Private modules (``_passes``) hold what several mixers share and register nothing themselves."""
    import longseq.mixers

    modules = {m.name for m in pkgutil.iter_modules(longseq.mixers.__path__)
               if not m.name.startswith("_")} - {"base", "registry"}
    registering = {cls.__module__.removeprefix("longseq.mixers.") for cls in _REGISTRY.values()
                   if cls.__module__.startswith("longseq.mixers.")}
    assert modules - registering == set(), "modules under longseq/mixers/ that register no mixer (import them?)"
    assert "attention" in modules


def test_impls_are_read_from_the_impl_hypers_literal_type():
    class TwoWays(Mixer):
        def __init__(self, d_model: int, *, pattern: Pattern | str = Pattern.CAUSAL_SELF, max_len: int | None = None,
                     impl: Literal["fast", "ref"] = "fast") -> None:
            super().__init__(d_model, pattern=pattern, max_len=max_len)

    class OneWay(Mixer):
        def __init__(self, d_model: int, *, pattern: Pattern | str = Pattern.CAUSAL_SELF,
                     max_len: int | None = None) -> None:
            super().__init__(d_model, pattern=pattern, max_len=max_len)

    assert impl_choices(TwoWays) == ("fast", "ref")
    assert impl_choices(OneWay) == ()


@pytest.mark.parametrize(("name", "hypers", "fragment"), [
    ("mamba", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min=0.5 must be <= dt_max=0.1"),
    ("mamba2", {"a_init_min": 20.0}, "a_init_min=20.0 must be <= a_init_max=16.0"),
    ("s4", {"dt_min": 1.0}, "dt_min=1.0 must be <= dt_max=0.1"),
])
def test_reversed_ranges_are_refused_naming_both_hypers(name, hypers, fragment):
    with pytest.raises(InvalidHyper, match=fragment):
        build(name, 16, **hypers)
