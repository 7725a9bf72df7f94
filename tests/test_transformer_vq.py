"""Transformer-VQ: the mixer against its function written out with its own weights (dense softmax over the nearest
codebook rows), learning only in a training forward inside a model's scope (never when streaming), a bounded state,
and an interrupted-then-resumed training run equal to an uninterrupted one, codebook included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longseq.mixers import InvalidHyper, build
from longseq.models.config import ModelConfig
from longseq.models.lm import CausalLM
from longseq.modules.aux_loss import collect_aux_losses
from longseq.tasks.mqar import MQAR
from longseq.train import TrainConfig, Trainer, latest_checkpoint

F64 = torch.float64
HYPERS = {"n_heads": 2, "d_k": 4, "d_v": 8, "n_codes": 6, "block_len": 3}


def _mixer(pattern: str, **kw):
    torch.manual_seed(0)
    mixer = build("transformer_vq", 16, pattern=pattern, **{**HYPERS, **kw}).double().eval()
    if mixer.rel_bias is not None:  # a visible bias, not the N(0, 0.02²) initialisation
        mixer.rel_bias.weight.data = torch.randn_like(mixer.rel_bias.weight)
    return mixer


def _written_out(mixer, x, memory, *, causal: bool):
    """The layer as the paper writes it, with plain tensor ops: (B, L, D) -> (B, L, D)."""
    h, dk = mixer.n_heads, mixer.d_k

    def heads(t):
        return t.unflatten(-1, (h, -1)).transpose(1, 2)

    def normed(t):
        return F.layer_norm(heads(t), (dk,)) / dk ** 0.25

    q, k = normed(x @ mixer.q_proj.weight.T), normed(memory @ mixer.k_proj.weight.T)
    v = heads(F.silu(memory @ mixer.v_proj.weight.T))
    codebook = mixer.quantizer.c_sum / mixer.quantizer.c_count[..., None]
    z = torch.stack([torch.cdist(k[:, i], codebook[i][None].expand(k.shape[0], -1, -1)).argmin(-1)
                     for i in range(h)], dim=1)
    k_hat = torch.stack([codebook[i][z[:, i]] for i in range(h)], dim=1)
    scores = q @ k_hat.transpose(-1, -2)
    if causal:
        lq = x.shape[1]
        i, j = torch.arange(lq)[:, None], torch.arange(lq)[None, :]
        w = mixer.block_len
        if mixer.rel_bias is not None:
            recent = (i // w - j // w <= 1) & (j <= i)
            table = mixer.rel_bias.weight  # indexed by key - query + 2W - 1
            scores = scores + torch.where(recent, table[(j - i + 2 * w - 1).clamp(0, 4 * w - 2)], 0.0)
        scores = scores.masked_fill(j > i, float("-inf"))
    o = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return (o * F.silu(x @ mixer.g_proj.weight.T)) @ mixer.out_proj.weight.T


@pytest.mark.parametrize("pattern", ["causal_self", "noncausal_self", "causal_cross", "noncausal_cross"])
def test_matches_the_layer_written_out(pattern):
    mixer = _mixer(pattern)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 20, 16, generator=g, dtype=F64)
    memory = torch.randn(2, 11, 16, generator=g, dtype=F64) if "cross" in pattern else x
    want = _written_out(mixer, x, memory, causal=pattern == "causal_self")
    got = mixer(x, context=memory if "cross" in pattern else None)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_causal_without_bias_is_block_length_invariant():
    x = torch.randn(2, 25, 16, generator=torch.Generator().manual_seed(2), dtype=F64)
    outs = [_mixer("causal_self", block_len=w, rel_bias=False)(x) for w in (1, 4, 25)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-12, rtol=0)


def test_d_v_must_split_into_heads():
    with pytest.raises(InvalidHyper, match="d_v=9 is not divisible by n_heads=2"):
        build("transformer_vq", 16, n_heads=2, d_v=9)


# -- learning: when the codebook changes ---------------------------------------------------------------------------


def _buffers(mixer):
    return {n: b.clone() for n, b in mixer.named_buffers()}


def _same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


def test_codebook_learns_in_a_training_forward_in_a_scope_and_never_when_streaming():
    mixer = _mixer("causal_self").train()
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(3), dtype=F64)
    start = _buffers(mixer)
    mixer(x)  # no scope: a bare mixer in train() is a fixed function
    assert _same(_buffers(mixer), start)
    with collect_aux_losses() as aux:
        state = mixer.init_state(2)
        _, state = mixer.forward_stream(x[:, :7], state)
        mixer.step(x[:, 7], state)
    assert aux.total() is None and _same(_buffers(mixer), start)
    with collect_aux_losses() as aux:
        mixer(x)
    assert set(aux.values) == {"vq_commit"} and not _same(_buffers(mixer), start)


def test_padding_does_not_reach_the_codebook():
    """A row with garbage padding updates the codebook exactly as its valid tokens alone do."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 9, 16, generator=g, dtype=F64)
    padded = torch.cat([100 * torch.randn(1, 4, 16, generator=g, dtype=F64), x], dim=1)
    mask = torch.arange(13)[None, :] >= 4
    after = []
    for inputs, m in ((x, None), (padded, mask)):
        mixer = _mixer("causal_self").train()
        with collect_aux_losses() as aux:
            mixer(inputs, mask=m)
        after.append((_buffers(mixer), aux.total()))
    for n in after[0][0]:
        torch.testing.assert_close(after[1][0][n], after[0][0][n], atol=1e-14, rtol=0)
    torch.testing.assert_close(after[1][1], after[0][1], atol=1e-14, rtol=0)


def test_state_size_is_bounded_whatever_the_length():
    mixer = _mixer("causal_self")
    sizes = [mixer.state_size(n) for n in range(1, 200)]
    w, h, s = mixer.block_len, mixer.n_heads, mixer.n_codes
    bound = h * s * (1 + mixer.d_k) + s * mixer.d_v + (2 * w - 1) * (h * mixer.d_k + mixer.d_v)
    assert max(sizes) == bound and sizes[-1] <= bound
    assert _mixer("causal_cross").state_size(50, 10_000) == _mixer("causal_cross").state_size(50, 3)


# -- checkpoint and resume -------------------------------------------------------------------------------------------


def _run(out_dir, *, resume: bool = False, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=20, d_model=16, n_layers=2, layers="transformer_vq",
                         mixer_hypers={"transformer_vq": {"d_k": 4, "n_codes": 6, "block_len": 3}})
    model = CausalLM(config)
    task = MQAR(vocab_size=20, seq_len=8, num_kv_pairs=2, num_train=32, num_test=8)
    train = TrainConfig(steps=6, batch_size=4, lr=1e-2, eval_every=3, log_every=1, checkpoint_every=2, threads=1,
                        out_dir=out_dir)
    Trainer(model, task, train, progress=False).train(resume=resume)
    return model


def test_interrupted_then_resumed_training_equals_uninterrupted_codebook_included(tmp_path, monkeypatch):
    straight = _run(tmp_path / "a")
    real_batch, calls = MQAR.batch, []

    def crash_at_the_fourth_step(self, split, indices):
        calls.append(split)
        if calls.count("train") == 4:
            raise KeyboardInterrupt
        return real_batch(self, split, indices)

    monkeypatch.setattr(MQAR, "batch", crash_at_the_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b")
    monkeypatch.setattr(MQAR, "batch", real_batch)
    assert latest_checkpoint(tmp_path / "b").name == "step-00000002"
    resumed = _run(tmp_path / "b", resume=True, seed=7)  # a different init: everything must come from the checkpoint
    state_a, state_b = straight.state_dict(), resumed.state_dict()
    assert any(".c_sum" in n for n in state_a) and state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    torch.manual_seed(0)
    fresh = CausalLM(straight.config)
    for name, value in fresh.state_dict().items():
        if name.endswith(("c_sum", "c_count")):
            assert not torch.equal(value, state_a[name]), f"{name} never learned"
