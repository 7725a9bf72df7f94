"""Models: blocks, backbones built from a layer pattern, and heads (LM, classifier, encoder-decoder, MLM-U)."""

from longseq.models.backbone import Backbone
from longseq.models.block import Block
from longseq.models.classifier import SequenceClassifier
from longseq.models.config import ModelConfig, parse_layer_pattern
from longseq.models.encdec import EncoderDecoder
from longseq.models.lm import CausalLM, LMOutput
from longseq.models.mlmu import MLMU, PathCausalLM
from longseq.models.two_tower import TwoTowerClassifier

__all__ = ["MLMU", "Backbone", "Block", "CausalLM", "EncoderDecoder", "LMOutput", "ModelConfig", "PathCausalLM",
           "SequenceClassifier", "TwoTowerClassifier", "parse_layer_pattern"]
