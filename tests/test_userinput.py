"""The shared parsers of user-typed text: KEY=VALUE items (command line, speed specs, quality grids) and layer
patterns (model configs, quality suites)."""

from __future__ import annotations

import re

import pytest

from longseq.models.config import parse_layer_pattern, parse_layer_unit
from longseq.userinput import parse_assignment, parse_assignments

# ----------------------------------------------------------------------------------------------------------
# KEY=VALUE


def test_parse_assignment_splits_at_the_first_equals_and_strips():
    assert parse_assignment(" n_heads = 2 ", "--hyper") == ("n_heads", "2")
    assert parse_assignment("task.seq_len=64", "grid item") == ("task.seq_len", "64")
    assert parse_assignment("expr=a=b", "--hyper") == ("expr", "a=b")


@pytest.mark.parametrize("item", ["n_heads", "=2", "n_heads=", " = ", ""])
def test_parse_assignment_refuses_an_item_without_key_or_value(item):
    with pytest.raises(ValueError, match=f"^{re.escape(f'--hyper {item!r} must look like KEY=VALUE')}$"):
        parse_assignment(item, "--hyper")


def test_parse_assignment_errors_show_the_callers_form():
    with pytest.raises(ValueError, match=r"grid item 'lr' must look like KEY=V1,V2$"):
        parse_assignment("lr", "grid item", "KEY=V1,V2")


def test_parse_assignments_reads_yaml_scalars_in_order():
    parsed = parse_assignments(["n_heads=2", "impl=math", "rope=false", "base=1e4", "dropout=0.1", "x=null"], "--hyper")
    assert parsed == {"n_heads": 2, "impl": "math", "rope": False, "base": 10000.0, "dropout": 0.1, "x": None}
    assert list(parsed) == ["n_heads", "impl", "rope", "base", "dropout", "x"]
    assert isinstance(parsed["base"], float) and parse_assignments([], "--hyper") == {}


def test_parse_assignments_uses_the_callers_value_parser():
    assert parse_assignments(["lr=1,2"], "grid item", parse_value=lambda text: text.split(",")) == {"lr": ["1", "2"]}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["n_heads=2", "n_heads=4"], r"--hyper 'n_heads=4': key 'n_heads' is given twice; give each key once"),
        (["n_heads=[2]"], r"--hyper 'n_heads=\[2\]': value '\[2\]' must be a number, string or bool"),
        (["n_heads: 2"], r"--hyper 'n_heads: 2' must look like KEY=VALUE"),
    ],
)
def test_parse_assignments_errors_name_the_item(items, message):
    with pytest.raises(ValueError, match=message):
        parse_assignments(items, "--hyper")


# ----------------------------------------------------------------------------------------------------------
# Layer patterns


def test_parse_layer_unit_expands_counts_and_ignores_whitespace():
    assert parse_layer_unit("attention") == ["attention"]
    assert parse_layer_unit("mamba*3,attention") == ["mamba", "mamba", "mamba", "attention"]
    assert parse_layer_unit(" mamba * 2 ,\tattention ") == ["mamba", "mamba", "attention"]


def test_parse_layer_pattern_tiles_the_unit():
    assert parse_layer_pattern("mamba*2,attention", 7) == ["mamba", "mamba", "attention"] * 2 + ["mamba"]
    assert parse_layer_pattern("mamba*3,attention", 2) == ["mamba", "mamba"]


@pytest.mark.parametrize(
    ("layers", "bad_item"),
    [("mamba*0", "mamba*0"), ("mamba*x", "mamba*x"), ("*2", "*2"), ("mamba,,attention", ""), ("", "")],
)
def test_parse_layer_unit_names_the_bad_item(layers, bad_item):
    expected = f"layers={layers!r}: each item is NAME or NAME*COUNT (COUNT >= 1), got {bad_item!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        parse_layer_unit(layers)


def test_parse_layer_unit_needs_a_string():
    with pytest.raises(ValueError, match=r"layers=\['mamba'\] must be a layer pattern \(a str"):
        parse_layer_unit(["mamba"])  # type: ignore[arg-type]
