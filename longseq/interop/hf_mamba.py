"""Hugging Face checkpoints of ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` <-> longseq's ``CausalLM``.

A transformers Mamba LM is a stack of pre-norm residual blocks (RMSNorm, then the mixer) with no MLP, a final
RMSNorm and a linear head: longseq's ``CausalLM`` with ``layers="mamba"`` (or ``"mamba2"``), ``mlp_ratio=0`` and
``norm="rms"``. The mixers compute what transformers' mixers compute (``mamba.py``, ``mamba2.py``), so the weights
map one to one (``LAYER_NAMES``; only the depthwise conv is stored (D, W) here and (D, 1, W) there).

Configuration fields are read from the HF config (a dict, a ``PretrainedConfig`` or ``config.json``); a missing
field takes transformers' default (``HF_DEFAULTS``, as of transformers 5.24). A field longseq cannot represent
exactly raises ``ValueError`` naming it, its value and what is supported. Ignored fields only choose an
initialisation (``time_step_min``/``max``/``floor``/``scale``/``init_scheme``, ``initializer_range``,
``rescale_prenorm_residual``; Mamba-2's unused ``time_step_rank``), a kernel
(``use_mambapy``, ``use_associative_scan``, ``chunk_size``), token ids, or a dtype policy: ``residual_in_fp32``
keeps HF's residual stream in float32 under half precision, while longseq's stays in the model's dtype; in float32
(how a model is loaded) the two are the same function. Export writes ``residual_in_fp32=False``, which is exact.

The norms' epsilon is HF's ``layer_norm_epsilon``: ``ModelConfig.norm_eps`` for the block and final norms, the
``mamba2`` hyper ``norm_eps`` for its gated norm. transformers is never imported: models and configs are read through
``state_dict()`` and ``to_dict()``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from longseq.models import CausalLM, ModelConfig

ARCHITECTURES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}

# The one table of parameter names, longseq -> transformers. Whole-model names, then per-layer names under
# ``backbone.blocks.{i}.`` (longseq) and ``backbone.layers.{i}.`` (transformers). A row the model lacks (biases
# when off; x_proj/dt_proj are Mamba's, dt_bias and the gated norm Mamba-2's) is not used.
MODEL_NAMES = {"embed.weight": "backbone.embeddings.weight", "backbone.norm.weight": "backbone.norm_f.weight",
               "head.weight": "lm_head.weight"}
LAYER_NAMES = {
    "norm_mixer.weight": "norm.weight",
    "mixer.passes.0.in_proj.weight": "mixer.in_proj.weight",
    "mixer.passes.0.in_proj.bias": "mixer.in_proj.bias",
    "mixer.passes.0.conv.weight": "mixer.conv1d.weight",
    "mixer.passes.0.conv.bias": "mixer.conv1d.bias",
    "mixer.passes.0.x_proj.weight": "mixer.x_proj.weight",
    "mixer.passes.0.dt_proj.weight": "mixer.dt_proj.weight",
    "mixer.passes.0.dt_proj.bias": "mixer.dt_proj.bias",
    "mixer.passes.0.dt_bias": "mixer.dt_bias",
    "mixer.passes.0.A_log": "mixer.A_log",
    "mixer.passes.0.D": "mixer.D",
    "mixer.passes.0.norm.weight": "mixer.norm.weight",
    "mixer.passes.0.out_proj.weight": "mixer.out_proj.weight",
    "mixer.passes.0.out_proj.bias": "mixer.out_proj.bias",
}
CONV_WEIGHT = "mixer.passes.0.conv.weight"
ALIASES = {"backbone.embedding.weight": "backbone.embeddings.weight"}  # mamba_ssm's name, as transformers' load hook

_COMMON_DEFAULTS = {"state_size": 16, "conv_kernel": 4, "expand": 2, "use_bias": False, "use_conv_bias": True,
                    "layer_norm_epsilon": 1e-5, "hidden_act": "silu"}
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "mamba": _COMMON_DEFAULTS | {"time_step_rank": "auto", "tie_word_embeddings": True},
    "mamba2": _COMMON_DEFAULTS | {"state_size": 128, "n_groups": 8, "head_dim": 64, "num_heads": 128,
                                  "time_step_limit": (0.0, math.inf), "tie_word_embeddings": False},
}
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers")
FLOAT32_EPS = torch.finfo(torch.float32).eps  # what nn.RMSNorm(eps=None) uses on float32 inputs


def hf_name(name: str) -> str:
    """The transformers name of longseq parameter ``name`` (``LAYER_NAMES`` under ``backbone.blocks.{i}.``)."""
    if name in MODEL_NAMES:
        return MODEL_NAMES[name]
    head, _, rest = name.partition(".blocks.")
    layer, _, inner = rest.partition(".")
    if head != "backbone" or not layer.isdigit() or inner not in LAYER_NAMES:
        raise ValueError(f"parameter {name!r} has no transformers counterpart; mapped: {sorted(MODEL_NAMES)} and "
                         f"backbone.blocks.<i>.{{{', '.join(LAYER_NAMES)}}}")
    return f"backbone.layers.{layer}.{LAYER_NAMES[inner]}"


def _field(cfg: Mapping[str, Any], key: str, allowed: Any) -> None:
    if cfg[key] != allowed:
        raise ValueError(f"HF config {key}={cfg[key]!r} has no longseq equivalent; longseq supports {allowed!r}")


def _as_float(value: Any) -> float:
    """A float from config.json, where transformers 5 writes infinity as {"__float__": "Infinity"}."""
    return float(value["__float__"]) if isinstance(value, Mapping) else float(value)


def model_config_from_hf(hf_config: Mapping[str, Any] | Any) -> ModelConfig:
    """An HF Mamba/Mamba-2 config (dict or ``PretrainedConfig``) -> the longseq ``ModelConfig`` of the same LM."""
    given = dict(hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config)
    kind = given.get("model_type")
    if kind not in HF_DEFAULTS:
        raise ValueError(f"HF config model_type={kind!r} is not supported; longseq supports {sorted(HF_DEFAULTS)}")
    cfg = HF_DEFAULTS[kind] | given
    if missing := [key for key in REQUIRED if key not in cfg]:
        raise ValueError(f"HF config (model_type={kind!r}) lacks {missing}")
    _field(cfg, "hidden_act", "silu")  # the conv's activation; the gate is always silu
    d_model, expand = cfg["hidden_size"], cfg["expand"]
    if float(expand) != int(expand):
        raise ValueError(f"HF config expand={expand!r} has no longseq equivalent; longseq supports integers")
    hypers: dict[str, Any] = {"d_state": cfg["state_size"], "d_conv": cfg["conv_kernel"], "expand": int(expand),
                              "bias": cfg["use_bias"], "conv_bias": cfg["use_conv_bias"]}
    eps = float(cfg["layer_norm_epsilon"])
    if kind == "mamba":
        rank = cfg["time_step_rank"]
        hypers["dt_rank"] = math.ceil(d_model / 16) if rank == "auto" else int(rank)
    else:
        if cfg["num_heads"] * cfg["head_dim"] != int(expand) * d_model:
            raise ValueError(f"HF config num_heads={cfg['num_heads']} x head_dim={cfg['head_dim']} must equal "
                             f"expand x hidden_size = {int(expand) * d_model}")
        limit = tuple(_as_float(v) for v in cfg["time_step_limit"])
        if limit != (0.0, math.inf):  # softplus(dt) >= 0 already: only the default limit is a no-op
            raise ValueError(f"HF config time_step_limit={limit!r} has no longseq equivalent; longseq supports "
                             f"(0.0, inf) (no clamp)")
        hypers |= {"headdim": cfg["head_dim"], "ngroups": cfg["n_groups"], "norm_eps": eps}
    return ModelConfig(vocab_size=cfg["vocab_size"], d_model=d_model, n_layers=cfg["num_hidden_layers"],
                       layers=kind, mixer_hypers={kind: hypers}, mlp_ratio=0.0, norm="rms", norm_eps=eps,
                       tie_embeddings=bool(cfg["tie_word_embeddings"]))


def _block_norms(model: CausalLM) -> list[nn.Module]:
    return [block.norm_mixer for block in model.backbone.blocks] + [model.backbone.norm]


def read_hf(source: str | os.PathLike[str] | nn.Module | Mapping[str, Tensor],
            config: Mapping[str, Any] | Any | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(HF config dict, HF state dict) from a ``save_pretrained`` directory (config.json + model.safetensors or a
    sharded ``model.safetensors.index.json``), a transformers model, or a state dict with its ``config``."""
    if isinstance(source, Mapping):
        if config is None:
            raise ValueError("from_hf: a state dict needs config= (the HF config, a dict or a PretrainedConfig)")
        return dict(config.to_dict() if hasattr(config, "to_dict") else config), dict(source)
    if config is not None:
        raise ValueError("from_hf: config= is only for a state dict; a model or a directory carries its own")
    if isinstance(source, nn.Module):
        return source.config.to_dict(), source.state_dict()
    directory = Path(source)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"from_hf: {directory} has neither model.safetensors nor model.safetensors.index.json "
                         f"(only safetensors are read, never pickled .bin files)")
    state = {key: t for name in files for key, t in load_file(directory / name).items()}
    return json.loads((directory / "config.json").read_text()), state


def load_hf_state_dict(model: CausalLM, hf_state: Mapping[str, Tensor]) -> None:
    """Copy an HF state dict into ``model`` (built by ``from_hf``'s config): every name mapped, every shape checked;
    a tied head may be absent (``save_pretrained`` drops it) and must otherwise equal the embedding."""
    hf_state = {ALIASES.get(key, key): t for key, t in hf_state.items()}
    tied = model.config.tie_embeddings
    if tied and "lm_head.weight" in hf_state:
        head = hf_state.pop("lm_head.weight")
        if not torch.equal(head, hf_state.get(MODEL_NAMES["embed.weight"], head)):
            raise ValueError("HF state dict: lm_head.weight differs from the embedding but tie_word_embeddings=True")
    ours = model.state_dict()
    wanted = {hf_name(key): key for key in ours if not (tied and key == "head.weight")}
    missing, unexpected = sorted(wanted.keys() - hf_state.keys()), sorted(hf_state.keys() - wanted.keys())
    if missing or unexpected:
        raise ValueError(f"HF state dict does not match the config: missing {missing}, unexpected {unexpected}")
    loaded = {}
    for theirs, key in wanted.items():
        tensor = hf_state[theirs]
        if key.endswith(CONV_WEIGHT) and tensor.dim() == 3 and tensor.shape[1] == 1:
            tensor = tensor[:, 0]
        if tensor.shape != ours[key].shape:
            raise ValueError(f"HF state dict: {theirs} has shape {tuple(tensor.shape)}; the config implies "
                             f"{tuple(ours[key].shape)} for {key}")
        loaded[key] = tensor
    if tied:
        loaded["head.weight"] = loaded["embed.weight"]
    model.load_state_dict(loaded, strict=True)


def from_hf(source: str | os.PathLike[str] | nn.Module | Mapping[str, Tensor],
            config: Mapping[str, Any] | Any | None = None) -> CausalLM:
    """A longseq ``CausalLM`` (float32, eval mode) computing what the HF Mamba/Mamba-2 LM ``source`` computes:
    a ``save_pretrained`` directory, a ``MambaForCausalLM``/``Mamba2ForCausalLM``, or a state dict with ``config``."""
    hf_config, hf_state = read_hf(source, config)
    model = CausalLM(model_config_from_hf(hf_config))
    load_hf_state_dict(model, hf_state)
    return model.eval()


def _kind(model: CausalLM) -> str:
    if not isinstance(model, CausalLM):
        raise ValueError(f"to_hf: expected a longseq CausalLM, got {type(model).__name__}")
    cfg, kinds = model.config, set(model.config.layer_names)
    if len(kinds) != 1 or not kinds <= HF_DEFAULTS.keys() or cfg.mlp_ratio != 0 or cfg.norm != "rms":
        raise ValueError(f"to_hf: transformers has only all-Mamba or all-Mamba-2 stacks without MLPs and with RMS "
                         f"norms: need layers 'mamba' or 'mamba2', mlp_ratio=0, norm='rms'; got "
                         f"layers={cfg.layers!r}, mlp_ratio={cfg.mlp_ratio}, norm={cfg.norm!r}")
    return kinds.pop()


def _norm_eps(model: CausalLM, kind: str) -> float:
    """The one ``layer_norm_epsilon`` HF has for every norm; None (torch's default) is float32's eps, as HF's norms
    compute in float32."""
    found = {FLOAT32_EPS if norm.eps is None else norm.eps for norm in _block_norms(model)}
    if kind == "mamba2":
        found |= {block.mixer.passes[0].norm.eps for block in model.backbone.blocks}
    if len(found) != 1:
        raise ValueError(f"to_hf: HF has one layer_norm_epsilon for all norms; this model's norms use "
                         f"{sorted(found)} (torch's default None = {FLOAT32_EPS}): set the mamba2 hyper norm_eps "
                         f"to the block norms' eps")
    return found.pop()


def hf_config(model: CausalLM) -> dict[str, Any]:
    """The transformers config dict describing ``model`` (every field that decides the function)."""
    kind, cfg = _kind(model), model.config
    mixer = model.backbone.blocks[0].mixer
    pass_ = mixer.passes[0]
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[kind]], "model_type": kind, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "state_size": mixer.d_state,
        "conv_kernel": mixer.d_conv, "expand": mixer.expand, "use_bias": pass_.in_proj.bias is not None,
        "use_conv_bias": pass_.conv.bias is not None, "hidden_act": "silu",
        "layer_norm_epsilon": _norm_eps(model, kind), "residual_in_fp32": False,
        "tie_word_embeddings": cfg.tie_embeddings, "dtype": str(model.embed.weight.dtype).removeprefix("torch."),
    }
    if kind == "mamba":
        return out | {"time_step_rank": pass_.dt_rank, "intermediate_size": pass_.d_inner}
    return out | {"num_heads": pass_.nheads, "head_dim": pass_.headdim, "n_groups": pass_.ngroups}


def to_hf(model: CausalLM) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(HF config dict, HF state dict) for a longseq mamba/mamba2 ``CausalLM``; ``MambaForCausalLM(MambaConfig(
    **config)).load_state_dict(state)`` then computes the same function. Tensors share the model's memory."""
    config = hf_config(model)
    state = {hf_name(key): t.unsqueeze(1) if key.endswith(CONV_WEIGHT) else t
             for key, t in model.state_dict().items()}
    return config, state


def save_hf(model: CausalLM, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` as transformers' ``save_pretrained`` does: config.json + model.safetensors (a tied head
    stored once, under the embedding's name). Returns the directory."""
    config, state = to_hf(model)
    if config["tie_word_embeddings"]:
        del state[MODEL_NAMES["head.weight"]]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({key: t.contiguous() for key, t in state.items()}, directory / "model.safetensors",
              metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory
