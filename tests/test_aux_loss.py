"""Auxiliary losses: the collecting scope, the models returning them, and the trainer back-propagating and logging
them while its train loss and evaluation stay the task loss."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from longseq.models.classifier import SequenceClassifier
from longseq.models.config import ModelConfig
from longseq.models.encdec import EncoderDecoder
from longseq.models.lm import CausalLM, LMOutput, supervised_output
from longseq.modules.aux_loss import add_aux_loss, collect_aux_losses, collecting
from longseq.tasks.mqar import MQAR
from longseq.train import TrainConfig, Trainer

# -- the scope -------------------------------------------------------------------------------------------------------


def test_scope_sums_by_name_and_nothing_is_kept_without_one():
    add_aux_loss("dropped", torch.tensor(5.0))  # no scope: dropped
    assert not collecting()
    with collect_aux_losses() as aux:
        assert collecting()
        add_aux_loss("a", torch.tensor(1.0))
        add_aux_loss("a", torch.tensor([2.0]))
        add_aux_loss("b", torch.tensor(0.5))
    assert not collecting()
    assert set(aux.values) == {"a", "b"} and aux.values["a"].item() == 3.0
    assert aux.total().item() == 3.5
    with collect_aux_losses() as empty:
        pass
    assert empty.total() is None


def test_scopes_nest_and_close_on_errors():
    with collect_aux_losses() as outer:
        with collect_aux_losses() as inner:
            add_aux_loss("x", torch.tensor(1.0))
        add_aux_loss("y", torch.tensor(2.0))
    assert set(inner.values) == {"x"} and set(outer.values) == {"y"}
    with pytest.raises(RuntimeError), collect_aux_losses():
        raise RuntimeError
    assert not collecting()


def test_an_aux_loss_must_be_a_scalar():
    with collect_aux_losses(), pytest.raises(ValueError, match="'bad' must be a scalar"):
        add_aux_loss("bad", torch.zeros(2))


# -- a toy module with a known aux loss, inside a model --------------------------------------------------------------


class Penalised(nn.Module):
    """Identity on x that adds ``weight · p²`` as an aux loss in training; p touches nothing else."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(3.0))
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and collecting():
            add_aux_loss("penalty", self.weight * self.p ** 2)
        return x


class ToyLM(nn.Module):
    """Embedding -> Penalised -> head, its forward in an aux-loss scope as the library's models do."""

    def __init__(self, vocab: int, weight: float | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, vocab)
        self.penalised = Penalised(weight) if weight is not None else None

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> LMOutput:
        with collect_aux_losses() as aux:
            hidden = self.embed(inputs)
            if self.penalised is not None:
                hidden = self.penalised(hidden)
        out = supervised_output(hidden, labels, self.head)
        out.aux_loss = aux.total()
        return out


def _task() -> MQAR:
    return MQAR(vocab_size=20, seq_len=8, num_kv_pairs=2, num_train=32, num_test=8)


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(steps=3, batch_size=4, lr=1e-2, eval_every=2, log_every=1, threads=1, grad_clip=None,
                weight_decay=0.0, out_dir=tmp_path)
    return TrainConfig(**{**base, **kw})


def _records(tmp_path, kind: str) -> list[dict]:
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_the_trainer_applies_the_aux_gradient_and_logs_the_aux_loss_beside_the_task_loss(tmp_path):
    with_aux, without = ToyLM(20, weight=0.5), ToyLM(20, weight=None)
    trainers = [Trainer(m, _task(), _config(tmp_path / n), progress=False)
                for m, n in ((with_aux, "a"), (without, "b"))]
    applied: dict[str, torch.Tensor] = {}
    step = trainers[0].optimizer.step

    def record_then_step(*args, **kwargs):
        if not applied:
            applied.update({n: p.grad.clone() for n, p in with_aux.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainers[0].optimizer.step = record_then_step
    for t in trainers:
        t.train()
    assert applied["penalised.p"].item() == pytest.approx(2 * 0.5 * 3.0)  # d(0.5·p²)/dp at p = 3
    a, b = _records(tmp_path / "a", "train"), _records(tmp_path / "b", "train")
    assert a[0]["aux_loss"] == pytest.approx(0.5 * 9.0) and all("aux_loss" in r for r in a)
    assert a[0]["loss"] == pytest.approx(b[0]["loss"])  # the logged train loss is the task loss
    assert all("aux_loss" not in r for r in b)
    assert all("aux_loss" not in r for r in _records(tmp_path / "a", "eval"))


def test_evaluation_reports_the_task_loss_only():
    model = ToyLM(20, weight=100.0)
    trainer = Trainer(model, _task(), TrainConfig(steps=1, batch_size=4, threads=1), progress=False)
    metrics = trainer.evaluate()
    model.penalised = None
    assert trainer.evaluate() == metrics


# -- the library's models ----------------------------------------------------------------------------------------


def _config_for(layers: str) -> ModelConfig:
    hypers = {"transformer_vq": {"d_k": 4, "n_codes": 4, "block_len": 4, "beta": 0.5}, "attention": {"n_heads": 2}}
    return ModelConfig(vocab_size=12, d_model=8, n_layers=2, layers=layers,
                       mixer_hypers={k: v for k, v in hypers.items() if k in layers})


@pytest.mark.parametrize("kind", ["lm", "classifier", "encdec"])
def test_models_return_aux_losses_in_training_only(kind):
    torch.manual_seed(0)
    tokens = torch.randint(0, 12, (2, 10))
    config = _config_for("transformer_vq")
    if kind == "lm":
        model = CausalLM(config)
        run = lambda: model(tokens, labels=tokens)  # noqa: E731
    elif kind == "classifier":
        model = SequenceClassifier(config, 3)
        run = lambda: model(tokens, labels=torch.tensor([0, 2]))  # noqa: E731
    else:
        model = EncoderDecoder(config.model_copy(update={"cross_mixer": "transformer_vq"}))
        run = lambda: model(tokens, tokens, labels=tokens)  # noqa: E731
    model.train()
    out = run()
    assert out.aux_loss is not None and out.aux_loss.requires_grad and out.aux_loss.item() > 0
    model.eval()
    assert run().aux_loss is None


def test_models_without_aux_modules_return_none():
    model = CausalLM(_config_for("attention")).train()
    tokens = torch.randint(0, 12, (2, 10))
    assert model(tokens, labels=tokens).aux_loss is None
