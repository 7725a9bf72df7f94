"""Real-genome tasks (Debian ``*-examples`` packages, ``longseq.data.dna``): species classification of long
windows, and next-base language modelling on a held-out genome (HyenaDNA's setting, scaled down).

Bases are tokens ``A C G T N`` -> 0..4 (vocabulary 5; ``N`` also stands for the rare IUPAC ambiguity codes). Windows
are forward-strand only. Per example the generator is ``example_rng(seed, split, index)`` (``tasks/_real.py``).

**dna_species** (classification): a window of ``seq_len`` bases (the issue's range is 1K-64K; default 4,096),
labelled by the species it comes from, one genome per species (``data.dna.SPECIES``: several strains of one species
would put near-identical sequence in both splits). Default species, in label order: *E. coli* 536, *S. aureus*
NCTC 8325, *H. pylori* F32, *M. tuberculosis* H37Rv, *M. leprae* TN (datasets ``bowtie-examples``,
``sibelia-examples``, ``kmer-examples``); ``lambda_phage`` (``bowtie2-examples``) can be added, for windows up to
its 9,700-base test region. The class is uniform, then the window uniform within the class's genome. **Split:**
the first 80% of each genome is train, the last 20% test (``data.windows``), so no test window overlaps a train
window; the validation split (``num_test`` examples) draws other windows from the test regions
(``tasks/_real.py``). Repeated elements of a genome (rRNA operons, insertion sequences) occur on both sides of the
cut, as repeats do across HyenaDNA's held-out human chromosomes. Composition (GC content: 33% to 66% here)
separates some species at any length; telling the two mycobacteria or *E. coli* from the rest from short windows is
harder.

**dna_lm** (token task): a window of ``seq_len + 1`` bases gives ``inputs`` its first ``seq_len`` and ``labels``
its last ``seq_len`` (the next base at every position, all supervised). Train windows come from the
``train_genomes``, test windows from ``test_genome``, held out whole, as HyenaDNA holds out chromosomes. Default:
train on *E. coli*, *S. aureus*, *H. pylori* and *M. tuberculosis*, test on *M. leprae* (a species not trained on,
of a genus that is). Windows are uniform over the split's genomes' windows (a longer genome gives more). The
metric is next-base accuracy (the ``Task`` metric receives predicted ids, not probabilities; 0.25 to ~0.3 is what
base composition alone gives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import Field
from torch import Tensor

from longseq.data.dna import GENOMES, SPECIES, load_genome
from longseq.data.fasta import VOCAB
from longseq.data.windows import Region
from longseq.tasks._real import DataPaths, WindowClassification, WindowDraws, WindowTask, check_paths
from longseq.tasks._tokens import PositiveInt, Seed
from longseq.tasks.base import register_task

SpeciesName = Literal["escherichia_coli", "staphylococcus_aureus", "helicobacter_pylori", "mycobacterium_tuberculosis",
                      "mycobacterium_leprae", "lambda_phage"]
GenomeKey = Literal["ecoli_536", "lambda", "saureus_nctc8325", "saureus_jh1", "saureus_n315", "saureus_tw20",
                    "saureus_mssa476", "hpylori_f32", "hpylori_gambia94", "mtuberculosis_h37rv", "mleprae_tn"]
DEFAULT_SPECIES: tuple[SpeciesName, ...] = ("escherichia_coli", "staphylococcus_aureus", "helicobacter_pylori",
                                            "mycobacterium_tuberculosis", "mycobacterium_leprae")
DEFAULT_TRAIN_GENOMES: tuple[GenomeKey, ...] = ("ecoli_536", "saureus_nctc8325", "hpylori_f32", "mtuberculosis_h37rv")
DEFAULT_TEST_GENOME: GenomeKey = "mleprae_tn"


def _datasets(keys: Sequence[str]) -> list[str]:
    return sorted({GENOMES[key].dataset for key in keys})


def _genome(key: str, paths: dict[str, str] | None) -> np.ndarray:
    return load_genome(key, (paths or {}).get(GENOMES[key].dataset))


@register_task("dna_species")
class DnaSpecies(WindowClassification):
    """Species of a window of real bacterial DNA (4,096 bases, 5 species by default; each genome's last 20% is test).

    Parameters: ``species`` (label order; default E. coli, S. aureus, H. pylori, M. tuberculosis, M. leprae;
    ``lambda_phage`` optional), ``seq_len``, the split sizes (50,000 and 5,000), ``seed``, ``paths`` (dataset name
    -> DIR; defaults ``LONGSEQ_DATA_<NAME>`` or the Debian packages' paths, see ``longseq data``).
    """

    name = "dna_species"
    vocab_size = len(VOCAB)

    def __init__(
        self,
        *,
        species: Annotated[list[SpeciesName], Field(min_length=2)] = list(DEFAULT_SPECIES),  # noqa: B006 (copied below)
        seq_len: PositiveInt = 4096,
        num_train: PositiveInt = 50_000,
        num_test: PositiveInt = 5_000,
        seed: Seed = 0,
        paths: DataPaths = None,
    ) -> None:
        if len(set(species)) != len(species):
            self.refuse([f"species={list(species)}: a species is listed twice; allowed: distinct species"])
        keys = [SPECIES[name] for name in species]
        check_paths(self.name, paths, _datasets(keys))
        self.species, self.seq_len, self.num_train, self.num_test = tuple(species), seq_len, num_train, num_test
        self.seed, self.paths = seed, paths
        sequences = {name: [(key, _genome(key, paths))] for name, key in zip(species, keys, strict=True)}
        self.windows = WindowDraws.cut_sequences(self.name, seq_len, sequences)
        self.class_names = self.species
        self.num_classes = len(self.species)


@register_task("dna_lm")
class DnaLM(WindowTask):
    """Next-base language modelling on real bacterial genomes, tested on a held-out genome (HyenaDNA-style, small).

    Default: train on E. coli, S. aureus, H. pylori, M. tuberculosis; test on M. leprae.

    Parameters: ``train_genomes``, ``test_genome`` (``data.dna.GENOMES`` keys), ``seq_len`` (1,024), the split
    sizes (100,000 and 2,000), ``seed``, ``paths`` (dataset name -> DIR, as ``dna_species``).
    """

    name = "dna_lm"
    vocab_size = len(VOCAB)

    def __init__(
        self,
        *,
        train_genomes: Annotated[list[GenomeKey], Field(min_length=1)] = list(DEFAULT_TRAIN_GENOMES),  # noqa: B006
        test_genome: GenomeKey = DEFAULT_TEST_GENOME,
        seq_len: PositiveInt = 1024,
        num_train: PositiveInt = 100_000,
        num_test: PositiveInt = 2_000,
        seed: Seed = 0,
        paths: DataPaths = None,
    ) -> None:
        problems = []
        if len(set(train_genomes)) != len(train_genomes):
            problems.append(f"train_genomes={list(train_genomes)}: a genome is listed twice")
        if test_genome in train_genomes:
            problems.append(f"test_genome={test_genome!r} is among train_genomes; allowed: a held-out genome")
        self.refuse(problems)
        check_paths(self.name, paths, _datasets([*train_genomes, test_genome]))
        self.train_genomes, self.test_genome = tuple(train_genomes), test_genome
        self.seq_len, self.num_train, self.num_test, self.seed, self.paths = seq_len, num_train, num_test, seed, paths
        genomes = {key: _genome(key, paths) for key in (*train_genomes, test_genome)}
        whole = {key: Region(key, data, 0, data.shape[0]) for key, data in genomes.items()}
        regions = {"train": {"genome": [whole[key] for key in train_genomes]}, "test": {"genome": [whole[test_genome]]}}
        self.windows = WindowDraws(self.name, seq_len + 1, regions, length_name="seq_len + 1")

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, seq_len) int64`` bases 0..4 and ``labels: (B, seq_len) int64`` the next base of each."""
        windows, _ = self.stacked(split, indices)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
