"""The shared contract (docs/design.md §4): every check of ``longseq.testing.contract.CHECKS``, for every registered
mixer x its test_hypers x supported pattern, one test each (``check_mixer`` runs the same and reports them all)."""

from __future__ import annotations

import pytest

from longseq.mixers import InvalidHyper, Pattern, PatternNotSupported, available, build
from longseq.testing.contract import CHECKS
from longseq.testing.report import build_for_check


def _cases() -> list:
    cases = []
    for info in available():
        for i, hypers in enumerate(info.cls.test_hypers):
            for pattern in sorted(info.cls.supported_patterns(**hypers)):
                for check in CHECKS:
                    if not check.patterns(pattern):
                        continue
                    reason = check.waived(info.cls)
                    marks = [pytest.mark.skip(reason=reason)] if reason else []
                    cases.append(pytest.param(info.name, hypers, pattern, check, marks=marks,
                                              id=f"{info.name}-{i}-{pattern.value}-{check.name}"))
    return cases


@pytest.mark.parametrize(("name", "hypers", "pattern", "check"), _cases())
def test_contract(name, hypers, pattern, check):
    check.run(build_for_check(check, name, hypers, pattern))


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
