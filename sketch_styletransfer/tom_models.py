"""TOM, the sketch synthesizer: frozen VGG16 features, the pool3 -> sketch generator, the Gram-matrix
style discriminator, and the losses that train them (photos and real sketches are unpaired).

Shapes for a 256 px input: pool1..pool5 are 64 ch at 128 px, 128 at 64, 256 at 32, 512 at 16,
512 at 8. The generator reads pool3 and upsamples it 8x back to the input size; the style
discriminator reads per-image Gram matrices of pool2..pool4.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from models import spectral_norm  # the reference's power iteration, as in its TOM

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAM_LEVELS = (2, 3, 4)       # pool levels whose Grams the style discriminator and loss use
GRAM_CHANNELS, GRAM_SIDE = 128, 16   # each Gram is pooled to 128 x 16 x 16 (3 levels -> 384 channels)
# The reference multiplies its Gram MSE by 2000, but its Gram mixes the whole batch: one (BC x BC)
# matrix divided by B*C*H*W, whose entries are ~1/B of a per-image Gram's, so its MSE is ~1/B^2 of
# ours. 2000 / 4^2 gives the reference's balance at its default batch of 4, at every batch size.
GRAM_SCALE = 2000.0 / 4 ** 2   # = 125, on the summed per-image Gram MSE
THRESHOLD = 0.7               # inference: grey level above which a pixel is white paper


# --------------------------------------------------------------------------- VGG features

class VGGFeatures(nn.Module):
    """A frozen VGG16 `features` stack read after each max-pool; takes RGB in [-1, 1]."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        if len(self.pools) != 5:
            raise ValueError(f"expected the 5 max-pools of VGG16 features, found {len(self.pools)}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        """VGG stays in eval mode whatever its parent does."""
        return super().train(False)

    def forward(self, x: torch.Tensor, levels: int = 5) -> list[torch.Tensor]:
        """Maps after pool1..pool<levels> (the layers past the last one asked for are not run)."""
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features[:self.pools[levels - 1] + 1]):
            h = layer(h)
            if i in self.pools:
                out.append(h)
        return out


# --------------------------------------------------------------------------- networks

class UpBlock(nn.Sequential):
    """Nearest x2, reflection pad, spectral-normed 3x3 conv, BatchNorm, LeakyReLU(0.01)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                         spectral_norm(nn.Conv2d(cin, cout, 3, 1, 0, bias=True)),
                         nn.BatchNorm2d(cout), nn.LeakyReLU(0.01))


class TOMGenerator(nn.Module):
    """pool3 features (infc ch at 1/8 size) -> 3-channel sketch in [-1, 1] at full size."""

    def __init__(self, infc: int = 256, nfc: int = 128, nc_out: int = 3):
        super().__init__()
        self.body = nn.Sequential(UpBlock(infc, nfc * 4), UpBlock(nfc * 4, nfc * 4), UpBlock(nfc * 4, nfc * 2))
        self.final = nn.Sequential(spectral_norm(nn.Conv2d(nfc * 2, nc_out, 3, 1, 1, bias=True)), nn.Tanh())

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.final(self.body(feat))


class DownBlock(nn.Sequential):
    """Spectral-normed 3x3 conv, BatchNorm, LeakyReLU(0.1), optionally 2x2 average pooling."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__(spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1, bias=True)), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.1), *([nn.AvgPool2d(2, 2)] if down else []))


class StyleDiscriminator(nn.Module):
    """Pooled Gram matrices (B, nfc, 16, 16) -> a 3x3 map of hinge logits per image, flattened."""

    def __init__(self, nfc: int = GRAM_CHANNELS * len(GRAM_LEVELS)):
        super().__init__()
        self.main = nn.Sequential(DownBlock(nfc, nfc // 2, down=False), DownBlock(nfc // 2, nfc // 4, down=True),
                                  spectral_norm(nn.Conv2d(nfc // 4, 1, 4, 2, 0)))

    def forward(self, grams: torch.Tensor) -> torch.Tensor:
        return self.main(grams).flatten(1)


# --------------------------------------------------------------------------- style statistics

def gram(feat: torch.Tensor) -> torch.Tensor:
    """Per-image Gram matrices (B, C, C) divided by C*H*W (images never mix, unlike the reference)."""
    b, c, h, w = feat.shape
    flat = feat.reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def gram_input(feats: list[torch.Tensor]) -> torch.Tensor:
    """The discriminator's input: each level's Gram, seen as a 1-channel C x C image, average-pooled
    to 128 x 256 and folded to 128 x 16 x 16; levels concatenated on channels (B, 384, 16, 16)."""
    pooled = [F.adaptive_avg_pool2d(gram(f).unsqueeze(1), (GRAM_CHANNELS, GRAM_SIDE * GRAM_SIDE))
              .reshape(f.shape[0], GRAM_CHANNELS, GRAM_SIDE, GRAM_SIDE) for f in feats]
    return torch.cat(pooled, dim=1)


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Content features renormalised to the style features' per-channel mean and std."""
    c_mean, c_std = _mean_std(content, eps)
    s_mean, s_std = _mean_std(style, eps)
    return (content - c_mean) / c_std * s_std + s_mean


def _mean_std(feat: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    flat = feat.flatten(2)
    return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]


# --------------------------------------------------------------------------- losses

def gram_loss(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor]) -> torch.Tensor:
    """GRAM_SCALE x the summed per-image Gram MSE over the levels given (generated vs real sketch)."""
    return GRAM_SCALE * sum(F.mse_loss(gram(f), gram(r.detach())) for f, r in zip(fake_feats, real_feats))


def content_loss(fake_pool3: torch.Tensor, photo_pool3: torch.Tensor, sketch_pool3: torch.Tensor) -> torch.Tensor:
    """MSE between the generated sketch's pool3 and the photo's pool3 restyled (AdaIN) by a real sketch."""
    return F.mse_loss(fake_pool3, adain(photo_pool3, sketch_pool3).detach())


# --------------------------------------------------------------------------- inference

def to_sketch(generated: torch.Tensor, threshold: float | None = THRESHOLD) -> torch.Tensor:
    """Generator output (B, 3, H, W) in [-1, 1] -> grey (B, 1, H, W) in [0, 1]; binary if a threshold is given."""
    grey = generated.mean(1, keepdim=True).add(1).div(2)
    return grey if threshold is None else (grey > threshold).to(grey.dtype)


@torch.no_grad()
def sketch_photos(generator: TOMGenerator, vgg: VGGFeatures, photos: torch.Tensor) -> torch.Tensor:
    """Raw generator output (B, 3, H, W) in [-1, 1] for photos in [-1, 1]; H and W multiples of 8."""
    return generator(vgg(photos, levels=3)[2])


def check_size(size: int) -> None:
    """The generator upsamples pool3 by 8: the side must be a multiple of 8 (and VGG needs >= 32)."""
    if size < 32 or size % 8:
        raise ValueError(f"image size {size}: must be a multiple of 8 and at least 32")
