"""Peer wrappers (benchmarks/peers): they register only when imported explicitly, and they time the real thing.

Registering happens only in child processes here: the contract suite iterates over the registry, and peers must
never enter it. Tests that need transformers (the ``peers`` extra) or mamba_ssm skip cleanly without them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from longseq.mixers import PatternNotSupported, available
from longseq.testing.contract import random_splits, stream

ROOT = Path(__file__).resolve().parents[1]
REGISTER = ROOT / "benchmarks" / "peers" / "register.py"
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed (.[peers])")
needs_mamba_ssm = pytest.mark.skipif(not HAS_MAMBA_SSM, reason="mamba_ssm is not installed (benchmarks/peers)")
HF_PEERS = ("peer:hf-mamba", "peer:hf-mamba2")
MAMBA_SSM_PEERS = ("peer:mamba-ssm-ref", "peer:mamba-ssm-ssd")
# Each peer: the module attribute holding its class, and what it needs installed.
PEER_CLASSES = {
    "peer:hf-mamba": ("hf", "HFMamba", needs_transformers),
    "peer:hf-mamba2": ("hf", "HFMamba2", needs_transformers),
    "peer:mamba-ssm-ref": ("ms", "MambaSsmRef", needs_mamba_ssm),
    "peer:mamba-ssm-ssd": ("ms", "MambaSsmSsd", needs_mamba_ssm),
}
PEER_PARAMS = [pytest.param(name, marks=mark, id=name) for name, (_, _, mark) in PEER_CLASSES.items()]


@pytest.fixture(scope="module")
def peers() -> SimpleNamespace:
    """The peer modules, imported as a package from the repository root; importing them registers nothing."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT))
        from benchmarks.peers import common, hf_mixers, mamba_ssm_mixers

        return SimpleNamespace(common=common, hf=hf_mixers, ms=mamba_ssm_mixers)


def _peer(peers: SimpleNamespace, name: str, d_model: int = 16):
    module, cls_name, _ = PEER_CLASSES[name]
    cls = getattr(getattr(peers, module), cls_name)
    torch.manual_seed(0)
    return cls(d_model, **cls.test_hypers[0]).eval()


def _run_child(code: str, timeout: float = 300) -> tuple[dict, str]:
    """Run ``code`` in a fresh interpreter at the repository root; return the JSON it prints last, and its stderr."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


# -- (c) registration only on request ----------------------------------------------------------------------------


def test_importing_the_peer_modules_registers_nothing(peers):
    before = [info.name for info in available()]
    assert peers.hf.HFMamba.name == "peer:hf-mamba"  # the classes exist (and name themselves) unregistered
    assert [info.name for info in available()] == before
    assert not [name for name in before if name.startswith("peer:")]


def test_register_module_registers_the_installed_peers_once():
    result, stderr = _run_child(f"""
        import json
        from longseq.bench.isolate import import_extension
        from longseq.mixers import available
        names = lambda: [info.name for info in available()]
        before = names()
        import_extension({str(REGISTER)!r})
        after = names()
        import benchmarks.peers.register  # the same file by module name: registering again is a no-op
        print(json.dumps({{"before": before, "after": after, "again": names()}}))
    """)
    expected = set((HF_PEERS if HAS_TRANSFORMERS else ()) + (MAMBA_SSM_PEERS if HAS_MAMBA_SSM else ()))
    assert not [name for name in result["before"] if name.startswith("peer:")]
    assert set(result["after"]) - set(result["before"]) == expected
    assert result["again"] == result["after"]
    for names, installed in ((HF_PEERS, HAS_TRANSFORMERS), (MAMBA_SSM_PEERS, HAS_MAMBA_SSM)):
        assert (f"not registered: {', '.join(names)} (" in stderr) is not installed, stderr


# -- (b) the wrappers run the peers' own code ---------------------------------------------------------------------


@needs_transformers
@pytest.mark.parametrize("name", HF_PEERS)
def test_hf_wrapper_output_is_the_hf_modules_own_forward(peers, name):
    """The wrapper adds nothing: an HF mixer built independently from the same config and weights gives the same
    output bit for bit."""
    wrapper = _peer(peers, name)
    hf = peers.hf.load_transformers()
    own_cls = hf.MambaMixer if name == "peer:hf-mamba" else hf.Mamba2Mixer
    own = own_cls(wrapper.config, layer_idx=0).eval()
    own.load_state_dict(wrapper.hf.state_dict())
    x = torch.randn(2, 24, 16)
    with torch.no_grad():
        assert torch.equal(wrapper(x), own(x))


@pytest.mark.parametrize("name", PEER_PARAMS)
def test_peer_forward_shape_dtype_and_refusals(peers, name):
    m = _peer(peers, name)
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="mask must be None"):
        m(x, mask=torch.ones(2, 20, dtype=torch.bool))
    cls = type(m)
    with pytest.raises(PatternNotSupported, match=name):
        cls(16, pattern="noncausal_self", **cls.test_hypers[0])


@pytest.mark.parametrize("name", PEER_PARAMS)
def test_peer_stream_and_step_reproduce_forward(peers, name):
    """What the bench's prefill and decode time (the peer's cached path) computes what forward computes, and the
    state holds ``state_size`` floats."""
    m = _peer(peers, name)
    length = 32
    x = torch.randn(2, length, 16)
    with torch.no_grad():
        y = m(x)
        for seed in (0, 1):
            ys, state = stream(m, x, None, random_splits(length, seed))
            torch.testing.assert_close(ys, y, atol=1e-5, rtol=1e-4)
            assert state.num_floats() == m.state_size(length)
        state = m.init_state(2)
        steps = []
        for t in range(length):
            y_t, state = m.step(x[:, t], state)
            steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), y, atol=1e-5, rtol=1e-4)


@needs_transformers
@needs_mamba_ssm
def test_mamba_ssm_block_and_hf_mamba_agree_on_the_same_weights(peers):
    """Both Mamba-1 peers are the same block under the same parameter names: a cross-check of the two references."""
    ref, hf = _peer(peers, "peer:mamba-ssm-ref"), _peer(peers, "peer:hf-mamba")
    hf.hf.load_state_dict(ref.block.state_dict())
    x = torch.randn(2, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(hf(x), ref(x), atol=1e-5, rtol=1e-4)


@needs_transformers
def test_speed_bench_records_peer_rows():
    """Through the bench: the extension is imported in every child and the rows carry the ``peer:`` label."""
    result, _ = _run_child(f"""
        import json
        from longseq.bench.speed import MixerSpec, run_speed_bench
        rows = run_speed_bench([MixerSpec(label="peer:hf-mamba", mixer="peer:hf-mamba", hypers={{}})],
                               lengths=[16], modes=["fwd", "decode"], d_model=16, threads=1, repeats=1,
                               min_time=0.0, imports=[{str(REGISTER)!r}], timeout=120)
        print(json.dumps([[r["label"], r["mode"], r["status"], r["state_floats"], r["error"]] for r in rows]))
    """)
    assert [row[:3] for row in result] == [["peer:hf-mamba", "fwd", "ok"], ["peer:hf-mamba", "decode", "ok"]], result
    assert result[1][3] == 2 * 16 * (4 + 16)  # decode state: E·(d_conv + N) with the default hypers
