"""Trains a small float64 causal LM with the Trainer and saves its final weights: run as one process or under
torchrun by tests/test_distributed.py (not a test module itself).

usage: python ddp_worker.py OUT_FILE GRAD_ACCUM
"""

from __future__ import annotations

import sys

import numpy as np
import safetensors.torch
import torch

from longseq.models import CausalLM, ModelConfig
from longseq.tasks.base import IGNORE_INDEX, per_example_accuracy
from longseq.train import TrainConfig, Trainer, distributed

VOCAB, SEQ_LEN = 12, 16


class RaggedTask:
    """Random tokens; each example supervises its own random number of positions (1..SEQ_LEN), so micro-batches
    and ranks hold different numbers of supervised positions: the gradient weighting is exercised."""

    name = "ragged-identity"
    vocab_size = VOCAB
    seq_len = SEQ_LEN
    metric_name = "accuracy"
    higher_is_better = True

    def num_examples(self, split: str) -> int:
        return {"train": 64, "test": 20}[split]

    def batch(self, split: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
        rows, labels = [], []
        for i in indices:
            rng = np.random.default_rng([0 if split == "train" else 1, int(i)])
            tokens = rng.integers(0, VOCAB, SEQ_LEN)
            label = np.full(SEQ_LEN, IGNORE_INDEX)
            keep = rng.permutation(SEQ_LEN)[: rng.integers(1, SEQ_LEN + 1)]
            label[keep] = tokens[keep]
            rows.append(tokens)
            labels.append(label)
        return torch.from_numpy(np.stack(rows)).long(), torch.from_numpy(np.stack(labels)).long()

    def score(self, predictions, targets, example_index, batch_size):
        return per_example_accuracy(predictions, targets, example_index, batch_size)

    def describe(self) -> dict:
        return {"name": self.name}


def main(out_file: str, grad_accum: int) -> None:
    ranks = distributed.init_from_env("cpu")
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, layers="s4d,attention",
                                 mlp_ratio=2.0)).double()
    config = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=3, grad_accum=grad_accum,
                         threads=1)
    result = Trainer(model, RaggedTask(), config, progress=False).train()
    if ranks.is_main:
        safetensors.torch.save_model(model, out_file)
        print("final", result.metrics, flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
