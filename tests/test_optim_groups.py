"""Per-parameter optimizer settings (``set_optim``) and the trainer's parameter groups built from them."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from longseq.modules.optim import optim_settings, set_optim
from longseq.tasks import build_task
from longseq.tasks.base import IGNORE_INDEX
from longseq.train import TrainConfig, Trainer, latest_checkpoint, lr_at, parameter_groups
from longseq.train.trainer import checkpoint_dirs

SLOW_LR = 1e-4
VOCAB = 32


@dataclass
class Output:
    loss: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor
    example_index: torch.Tensor


class MarkedModel(nn.Module):
    """Embedding -> residual ``h + h @ state`` -> head, where ``state`` (a stand-in for an SSM's matrix) and
    ``scale`` train with their own settings."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 8)
        self.state = set_optim(nn.Parameter(0.1 * torch.randn(8, 8)), lr=SLOW_LR, weight_decay=0.0)
        self.scale = set_optim(nn.Parameter(torch.ones(8)), lr=SLOW_LR)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, inputs: torch.Tensor, *, labels: torch.Tensor) -> Output:
        hidden = self.embed(inputs)
        logits = self.head((hidden + hidden @ self.state) * self.scale)
        supervised = labels != IGNORE_INDEX
        targets = labels[supervised]
        selected = logits[supervised]
        loss = nn.functional.cross_entropy(selected, targets)
        return Output(loss, selected.argmax(-1), targets, supervised.nonzero()[:, 0])


def mqar():
    return build_task("mqar", seq_len=16, num_kv_pairs=2, vocab_size=VOCAB, num_train=64, num_test=16)


def train_config(**overrides) -> TrainConfig:
    base = dict(steps=8, batch_size=4, lr=1e-2, weight_decay=0.1, warmup_steps=2, eval_every=4, threads=1)
    return TrainConfig(**{**base, **overrides})


# ----------------------------------------------------------------------------------------------------------
# set_optim


def test_set_optim_stores_settings_and_returns_the_parameter():
    param = nn.Parameter(torch.zeros(2))
    assert optim_settings(param) == {}
    assert set_optim(param, lr=1e-3) is param
    set_optim(param, weight_decay=0)
    assert optim_settings(param) == {"lr": 1e-3, "weight_decay": 0.0}
    set_optim(param, lr=2e-3)  # a later call replaces what it gives, keeps the rest
    assert optim_settings(param) == {"lr": 2e-3, "weight_decay": 0.0}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": 0.0}, r"lr=0.0: allowed a finite number > 0"),
        ({"lr": -1e-3}, r"lr=-0.001: allowed a finite number > 0"),
        ({"lr": math.inf}, r"lr=inf: allowed a finite number > 0"),
        ({"lr": True}, r"lr=True: allowed a finite number > 0"),
        ({"lr": "1e-3"}, r"lr='1e-3': allowed a finite number > 0"),
        ({"weight_decay": -0.1}, r"weight_decay=-0.1: allowed a finite number >= 0"),
        ({"weight_decay": math.nan}, r"weight_decay=nan: allowed a finite number >= 0"),
    ],
)
def test_set_optim_refuses_bad_values_naming_them(settings, message):
    param = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=message):
        set_optim(param, **settings)
    assert optim_settings(param) == {}


def test_set_optim_needs_a_parameter():
    with pytest.raises(TypeError, match=r"set_optim needs an nn\.Parameter, got Tensor"):
        set_optim(torch.zeros(2), lr=1e-3)  # type: ignore[arg-type]


def test_settings_written_by_other_code_are_checked():
    param = nn.Parameter(torch.zeros(2))
    param._optim = {"lr": 1e-3, "betas": (0.9, 0.99)}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"unknown keys \['betas'\]; allowed: lr, weight_decay"):
        optim_settings(param)
    param._optim = {"lr": -1.0}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"parameter _optim lr=-1.0: allowed a finite number > 0"):
        optim_settings(param)


# ----------------------------------------------------------------------------------------------------------
# Parameter groups


def _group_of(groups: list[dict], param: nn.Parameter) -> dict:
    (group,) = [g for g in groups if any(p is param for p in g["params"])]
    return group


def _ids(params: list[nn.Parameter]) -> list[int]:
    return [id(p) for p in params]


def test_marked_parameters_get_groups_of_their_own():
    model = MarkedModel()
    decay, no_decay, marked = parameter_groups(model, 0.1)
    assert (marked["lr"], marked["weight_decay"]) == (SLOW_LR, 0.0)
    # scale has only lr set: the default rule decides its decay (none for a vector), so it shares state's group.
    assert _ids(marked["params"]) == _ids([model.state, model.scale])
    # The others keep the defaults: the optimizer's lr (no "lr" key) and decay on matrices only.
    assert (decay.keys(), decay["weight_decay"]) == ({"params", "weight_decay"}, 0.1)
    assert (no_decay.keys(), no_decay["weight_decay"]) == ({"params", "weight_decay"}, 0.0)


def test_lr_only_keeps_the_default_decay_of_a_matrix():
    model = MarkedModel()
    set_optim(model.head.weight, lr=SLOW_LR)
    group = _group_of(parameter_groups(model, 0.1), model.head.weight)
    assert (group["lr"], group["weight_decay"], _ids(group["params"])) == (SLOW_LR, 0.1, _ids([model.head.weight]))


def test_group_order_is_deterministic_and_frozen_parameters_are_left_out():
    def layout(model: MarkedModel) -> list[tuple]:
        names = {id(p): name for name, p in model.named_parameters()}
        groups = parameter_groups(model, 0.1)
        return [(g.get("lr"), g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in groups]

    assert layout(MarkedModel(0)) == layout(MarkedModel(1)) == [
        (None, 0.1, ["head.weight"]),
        (None, 0.0, ["embed.weight", "head.bias"]),
        (SLOW_LR, 0.0, ["state", "scale"]),
    ]
    frozen = MarkedModel()
    frozen.state.requires_grad_(False)
    assert layout(frozen)[-1] == (SLOW_LR, 0.0, ["scale"])


def test_without_weight_decay_the_default_groups_merge():
    model = MarkedModel()
    assert [(g.get("lr"), g["weight_decay"], len(g["params"])) for g in parameter_groups(model, 0.0)] == [
        (None, 0.0, 3),
        (SLOW_LR, 0.0, 2),
    ]


# ----------------------------------------------------------------------------------------------------------
# Schedule and optimizer step


def test_the_schedule_scales_every_group_by_its_own_base_lr():
    trainer = Trainer(MarkedModel(), mqar(), train_config(), progress=False)
    optimizer, scheduler = trainer.optimizer, trainer.scheduler
    base = [group["initial_lr"] for group in optimizer.param_groups]
    assert base == [1e-2, 1e-2, SLOW_LR]
    for step in range(8):
        for group, group_base in zip(optimizer.param_groups, base, strict=True):
            expected = lr_at(step, base_lr=group_base, warmup_steps=2, total_steps=8, min_lr_ratio=0.1)
            assert group["lr"] == pytest.approx(expected, rel=1e-12)
        assert optimizer.param_groups[2]["lr"] / optimizer.param_groups[0]["lr"] == pytest.approx(SLOW_LR / 1e-2)
        optimizer.step()
        scheduler.step()


def test_an_adamw_step_moves_a_marked_parameter_at_its_own_lr():
    config = train_config(warmup_steps=0)
    model = MarkedModel()
    trainer = Trainer(model, mqar(), config, progress=False)
    gradient = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    reference = nn.Parameter(model.state.detach().clone())
    default_lr = nn.Parameter(model.state.detach().clone())
    for param in (model.state, reference, default_lr):
        param.grad = gradient.clone()

    trainer.optimizer.step()
    torch.optim.AdamW([reference], lr=SLOW_LR, weight_decay=0.0, betas=config.betas, eps=config.adam_eps).step()
    torch.optim.AdamW([default_lr], lr=config.lr, weight_decay=0.1, betas=config.betas, eps=config.adam_eps).step()
    assert torch.equal(model.state.detach(), reference.detach())
    assert not torch.allclose(model.state.detach(), default_lr.detach())


def test_a_run_with_marked_parameters_resumes_bit_identical(tmp_path: Path):
    def run(out_dir: Path, *, resume: bool = False) -> MarkedModel:
        model = MarkedModel()
        Trainer(model, mqar(), train_config(out_dir=out_dir, checkpoint_every=4), progress=False).train(resume=resume)
        return model

    straight = run(tmp_path / "a")
    run(tmp_path / "b")
    (first, _), (last, _) = checkpoint_dirs(tmp_path / "b")[0], checkpoint_dirs(tmp_path / "b")[-1]
    assert (first, last) == (4, 8)
    shutil.rmtree(latest_checkpoint(tmp_path / "b"))  # back to step 4, as after a crash
    resumed = run(tmp_path / "b", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
