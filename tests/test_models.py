"""Models: config validation, LM loss gathering, generation == greedy full forwards, classifier pooling under
padding, encoder-decoder streaming == parallel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from longseq.models import CausalLM, EncoderDecoder, ModelConfig, SequenceClassifier, parse_layer_pattern

SMALL = dict(vocab_size=50, d_model=16, n_layers=2, mixer_hypers={"attention": {"n_heads": 2}})


def lm(**kw) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(**{**SMALL, **kw})).double().eval()


def test_layer_pattern_tiles_to_depth():
    assert parse_layer_pattern("mamba*3,attention", 8) == ["mamba"] * 3 + ["attention"] + ["mamba"] * 3 + ["attention"]
    with pytest.raises(ValueError, match="NAME\\*COUNT"):
        parse_layer_pattern("mamba*x", 2)


@pytest.mark.parametrize(("override", "field", "fragment"), [
    ({"layers": "atention"}, "layers", "unknown mixer 'atention'; allowed: abc, attention"),
    ({"d_model": 18, "mixer_hypers": {"attention": {"n_heads": 4}}}, "", "d_model=18 is not divisible by n_heads=4"),
    ({"vocab_size": 0}, "vocab_size", "greater than 0"),
    ({"mixer_hypers": {"attention": {"n_head": 2}}}, "", "no hyper 'n_head'"),
    ({"n_layer": 2}, "n_layer", "Extra inputs are not permitted"),
])
def test_bad_config_fails_naming_field_and_value(override, field, fragment):
    with pytest.raises(ValidationError) as e:
        ModelConfig(**{**SMALL, **override})
    assert fragment in str(e.value) and field in str(e.value)


def test_lm_loss_gathers_supervised_positions_only():
    m = lm()
    ids = torch.randint(0, 50, (3, 12))
    labels = torch.full((3, 12), -100)
    labels[0, 4], labels[2, 7], labels[2, 9] = 5, 6, 7
    out = m(ids, labels)
    full = m(ids).logits
    want = F.cross_entropy(full[labels != -100], labels[labels != -100])
    torch.testing.assert_close(out.loss, want)
    assert out.logits.shape == (3, 50)
    assert out.example_index.tolist() == [0, 2, 2]
    assert out.targets.tolist() == [5, 6, 7]


def test_greedy_generate_equals_repeated_full_forwards():
    m = lm(n_layers=3)
    prompt = torch.randint(0, 50, (2, 5))
    got = m.generate(prompt, 8, temperature=0)
    seq = prompt
    for _ in range(8):
        nxt = m(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(got, seq)


def test_sampling_is_reproducible_and_top_k_restricts():
    m = lm()
    prompt = torch.randint(0, 50, (2, 3))
    a = m.generate(prompt, 6, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, m.generate(prompt, 6, temperature=0))  # top_k=1 is greedy
    b1 = m.generate(prompt, 6, generator=torch.Generator().manual_seed(3))
    b2 = m.generate(prompt, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b1, b2)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_classifier_padding_equals_unpadded(pooling):
    torch.manual_seed(0)
    m = SequenceClassifier(ModelConfig(**SMALL), num_classes=3, pooling=pooling).double().eval()
    ids = torch.randint(1, 50, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :4] = False  # left padding
    mask[1, 7:] = False  # right padding
    out = m(ids, torch.tensor([0, 2]), mask=mask)
    alone0 = m(ids[:1, 4:]).logits[0]
    alone1 = m(ids[1:, :7]).logits[0]
    torch.testing.assert_close(out.logits, torch.stack([alone0, alone1]))
    assert out.loss.isfinite()


def test_encoder_decoder_generation_matches_parallel_greedy():
    torch.manual_seed(0)
    m = EncoderDecoder(ModelConfig(**SMALL)).double().eval()
    src = torch.randint(0, 50, (2, 9))
    src_mask = torch.ones(2, 9, dtype=torch.bool)
    src_mask[1, 6:] = False
    bos = torch.zeros(2, 1, dtype=torch.long)
    got = m.generate(src, bos, 6, src_mask=src_mask)
    seq = bos
    for _ in range(6):
        nxt = m(src, seq, src_mask=src_mask).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(got, seq)
    # the padded memory row equals its unpadded self
    alone = m(src[1:, :6], seq[1:]).logits
    torch.testing.assert_close(m(src, seq, src_mask=src_mask).logits[1:], alone)


def test_state_size_counts_every_layer():
    m = lm(n_layers=3)
    assert m.state_size(10) == 3 * 2 * 10 * 16


def test_mixers_bound_to_a_kernel_length_keep_their_default_without_a_model_max_len():
    """longconv, sgconv and hyena need a length; a config without max_len leaves them their own default, a config
    with one bounds every layer by it."""
    unbounded = lm(layers="longconv,hyena", n_layers=2)
    assert [b.mixer.max_len for b in unbounded.backbone.blocks] == [1024, 1024]
    bounded = lm(layers="sgconv,attention", n_layers=2, max_len=40, mixer_hypers={"attention": {"n_heads": 2},
                                                                                  "sgconv": {"kernel_dim": 8}})
    assert [b.mixer.max_len for b in bounded.backbone.blocks] == [40, 40]
    prompt = torch.randint(0, 50, (2, 5))
    assert bounded.generate(prompt, 4).shape == (2, 9)


def test_norm_eps_reaches_every_norm_and_is_left_out_of_the_dump_while_unset():
    unset = ModelConfig(vocab_size=16, d_model=16, n_layers=2, layers="s4d")
    assert "norm_eps" not in unset.model_dump() and "norm_eps" not in unset.model_dump(mode="json")
    for norm, eps in [("rms", 1e-3), ("layer", 1e-2)]:
        config = ModelConfig(vocab_size=16, d_model=16, n_layers=2, layers="s4d", norm=norm, norm_eps=eps)
        assert config.model_dump()["norm_eps"] == eps
        norms = [m for m in CausalLM(config).modules() if isinstance(m, torch.nn.RMSNorm | torch.nn.LayerNorm)]
        assert len(norms) == 5 and {m.eps for m in norms} == {eps}  # 2 blocks x (mixer, MLP) + the final norm
    with pytest.raises(ValueError, match="norm_eps"):
        ModelConfig(vocab_size=16, norm_eps=0.0)
