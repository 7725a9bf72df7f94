"""The README's mixers table is generated from the registry: it must match what the registry says now."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from longseq.bench.report import (
    MIXERS_TABLE_COMMAND,
    MIXERS_TABLE_END,
    MIXERS_TABLE_START,
    ReadmeTableError,
    _first_sentence,
    builtin_mixers,
    marked_region,
    mixers_table_markdown,
    replace_marked_region,
)
from longseq.cli import app
from longseq.mixers import info

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_mixers_table_matches_the_registry():
    in_readme = marked_region(README.read_text(encoding="utf-8"), where=str(README))
    generated = mixers_table_markdown(builtin_mixers())
    assert in_readme == generated, (
        f"README.md's mixers table (between {MIXERS_TABLE_START} and {MIXERS_TABLE_END}) differs from the registry; "
        f"regenerate it with: {MIXERS_TABLE_COMMAND}"
    )


def test_the_table_has_one_row_per_builtin_mixer_with_its_declarations():
    infos = builtin_mixers()
    assert "attention" in {i.name for i in infos}
    assert all(i.cls.__module__.startswith("longseq.") for i in infos)  # no test or plugin mixer
    lines = mixers_table_markdown(infos).splitlines()
    assert lines[0] == "| mixer | description | patterns | modes | impls | complexity | state size |"
    assert len(lines) == 2 + len(infos)
    attention = next(line for line in lines if line.startswith("| `attention` |"))
    assert attention == (
        "| `attention` | Multi-head softmax attention in all four patterns — the baseline every efficient mixer is "
        "measured against. | causal_self, noncausal_self, causal_cross, noncausal_cross | parallel; stream, step "
        f"(causal_self, causal_cross) | `sdpa`, `math` | O(L^2 d) | {info('attention').state_formula} |"
    )
    mamba = next(line for line in lines if line.startswith("| `mamba` |"))
    assert "| causal_self, noncausal_self | parallel; stream, step (causal_self) | `chunked`, `ref` |" in mamba


@pytest.mark.parametrize(
    ("doc", "description"),
    [
        ("Mamba (Gu & Dao, 2023): the selective block.\n\nMore.", "Mamba (Gu & Dao, 2023): the selective block."),
        # A first line that wraps mid-sentence; a full stop inside brackets or after "et al." ends nothing.
        ("X (Li et al. 2021, v2.1): one\nsoftmax, e.g. over keys. Then more.", "X (Li et al. 2021, v2.1): one softmax, "
         "e.g. over keys."),
        ("Linear attention: phi(q) . phi(k) per head:\n\n    formula", "Linear attention: phi(q) . phi(k) per head."),
    ],
)
def test_descriptions_are_the_first_sentence_of_the_docstring(doc: str, description: str):
    assert _first_sentence(doc) == description


def test_regeneration_is_one_command_and_idempotent(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{MIXERS_TABLE_START}\n| stale |\n{MIXERS_TABLE_END}\n\nafter\n", encoding="utf-8")
    args = ["list", "--markdown", "--update", str(readme)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and f"updated {readme}" in result.output, result.output
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"# x\n\n{MIXERS_TABLE_START}\n| mixer |")
    assert text.endswith(f"|\n{MIXERS_TABLE_END}\n\nafter\n")
    assert marked_region(text, where="README.md") == mixers_table_markdown(builtin_mixers())
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "is up to date" in again.output and readme.read_text(encoding="utf-8") == text


def test_markdown_prints_the_table():
    result = CliRunner().invoke(app, ["list", "--markdown"])
    assert result.exit_code == 0 and result.output.strip() == mixers_table_markdown(builtin_mixers())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no markers", "found them 0 and 0 times"),
        (f"{MIXERS_TABLE_START}\n{MIXERS_TABLE_START}\n{MIXERS_TABLE_END}", "found them 2 and 1 times"),
        (f"{MIXERS_TABLE_END}\n{MIXERS_TABLE_START}", "comes before"),
    ],
)
def test_missing_or_misplaced_markers_fail_clearly(text: str, message: str):
    with pytest.raises(ReadmeTableError, match=message):
        replace_marked_region(text, "| table |", where="README.md")


def test_update_without_markdown_is_a_one_line_error(tmp_path: Path):
    result = CliRunner().invoke(app, ["list", "--update", str(tmp_path / "README.md")])
    assert result.exit_code == 2 and "give --markdown too" in result.output
