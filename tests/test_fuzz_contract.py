"""Property-based fuzzing of the contract (docs/design.md §7): for every registered mixer x supported pattern,
hypothesis draws batch sizes, lengths (1, and primes no internal chunk divides), masks (holes, padded ends, empty
rows, for x and for the memory), schedules of ``forward_stream``/``step`` calls cut at random points, seeds, the
test_hypers variant and the dtype, and the contract's own checks must hold on each case
(``longseq.testing.fuzz.check_case``).

Deterministic for CI: ``derandomize=True`` and no example database, so every run draws the same cases (each
mixer x pattern its own: hypothesis seeds a parametrized test from its node id). A case hypothesis shrinks a
failure to is kept as an ``@example`` naming the bug it caught (none so far: 40-60 random cases per mixer x
pattern found no contract violation); the edge cases below are explicit examples. Examples run for every mixer x
pattern.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from test_contract_bites import toy  # the contract suite's buggy toy (tests/ is on sys.path under pytest)

from longseq.mixers import available
from longseq.testing.fuzz import FuzzCase, check_case, fuzz_cases, run_case

# CI: 30 drawn cases per mixer x pattern (59 of them), ~40 s of CPU in all. LONGSEQ_FUZZ_EXAMPLES=N hunts longer:
# N cases each, random (new ones every run), not derandomized.
CI_EXAMPLES = 30
_HUNT = os.environ.get("LONGSEQ_FUZZ_EXAMPLES")
EXAMPLES_PER_PATTERN = int(_HUNT) if _HUNT else CI_EXAMPLES
_SETTINGS = settings(deadline=None, derandomize=not _HUNT, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _mixer_patterns() -> list:
    params = []
    for info in available():
        patterns = set().union(*(info.cls.supported_patterns(**h) for h in info.cls.test_hypers))
        params += [pytest.param(info.name, p, id=f"{info.name}-{p.value}") for p in sorted(patterns)]
    return params


@pytest.mark.parametrize(("name", "pattern"), _mixer_patterns())
@settings(_SETTINGS, max_examples=EXAMPLES_PER_PATTERN)
@given(case=fuzz_cases())
# Edge: one token, an empty row and an empty memory row, by step and by stream.
@example(case=FuzzCase(batch=2, seq_len=1, mask=("0", "1"), ctx_len=1, context_mask=("1", "0"),
                       schedule=(("step", 1),)))
# Edge: a batch with no valid token at all (and no valid memory), streamed then stepped: zeros, finite, and each
# row's state as it was.
@example(case=FuzzCase(batch=2, seq_len=13, mask=("0" * 13, "0" * 13), ctx_len=5, context_mask=("00000", "00000"),
                       schedule=(("stream", 5), ("step", 8))))
def test_contract_holds_on_drawn_cases(name, pattern, case):
    run_case(name, pattern, case)


# The bugs of tests/test_contract_bites.py's toy that concern what is drawn here (lengths, masks, schedules, batch
# rows): the fuzzing must find each within the CI budget, with no shrinking.
FUZZED_BUGS = ("peeks_ahead", "padding_leak", "batch_leak", "stream_forgets", "carry_drop", "padded_decay",
               "step_ignores_mask", "mixed_modes", "nan_empty_row")


@pytest.mark.parametrize("bug", FUZZED_BUGS)
def test_fuzzing_finds_the_bugs_it_is_about(bug):
    @settings(_SETTINGS, max_examples=CI_EXAMPLES, derandomize=True, phases=[Phase.generate])
    @given(case=fuzz_cases())
    def fuzz(case):
        check_case(toy(bug), case)

    with pytest.raises(AssertionError):
        fuzz()
