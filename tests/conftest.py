"""One torch thread per test process: CI runs two pytest-xdist workers on two cores, and two workers with torch's
default of two threads each oversubscribe them; small kernels (a float64 depthwise conv1d) then spin-wait for
hundreds of milliseconds instead of a tenth of one. Tests that need a thread count set their own.

Real-data tasks (sfmnist, bytetext, dna_*) read tiny sample copies of their datasets, written in the real formats by
``longseq.data.samples``: CI installs no dataset, and the registry-wide task checks must build every task. Example
caches (Pathfinder's) live in a session folder."""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _sample_datasets(tmp_path_factory):
    from longseq.data.samples import sample_environment

    env = sample_environment(tmp_path_factory.mktemp("datasets"))
    # The example caches (Pathfinder) of this session only: a developer's ~/.cache/longseq is never read.
    env["LONGSEQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("example-cache"))
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def calls(ext, monkeypatch):
    """For the compiled-kernel tests (each module defines ``ext``, its extension module): calls(name) -> a list that
    grows by one per call of the extension's function ``name``: proof that a result came from the compiled path (or,
    empty, that it did not)."""
    def spy(name):
        seen, original = [], getattr(ext, name)

        def wrapper(*args):
            seen.append(name)
            return original(*args)
        monkeypatch.setattr(ext, name, wrapper)
        return seen
    return spy
