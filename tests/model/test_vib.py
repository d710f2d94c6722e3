"""The VIB gate's maths against hand-computed values."""

import math

import pytest
import torch

from vib_deploy.model.vib import VIBGate, total_kl, vib_loss


def _gate(mu, logd, **kw):
    g = VIBGate(len(mu), **kw)
    with torch.no_grad():
        g.mu.copy_(torch.tensor(mu))
        g.logD.copy_(torch.tensor(logd))
    return g


def test_init_distribution():
    torch.manual_seed(0)
    g = VIBGate(10000)
    assert abs(g.mu.mean().item() - 1.0) < 1e-3 and abs(g.mu.std().item() - 0.01) < 1e-3
    assert abs(g.logD.mean().item() + 9.0) < 1e-3 and abs(g.logD.std().item() - 0.01) < 1e-3


def test_three_unit_kl_mask_and_log_alpha_by_hand():
    g = _gate([1.0, 0.5, -2.0], [-9.0, 0.0, 1.0])
    # log alpha = logD - log(mu^2 + 1e-8)
    expected_la = [-9.0 - math.log(1.0 + 1e-8), 0.0 - math.log(0.25 + 1e-8), 1.0 - math.log(4.0 + 1e-8)]
    assert g.log_alpha().tolist() == pytest.approx(expected_la, rel=1e-6)
    # kept: logα < 0 -> unit 0 (-9) and unit 2 (1 - 1.386 = -0.386); unit 1: 1.386 > 0 -> pruned
    assert g.keep_mask().tolist() == [True, False, True]
    assert g.inference_scale().tolist() == pytest.approx([1.0, 0.0, -2.0])
    # KL = 0.5 * sum log(1 + mu^2 / (exp(logD) + 1e-8))
    expected_kl = 0.5 * sum(
        math.log(1 + m * m / (math.exp(d) + 1e-8)) for m, d in [(1.0, -9.0), (0.5, 0.0), (-2.0, 1.0)]
    )
    assert g.kl().item() == pytest.approx(expected_kl, rel=1e-6)


def test_conv_kl_scales_with_kl_mult_and_map_size():
    base = _gate([1.0, 0.5, -2.0], [-9.0, 0.0, 1.0])
    conv = _gate([1.0, 0.5, -2.0], [-9.0, 0.0, 1.0], kl_mult=1 / 8, map_size=64)
    assert conv.kl().item() == pytest.approx(base.kl().item() * 64 / 8, rel=1e-6)


def test_threshold_changes_mask():
    g = _gate([1.0, 0.5, -2.0], [-9.0, 0.0, 1.0])
    assert g.keep_mask(threshold=-1.0).tolist() == [True, False, False]
    assert g.keep_mask(threshold=2.0).tolist() == [True, True, True]


def test_inference_forward_is_deterministic_mask_times_mu():
    g = _gate([1.0, 0.5, -2.0], [-9.0, 0.0, 1.0]).eval()
    x = torch.ones(4, 3, 5, 5)
    y = g(x)
    assert torch.equal(y[:, 0], torch.ones(4, 5, 5))
    assert torch.equal(y[:, 1], torch.zeros(4, 5, 5))
    assert torch.equal(y[:, 2], -2 * torch.ones(4, 5, 5))


def test_training_noise_per_sample_and_unit_shared_over_hw():
    torch.manual_seed(0)
    g = _gate([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]).train()  # sigma = 1: visible noise
    y = g(torch.ones(8, 3, 4, 4))
    per_map = y.reshape(8, 3, 16)
    assert torch.equal(per_map, per_map[:, :, :1].expand_as(per_map))  # one draw per (sample, channel)
    assert per_map[:, :, 0].unique().numel() == 24  # different across samples and channels
    # z = mu + eps * exp(logD/2) has mean ~mu and std ~1 over many draws
    z = g(torch.ones(20000, 3))
    assert abs(z.mean().item() - 1.0) < 0.03 and abs(z.std().item() - 1.0) < 0.03


def test_loss_is_ce_plus_factor_times_kl_independent_of_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), VIBGate(3), torch.nn.Linear(3, 2))
    logits = torch.randn(5, 2)
    y = torch.tensor([0, 1, 0, 1, 1])
    loss, ce, kl = vib_loss(logits, y, model, kl_factor=1e-3)
    assert kl.item() == pytest.approx(total_kl(model).item())
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item() + 1e-3 * kl.item(), rel=1e-6
    )
    loss2, _, kl2 = vib_loss(torch.randn(50, 2), torch.zeros(50, dtype=torch.long), model, kl_factor=1e-3)
    assert kl2.item() == kl.item()
