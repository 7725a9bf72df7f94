"""Trains a small float64 causal LM with the Trainer and saves its final weights: run as one process or under
torchrun by tests/test_distributed.py (not a test module itself).

usage: python ddp_worker.py OUT GRAD_ACCUM [fsdp]

OUT is the file the final weights go to; with ``fsdp`` (the model sharded over the ranks) it is instead a run
directory holding a checkpoint, which the run resumes, checkpointing as ``train_config`` says for a run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from longseq.models import CausalLM, ModelConfig
from longseq.tasks.base import IGNORE_INDEX, VAL_SPLITS, per_example_accuracy
from longseq.train import TrainConfig, Trainer, distributed

VOCAB, SEQ_LEN = 12, 16
SPLIT_IDS = {"train": 0, "test": 1, "val": 2}


class RaggedTask:
    """Random tokens; each example supervises its own random number of positions (1..SEQ_LEN), so micro-batches
    and ranks hold different numbers of supervised positions: the gradient weighting is exercised. 20 test and 20
    validation examples: 3 evaluation batches of 8, which 2 ranks cannot share equally."""

    name = "ragged-identity"
    vocab_size = VOCAB
    seq_len = SEQ_LEN
    metric_name = "accuracy"
    higher_is_better = True
    splits = VAL_SPLITS

    def num_examples(self, split: str) -> int:
        return {"train": 64, "val": 20, "test": 20}[split]

    def batch(self, split: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
        rows, labels = [], []
        for i in indices:
            rng = np.random.default_rng([SPLIT_IDS[split], int(i)])
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


def build_model() -> CausalLM:
    """The worker's model (tied embedding and head), initialised from seed 0, in float64."""
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, layers="s4d,attention",
                                mlp_ratio=2.0)).double()


def train_config(grad_accum: int, run_dir: str | Path | None = None, *, fsdp: bool = False) -> TrainConfig:
    """6 steps of a global batch of 8. With a run directory (the FSDP test checks what is kept and checkpointed):
    evaluations on the validation split selecting the weights, all logged, and every checkpoint kept, every 2
    steps."""
    files = {} if run_dir is None else {"out_dir": run_dir, "select_on": "val", "eval_every": 2, "log_every": 1,
                                         "checkpoint_every": 2, "keep_checkpoints": None}
    return TrainConfig(**{"steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "eval_every": 3,
                          "grad_accum": grad_accum, "threads": 1, "fsdp": fsdp, **files})


def main(out: str, grad_accum: int, fsdp: bool) -> None:
    ranks = distributed.init_from_env("cpu")
    model = build_model()
    config = train_config(grad_accum, out, fsdp=True) if fsdp else train_config(grad_accum)
    result = Trainer(model, RaggedTask(), config, progress=False).train(resume=fsdp)
    if ranks.is_main:
        if not fsdp:
            safetensors.torch.save_model(model, out)
        print("final", result.metrics, flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["fsdp"])
