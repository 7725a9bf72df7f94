"""VectorQuantizer: nearest codes, the straight-through gradient, the EMA codebook update against a hand computation
(masked positions excluded), the commitment loss, when it learns, and the codebook in the state_dict."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from longseq.modules.aux_loss import collect_aux_losses
from longseq.modules.vector_quantizer import VectorQuantizer

F64 = torch.float64


def _quantizer(h=2, s=5, d=3, **kw) -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(h, s, d, **kw).double()


def _keys(b=2, h=2, length=7, d=3, seed=1) -> torch.Tensor:
    return torch.randn(b, h, length, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_outputs_are_the_nearest_codebook_rows():
    vq = _quantizer()
    k = _keys()
    k_hat, z, codebook = vq(k)
    torch.testing.assert_close(codebook, vq.c_sum / vq.c_count[..., None])
    for h in range(2):
        assert torch.equal(z[:, h], torch.cdist(k[:, h], codebook[h][None].expand(2, -1, -1)).argmin(dim=-1))
        assert torch.equal(k_hat[:, h], codebook[h][z[:, h]])


def test_straight_through_gradient_is_the_identity():
    vq = _quantizer()
    k = _keys().requires_grad_()
    k_hat, _, _ = vq(k)
    r = torch.randn(k_hat.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    (grad,) = torch.autograd.grad((k_hat * r).sum(), k)
    assert torch.equal(grad, r)


def test_half_precision_keys_are_assigned_in_float32():
    vq = _quantizer()
    k = _keys().bfloat16()
    k_hat, z, codebook = vq.float()(k)
    assert k_hat.dtype == torch.bfloat16 and codebook.dtype == torch.float32
    assert torch.equal(z, torch.cdist(k.float(), codebook[None].expand(2, -1, -1, -1)).argmin(dim=-1))


def test_ema_update_matches_a_hand_computation_and_skips_masked_positions():
    vq = VectorQuantizer(1, 2, 2, gamma=0.9, beta=0.5).double()
    vq.c_sum.copy_(torch.tensor([[[0.0, 0.0], [4.0, 4.0]]]))
    vq.c_count.copy_(torch.tensor([[1.0, 2.0]]))  # codes (0, 0) and (2, 2)
    k = torch.tensor([[[[0.5, 0.0], [1.9, 2.1], [0.1, -0.3], [100.0, 100.0]]]], dtype=F64)  # the last is masked
    valid = torch.tensor([[True, True, True, False]])
    vq.train()
    with collect_aux_losses() as aux:
        _, z, codebook = vq(k, valid, learn=True)
    assert z[0, 0, :3].tolist() == [0, 1, 0]
    torch.testing.assert_close(codebook, torch.tensor([[[0.0, 0.0], [2.0, 2.0]]], dtype=F64))  # before the update
    # code 0 gets keys 0 and 2 (sum (0.6, -0.3), count 2); code 1 gets key 1; the masked key counts nowhere.
    torch.testing.assert_close(vq.c_sum, torch.tensor([[[0.06, -0.03], [0.9 * 4 + 0.19, 0.9 * 4 + 0.21]]],
                                                      dtype=F64))
    torch.testing.assert_close(vq.c_count, torch.tensor([[0.9 + 0.2, 1.8 + 0.1]], dtype=F64))
    # commitment: 0.5 * mean over the 3 valid keys of ||k - C[z]||²
    errors = [0.25, 0.01 + 0.01, 0.01 + 0.09]
    torch.testing.assert_close(aux.values["vq_commit"], torch.tensor(0.5 * sum(errors) / 3, dtype=F64))


def test_commitment_loss_gradient_reaches_the_keys_only():
    vq = _quantizer(beta=0.25)
    k = _keys().requires_grad_()
    vq.train()
    with collect_aux_losses() as aux:
        _, _, codebook = vq(k, learn=True)
    loss = aux.total()
    (grad,) = torch.autograd.grad(loss, k)
    k_hat = codebook[torch.arange(2)[None, :, None], vq(k.detach())[1]]
    torch.testing.assert_close(grad, 0.25 * 2 * (k.detach() - k_hat) / (2 * 2 * 7))


@pytest.mark.parametrize("case", ["eval", "no_scope", "learn_false"])
def test_no_learning_outside_a_training_forward_in_a_scope(case):
    vq = _quantizer()
    before = {n: b.clone() for n, b in vq.named_buffers()}
    vq.train(case != "eval")
    if case == "no_scope":
        vq(_keys(), learn=True)
    else:
        with collect_aux_losses() as aux:
            vq(_keys(), learn=case != "learn_false")
        assert aux.total() is None
    for n, b in vq.named_buffers():
        assert torch.equal(b, before[n]), n


def test_codebook_is_in_the_state_dict_and_round_trips(tmp_path):
    vq = _quantizer()
    vq.train()
    with collect_aux_losses():
        vq(_keys(), learn=True)
    assert set(vq.state_dict()) == {"c_sum", "c_count"}
    safetensors.torch.save_model(vq, str(tmp_path / "vq.safetensors"))
    other = _quantizer()
    other.c_sum.zero_()
    safetensors.torch.load_model(other, str(tmp_path / "vq.safetensors"))
    for n, b in vq.named_buffers():
        assert torch.equal(b, getattr(other, n)), n


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="n_codes=0"):
        VectorQuantizer(1, 0, 4)
    with pytest.raises(ValueError, match=r"gamma=1\.0"):
        VectorQuantizer(1, 4, 4, gamma=1.0)
    with pytest.raises(ValueError, match=r"k must have shape \(B, 1, L, 4\)"):
        VectorQuantizer(1, 4, 4)(torch.zeros(2, 3, 4))
