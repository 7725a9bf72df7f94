"""The compiled-kernel mechanism (longseq.kernels): switched off, no compiler, a failed build, an unknown name."""

from __future__ import annotations

import pytest

from longseq import kernels


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A kernels module with its own sources and cache, and no memory of earlier builds."""
    monkeypatch.setattr(kernels, "SOURCES", tmp_path / "csrc")
    monkeypatch.setattr(kernels, "_notices", {})
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(kernels.KERNELS_ENV, "auto")  # CI also runs the suite with LONGSEQ_KERNELS=off
    (tmp_path / "csrc").mkdir()
    kernels._build.cache_clear()
    yield tmp_path / "csrc"
    kernels._build.cache_clear()


def test_off_means_the_pytorch_path_and_says_so(fresh, monkeypatch):
    (fresh / "probe.cpp").write_text("this would not compile")
    monkeypatch.setenv(kernels.KERNELS_ENV, "off")
    assert kernels.load("probe") is None
    assert kernels.kernel_status() == {"all": "pytorch: LONGSEQ_KERNELS=off"}


def test_a_bad_setting_is_refused(monkeypatch):
    monkeypatch.setenv(kernels.KERNELS_ENV, "sometimes")
    with pytest.raises(ValueError, match="LONGSEQ_KERNELS='sometimes': allowed: auto, on"):
        kernels.load("anything")


def test_no_compiler_falls_back_with_one_notice(fresh, monkeypatch):
    (fresh / "probe.cpp").write_text("int main() {}")
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.warns(RuntimeWarning, match="compiled kernel 'probe' unavailable: no C\\+\\+ compiler"):
        assert kernels.load("probe") is None
    assert kernels.load("probe") is None  # cached: the notice is not repeated
    assert kernels.kernel_status() == {"probe": "pytorch: no C++ compiler ('no-such-compiler-here' not found on PATH)"}


def test_a_failed_build_falls_back_naming_the_build_log(fresh):
    (fresh / "broken.cpp").write_text("this is not C++;\n")
    with pytest.warns(RuntimeWarning, match="compiled kernel 'broken' unavailable: its build failed"):
        assert kernels.load("broken") is None
    assert kernels.kernel_status()["broken"].startswith("pytorch: its build failed")


def test_an_unknown_kernel_names_the_available_ones(fresh):
    (fresh / "probe.cpp").write_text("")
    with pytest.raises(ValueError, match=r"kernel 'nope': no source .*; available: probe"):
        kernels.load("nope")


def test_status_builds_nothing(fresh, tmp_path):
    (fresh / "probe.cpp").write_text("this would take a build to find out")
    assert kernels.kernel_status() == {"probe": "compiled on first use"}
    assert not (tmp_path / "cache").exists()  # reported from the policy: the op's first use builds


def test_a_shared_header_is_part_of_the_build_key(fresh, tmp_path):
    """Editing csrc/*.h rebuilds every kernel that may include it (a new cache directory), not a stale one."""
    (fresh / "probe.cpp").write_text("")
    (fresh / "shared.h").write_text("// one\n")
    with pytest.warns(RuntimeWarning):  # an empty source is no extension: the build fails, its folder stays
        kernels.load("probe")
    first = {p.name for p in (tmp_path / "cache").iterdir()}
    kernels._build.cache_clear()
    (fresh / "shared.h").write_text("// two\n")
    with pytest.warns(RuntimeWarning):
        kernels.load("probe")
    assert len({p.name for p in (tmp_path / "cache").iterdir()} - first) == 1


def test_building_every_kernel_up_front_fails_loudly(fresh, capsys):
    """``python -m longseq.kernels`` (CI's first step) exits 1 naming a kernel that cannot be built."""
    from longseq.kernels.__main__ import main

    (fresh / "broken.cpp").write_text("this is not C++;\n")
    with pytest.warns(RuntimeWarning):
        assert main() == 1
    assert "broken: pytorch: its build failed" in capsys.readouterr().out
