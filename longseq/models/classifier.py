"""SequenceClassifier: embedding -> backbone (any self pattern) -> masked pooling -> class logits."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from longseq.mixers.base import Pattern
from longseq.models.backbone import Backbone
from longseq.models.config import ModelConfig
from longseq.models.lm import LMOutput, cross_entropy, init_embedding
from longseq.modules.aux_loss import collect_aux_losses


class SequenceClassifier(nn.Module):
    """input_ids: (B, L) -> logits (B, num_classes). ``pooling="mean"`` averages valid positions; ``"last"`` takes
    the last valid one (the natural choice for a causal backbone).

    A subclass with another head (``TwoTowerClassifier``) overrides ``build_head`` and ``classify``."""

    def __init__(self, config: ModelConfig, num_classes: int, *, pooling: Literal["mean", "last"] = "mean",
                 pattern: Pattern | str = Pattern.NONCAUSAL_SELF) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"{type(self).__name__}: num_classes={num_classes} must be at least 2")
        if pooling not in ("mean", "last"):
            raise ValueError(f"{type(self).__name__}: pooling={pooling!r}; allowed: 'mean', 'last'")
        self.pooling = pooling
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.backbone = Backbone(config, pattern=Pattern.parse(pattern))
        self.head = self.build_head(config.d_model, num_classes)
        init_embedding(self.embed)

    def build_head(self, d_model: int, num_classes: int) -> nn.Module:
        """The head on the pooled encoding: (B, d_model) -> (B, num_classes)."""
        return nn.Linear(d_model, num_classes)

    def pool(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        """hidden: (B, L, D), mask: bool (B, L) -> (B, D)."""
        if mask is None:
            return hidden.mean(dim=1) if self.pooling == "mean" else hidden[:, -1]
        if self.pooling == "mean":
            return (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)
        # Index of the last valid position (works for left and right padding).
        last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def encode(self, input_ids: Tensor, mask: Tensor | None) -> Tensor:
        """input_ids: (B, L), mask: bool (B, L) or None -> the pooled encoding (B, D)."""
        return self.pool(self.backbone(self.embed(input_ids), mask=mask), mask)

    def classify(self, input_ids: Tensor, mask: Tensor | None) -> Tensor:
        """input_ids: (B, L) -> logits (B, num_classes)."""
        return self.head(self.encode(input_ids, mask))

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, *, mask: Tensor | None = None) -> LMOutput:
        """labels: (B,) class ids. Returns logits (B, C) and, with labels, loss and per-example predictions."""
        with collect_aux_losses() as aux:
            logits = self.classify(input_ids, mask)
        if labels is None:
            return LMOutput(logits=logits, aux_loss=aux.total())
        return LMOutput(logits=logits, loss=cross_entropy(logits, labels),
                        predictions=logits.argmax(dim=-1), targets=labels,
                        example_index=torch.arange(labels.shape[0], device=labels.device), aux_loss=aux.total())
