"""Interoperability with other libraries' checkpoints: transformers' Mamba and Mamba-2 causal LMs."""

from longseq.interop.hf_mamba import from_hf, hf_config, model_config_from_hf, save_hf, to_hf

__all__ = ["from_hf", "hf_config", "model_config_from_hf", "save_hf", "to_hf"]
