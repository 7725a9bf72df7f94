"""Length extrapolation: a model trained at one length is also scored at longer ones (``extra_evals``), a mixer
bound to a shorter max_len records its refusal instead of failing the run, and a finding with ``x: eval.<param>``
plots the training length beside the evaluated ones."""

from __future__ import annotations

from pathlib import Path

from longseq.bench.quality import load_suite
from longseq.bench.report import build_sections
from longseq.results import ResultsStore
from longseq.train.experiment import ExperimentConfig, TaskSpec, run_experiment


def _config(tmp_path: Path, layers: str, **model: object) -> ExperimentConfig:
    return ExperimentConfig(
        task=TaskSpec(name="induction_heads", params={"seq_len": 16, "num_train": 64, "num_test": 8}),
        model={"d_model": 16, "n_layers": 1, "layers": layers, "mixer_hypers": {"attention": {"n_heads": 2}},
               **model},
        train={"steps": 2, "batch_size": 4, "eval_every": 2, "out_dir": str(tmp_path / layers), "threads": 1},
        extra_evals=[{"seq_len": 32}, {"seq_len": 64}],
    )


def test_the_final_model_is_scored_at_each_extra_length(tmp_path: Path) -> None:
    result = run_experiment(_config(tmp_path, "attention"), progress=False)
    for name in ("seq_len=32", "seq_len=64"):
        assert 0.0 <= result.metrics[f"accuracy@{name}"] <= 1.0


def test_a_length_past_the_mixers_bound_is_recorded_as_refused(tmp_path: Path) -> None:
    result = run_experiment(_config(tmp_path, "longconv", max_len=32), progress=False)
    assert result.metrics["accuracy@seq_len=32"] is not None
    assert result.metrics["accuracy@seq_len=64"] is None
    assert "max_len=32" in result.metrics["error@seq_len=64"]


def test_a_finding_over_eval_lengths_shows_the_training_length_beside_them(tmp_path: Path) -> None:
    suite_path = tmp_path / "extrapolate.yaml"
    suite_path.write_text("""
name: extrapolate
description: induction heads trained at 16, tested at 32 and 64
budget_s: 60
mixers: [attention]
tasks:
  - name: induction_heads
    params: {seq_len: 16, num_train: 64, num_test: 8}
    eval: [{seq_len: 32}, {seq_len: 64}]
model: {d_model: 16, n_layers: 1, mixer_hypers: {attention: {n_heads: 2}}}
train: {steps: 2, batch_size: 4, eval_every: 2, threads: 1}
findings:
  - title: Induction heads against length
    claim: Trained at 16 tokens.
    x: eval.seq_len
""")
    suite = load_suite(suite_path)
    from longseq.bench.quality import run_quality

    with ResultsStore(tmp_path / "r.db") as store:
        run_quality(suite=suite, store=store, budget_s=60, log=lambda m: None)
        sections = build_sections([], store.runs(), None, [suite])
    (finding,) = [s for s in sections if s.title == "Induction heads against length"]
    table = next(b for b in finding.blocks if hasattr(b, "rows"))
    assert table.headers[1:] == ["16", "32", "64"]
    assert table.rows[0][0] == "attention" and all(cell != "—" for cell in table.rows[0][1:])
