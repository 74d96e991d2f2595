"""Losses of both stages as small functions and modules; their weights are Config fields."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets import async_to
from lpips import LPIPS  # our lpips/ package: pretrained weights through weights.py


def derangement(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A random n-cycle: no item is its own negative (the reference's `randperm` may pair one with itself)."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)  # each item points to the next one in a random cycle
    return perm if device is None else async_to(perm, device)


def instance_classification(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum over views of cross-entropy against each image's own class (its index in the subset)."""
    return sum(F.cross_entropy(lg.float(), labels) for lg in logits)


def style_consistency(v_aug: list[torch.Tensor], v_orig: list[torch.Tensor], perms: list[torch.Tensor]) -> torch.Tensor:
    """Per scale k: pull x~'s style vector to x's (detached), push it from x[perms[k]]'s."""
    if len(perms) != len(v_aug):
        raise ValueError(f"one derangement per scale: {len(perms)} for {len(v_aug)} scales")
    total = 0.0
    for a, o, perm in zip(v_aug, v_orig, perms):
        a, o = a.float(), o.detach().float()
        total = total - F.cosine_similarity(a, o).mean() + F.cosine_similarity(a, o[perm]).mean()
    return total


def content_consistency(variants: list[list[torch.Tensor]], base: list[torch.Tensor],
                        perms: list[list[torch.Tensor]], margin: float) -> torch.Tensor:
    """Margin loss: variants[a][k] (variant a, scale k) stay nearer base[k] (detached) than base[k][perms[a][k]].
    As the reference, on batch means: relu(margin + MSE(own) - MSE(other))."""
    if [len(p) for p in perms] != [len(m) for m in variants]:
        raise ValueError("one derangement per variant and scale")
    total = 0.0
    for maps, variant_perms in zip(variants, perms):
        for c, b, perm in zip(maps, base, variant_perms):
            c, b = c.float(), b.detach().float()
            total = total + F.relu(margin + F.mse_loss(c, b) - F.mse_loss(c[perm], b))
    return total


def build_lpips(weight: float, device) -> nn.Module | None:
    """LPIPS-VGG, or None when its weight is 0 (no download needed)."""
    return None if weight <= 0 else LPIPS(net="vgg").to(device).eval()


class Reconstruction(nn.Module):
    """w_mse * MSE + w_l1 * L1 + w_lpips * LPIPS (summed over the batch, both pooled to lpips_size)."""

    def __init__(self, w_mse: float, w_l1: float, w_lpips: float, lpips: nn.Module | None = None,
                 lpips_size: int = 256):
        super().__init__()
        if not (w_mse > 0 or w_l1 > 0 or w_lpips > 0):
            raise ValueError("a reconstruction loss needs a term with a weight > 0")
        if w_lpips > 0 and lpips is None:
            raise ValueError("this preset's reconstruction uses LPIPS (w_lpips > 0) but no LPIPS network "
                             "was given")
        self.w_mse, self.w_l1, self.w_lpips, self.lpips_size = w_mse, w_l1, w_lpips, lpips_size
        self.lpips = lpips if w_lpips > 0 else None

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted parts and their sum under "total"."""
        fake, real = fake.float(), real.float()
        parts = {}
        if self.w_mse:
            parts["mse"] = self.w_mse * F.mse_loss(fake, real)
        if self.w_l1:
            parts["l1"] = self.w_l1 * F.l1_loss(fake, real)
        if self.lpips is not None:
            parts["lpips"] = self.w_lpips * self.lpips(self._pool(fake), self._pool(real)).sum()
        parts["total"] = sum(parts.values())
        return parts

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.lpips_size) if x.shape[-1] > self.lpips_size else x


def grey_level(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """MSE of channel-mean grey images: colours may change with the style, shading may not."""
    return F.mse_loss(fake.float().mean(dim=1), real.float().mean(dim=1))


def d_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: relu(1 - D(real)) + relu(1 + D(fake))."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def g_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -D(fake)."""
    return -fake_logits.float().mean()


class CLUB(nn.Module):
    """CLUB upper bound of I(x; y) (Cheng et al., ICML 2020) with a Gaussian q(y | x): `learning_loss` fits q
    (detached inputs, own optimizer); `forward` is the estimate E_p(x,y)[log q(y|x)] - E_p(x)E_p(y)[log q(y|x)]."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int):
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.logvar = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim), nn.Tanh())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.float(), y.float()
        mu, logvar = self.mu(x), self.logvar(x)                               # (B, Dy)
        positive = -((mu - y) ** 2) / (2 * logvar.exp())                      # pairs (x_i, y_i)
        # all pairs (x_i, y_j): E_j (mu_i - y_j)^2 = (mu_i - E y)^2 + Var y, per dimension
        mean_sq = (mu - y.mean(0)) ** 2 + y.var(0, unbiased=False)
        negative = -mean_sq / (2 * logvar.exp())
        return (positive.sum(1) - negative.sum(1)).mean()

    def learning_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative Gaussian log-likelihood of y given x (up to constants)."""
        x, y = x.detach().float(), y.detach().float()
        mu, logvar = self.mu(x), self.logvar(x)
        return (((mu - y) ** 2) / logvar.exp() + logvar).sum(1).mean() / 2


def pooled_content(maps: list[torch.Tensor]) -> torch.Tensor:
    """Content maps [c32, c16, c8] -> one vector per image (global average, concatenated)."""
    return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
