"""The shared contract (DESIGN.md §4), run for every registered mixer x test_hypers x supported pattern."""

from __future__ import annotations

import pytest
import torch

from longseq.mixers import (
    InvalidHyper,
    Pattern,
    PatternNotSupported,
    available,
    build,
)
from longseq.testing import contract as C


def _cases() -> list:
    cases = []
    for info in available():
        for i, hypers in enumerate(info.cls.test_hypers):
            patterns = info.cls.supported_patterns(**hypers)
            for pattern in sorted(patterns):
                cases.append(pytest.param(info.name, hypers, pattern, id=f"{info.name}-{i}-{pattern.value}"))
    return cases


CASES = _cases()
CAUSAL = [c for c in CASES if c.values[2].is_causal]
NONCAUSAL = [c for c in CASES if not c.values[2].is_causal]


def make(name: str, hypers: dict, pattern: Pattern, dtype: torch.dtype = torch.float64, **extra):
    torch.manual_seed(0)
    return build(name, 16, pattern=pattern, **hypers, **extra).to(dtype).eval()


@pytest.mark.parametrize(("name", "hypers", "pattern"), CAUSAL)
def test_causal_by_prefix(name, hypers, pattern):
    C.check_causal_prefix(make(name, hypers, pattern))


@pytest.mark.parametrize(("name", "hypers", "pattern"), CAUSAL)
def test_causal_by_jacobian(name, hypers, pattern):
    C.check_causal_jacobian(make(name, hypers, pattern))


@pytest.mark.parametrize(("name", "hypers", "pattern"), [c for c in NONCAUSAL if c.values[2] == "noncausal_self"])
def test_noncausal_self_sees_the_future(name, hypers, pattern):
    C.check_noncausal_sees_future(make(name, hypers, pattern))


@pytest.mark.parametrize(("name", "hypers", "pattern"), CAUSAL)
def test_stream_matches_forward(name, hypers, pattern):
    C.check_stream_matches_forward(make(name, hypers, pattern))


@pytest.mark.parametrize(("name", "hypers", "pattern"), CAUSAL)
def test_step_matches_forward(name, hypers, pattern):
    C.check_step_matches_forward(make(name, hypers, pattern))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(("name", "hypers", "pattern"), CASES)
def test_padding(name, hypers, pattern, side):
    C.check_padding(make(name, hypers, pattern), side=side)


@pytest.mark.parametrize(("name", "hypers", "pattern"), CASES)
def test_batch_independence(name, hypers, pattern):
    C.check_batch_independence(make(name, hypers, pattern))


@pytest.mark.parametrize(("name", "hypers", "pattern"), NONCAUSAL)
def test_noncausal_refuses_streaming(name, hypers, pattern):
    C.check_refuses_streaming(make(name, hypers, pattern))


@pytest.mark.parametrize(("name", "hypers", "pattern"), CASES)
def test_max_len(name, hypers, pattern):
    C.check_max_len(make(name, hypers, pattern, max_len=C.Sizes().seq_len // 2))


@pytest.mark.parametrize(("name", "hypers", "pattern"), CAUSAL)
def test_state_size(name, hypers, pattern):
    C.check_state_size(make(name, hypers, pattern))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
@pytest.mark.parametrize(("name", "hypers", "pattern"), CASES)
def test_dtypes(name, hypers, pattern, dtype):
    C.check_dtype(make(name, hypers, pattern, dtype=dtype), dtype)


@pytest.mark.parametrize("name", [i.name for i in available()])
def test_unsupported_patterns_refused(name):
    cls = available()[[i.name for i in available()].index(name)].cls
    for hypers in cls.test_hypers:
        for pattern in set(Pattern) - cls.supported_patterns(**hypers):
            with pytest.raises(PatternNotSupported, match=pattern.value):
                build(name, 16, pattern=pattern, **hypers)


@pytest.mark.parametrize("name", [i.name for i in available()])
def test_unknown_hyper_refused(name):
    with pytest.raises(InvalidHyper, match="no_such_hyper"):
        build(name, 16, no_such_hyper=1)


@pytest.mark.parametrize("name", [i.name for i in available()])
def test_test_hypers_are_valid_and_declared(name):
    cls = available()[[i.name for i in available()].index(name)].cls
    assert cls.test_hypers, f"{name} declares no test_hypers"
    assert cls.complexity and cls.state_formula, f"{name} must declare complexity and state_formula"
    for hypers in cls.test_hypers:
        build(name, 16, **hypers)
