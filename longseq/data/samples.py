"""Tiny synthetic copies of every dataset, written in the real formats at the real relative paths.

They let the real-data tasks be built and exercised where the packages are absent (CI, tests, a first try):
``sample_environment(dir)`` writes them and returns the ``LONGSEQ_DATA_<NAME>`` variables that point the loaders
at them. The contents are random (deterministic: fixed seeds), with a little class signal (image brightness, letter
frequencies, GC content) — **never results**: a number measured on them says nothing about the real data.

Sizes: 64 train and 32 test images; 24,000 bytes per text and 24,000 bases per genome, so every task's default
window (4,096) fits in each sequence's test region (its last 20%).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

from longseq.data.dna import GENOMES, Genome
from longseq.data.fashion_mnist import FILE_PREFIX, NUM_CLASSES, SIDE
from longseq.data.fasta import format_fasta, write_fasta
from longseq.data.idx import write_idx
from longseq.data.registry import DATASETS
from longseq.data.text import DOCS_SUFFIX, MILTON_DIR, MILTON_WORKS, SHAKESPEARE_DIR, SHAKESPEARE_WORKS

SAMPLE_IMAGES = {"train": 64, "test": 32}
SAMPLE_TEXT_BYTES = 24_000
SAMPLE_BASES = 24_000
SAMPLE_DOCS = ("library/functions", "library/stdtypes", "tutorial/introduction")
_GC = {"ecoli_536": 0.51, "lambda": 0.5, "mtuberculosis_h37rv": 0.66, "mleprae_tn": 0.58}
_GC_BY_PREFIX = {"saureus": 0.33, "hpylori": 0.39}


def _text(rng: np.random.Generator, letters: str, size: int) -> bytes:
    """``size`` bytes of random "words": ``letters``, spaces (16%) and line ends (2%)."""
    symbols = np.frombuffer((letters + " \n").encode(), dtype=np.uint8)
    p = np.r_[np.full(len(letters), 0.82 / len(letters)), 0.16, 0.02]
    return rng.choice(symbols, size=size, p=p).tobytes()


def _genome_sequence(rng: np.random.Generator, genome: Genome) -> str:
    gc = _GC.get(genome.key) or _GC_BY_PREFIX[genome.key.split("_")[0]]
    p = np.array([1 - gc, gc, gc, 1 - gc]) / 2
    return np.frombuffer(b"ACGT", dtype=np.uint8)[rng.choice(4, size=SAMPLE_BASES, p=p)].tobytes().decode()


def _write_fashion_mnist(root: Path, rng: np.random.Generator) -> None:
    for split, prefix in FILE_PREFIX.items():
        count = SAMPLE_IMAGES[split]
        labels = rng.permutation(np.arange(count) % NUM_CLASSES).astype(np.uint8)
        images = rng.integers(0, 64, size=(count, SIDE, SIDE)) + 16 * labels[:, None, None]
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _write_shakespeare(root: Path, rng: np.random.Generator) -> None:
    for folder, stems, letters in ((SHAKESPEARE_DIR, SHAKESPEARE_WORKS, "abcdefghiklmnorst"),
                                   (MILTON_DIR, MILTON_WORKS, "abdeghilmnoprsuvy")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            (root / folder / f"{stem}_gut.txt").write_bytes(_text(rng, letters, SAMPLE_TEXT_BYTES))


def _write_python_docs(root: Path, rng: np.random.Generator) -> None:
    for name in SAMPLE_DOCS:
        path = root / f"{name}{DOCS_SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_text(rng, "abcdefijlmnoprstuxy_().=", SAMPLE_TEXT_BYTES))


def _write_genomes(name: str, root: Path, rng: np.random.Generator) -> None:
    by_file: dict[tuple[str, str | None], list[tuple[str, str]]] = {}
    for genome in GENOMES.values():
        if genome.dataset == name:
            header = f"{genome.accession} {genome.organism}, complete genome (longseq sample, random bases)"
            by_file.setdefault((genome.file, genome.member), []).append((header, _genome_sequence(rng, genome)))
    members = {member: records for (_, member), records in by_file.items() if member is not None}
    for (file, member), records in by_file.items():
        if member is None:
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            write_fasta(root / file, records)
    if members:
        (file,) = {file for file, member in by_file if member is not None}
        with tarfile.open(root / file, "w:gz") as archive:
            for member, records in members.items():
                data = format_fasta(records, width=80)
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def write_samples(root: str | os.PathLike) -> dict[str, Path]:
    """Write a sample copy of every dataset under ``root/<name>``; dataset name -> its sample root."""
    written = {}
    for seed, name in enumerate(DATASETS):
        target = Path(root) / name
        target.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        if name == "fashion-mnist":
            _write_fashion_mnist(target, rng)
        elif name == "shakespeare":
            _write_shakespeare(target, rng)
        elif name == "python-docs":
            _write_python_docs(target, rng)
        else:
            _write_genomes(name, target, rng)
        written[name] = target
    return written


def sample_environment(root: str | os.PathLike) -> dict[str, str]:
    """Write the samples under ``root`` and return ``{LONGSEQ_DATA_<NAME>: its sample root}`` for every dataset."""
    return {DATASETS[name].env_var: str(path) for name, path in write_samples(root).items()}
