"""TwoTowerClassifier: two sequences encoded apart by one shared encoder, then LRA's dual-encoder head.

LRA's Retrieval task (and the ``byte_retrieval`` stand-in here, ``tasks/byte_retrieval.py``) asks a question about
a pair of documents, and LRA's rule is that each document is encoded on its own, so that a model cannot attend
across the pair: the task measures how well a long sequence is compressed into one vector. The model:

- ``input_ids: (B, 2L)`` holds the two sequences side by side (a task with ``segments = 2``; the mask, if any,
  alike). Each row is cut in halves and the halves are stacked into one batch of ``2B`` rows, so the one encoder
  (the embedding, the backbone in its self pattern, the pooling of ``SequenceClassifier``) runs once over both,
  with shared weights.
- The pooled encodings ``X1, X2: (B, D)`` go to LRA's ``classifier_head_dual`` with its "NLI" interaction: an MLP
  over ``[X1, X2, X1 * X2, X1 - X2]``, ``Linear(4D, H)``, ReLU, ``Linear(H, H / 2)``, ReLU, ``Linear(H / 2, C)``.
  LRA sets ``H`` to its ``mlp_dim``, 512 for an embedding of 128 in the Retrieval config: here ``H = 4 D``.

Like every classifier here it has no CLS token (LRA pools a CLS token or the mean; ``pooling`` chooses mean or
last, ``ClassifierSpec``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longseq.models.classifier import SequenceClassifier

HEAD_RATIO = 4
"""Width of the head's first layer in units of d_model (LRA Retrieval: mlp_dim 512 / embedding 128)."""


class TwoTowerClassifier(SequenceClassifier):
    """input_ids: (B, 2L), two sequences side by side -> logits (B, num_classes) (module docstring)."""

    def build_head(self, d_model: int, num_classes: int) -> nn.Module:
        width = HEAD_RATIO * d_model
        return nn.Sequential(nn.Linear(4 * d_model, width), nn.ReLU(), nn.Linear(width, width // 2), nn.ReLU(),
                             nn.Linear(width // 2, num_classes))

    def classify(self, input_ids: Tensor, mask: Tensor | None) -> Tensor:
        """input_ids: (B, 2L), mask: bool (B, 2L) or None -> logits (B, num_classes)."""
        if input_ids.shape[1] % 2:
            raise ValueError(f"{type(self).__name__}: inputs hold two sequences side by side, so their length must "
                             f"be even; got {input_ids.shape[1]}")
        towers = torch.cat(input_ids.chunk(2, dim=1))  # (2B, L): the first halves, then the second halves
        masks = None if mask is None else torch.cat(mask.chunk(2, dim=1))
        first, second = self.encode(towers, masks).chunk(2)
        return self.head(torch.cat([first, second, first * second, first - second], dim=-1))
