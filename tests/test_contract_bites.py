"""The contract suite must catch broken mixers: a toy with the shape of real scan, EMA and linear-attention code, and
one deliberate bug at a time, of the kinds such code contains. Each bug fails exactly the checks about it; the toy
without a bug passes every check, so the failures are caused by the bugs, not by the toy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from longseq.mixers.base import Mixer, Mode, Pattern
from longseq.state import State
from longseq.testing import contract as C
from longseq.testing.report import D_MODEL


@dataclasses.dataclass
class DecayState(State):
    h: Tensor  # (B, 2D): decayed sums of W_in x and of 1 (the normaliser) over valid tokens
    prev: Tensor  # (B, D): the last valid input
    length: int = 0  # tokens streamed so far, checked against max_len


class _Divide(torch.autograd.Function):
    """num / den where den > 0, else 0 — with a hand-written backward (the ``wrong_backward`` bug drops d/d den)."""

    @staticmethod
    def forward(ctx, num: Tensor, den: Tensor, guard: bool, wrong: bool) -> Tensor:
        safe = torch.where(den > 0, den, 1.0) if guard else den
        ctx.save_for_backward(num, safe)
        ctx.wrong = wrong
        return num / safe

    @staticmethod
    def backward(ctx, grad: Tensor):
        num, safe = ctx.saved_tensors
        grad_den = torch.zeros_like(safe) if ctx.wrong else -grad * num / safe**2
        return grad / safe, grad_den, None, None


class ToyDecay(Mixer):
    """y_t = W_out(h_t / c_t) + W_prev x_prev(t): h_t = a h_{t-1} + W_in x_t and c_t = a c_{t-1} + 1 over valid
    tokens (a masked token: no input, no decay), x_prev(t) the last valid input before t. ``forward`` loops over
    time; ``forward_stream`` runs a chunked scan with internal blocks of 8; ``step`` its own recurrent update."""

    name = "toy_decay"
    BLOCK = 8

    @classmethod
    def supported_patterns(cls, **hyper) -> frozenset[Pattern]:
        return frozenset({Pattern.CAUSAL_SELF, Pattern.NONCAUSAL_SELF})

    def __init__(self, d_model: int, *, pattern: Pattern | str = Pattern.CAUSAL_SELF, max_len: int | None = None,
                 bug: str | None = None) -> None:
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.bug = bug
        self.w_in, self.w_prev = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
        self.w_out = nn.Linear(d_model, d_model)
        self.decay_logit = nn.Parameter(torch.linspace(1.0, 3.0, d_model))  # a in (0.73, 0.95)
        self._prev: Tensor | None = None  # used only by the ``state_on_module`` bug

    # -- pieces -----------------------------------------------------------------------------------------------

    def _drive(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Inputs u and log decays of the recurrence, both (B, T, 2D)."""
        if self.training and self.bug == "train_mask":
            mask = None
        u = torch.cat([self.w_in(x), torch.ones_like(x)], dim=-1)
        log_a = nn.functional.logsigmoid(self.decay_logit).repeat(2).expand_as(u)
        if self.bug == "batch_leak":
            u = u + u.mean(dim=0, keepdim=True)
        if mask is not None:
            m = mask[..., None].to(u.dtype)
            u = u if self.bug == "padding_leak" else u * m
            log_a = log_a if self.bug == "padded_decay" else log_a * m
        return u, log_a

    def _output(self, h: Tensor, prev_term: Tensor, mask: Tensor | None) -> Tensor:
        num, den = h.chunk(2, dim=-1)
        y = self.w_out(_Divide.apply(num, den, self.bug != "nan_empty_row", self.bug == "wrong_backward")) + prev_term
        if self.training and self.bug == "train_rescale":  # inverted-dropout scaling left on with nothing dropped
            y = y / 0.9
        if self.bug == "nondeterministic":  # e.g. a reduction whose order changes from call to call
            y = y * (1 + 1e-14 * torch.rand((), dtype=y.dtype))
        if self.bug == "bf16_output" and h.dtype == torch.bfloat16:  # computed in float32, never cast back
            y = y.float()
        return y if mask is None else torch.where(mask[..., None], y, 0.0)

    def _lookback(self, x: Tensor, mask: Tensor | None, prev: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, D): the last valid input before each t; and the last valid input after the chunk."""
        prevs = []
        for t in range(x.shape[1]):
            prevs.append(prev)
            prev = x[:, t] if mask is None else torch.where(mask[:, t, None], x[:, t], prev)
        return torch.stack(prevs, dim=1), prev

    def _scan_loop(self, u: Tensor, log_a: Tensor) -> Tensor:
        if self.bug == "float32_overflow":  # the cumulative-log-sum shortcut: exp(+-sum log a) overflows
            total = log_a.cumsum(dim=1)
            return torch.exp(total) * (u * torch.exp(-total)).cumsum(dim=1)
        h, hs = u.new_zeros(u[:, 0].shape), []
        for t in range(u.shape[1]):
            h = torch.exp(log_a[:, t]) * h + u[:, t]
            hs.append(h)
        return torch.stack(hs, dim=1)

    def _scan_chunked(self, u: Tensor, log_a: Tensor, carry: Tensor) -> Tensor:
        hs = []
        for s in range(0, u.shape[1], self.BLOCK):
            ub, cum = u[:, s:s + self.BLOCK], log_a[:, s:s + self.BLOCK].cumsum(dim=1)
            n = ub.shape[1]
            seg = (cum[:, :, None] - cum[:, None, :]).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril()[
                None, :, :, None], -torch.inf)
            hb = torch.einsum("btsd,bsd->btd", seg.exp(), ub) + cum.exp() * carry[:, None]
            hs.append(hb)
            carry = carry if self.bug == "carry_drop" else hb[:, -1]
        return torch.cat(hs, dim=1)

    # -- the contract's hooks ---------------------------------------------------------------------------------

    def _forward(self, x, *, context, context_mask, mask):
        u, log_a = self._drive(x, mask)
        if self.bug == "peeks_ahead":
            u = u + u.roll(-1, dims=1)
        prevs, _ = self._lookback(x, mask, x.new_zeros(x[:, 0].shape))
        return self._output(self._scan_loop(u, log_a), self.w_prev(prevs), mask)

    def _init_state(self, batch_size, *, context, context_mask, max_len):
        zeros = torch.zeros(batch_size, self.d_model, dtype=self._dtype())
        self._prev = zeros
        h = torch.zeros(batch_size, 2 * self.d_model, dtype=self._dtype())
        return DecayState(h=h.T if self.bug == "transposed_state" else h, prev=zeros)

    @property
    def modes(self) -> tuple[Mode, ...]:
        return tuple(Mode) if self.bug == "streams_noncausal" else super().modes

    def _forward_stream(self, x, state, *, mask):
        state.length += x.shape[1]
        if self.bug != "ignores_max_len":
            self._check_length(state.length)
        u, log_a = self._drive(x, mask)
        h0 = state.h.T if self.bug == "transposed_state" else state.h
        h = self._scan_chunked(u, log_a, h0)
        prevs, last = self._lookback(x, mask, self._prev if self.bug == "state_on_module" else state.prev)
        if self.bug != "stream_forgets":
            h_last = h[:, -1].detach() if self.bug == "detached_state" else h[:, -1]
            state.h = h_last.T if self.bug == "transposed_state" else h_last
        if self.bug == "state_on_module":
            self._prev = last.clone()
        else:  # without a mask, last is a view of the caller's x: keep a copy (the bug keeps the view)
            state.prev = last if self.bug == "aliases_input" else last.clone()
        return self._output(h, self.w_prev(prevs), mask), state

    def _step(self, x_t, state, *, mask_t):
        if self.bug in ("transposed_state", "state_on_module", "detached_state", "aliases_input"):
            return super()._step(x_t, state, mask_t=mask_t)  # these bugs live in forward_stream
        mask = None if mask_t is None or self.bug == "step_ignores_mask" else mask_t[:, None]
        u, log_a = self._drive(x_t[:, None], mask)
        h = torch.exp(log_a[:, 0]) * state.h + u[:, 0]
        # The ``mixed_modes`` bug: step caches W_prev x (not x) and reads it back as such: step alone and stream
        # alone are each right, a step after a stream (or the reverse) is not.
        prev_term = state.prev if self.bug == "mixed_modes" else self.w_prev(state.prev)
        state.length += 1
        if self.bug != "ignores_max_len":
            self._check_length(state.length)
        y = self._output(h[:, None], prev_term[:, None], mask)[:, 0]
        new_prev = self.w_prev(x_t) if self.bug == "mixed_modes" else x_t.clone()
        if self.bug != "stream_forgets":
            state.h = h
        state.prev = new_prev if mask is None else torch.where(mask, new_prev, state.prev)
        return y, state

    def state_size(self, seq_len: int, context_len: int = 0) -> int:
        return 3 * self.d_model + (1 if self.bug == "state_size_lie" else 0)


def toy(bug: str | None = None, pattern: Pattern = Pattern.CAUSAL_SELF, **build) -> ToyDecay:
    torch.manual_seed(0)
    return ToyDecay(D_MODEL, pattern=pattern, bug=bug, **build).double().eval()


def failed_checks(bug: str | None, pattern: Pattern = Pattern.CAUSAL_SELF) -> set[str]:
    failed = set()
    for check in C.CHECKS:
        if check.patterns(pattern):
            try:
                check.run(toy(bug, pattern, **dict(check.build)))
            except AssertionError:
                failed.add(check.name)
    return failed


def test_the_correct_toy_passes_every_check():
    assert failed_checks(None) == set()


PADDING = {"padding_left", "padding_right", "padding_holes", "train_mode_padding"}
STREAMING = {"stream", "mixed_modes", "train_mode_stream"}


BUGS: dict[str, set[str]] = {
    # the first suite's bugs
    "peeks_ahead": {"causal_prefix", "causal_jacobian", "step", *STREAMING, *PADDING},
    "padding_leak": {"padding_left", "padding_holes", "train_mode_padding"},  # right padding comes after
    "batch_leak": {"batch_independence", "state_select", *PADDING},  # select changes the batch
    "stream_forgets": {"stream", "step", "mixed_modes", "train_mode_stream", *PADDING},
    "state_size_lie": {"state_size"},
    # the bugs the first suite let through, and one per remaining check
    "carry_drop": {*STREAMING, *PADDING},  # chunks longer than the internal block of 8 lose their carry
    "aliases_input": {"no_aliasing"},
    "state_on_module": {"interleaved_streams", "state_select"},
    "transposed_state": {"state_select", "state_size"},
    "padded_decay": {"padding_holes", "train_mode_padding"},
    "step_ignores_mask": PADDING,
    "mixed_modes": {"mixed_modes", "train_mode_stream"},
    "train_mask": {"train_mode_padding"},
    "float32_overflow": {"float32_long"},
    "wrong_backward": {"gradients_forward", "gradients_stream"},
    "detached_state": {"gradients_stream"},
    "nan_empty_row": {"padding_left", "padding_holes", "train_mode_padding"},
    "train_rescale": {"train_matches_eval"},
    "nondeterministic": {"eval_deterministic"},
    "ignores_max_len": {"max_len"},
    "bf16_output": {"dtypes"},
}


@pytest.mark.parametrize(("bug", "caught_by"), BUGS.items())
def test_each_bug_is_caught_by_the_checks_about_it(bug, caught_by):
    assert failed_checks(bug) == caught_by


def test_every_check_is_shown_to_bite():
    shown = set().union(*BUGS.values()) | {"noncausal_sees_future", "refuses_streaming"}  # the non-causal tests below
    assert {check.name for check in C.CHECKS} - shown == set()


def test_a_noncausal_mixer_that_streams_is_caught():
    """The toy is causal, so as ``noncausal_self`` it fails the negative check; streaming adds exactly one failure."""
    assert failed_checks(None, Pattern.NONCAUSAL_SELF) == {"noncausal_sees_future"}
    assert failed_checks("streams_noncausal", Pattern.NONCAUSAL_SELF) == {"noncausal_sees_future", "refuses_streaming"}


def test_leaky_causal_claim_is_caught_by_both_causality_checks():
    with pytest.raises(AssertionError, match="changed with positions > i"):
        C.check_causal_prefix(toy("peeks_ahead"))
    with pytest.raises(AssertionError, match=r"d y\[:\d+\] / d x"):
        C.check_causal_jacobian(toy("peeks_ahead"))


@pytest.mark.parametrize(("bug", "check", "message"), [
    ("padded_decay", lambda m: C.check_padding(m, "holes"), "vs its valid tokens alone"),
    ("nan_empty_row", lambda m: C.check_padding(m, "holes"), "non-finite gradient"),
    ("aliases_input", C.check_no_aliasing, "overwrote its inputs"),
    ("state_on_module", C.check_interleaved_streams, "state kept outside the State"),
    ("transposed_state", C.check_state_select, "do not have batch in dim 0"),
    ("float32_overflow", C.check_float32_long, "non-finite outputs"),
    ("wrong_backward", C.check_gradients_forward, "gradient of parameter decay_logit"),
    ("detached_state", C.check_gradients_stream, "gradient of x along a random direction"),
])
def test_failures_say_what_broke(bug, check, message):
    with pytest.raises(AssertionError, match=message):
        check(toy(bug))


def test_noncausal_negative_check_catches_a_causal_mixer_labelled_noncausal():
    with pytest.raises(AssertionError, match="never depend on later positions"):
        C.check_noncausal_sees_future(toy(pattern=Pattern.NONCAUSAL_SELF))
    C.check_noncausal_sees_future(toy("peeks_ahead", pattern=Pattern.NONCAUSAL_SELF))


PLUGIN = '''
import dataclasses
import torch
from torch import nn
from longseq.mixers import Mixer, Pattern, State, register


@dataclasses.dataclass
class SumState(State):
    total: torch.Tensor


@register("plugin_cumsum")
class PluginCumSum(Mixer):
    """A running sum that keeps its state on the module: the contract must say so."""
    complexity = "O(L d)"
    state_formula = "d"
    test_hypers = ({},)

    @classmethod
    def supported_patterns(cls, **hyper):
        return frozenset({Pattern.CAUSAL_SELF})

    def __init__(self, d_model: int, *, pattern: Pattern | str = Pattern.CAUSAL_SELF, max_len: int | None = None):
        super().__init__(d_model, pattern=pattern, max_len=max_len)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def _forward(self, x, *, context, context_mask, mask):
        u = self.proj(x) if mask is None else self.proj(x) * mask[..., None]
        return u.cumsum(dim=1)

    def _init_state(self, batch_size, *, context, context_mask, max_len):
        self.total = torch.zeros(batch_size, self.d_model, dtype=self._dtype())
        return SumState(total=torch.zeros(batch_size, self.d_model, dtype=self._dtype()))

    def _forward_stream(self, x, state, *, mask):
        y = self.total[:, None] + self.forward(x, mask=mask)
        self.total = y[:, -1]
        return y, state

    def state_size(self, seq_len, context_len=0):
        return self.d_model
'''


def test_cli_checks_a_mixer_registered_through_import(tmp_path: Path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    cli = [sys.executable, "-m", "longseq.cli", "check"]
    bad = subprocess.run([*cli, "plugin_cumsum", "--import", str(plugin)], capture_output=True, text=True)
    assert bad.returncode == 1, bad.stderr
    assert "FAILED interleaved_streams [causal_self]" in bad.stdout
    assert "FAILED state_select [causal_self]" in bad.stdout
    good = subprocess.run([*cli, "attention"], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "all checks passed" in good.stdout
