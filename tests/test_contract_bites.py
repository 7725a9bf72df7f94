"""The contract suite must catch broken mixers: each toy below has one deliberate bug, and exactly the check for
that bug fails. The same toy without the bug passes, so the failures are caused by the bugs, not the toys."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from longseq.mixers.base import Mixer, Pattern
from longseq.state import State
from longseq.testing import contract as C


@dataclasses.dataclass
class SumState(State):
    total: Tensor  # (B, D)


class ToyCumSum(Mixer):
    """y_t = W_out(sum_{s<=t} W_in x_s): causal, with a running sum as its state. ``bug`` injects one defect."""

    name = "toy_cumsum"

    @classmethod
    def supported_patterns(cls, **hyper) -> frozenset[Pattern]:
        return frozenset({Pattern.CAUSAL_SELF, Pattern.NONCAUSAL_SELF})

    def __init__(self, d_model: int, *, pattern: Pattern | str = Pattern.CAUSAL_SELF, max_len: int | None = None,
                 bug: str | None = None) -> None:
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.bug = bug
        self.w_in, self.w_out = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def _inputs(self, x: Tensor, mask: Tensor | None) -> Tensor:
        u = self.w_in(x)
        if mask is not None and self.bug != "padding_leak":  # the bug: padded inputs enter the sum
            u = u * mask[..., None]
        return u

    def _out(self, s: Tensor, mask: Tensor | None) -> Tensor:
        y = self.w_out(s)
        return y if mask is None else y * mask[..., None]

    def _forward(self, x, *, context, context_mask, mask):
        u = self._inputs(x, mask)
        s = u.cumsum(dim=1)
        if self.bug == "peeks_ahead":
            s = s + u.roll(-1, dims=1)  # sees the next token
        if self.bug == "batch_leak":
            s = s + u.mean(dim=0, keepdim=True)
        return self._out(s, mask)

    def _init_state(self, batch_size, *, context, context_mask, max_len):
        return SumState(total=torch.zeros(batch_size, self.d_model, dtype=self._dtype()))

    def _forward_stream(self, x, state, *, mask):
        u = self._inputs(x, mask)
        s = state.total[:, None] + u.cumsum(dim=1)
        if self.bug != "stream_forgets":
            state.total = s[:, -1]
        return self._out(s, mask), state

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return self.d_model + (1 if self.bug == "state_size_lie" else 0)


def toy(bug: str | None = None, pattern: Pattern = Pattern.CAUSAL_SELF) -> ToyCumSum:
    torch.manual_seed(0)
    return ToyCumSum(16, pattern=pattern, bug=bug).double().eval()


CHECKS = {
    "prefix": C.check_causal_prefix,
    "jacobian": C.check_causal_jacobian,
    "stream": C.check_stream_matches_forward,
    "step": C.check_step_matches_forward,
    "padding_left": lambda m: C.check_padding(m, side="left"),
    "padding_right": lambda m: C.check_padding(m, side="right"),
    "batch": C.check_batch_independence,
    "state_size": C.check_state_size,
}


def test_the_correct_toy_passes_every_check():
    for check in CHECKS.values():
        check(toy())


@pytest.mark.parametrize(
    ("bug", "caught_by"),
    [
        ("peeks_ahead", {"prefix", "jacobian", "stream", "step", "padding_left", "padding_right"}),
        ("padding_leak", {"padding_left"}),
        ("batch_leak", {"batch", "stream", "step", "padding_left", "padding_right"}),
        ("stream_forgets", {"stream", "step", "padding_left", "padding_right"}),
        ("state_size_lie", {"state_size"}),
    ],
)
def test_each_bug_is_caught(bug, caught_by):
    failed = set()
    for name, check in CHECKS.items():
        try:
            check(toy(bug))
        except AssertionError:
            failed.add(name)
    assert failed == caught_by


def test_leaky_causal_claim_is_caught_by_both_causality_checks():
    with pytest.raises(AssertionError, match="changed with positions > i"):
        C.check_causal_prefix(toy("peeks_ahead"))
    with pytest.raises(AssertionError, match=r"d y\[:\d+\] / d x"):
        C.check_causal_jacobian(toy("peeks_ahead"))


def test_padding_that_leaks_into_the_state_is_caught():
    with pytest.raises(AssertionError, match="vs the sequence alone"):
        C.check_padding(toy("padding_leak"), side="left")


def test_noncausal_negative_check_catches_a_causal_mixer_labelled_noncausal():
    with pytest.raises(AssertionError, match="never depend on later positions"):
        C.check_noncausal_sees_future(toy(pattern=Pattern.NONCAUSAL_SELF))
    C.check_noncausal_sees_future(toy("peeks_ahead", pattern=Pattern.NONCAUSAL_SELF))
