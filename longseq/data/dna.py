"""Real bacterial and phage genomes read offline (Debian ``*-examples`` packages), by catalogue key.

``GENOMES`` lists every complete genome the packages ship (``tasks.md`` Part 2, "DNA"), each with its NCBI
accession, its dataset and its file (for ``kmer-examples``, its member of the nested ``test_data.tar.gz``); the
S. aureus RN4220 assembly (contigs, not a complete genome) is not used. A genome is one FASTA record, found by its
accession (``DatasetFormatError`` if the file lacks it), coded ``ACGTN`` -> 0..4 (``fasta.encode``). Each file is
decoded once per process.

``SPECIES`` picks one genome per species for ``dna_species``: several strains of one species are 99% identical,
so a second strain's windows would repeat, in the other split, sequence the model trained on (the strains'
coordinates do not line up, so the 80/20 cut of each genome would not separate them). The representatives are the
reference strains where the packages have one (S. aureus NCTC 8325, M. tuberculosis H37Rv).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from longseq.data.fasta import FastaRecord, read_fasta, read_fasta_tar
from longseq.data.registry import DatasetFormatError, locate, require_file


@dataclass(frozen=True)
class Genome:
    """A genome: catalogue ``key``, ``organism``, NCBI ``accession``, the ``dataset`` and ``file`` holding it
    (``member``: its name inside a tar archive ``file``)."""

    key: str
    organism: str
    accession: str
    dataset: str
    file: str
    member: str | None = None


_STAPH = "Sibelia/Staphylococcus_aureus/Staphylococcus.fasta.gz"
_PYLORI = "Sibelia/Helicobacter_pylori/Helicobacter_pylori.fasta.gz"
_KMER = "test_data.tar.gz"
GENOMES: dict[str, Genome] = {g.key: g for g in (
    Genome("ecoli_536", "Escherichia coli 536", "NC_008253.1", "bowtie-examples", "genomes/NC_008253.fna.gz"),
    Genome("lambda", "Enterobacteria phage lambda", "NC_001416.1", "bowtie2-examples",
           "reference/lambda_virus.fa.gz"),
    Genome("saureus_nctc8325", "Staphylococcus aureus NCTC 8325", "NC_007795.1", "sibelia-examples",
           "C-Sibelia/Staphylococcus_aureus/NCTC8325.fasta.gz"),
    Genome("saureus_jh1", "Staphylococcus aureus JH1", "NC_009632.1", "sibelia-examples", _STAPH),
    Genome("saureus_n315", "Staphylococcus aureus N315", "NC_002745.2", "sibelia-examples", _STAPH),
    Genome("saureus_tw20", "Staphylococcus aureus TW20", "NC_017331.1", "sibelia-examples", _STAPH),
    Genome("saureus_mssa476", "Staphylococcus aureus MSSA476", "NC_002953.3", "sibelia-examples", _STAPH),
    Genome("hpylori_f32", "Helicobacter pylori F32", "NC_017366.1", "sibelia-examples", _PYLORI),
    Genome("hpylori_gambia94", "Helicobacter pylori Gambia94/24", "NC_017371.1", "sibelia-examples", _PYLORI),
    Genome("mtuberculosis_h37rv", "Mycobacterium tuberculosis H37Rv", "NC_000962.3", "kmer-examples", _KMER,
           "GCF_000195955.2_ASM19595v2_genomic.fna"),
    Genome("mleprae_tn", "Mycobacterium leprae TN", "NC_002677.1", "kmer-examples", _KMER,
           "GCF_000195855.1_ASM19585v1_genomic.fna"),
)}
"""Catalogue key -> genome."""

SPECIES: dict[str, str] = {
    "escherichia_coli": "ecoli_536",
    "staphylococcus_aureus": "saureus_nctc8325",
    "helicobacter_pylori": "hpylori_f32",
    "mycobacterium_tuberculosis": "mtuberculosis_h37rv",
    "mycobacterium_leprae": "mleprae_tn",
    "lambda_phage": "lambda",
}
"""Species -> the catalogue key of its one genome in ``dna_species`` (module docstring)."""


def _records(genome: Genome, root_override: str | os.PathLike | None) -> list[FastaRecord]:
    root = locate(genome.dataset, root_override)
    path = require_file(genome.dataset, root, genome.file)
    if genome.member is None:
        return read_fasta(path)
    members = read_fasta_tar(path)
    if genome.member not in members:
        raise DatasetFormatError(f"{path}: no member {genome.member!r} (members: {', '.join(sorted(members))})")
    return members[genome.member]


def load_genome(key: str, path: str | os.PathLike | None = None) -> np.ndarray:
    """Genome ``key``'s bases, ``(n,) uint8`` codes 0..4, read-only; ``path`` overrides its dataset's root."""
    if key not in GENOMES:
        raise ValueError(f"unknown genome {key!r}; known: {', '.join(GENOMES)}")
    genome = GENOMES[key]
    matches = [record for record in _records(genome, path) if record.has_accession(genome.accession)]
    if len(matches) != 1:
        raise DatasetFormatError(
            f"{genome.dataset}/{genome.file}{':' + genome.member if genome.member else ''}: expected one record "
            f"of {genome.organism} ({genome.accession}), found {len(matches)}"
        )
    return matches[0].codes
