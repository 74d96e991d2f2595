"""losses.py: derangements, the AE losses' signs and margins, hinge losses, CLUB ranks MI right."""
import math

import pytest
import torch
import torch.nn.functional as F

import losses as L


@pytest.mark.parametrize("n", [2, 3, 8, 33])
def test_derangement_has_no_fixed_point(n):
    g = torch.Generator().manual_seed(n)
    for _ in range(50):
        perm = L.derangement(n, g)
        assert sorted(perm.tolist()) == list(range(n))
        assert (perm != torch.arange(n)).all()
    with pytest.raises(ValueError):
        L.derangement(1)


def test_style_consistency_rewards_matching_views():
    v = [torch.randn(6, d) for d in (4, 8, 16)]
    perm = [L.derangement(6, torch.Generator().manual_seed(i)) for i in range(3)]
    same = L.style_consistency(v, v, perm)
    other = L.style_consistency([torch.randn_like(t) for t in v], v, perm)
    assert same < other
    assert same.item() >= -6.0 - 1e-6  # 3 scales x (-1 + cosine of negatives >= -1)
    # the x side is a stop-gradient target
    a = [t.clone().requires_grad_() for t in v]
    o = [t.clone().requires_grad_() for t in v]
    L.style_consistency(a, o, perm).backward()
    assert all(t.grad is not None for t in a) and all(t.grad is None for t in o)


def test_content_consistency_margin():
    base = [torch.randn(4, 3, 5, 5) for _ in range(3)]
    perms = [L.derangement(4, torch.Generator().manual_seed(i)) for i in range(3)]
    identical = L.content_consistency([base], base, [perms], margin=2.0)
    expected = sum(F.relu(2 - F.mse_loss(b[p], b)) for b, p in zip(base, perms))
    assert torch.allclose(identical, expected)
    far = [b * 10 for b in base]  # negatives far apart: margin satisfied, loss 0
    assert L.content_consistency([far], far, [perms], margin=2.0).item() == 0.0


def test_instance_classification_is_summed_cross_entropy():
    logits = [torch.randn(5, 7), torch.randn(5, 7)]
    labels = torch.arange(5)
    expected = F.cross_entropy(logits[0], labels) + F.cross_entropy(logits[1], labels)
    assert torch.allclose(L.instance_classification(logits, labels), expected)


def test_hinge_losses_have_expected_signs():
    real, fake = torch.full((4, 1, 5, 5), 2.0), torch.full((4, 1, 5, 5), -2.0)
    assert L.d_hinge(real, fake).item() == 0.0          # confident and right: no loss
    assert L.d_hinge(-real, -fake).item() == pytest.approx(6.0)  # confident and wrong
    assert L.g_hinge(fake).item() == 2.0 and L.g_hinge(real).item() == -2.0  # G wants high D(fake)


def test_reconstruction_parts_and_lpips_requirement():
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    rec = L.Reconstruction(w_mse=1.0, w_l1=2.0, w_lpips=0.0)
    parts = rec(x, y)
    assert torch.allclose(parts["total"], F.mse_loss(x, y) + 2 * F.l1_loss(x, y))
    assert "lpips" not in parts
    with pytest.raises(ValueError, match="uses LPIPS"):
        L.Reconstruction(1.0, 0.0, 1.0, lpips=None)
    with pytest.raises(ValueError, match="needs a term"):  # it returned the integer 0, no tensor
        L.Reconstruction(0.0, 0.0, 0.0)

    class FakeLPIPS(torch.nn.Module):  # records the size it is called at
        def forward(self, a, b):
            self.size = a.shape[-1]
            return (a - b).abs().mean(dim=(1, 2, 3))
    fake = FakeLPIPS()
    parts = L.Reconstruction(0.0, 0.0, 3.0, fake, lpips_size=4)(x, y)
    assert fake.size == 4  # average-pooled to lpips_size first
    pooled = (F.adaptive_avg_pool2d(x, 4) - F.adaptive_avg_pool2d(y, 4)).abs().mean(dim=(1, 2, 3))
    assert torch.allclose(parts["lpips"], 3 * pooled.sum())  # summed over the batch


def test_grey_level_ignores_colour_shifts_that_keep_grey():
    real = torch.rand(2, 3, 8, 8)
    swapped = real[:, [2, 0, 1]]  # same channel mean, other colours
    assert L.grey_level(swapped, real).item() < 1e-12
    assert L.grey_level(real + 0.5, real).item() == pytest.approx(0.25)


def _club_estimate(sample, steps=300):
    """Fit q on one sample, then estimate on a fresh one (a q fitted and scored on the same
    points overfits and overstates MI)."""
    torch.manual_seed(0)
    x, y = sample(0)
    club = L.CLUB(x.shape[1], y.shape[1], hidden=32)
    opt = torch.optim.Adam(club.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        club.learning_loss(x, y).backward()
        opt.step()
    with torch.no_grad():
        return club(*sample(1)).item()


def test_club_ranks_correlated_above_independent():
    """Correlated Gaussians (true MI = -d/2 log(1 - rho^2)) score far above independent ones (MI 0)."""
    n, d, rho = 512, 4, 0.9

    def correlated(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g)
        return x, rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, d, generator=g)

    def independent(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)

    true_mi = -d / 2 * math.log(1 - rho ** 2)  # 3.3 nats
    mi_corr, mi_ind = _club_estimate(correlated), _club_estimate(independent)
    assert mi_corr > 0.5 * true_mi  # CLUB is an upper bound once q fits: well above half the truth
    assert abs(mi_ind) < 0.3
    assert mi_corr > mi_ind + 2.0


def test_club_negative_term_equals_all_pairs_average():
    """The O(B) negative term equals the CLUB paper's explicit O(B^2) average over all pairs."""
    torch.manual_seed(1)
    club = L.CLUB(3, 5, hidden=8)
    x, y = torch.randn(7, 3), torch.randn(7, 5)
    mu, logvar = club.mu(x), club.logvar(x)
    positive = (-(mu - y) ** 2 / 2 / logvar.exp()).sum(1)
    pairs = -((y[None, :, :] - mu[:, None, :]) ** 2).mean(1) / 2 / logvar.exp()
    explicit = (positive - pairs.sum(1)).mean()
    assert torch.allclose(club(x, y), explicit, atol=1e-5)
