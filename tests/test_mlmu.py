"""MLM-U and its next-token baseline (models/mlmu.py), checked against references: the rotary cross-attention
against a float64 loop with the rotary oracle; the masking's law; the MLM-U loss against a hand computation from
the all-positions logits; left-to-right decoding against a slow loop (MLM-U) and against ``CausalLM.generate``
(the baseline); full-path accuracy decoded = teacher-forced; the parameter rule; the experiment wiring and the
shipped ``mazes`` suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longseq.bench.quality import load_suite, plan_quality
from longseq.mixers.attention import Attention
from longseq.mixers.base import Pattern
from longseq.models import MLMU, CausalLM, ModelConfig, PathCausalLM
from longseq.models.mlmu import RotaryCrossAttention, sample_hidden, select_positions
from longseq.ops.rotary import apply_rotary_ref
from longseq.tasks import IGNORE_INDEX, build_task
from longseq.train.config import TrainConfig
from longseq.train.experiment import ExperimentConfig, TaskSpec, build_model, parameter_budget
from longseq.train.trainer import Trainer, count_parameters


def _config(task, **overrides) -> ModelConfig:
    fields = {"d_model": 16, "n_layers": 2, "mixer_hypers": {"attention": {"n_heads": 2}}, **overrides}
    return ModelConfig(vocab_size=task.vocab_size, **fields)


def _batch(task, split="test", count=4):
    inputs, labels = task.batch(split, range(count))
    return inputs, labels, inputs != task.pad_id


@pytest.fixture
def maze():
    return build_task("maze", grid=3)


def test_rotary_cross_attention_matches_a_float64_loop():
    torch.manual_seed(0)
    attn = RotaryCrossAttention(8, n_heads=2).double()
    x, memory = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    positions, memory_positions = torch.tensor([[4, 0, 2], [1, 3, 3]]), torch.arange(5).expand(2, 5)
    memory_mask = torch.tensor([[True, True, False, True, True], [True, False, True, True, False]])
    out = attn.attend(x, positions, memory, memory_positions, memory_mask)

    q, k, v = attn.split_heads(attn.q_proj(x)), attn.split_heads(attn.k_proj(memory)), attn.split_heads(
        attn.v_proj(memory))
    q, k = apply_rotary_ref(q, positions), apply_rotary_ref(k, memory_positions)
    expected = torch.zeros(2, 2, 3, 4, dtype=torch.float64)
    for b in range(2):
        keys = memory_mask[b].nonzero()[:, 0]
        for h in range(2):
            for i in range(3):
                weights = torch.softmax(k[b, h, keys] @ q[b, h, i] / 2.0, dim=0)
                expected[b, h, i] = weights @ v[b, h, keys]
    expected = attn.out_proj(expected.transpose(1, 2).reshape(2, 3, 8))
    assert torch.allclose(out, expected, atol=1e-12)
    # Relative positions only: shifting queries and memory together changes nothing.
    assert torch.allclose(attn.attend(x, positions + 7, memory, memory_positions + 7, memory_mask), out, atol=1e-12)
    # The Mixer form counts positions over valid tokens, as attention's self patterns do.
    assert torch.allclose(attn(x, context=memory), attn.attend(x, torch.arange(3).expand(2, 3), memory,
                                                               memory_positions), atol=1e-12)


def test_select_positions_and_the_masking_law():
    select = torch.tensor([[False, True, False, True], [False, False, False, False], [True, True, True, False]])
    positions, valid = select_positions(select)
    assert positions.tolist() == [[1, 3, 0], [0, 0, 0], [0, 1, 2]]
    assert valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]

    generator = torch.Generator().manual_seed(0)
    path = torch.zeros(4000, 600, dtype=torch.bool)
    path[:, 100:] = True  # a prefix of 100 positions that may never be hidden
    hidden = sample_hidden(path, generator)
    assert not hidden[:, :100].any()
    # The masking rate 1 - r of a row is uniform on [0, 1]: its hidden fraction's quantiles are the uniform's.
    fraction = hidden[:, 100:].double().mean(dim=1).numpy()
    assert np.allclose(np.quantile(fraction, [0.1, 0.25, 0.5, 0.75, 0.9]), [0.1, 0.25, 0.5, 0.75, 0.9], atol=0.03)


def test_the_mlmu_loss_equals_a_hand_computation(maze):
    torch.manual_seed(0)
    model = MLMU(_config(maze), mask_id=maze.mask_id).double().eval()
    inputs, labels, mask = _batch(maze)
    path = labels != IGNORE_INDEX
    hidden = path & (torch.arange(inputs.shape[1]) % 2 == 0)
    hidden[3] = False  # a row with nothing hidden contributes nothing
    out = model.masked_loss(inputs, labels, hidden, mask=mask)

    # By hand: [MASK] at the hidden positions and at the padding, the logits at every position, the cross-entropy
    # at the hidden ones averaged over them.
    tokens = inputs.clone()
    tokens[hidden | ~mask] = maze.mask_id
    logits = model(tokens).logits
    log_probs = F.log_softmax(logits, dim=-1)
    losses = [-log_probs[b, t, inputs[b, t]] for b, t in hidden.nonzero().tolist()]
    assert torch.allclose(out.loss, torch.stack(losses).mean(), atol=1e-12)
    assert torch.equal(out.targets, inputs[hidden]) and torch.equal(out.example_index, hidden.nonzero()[:, 0])
    assert torch.equal(out.predictions, logits[hidden].argmax(dim=-1))
    with pytest.raises(ValueError, match=r"hidden positions must be path positions"):
        model.masked_loss(inputs, labels, ~path, mask=mask)


def test_the_training_forward_hides_path_tokens_only(maze, monkeypatch):
    torch.manual_seed(0)
    model = MLMU(_config(maze), mask_id=maze.mask_id).double().train()
    inputs, labels, mask = _batch(maze, "train", 8)
    seen = []
    predict = model.predict
    monkeypatch.setattr(model, "predict", lambda tokens, positions: seen.append(tokens) or predict(tokens, positions))
    torch.manual_seed(5)
    out = model(inputs, labels=labels, mask=mask)
    torch.manual_seed(5)
    expected = model.masked_loss(inputs, labels, sample_hidden(labels != IGNORE_INDEX), mask=mask)
    assert torch.equal(out.loss, expected.loss) and out.loss.requires_grad
    prefix = mask & (labels == IGNORE_INDEX)
    assert torch.equal(seen[0][prefix], inputs[prefix])  # the maze, origin and target are always visible
    assert bool((seen[0][~mask] == maze.mask_id).all())  # padding reads as hidden, so the length does not show


def _slow_mlmu_decode(model, inputs, labels, mask):
    """One row and one position at a time, from the all-positions logits."""
    predictions, logits = [], []
    for b in range(inputs.shape[0]):
        tokens = inputs[b].clone()
        path = (labels[b] != IGNORE_INDEX).nonzero()[:, 0].tolist()
        tokens[path] = model.mask_id
        tokens[~mask[b]] = model.mask_id
        for t in path:
            step = model(tokens[None]).logits[0, t]
            tokens[t] = step.argmax()
            predictions.append(int(tokens[t]))
            logits.append(step)
    return torch.tensor(predictions), torch.stack(logits)


def test_mlmu_decoding_left_to_right_equals_a_slow_loop(maze):
    torch.manual_seed(1)
    model = MLMU(_config(maze), mask_id=maze.mask_id).double().eval()
    inputs, labels, mask = _batch(maze, count=5)
    with torch.no_grad():
        out = model(inputs, labels=labels, mask=mask)
        predictions, logits = _slow_mlmu_decode(model, inputs, labels, mask)
    assert torch.equal(out.predictions, predictions)
    assert torch.allclose(out.logits, logits, atol=1e-10)
    assert torch.equal(out.targets, labels[labels != IGNORE_INDEX])
    assert torch.allclose(out.loss, F.cross_entropy(logits, out.targets), atol=1e-12)


def test_the_baseline_decodes_as_generate_and_full_accuracy_equals_teacher_forcing():
    task = build_task("maze", grid=3, objective="next_token")
    torch.manual_seed(2)
    model = PathCausalLM(_config(task)).double().eval()
    inputs, labels, mask = _batch(task, count=6)
    starts = [int((row != IGNORE_INDEX).nonzero()[0, 0]) + 1 for row in labels]  # first path token of each row
    lengths = (labels != IGNORE_INDEX).sum(dim=1).tolist()
    # Rows 0-2 get the model's own greedy path as their truth (so that they are solved), rows 3-5 keep theirs.
    with torch.no_grad():
        for b in range(3):
            generated = CausalLM.generate(model, inputs[b:b + 1, :starts[b]], lengths[b], temperature=0.0)
            inputs[b, starts[b]:starts[b] + lengths[b]] = generated[0, starts[b]:]
            labels[b, starts[b] - 1:starts[b] - 1 + lengths[b]] = generated[0, starts[b]:]
        decoded = model(inputs, labels=labels, mask=mask)
        teacher = CausalLM.forward(model, inputs, labels=labels, mask=mask)
    for b in range(6):
        generated = CausalLM.generate(model, inputs[b:b + 1, :starts[b]], lengths[b], temperature=0.0)
        assert decoded.predictions[decoded.example_index == b].tolist() == generated[0, starts[b]:].tolist()
    full = build_task("maze", grid=3, objective="next_token")
    decoded_full = full.score(decoded.predictions, decoded.targets, decoded.example_index, 6)
    teacher_full = full.score(teacher.predictions, teacher.targets, teacher.example_index, 6)
    assert decoded_full.tolist() == teacher_full.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(("d_model", "n_layers"), [(64, 2), (64, 4), (128, 4)])
def test_the_two_models_have_the_same_size_within_two_d_model(maze, d_model, n_layers):
    """The rule: n_layers counts all blocks; MLM-U's encoder and decoder get half each, the baseline all of them.
    They differ by the query vector and the decoder's final norm: 2·d_model parameters."""
    config = _config(maze, d_model=d_model, n_layers=n_layers, mixer_hypers={"attention": {"n_heads": 4}})
    mlmu, baseline = count_parameters(MLMU(config, mask_id=1)), count_parameters(PathCausalLM(config))
    assert mlmu - baseline == 2 * d_model
    assert abs(mlmu / baseline - 1) < 0.01


def test_refusals(maze, monkeypatch):
    with pytest.raises(ValueError, match=r"n_layers=3 counts the encoder and decoder blocks together"):
        MLMU(_config(maze, n_layers=3), mask_id=1)
    with pytest.raises(ValueError, match=r"mask_id=99 is not a token id; allowed: 0..21"):
        MLMU(_config(maze), mask_id=99)
    with pytest.raises(ValueError, match=r"cross_mixer='linear_attention'"):
        MLMU(_config(maze, cross_mixer="linear_attention"), mask_id=1)
    monkeypatch.setattr(Attention, "patterns", frozenset({Pattern.CAUSAL_SELF}))
    with pytest.raises(ValueError, match=r"encoder reads the whole sequence \(noncausal_self\): mixer 'attention' "
                                         r"does not support pattern 'noncausal_self'"):
        MLMU(_config(maze), mask_id=1)


def test_a_sub_quadratic_encoder_trains_and_decodes(maze):
    torch.manual_seed(0)
    model = MLMU(_config(maze, layers="linear_attention", mixer_hypers={}), mask_id=maze.mask_id)
    inputs, labels, mask = _batch(maze, "train", 4)
    model(inputs, labels=labels, mask=mask).loss.backward()
    assert model.encoder.blocks[0].mixer.name == "linear_attention"
    assert all(p.grad is not None for p in model.encoder.parameters())
    with torch.no_grad():
        out = model.eval()(inputs, labels=labels, mask=mask)
    assert out.predictions.shape == out.targets.shape == ((labels != IGNORE_INDEX).sum(),)


@pytest.mark.parametrize(("objective", "kind"), [("mlmu", MLMU), ("next_token", PathCausalLM)])
def test_build_model_follows_the_objective_and_the_trainer_scores_decoded_paths(objective, kind, tmp_path):
    config = ExperimentConfig(
        task=TaskSpec(name="maze", params={"grid": 3, "objective": objective, "num_train": 64, "num_test": 6}),
        model={"d_model": 16, "n_layers": 2, "mixer_hypers": {"attention": {"n_heads": 2}}},
        train=TrainConfig(steps=3, batch_size=4, eval_every=3, eval_batch_size=4, threads=1),
    )
    task = config.task.build()
    built = build_model(config, task)
    assert type(built.model) is kind and built.config["objective"] == objective
    assert (built.state_floats is None) == (objective == "mlmu")
    torch.manual_seed(0)
    trainer = Trainer(built.model, task, config.train, progress=False)
    metrics = trainer.train().metrics
    assert 0.0 <= metrics["full_acc"] <= 1.0 and np.isfinite(metrics["loss"])


def test_the_shipped_suite_compares_the_objectives_at_equal_size_and_steps():
    plan = plan_quality(load_suite("mazes"))
    assert plan.dropped == [] and len(plan.runs) == 4
    by_grid: dict[int, dict[str, tuple[int, int]]] = {}
    for run in plan.runs:
        params = run.config.task.params
        size = parameter_budget(run.config).n_params
        by_grid.setdefault(params["grid"], {})[params["objective"]] = (size, run.config.train.steps)
    d_model = plan.runs[0].config.model["d_model"]
    for runs in by_grid.values():
        (mlmu_size, mlmu_steps), (nt_size, nt_steps) = runs["mlmu"], runs["next_token"]
        assert mlmu_size - nt_size == 2 * d_model and mlmu_steps == nt_steps
