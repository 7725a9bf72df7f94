"""Hugging Face interop (longseq.interop.hf_mamba): transformers' own Mamba / Mamba-2 LMs are the oracle.

Tiny random models built locally (nothing downloaded), every parameter perturbed so that no weight sits at an
initial value a mapping bug could hide behind (norm weights of 1, identical A_log rows, D = 1). Logits are compared
in float32 at atol = rtol = 1e-5 (measured: ~2.4e-7 at logits ~2). There is no float64 comparison: transformers'
norms and scans cast to float32 inside a ``.double()`` model and its LM head returns float32 logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[peers]')")

from longseq.interop import from_hf, save_hf, to_hf  # noqa: E402
from longseq.interop.hf_mamba import FLOAT32_EPS  # noqa: E402
from longseq.models import CausalLM, ModelConfig  # noqa: E402

VOCAB, LENGTH = 48, 32
TOL = {"atol": 1e-5, "rtol": 1e-5}
COMMON = {"vocab_size": VOCAB, "hidden_size": 16, "state_size": 4, "num_hidden_layers": 2, "eos_token_id": None}
CASES = {  # each exercises options off their default: dt rank, biases, untied head, groups, eps
    "mamba-tied": ("mamba", {"time_step_rank": 3}),
    "mamba-untied-bias": ("mamba", {"use_bias": True, "use_conv_bias": False, "tie_word_embeddings": False,
                                    "layer_norm_epsilon": 1e-3, "conv_kernel": 3}),
    "mamba2-groups": ("mamba2", {"num_heads": 4, "head_dim": 8, "n_groups": 2, "chunk_size": 8}),
    "mamba2-tied-bias": ("mamba2", {"num_heads": 2, "head_dim": 16, "n_groups": 1, "use_bias": True,
                                    "tie_word_embeddings": True, "layer_norm_epsilon": 1e-3, "chunk_size": 8}),
}


def _classes(kind: str) -> tuple[type, type]:
    if kind == "mamba":
        return transformers.MambaConfig, transformers.MambaForCausalLM
    return transformers.Mamba2Config, transformers.Mamba2ForCausalLM


def hf_model(case: str, seed: int = 0) -> torch.nn.Module:
    kind, extra = CASES[case]
    config_cls, model_cls = _classes(kind)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**COMMON, **extra)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def tokens(batch: int = 2, length: int = LENGTH, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def assert_same_logits(hf: torch.nn.Module, ours: CausalLM, **tol: float) -> None:
    x = tokens()
    torch.testing.assert_close(ours(x).logits, hf(x).logits, **(tol or TOL))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_equal_transformers(case):
    hf = hf_model(case)
    ours = from_hf(hf)
    assert not ours.training and ours.config.mlp_ratio == 0 and ours.config.layers == CASES[case][0]
    assert_same_logits(hf, ours)


@pytest.mark.parametrize("case", ["mamba-untied-bias", "mamba2-groups"])
def test_greedy_generation_equals_transformers(case):
    """longseq prefills with forward_stream and decodes with step; transformers with its cache. The explicit
    attention mask stops transformers from taking prompt tokens equal to its pad id (0) for padding."""
    hf = hf_model(case)
    prompt = tokens(length=5)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    ours = from_hf(hf).generate(prompt, 8, temperature=0)
    assert torch.equal(ours, theirs)
    assert len(set(ours[:, 5:].flatten().tolist())) > 2  # not a degenerate repeat of one token


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_through_a_state_dict_is_bit_exact(case):
    ours = from_hf(hf_model(case))
    config, state = to_hf(ours)
    back = from_hf(state, config)
    assert back.config == ours.config
    mine, again = ours.state_dict(), back.state_dict()
    assert mine.keys() == again.keys() and all(torch.equal(mine[k], again[k]) for k in mine)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(back(x).logits, ours(x).logits)


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_state_dict_loads_strictly_into_transformers(case):
    hf = hf_model(case)
    config, state = to_hf(from_hf(hf))
    config_cls, model_cls = _classes(CASES[case][0])
    fresh = model_cls(config_cls.from_dict(config)).eval()
    fresh.load_state_dict(state, strict=True)
    assert_same_logits(fresh, from_hf(hf))  # tolerance: Mamba-2's chunk_size (a kernel choice) is not exported


@pytest.mark.parametrize("case", ["mamba-tied", "mamba2-groups"])
def test_load_from_a_save_pretrained_directory_and_save_back(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_hf(tmp_path / "hf")
    assert_same_logits(hf, ours)
    saved = save_hf(ours, tmp_path / "ours")
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_logits(_classes(CASES[case][0])[1].from_pretrained(saved).eval(), ours)


def test_a_natively_built_model_exports_with_its_default_norm_eps(tmp_path):
    """torch's RMSNorm default (eps=None) is float32's eps on float32 inputs: export writes that value."""
    torch.manual_seed(0)
    ours = CausalLM(ModelConfig(vocab_size=VOCAB, d_model=16, layers="mamba", mlp_ratio=0,
                                mixer_hypers={"mamba": {"d_state": 4}})).eval()
    config, _ = to_hf(ours)
    assert config["layer_norm_epsilon"] == FLOAT32_EPS and config["time_step_rank"] == 1
    hf = transformers.MambaForCausalLM.from_pretrained(save_hf(ours, tmp_path)).eval()
    assert_same_logits(hf, ours)


@pytest.mark.parametrize(("case", "field", "value", "match"), [
    ("mamba-tied", "hidden_act", "gelu", "hidden_act='gelu' has no longseq equivalent; longseq supports 'silu'"),
    ("mamba2-groups", "time_step_limit", [0.0, 0.5], r"time_step_limit=\(0.0, 0.5\) has no longseq equivalent"),
    ("mamba2-groups", "head_dim", 4, "num_heads=4 x head_dim=4 must equal expand x hidden_size = 32"),
    ("mamba-tied", "model_type", "falcon_mamba", r"model_type='falcon_mamba' is not supported.*\['mamba', 'mamba2'\]"),
])
def test_unsupported_configs_are_refused_naming_the_field(case, field, value, match, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path)
    config = json.loads(Path(tmp_path, "config.json").read_text())
    with pytest.raises(ValueError, match=match):
        from_hf(hf.state_dict(), config | {field: value})


def test_mismatched_state_dicts_and_sources_are_refused():
    hf = hf_model("mamba-untied-bias")
    state, config = hf.state_dict(), hf.config
    with pytest.raises(ValueError, match=r"missing \['backbone.layers.1.mixer.D'\], unexpected \[\]"):
        from_hf({k: v for k, v in state.items() if k != "backbone.layers.1.mixer.D"}, config)
    with pytest.raises(ValueError, match=r"lm_head.weight differs from the embedding"):
        from_hf(state, config.to_dict() | {"tie_word_embeddings": True})
    with pytest.raises(ValueError, match="needs config="):
        from_hf(state)
    with pytest.raises(ValueError, match=r"neither model\.safetensors"):
        from_hf(Path(__file__).parent)


def test_export_refuses_what_transformers_cannot_represent():
    with pytest.raises(ValueError, match=r"need layers 'mamba' or 'mamba2', mlp_ratio=0.*mlp_ratio=4.0"):
        to_hf(CausalLM(ModelConfig(vocab_size=VOCAB, d_model=16, layers="mamba")))
    mixed_eps = CausalLM(ModelConfig(vocab_size=VOCAB, d_model=16, layers="mamba2", mlp_ratio=0,
                                     mixer_hypers={"mamba2": {"d_state": 4, "headdim": 8}}))
    with pytest.raises(ValueError, match=r"one layer_norm_epsilon for all norms.*set the mamba2 hyper norm_eps"):
        to_hf(mixed_eps)
