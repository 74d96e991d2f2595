"""Networks: the AE stage (style encoder, content encoder, decoder), the GAN stage's refine generators and
patch discriminator. At nfc = 64 and the reference sizes the structures (and parameter counts) are the
reference code's; other sizes follow the rules in each class docstring.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

AE_NETWORKS = ("style_encoder", "content_encoder", "decoder")  # AutoEncoder's parts, as checkpoints name them
BN_MODES = ("running", "batch")  # how a sampling generator's BatchNorm layers normalise
AE_SIZES = (64, 128, 256, 512)  # AE resolutions = refine-generator input resolutions
D_SIZES = (64, 128, 256, 512, 1024)  # discriminator structure sizes
TRUNK_SIZE = 64  # the encoder stem brings every input to 64 px; three stages follow
STYLE_POOL = 4  # style maps are average-pooled to 4x4, then a 4x4 valid conv makes a vector
SE_REDUCTION = 16  # squeeze-excitation bottleneck ratio
DW_KERNEL = 5  # depthwise conv kernel in ResBlkG
LRELU_STEM = 0.2  # slope after an encoder's first conv (no norm there)
LRELU = 0.1  # slope everywhere else in the AE
LRELU_GAN = 0.2  # slope in the refine generators' down blocks and in the discriminator
INIT_STD = 0.02  # the discriminator's DCGAN-style init: conv N(0, 0.02), BN gain N(1, 0.02)
CLS_BIAS_SCALE = 0.1  # classifier bias is drawn 10x narrower than its weights (reference)
Noise = Callable[[int, tuple, torch.Tensor], torch.Tensor]  # (key, shape, like) -> a noise map (NoiseInjection)


def _check_choice(name: str, value: int, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value}: must be one of {tuple(allowed)}")


def _check_multiple(name: str, value: int, multiple: int) -> None:
    if value < multiple or value % multiple:
        raise ValueError(f"{name}={value}: must be a positive multiple of {multiple}")


def _octaves(big: int, small: int) -> int:
    return int(math.log2(big // small))


def _doublings(start: int, stop: int) -> list[int]:
    """[start, 2 start, 4 start, ..., stop]; empty if stop < start."""
    sizes = []
    while start <= stop:
        sizes.append(start)
        start *= 2
    return sizes


class StyleVectors(NamedTuple):
    """The style encoder's output per scale of its maps: fine (B, 2nfc, from 32 px), mid (B, 4nfc, 16 px),
    coarse (B, 8nfc, 8 px)."""

    fine: torch.Tensor
    mid: torch.Tensor
    coarse: torch.Tensor

    def map(self, fn) -> StyleVectors:
        return StyleVectors(*(fn(v) for v in self))


def vector_dims(nfc: int) -> StyleVectors:
    """The style vectors' widths."""
    return StyleVectors(fine=nfc * 2, mid=nfc * 4, coarse=nfc * 8)


def _gate_map(gate: torch.Tensor) -> torch.Tensor:
    return gate[:, :, None, None]


# ---------------------------------------------------------------------------------- building blocks

class _ReferencePowerIteration(_SpectralNorm):
    """torch's spectral-norm parametrization (same buffers _u, _v) with the power iteration of the reference's
    torch 1.x spectral_norm: v = W^T u, then u = W v (the parametrization updates u first; the two differ
    until u and v converge). Its 15 iterations at construction stay: an eval forward of a fresh EMA copy
    would otherwise divide by u^T W v of two random vectors."""

    @torch.no_grad()
    def _power_method(self, weight_mat: torch.Tensor, n_power_iterations: int) -> None:
        for _ in range(n_power_iterations):  # in place, as torch's (its note: DataParallel replicas)
            self._v = F.normalize(torch.mv(weight_mat.H, self._u), dim=0, eps=self.eps, out=self._v)
            self._u = F.normalize(torch.mv(weight_mat, self._v), dim=0, eps=self.eps, out=self._u)


def spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalise module.weight as the reference does (a transposed conv over dim 1, as torch's)."""
    dim = 1 if isinstance(module, nn.ConvTranspose2d) else 0
    parametrize.register_parametrization(module, "weight", _ReferencePowerIteration(module.weight, dim=dim))
    return module


def sn_batchnorm(ch: int) -> nn.Module:
    """BatchNorm2d whose gain is spectral-normed, i.e. a unit vector (1/sqrt(ch) at start): this shrinks each
    residual branch, and the reference's trained behaviour depends on it."""
    return spectral_norm(nn.BatchNorm2d(ch))


class SELayer(nn.Module):
    """Squeeze-excitation: channel gates from the global average (spectral-normed linears)."""

    def __init__(self, ch: int, reduction: int = SE_REDUCTION):
        super().__init__()
        hidden = max(1, ch // reduction)  # narrow widths must not give a 0-wide bottleneck
        self.fc = nn.Sequential(
            spectral_norm(nn.Linear(ch, hidden, bias=False)), nn.ReLU(),
            spectral_norm(nn.Linear(hidden, ch, bias=False)), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _gate_map(self.fc(x.mean(dim=(2, 3))))


class ResBlkE(nn.Module):
    """Encoder residual block: (BN, Swish, 3x3 conv) x 2, squeeze-excitation."""

    def __init__(self, ch: int):
        super().__init__()
        self.main = nn.Sequential(
            sn_batchnorm(ch), nn.SiLU(), spectral_norm(nn.Conv2d(ch, ch, 3, 1, 1, bias=False)),
            sn_batchnorm(ch), nn.SiLU(), spectral_norm(nn.Conv2d(ch, ch, 3, 1, 1, bias=False)),
            SELayer(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class ResBlkG(nn.Module):
    """Inverted-bottleneck residual block: 1x1 expand, 5x5 depthwise, 1x1 project, SE."""

    def __init__(self, ch: int, expand: int = 4):
        super().__init__()
        wide = ch * expand
        # As the reference's torch_dwconv.DepthwiseConv2d: no bias, init torch.randn (std 1). Spectral norm
        # hides the scale in the forward, but Adam's steps do not: at nn.Conv2d's std 0.116 it moved ~8.5x faster.
        depthwise = nn.Conv2d(wide, wide, DW_KERNEL, 1, DW_KERNEL // 2, groups=wide, bias=False)
        nn.init.normal_(depthwise.weight)
        self.main = nn.Sequential(
            sn_batchnorm(ch), spectral_norm(nn.Conv2d(ch, wide, 1, bias=False)),
            sn_batchnorm(wide), nn.SiLU(), spectral_norm(depthwise),
            sn_batchnorm(wide), nn.SiLU(), spectral_norm(nn.Conv2d(wide, ch, 1, bias=False)),
            sn_batchnorm(ch), SELayer(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class DMI(nn.Module):
    """Mask modulation: the content map acts as a soft mask between two per-channel affines."""

    def __init__(self, ch: int):
        super().__init__()
        # Starts close to identity: (1.01 m + 0.99 (1 - m)) * x, biases +-0.01 (reference).
        self.weight_a = nn.Parameter(torch.full((1, ch, 1, 1), 1.01))
        self.weight_b = nn.Parameter(torch.full((1, ch, 1, 1), 0.99))
        self.bias_a = nn.Parameter(torch.full((1, ch, 1, 1), 0.01))
        self.bias_b = nn.Parameter(torch.full((1, ch, 1, 1), -0.01))

    def forward(self, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feat and mask: (B, ch, H, W)."""
        inside = self.weight_a * feat * mask + self.bias_a
        outside = self.weight_b * feat * (1 - mask) + self.bias_b
        return inside + outside


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise (shared over channels) with a learned per-channel scale. `noise`, when
    given, supplies the map instead of a fresh draw: noise(key, (1, 1, H, W), like=x), where `key` numbers
    the generator's noise sources (0: its latent, 1...: these layers in module order; `number_noise_layers`)."""

    def __init__(self, ch: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, ch, 1, 1))  # starts silent
        self.key: int | None = None  # set by number_noise_layers (the generator's constructor)

    def forward(self, x: torch.Tensor, noise: Noise | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        if noise is None:
            return x + self.weight * torch.randn(b, 1, h, w, device=x.device, dtype=x.dtype)
        assert self.key is not None, "a generator numbers its noise layers (number_noise_layers) before noise is given"
        return x + self.weight * noise(self.key, (1, 1, h, w), x)


class NoisySequential(nn.Sequential):
    """nn.Sequential (same state-dict keys) that hands `noise` to the children that take it."""

    def forward(self, x: torch.Tensor, noise: Noise | None = None) -> torch.Tensor:
        for module in self:
            x = module(x, noise) if isinstance(module, (NoiseInjection, NoisySequential)) else module(x)
        return x


def number_noise_layers(generator: nn.Module) -> None:
    """Key each NoiseInjection 1, 2, ... in module order (0 is the latent): what seeded noise is drawn for."""
    for key, module in enumerate((m for m in generator.modules() if isinstance(m, NoiseInjection)), start=1):
        module.key = key


class StyleGate(nn.Module):
    """Linear-ReLU-Linear-Sigmoid: a style vector -> per-channel gates (B, ch, 1, 1)."""

    def __init__(self, in_dim: int, ch: int, spectral: bool = False):
        super().__init__()
        first = nn.Linear(in_dim, ch)
        self.mlp = nn.Sequential(spectral_norm(first) if spectral else first, nn.ReLU(),
                                 nn.Linear(ch, ch), nn.Sigmoid())

    def forward(self, vector: torch.Tensor) -> torch.Tensor:
        return _gate_map(self.mlp(vector))


def up_decoder(ch_in: int, ch_out: int) -> nn.Sequential:
    """AE decoder up block: nearest x2, 3x3 conv to 2*ch_out, InstanceNorm, GLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(ch_in, ch_out * 2, 3, 1, 1, bias=False),
        nn.InstanceNorm2d(ch_out * 2), nn.GLU(dim=1))


def down_gan(ch_in: int, ch_out: int) -> nn.Sequential:
    """Refine-generator down block: SN 4x4 stride-2 conv, BatchNorm, LeakyReLU."""
    return nn.Sequential(
        spectral_norm(nn.Conv2d(ch_in, ch_out, 4, 2, 1, bias=False)),
        nn.BatchNorm2d(ch_out), nn.LeakyReLU(LRELU_GAN))


def up_gan(ch_in: int, ch_out: int) -> NoisySequential:
    """Refine-generator up block: nearest x2, SN 3x3 conv, BatchNorm, noise, GLU."""
    return NoisySequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        spectral_norm(nn.Conv2d(ch_in, ch_out * 2, 3, 1, 1, bias=False)),
        nn.BatchNorm2d(ch_out * 2), NoiseInjection(ch_out * 2), nn.GLU(dim=1))


def from_vector(in_dim: int, ch: int) -> nn.Sequential:
    """(B, in_dim) -> (B, ch // 2, 4, 4): SN transposed 4x4 conv from 1 px, BatchNorm, GLU."""
    return nn.Sequential(
        nn.Unflatten(1, (in_dim, 1, 1)),
        spectral_norm(nn.ConvTranspose2d(in_dim, ch, 4, 1, 0, bias=False)),
        nn.BatchNorm2d(ch), nn.GLU(dim=1))


def to_rgb(ch: int, spectral: bool = False) -> nn.Sequential:
    """3x3 conv (no bias) to RGB, tanh."""
    conv = nn.Conv2d(ch, 3, 3, 1, 1, bias=False)
    return nn.Sequential(spectral_norm(conv) if spectral else conv, nn.Tanh())


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Square resize: area averaging to shrink, bilinear to enlarge, untouched if equal."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------- AE stage

class EncoderTrunk(nn.Module):
    """Shared encoder body: image (B, in_ch, S, S) -> [m32 (2nfc), m16 (4nfc), m8 (8nfc)] maps. A stem of
    log2(S) - 6 stride-2 convs (the last of widths nfc/4, nfc/2, nfc) reaches 64 px; three stages follow."""

    def __init__(self, in_ch: int, nfc: int, im_size: int):
        super().__init__()
        _check_choice("im_size", im_size, AE_SIZES)
        _check_multiple("nfc", nfc, 4)
        self.in_ch, self.nfc, self.im_size = in_ch, nfc, im_size

        n_stem = _octaves(im_size, TRUNK_SIZE)
        widths = [nfc // 4, nfc // 2, nfc]
        stem_widths = widths[len(widths) - n_stem:]  # the stem always ends at nfc
        stem, ch = [], in_ch
        for i, width in enumerate(stem_widths):
            stem.append(nn.Conv2d(ch, width, 4, 2, 1, bias=False))
            stem += [nn.LeakyReLU(LRELU_STEM)] if i == 0 else [nn.BatchNorm2d(width), nn.LeakyReLU(LRELU)]
            ch = width
        self.stem = nn.Sequential(*stem)  # (B, in_ch, S, S) -> (B, ch, 64, 64)

        # The reference's in-place LeakyReLU at the start of the 16 and 8 px stages also overwrites the 32 and
        # 16 px maps it returns: here it ends those stages, with the same returned maps.
        self.stage32 = nn.Sequential(self._down(ch, nfc * 2), nn.LeakyReLU(LRELU))
        self.stage16 = nn.Sequential(self._down(nfc * 2, nfc * 4), nn.LeakyReLU(LRELU))
        self.stage8 = self._down(nfc * 4, nfc * 8)

    @staticmethod
    def _down(ch_in: int, ch_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(ch_in, ch_out, 4, 2, 1, bias=False), ResBlkE(ch_out))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        m32 = self.stage32(self.stem(image))  # (B, 2nfc, 32, 32)
        m16 = self.stage16(m32)               # (B, 4nfc, 16, 16)
        m8 = self.stage8(m16)                 # (B, 8nfc, 8, 8)
        return [m32, m16, m8]


class StyleEncoder(nn.Module):
    """RGB image (B, 3, S, S) -> StyleVectors (fine (B, 2nfc), mid (B, 4nfc), coarse (B, 8nfc))."""

    def __init__(self, nfc: int = 64, im_size: int = 512):
        super().__init__()
        self.nfc, self.im_size = nfc, im_size
        self.vector_dims = vector_dims(nfc)
        self.trunk = EncoderTrunk(3, nfc, im_size)
        self.to_vectors = nn.ModuleList(self._vector_head(ch) for ch in self.vector_dims)

    @staticmethod
    def _vector_head(ch: int) -> nn.Sequential:
        return nn.Sequential(nn.AdaptiveAvgPool2d(STYLE_POOL),
                             nn.Conv2d(ch, ch, STYLE_POOL, 1, 0, bias=False), nn.Flatten(1))

    def forward(self, image: torch.Tensor) -> StyleVectors:
        maps = self.trunk(image)
        return StyleVectors(*(head(m) for head, m in zip(self.to_vectors, maps)))


class InstanceClassifier(nn.Module):
    """Instance-classification head on the coarse style vector: LeakyReLU, Linear -> logits. Own optimizer;
    re-initialised (`reset_parameters`) whenever the self-supervised subset moves on."""

    def __init__(self, in_dim: int, nbr_cls: int):
        super().__init__()
        self.in_dim, self.nbr_cls = in_dim, nbr_cls
        self.act = nn.LeakyReLU(LRELU)
        self.linear = nn.Linear(in_dim, nbr_cls)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weights U(-1/sqrt(in), 1/sqrt(in)), bias 10x narrower (reference re-init)."""
        bound = 1.0 / math.sqrt(self.in_dim)
        self.linear.weight.uniform_(-bound, bound)
        self.linear.bias.uniform_(-CLS_BIAS_SCALE * bound, CLS_BIAS_SCALE * bound)

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        return self.linear(self.act(coarse))  # (B, in_dim) -> (B, nbr_cls)


class ContentEncoder(nn.Module):
    """Sketch (B, 1, S, S) -> content maps [c32 (2nfc, 32 px), c16 (4nfc, 16), c8 (8nfc, 8)]."""

    def __init__(self, nfc: int = 64, im_size: int = 512):
        super().__init__()
        self.nfc, self.im_size = nfc, im_size
        self.trunk = EncoderTrunk(1, nfc, im_size)

    def forward(self, sketch: torch.Tensor) -> list[torch.Tensor]:
        return self.trunk(sketch)


class Decoder(nn.Module):
    """(content maps, style vectors) -> RGB image (B, 3, S, S) in [-1, 1]. Fixed 8 -> 64 px part (learned
    constant, DMI at 8 and 16 px, content concatenated at 16 and 32 px), then log2(S) - 6 up blocks halving
    the width; outputs at 64, 128 and 256 px are gated by the coarse, mid and fine style vectors."""

    GATE_SOURCES = {64: "coarse", 128: "mid", 256: "fine"}  # output resolution -> its gating StyleVectors field
    CONST_SIZE = 8

    def __init__(self, nfc: int = 64, im_size: int = 512):
        super().__init__()
        _check_choice("im_size", im_size, AE_SIZES)
        _check_multiple("nfc", nfc, 8)
        self.nfc, self.im_size = nfc, im_size
        dims = vector_dims(nfc)

        self.const = nn.Parameter(torch.randn(1, nfc * 8, self.CONST_SIZE, self.CONST_SIZE))
        self.dmi_8 = DMI(nfc * 8)
        self.dmi_16 = DMI(nfc * 4)
        self.block_8_in = nn.Sequential(
            ResBlkG(nfc * 16), nn.LeakyReLU(LRELU),
            nn.Conv2d(nfc * 16, nfc * 8, 3, 1, 1, bias=False), nn.InstanceNorm2d(nfc * 8))
        self.style_8 = nn.Sequential(
            nn.Linear(nfc * 8, nfc * 8), nn.ReLU(), nn.Linear(nfc * 8, nfc * 8),
            nn.BatchNorm1d(nfc * 8))
        self.block_8_out = nn.Sequential(nn.LeakyReLU(LRELU), ResBlkG(nfc * 8))
        self.block_16 = self._up_res(nfc * 8, nfc * 4)
        self.block_32 = self._up_res(nfc * 8, nfc * 2)  # input: 4nfc decoded + 4nfc content
        self.block_64 = nn.Sequential(nn.LeakyReLU(LRELU), up_decoder(nfc * 4, nfc))

        n_up = _octaves(im_size, TRUNK_SIZE)
        widths = [nfc >> i for i in range(n_up + 1)]  # at 64, 128, ... px
        self.up_blocks = nn.ModuleList(up_decoder(a, b) for a, b in zip(widths, widths[1:]))
        self.gates = nn.ModuleDict({
            str(res): StyleGate(getattr(dims, src), widths[_octaves(res, TRUNK_SIZE)])
            for res, src in self.GATE_SOURCES.items() if res <= im_size})
        self.to_rgb = to_rgb(widths[-1])

    @staticmethod
    def _up_res(ch_in: int, ch_out: int) -> nn.Sequential:
        return nn.Sequential(nn.LeakyReLU(LRELU), nn.Upsample(scale_factor=2, mode="nearest"),
                             nn.Conv2d(ch_in, ch_out, 3, 1, 1, bias=False), ResBlkG(ch_out))

    def _gate(self, x: torch.Tensor, res: int, style_vectors: StyleVectors) -> torch.Tensor:
        key = str(res)
        if key not in self.gates:
            return x
        return x * self.gates[key](getattr(style_vectors, self.GATE_SOURCES[res]))

    def forward(self, content_maps, style_vectors) -> torch.Tensor:
        c32, c16, c8 = content_maps
        style_vectors = StyleVectors(*style_vectors)  # callers may pass a plain sequence in the same order
        const = self.const.expand(c8.shape[0], -1, -1, -1)
        x = self.block_8_in(torch.cat([c8, const], dim=1))  # (B, 16nfc, 8, 8) -> (B, 8nfc, 8, 8)
        x = self.dmi_8(x, c8) * _gate_map(self.style_8(style_vectors.coarse))
        x = self.block_16(self.block_8_out(x))              # (B, 4nfc, 16, 16)
        x = torch.cat([self.dmi_16(x, c16), c16], dim=1)    # (B, 8nfc, 16, 16)
        x = torch.cat([self.block_32(x), c32], dim=1)       # (B, 4nfc, 32, 32)
        x = self._gate(self.block_64(x), TRUNK_SIZE, style_vectors)  # (B, nfc, 64, 64)
        for i, up in enumerate(self.up_blocks):
            x = self._gate(up(x), TRUNK_SIZE << (i + 1), style_vectors)  # width halves, size x2
        return self.to_rgb(x)


class AutoEncoder(nn.Module):
    """Style encoder, content encoder, decoder: (sketch, style image) -> (image, style vectors)."""

    def __init__(self, nfc: int = 64, im_size: int = 512):
        super().__init__()
        self.nfc, self.im_size = nfc, im_size
        self.style_encoder = StyleEncoder(nfc, im_size)
        self.content_encoder = ContentEncoder(nfc, im_size)
        self.decoder = Decoder(nfc, im_size)

    # Inputs of another size are resized with area averaging: the reference's nearest aliases thin strokes.
    def style(self, style_img: torch.Tensor) -> StyleVectors:
        """(B, 3, H, W) -> StyleVectors (fine (B, 2nfc), mid (B, 4nfc), coarse (B, 8nfc))."""
        return self.style_encoder(_resize(style_img, self.im_size))

    def draw(self, sketch: torch.Tensor, style_vectors) -> torch.Tensor:
        """(B, 1, H, W) sketches in the style of `style_vectors` -> (B, 3, im_size, im_size)."""
        return self.decoder(self.content_encoder(_resize(sketch, self.im_size)), style_vectors)

    def forward(self, sketch: torch.Tensor, style_img: torch.Tensor):
        style_vectors = self.style(style_img)
        return self.draw(sketch, style_vectors), style_vectors


# ---------------------------------------------------------------------------------- GAN stage

def _check_refine_sizes(im_size_in: int, im_size_out: int) -> None:
    _check_choice("im_size_in", im_size_in, AE_SIZES)
    _check_choice("im_size_out", im_size_out, (im_size_in, 2 * im_size_in))


class RefineGeneratorArt(nn.Module):
    """U-Net over the AE output (B, 3, Ain, Ain) -> (B, 3, Aout, Aout), Aout in {Ain, 2 Ain}. The style map
    joins the 16 px bottleneck, a noise map decode_64; decode_r (128 <= r <= Ain) reads d_{r/2} + e_{r/2};
    style gates follow decode_64..decode_512.

    use_style=False is the reference's "shoe" variant: a zero style map (still through the 12nfc-wide
    bottleneck, as the reference) and no gates; the reference's unused style branch and gates are left out.
    """

    STYLE_MIN = 16  # the encoder goes down to 16 px, where the style map joins
    GATE_SOURCES = {64: "coarse", 128: "coarse", 256: "mid", 512: "fine"}  # decode_r's gating StyleVectors field

    def __init__(self, nfc: int = 64, im_size_in: int = 512, im_size_out: int = 512,
                 use_style: bool = True):
        super().__init__()
        _check_refine_sizes(im_size_in, im_size_out)
        _check_multiple("nfc", nfc, 4)
        self.nfc, self.im_size_in, self.im_size_out = nfc, im_size_in, im_size_out
        self.use_style = use_style
        width = self.width
        dims = vector_dims(nfc)

        # noise (B, 8nfc) -> (B, nfc, 32, 32)
        self.from_noise = NoisySequential(
            from_vector(nfc * 8, nfc * 8), up_gan(nfc * 4, nfc * 2),
            up_gan(nfc * 2, nfc * 2), up_gan(nfc * 2, nfc))
        self.style_ch = nfc * 4  # channels of the 16 px style map (zeros without use_style)
        if use_style:
            # the three style vectors (B, 14nfc) -> (B, 4nfc, 8, 8); forward tiles it to 16 px
            self.from_style = NoisySequential(from_vector(sum(dims), nfc * 16),
                                            up_gan(nfc * 8, self.style_ch))

        encoder = {str(im_size_in // 2): nn.Sequential(
            spectral_norm(nn.Conv2d(3, width(im_size_in // 2), 4, 2, 1, bias=False)),
            nn.LeakyReLU(LRELU_GAN))}
        res = im_size_in // 4
        while res >= self.STYLE_MIN:
            encoder[str(res)] = down_gan(width(res * 2), width(res))
            res //= 2
        self.encoder = nn.ModuleDict(encoder)  # keyed by output resolution, large to small

        bottleneck = width(self.STYLE_MIN) + self.style_ch
        self.residual_16 = nn.Sequential(ResBlkG(bottleneck), nn.SiLU(), ResBlkG(bottleneck), nn.SiLU())

        # decode_64 also reads the 32 px noise map (nfc channels)
        decoder = {"32": up_gan(bottleneck, width(32)), "64": up_gan(width(32) + nfc, width(64))}
        for res in _doublings(128, im_size_out):  # the up blocks above 64 px
            decoder[str(res)] = up_gan(width(res // 2), width(res))
        self.decoder = nn.ModuleDict(decoder)

        self.gates = nn.ModuleDict()
        if use_style:
            self.gates.update({
                str(res): StyleGate(getattr(dims, src), width(res), spectral=True)
                for res, src in self.GATE_SOURCES.items() if res <= im_size_in})
        self.to_rgb = to_rgb(width(im_size_out))
        number_noise_layers(self)

    def width(self, res: int) -> int:
        """Channels at resolution res: 4nfc at 64 px, halving per octave, at most 8nfc."""
        return min(8 * self.nfc, self.nfc * 256 // res)

    def forward(self, ae_image: torch.Tensor, style_vectors, noise: Noise | None = None) -> torch.Tensor:
        """noise: None draws fresh noise for every item; else the noise source of every layer (NoiseInjection)."""
        style_vectors = StyleVectors(*style_vectors)  # callers may pass a plain sequence in the same order
        b = ae_image.shape[0]
        if noise is None:
            z = torch.randn(b, self.nfc * 8, device=ae_image.device, dtype=ae_image.dtype)
        else:
            z = noise(0, (1, self.nfc * 8), ae_image).expand(b, -1).contiguous()
        noise_32 = self.from_noise(z, noise)  # (B, nfc, 32, 32)

        skips, x = {}, ae_image
        for res, block in self.encoder.items():
            x = skips[int(res)] = block(x)  # down to (B, 8nfc, 16, 16)
        if self.use_style:
            s_8 = self.from_style(torch.cat(list(style_vectors), dim=1), noise)  # (B, 4nfc, 8, 8)
            s_16 = s_8.repeat(1, 1, 2, 2)  # tiled (not upsampled) to 16 px
        else:
            s_16 = x.new_zeros(b, self.style_ch, *x.shape[-2:])
        x = self.residual_16(torch.cat([x, s_16], dim=1))  # (B, 12nfc, 16, 16)

        for key, block in self.decoder.items():
            res = int(key)
            if res == 64:
                x = torch.cat([x, noise_32], dim=1)
            elif 128 <= res <= self.im_size_in:
                x = x + skips[res // 2]  # U-Net skip (add, not concat)
            x = block(x, noise)
            if key in self.gates:
                x = x * self.gates[key](getattr(style_vectors, self.GATE_SOURCES[res]))
        return self.to_rgb(x)


class RefineGeneratorFace(nn.Module):
    """Lighter U-Net: AE output (B, 3, Ain, Ain) -> (B, 3, Aout, Aout), Aout in {Ain, 2 Ain}; ngf=16 is the
    reference. decode_64 reads cat(e32, s32), decode_r cat(e_{r/2}, d_{r/2}); the style code gates each."""

    ENCODE_MIN = 32  # the encoder and the style map meet at 32 px

    def __init__(self, nfc: int = 64, im_size_in: int = 512, im_size_out: int = 512,
                 ngf: int = 16):
        super().__init__()
        _check_refine_sizes(im_size_in, im_size_out)
        _check_multiple("ngf", ngf, 1)
        self.nfc, self.im_size_in, self.im_size_out, self.ngf = nfc, im_size_in, im_size_out, ngf
        enc, dec = self.encoder_width, self.decoder_width
        code_dim = 32 * ngf

        encoder, ch, res = {}, 3, im_size_in // 2
        while res >= self.ENCODE_MIN:
            encoder[str(res)] = down_gan(ch, enc(res))
            ch, res = enc(res), res // 2
        self.encoder = nn.ModuleDict(encoder)  # keyed by output resolution, large to small

        self.style = nn.Sequential(nn.Linear(nfc * 14, code_dim), nn.LeakyReLU(LRELU))
        # code (B, 32ngf) -> (B, 4ngf, 32, 32)
        self.from_style_32 = NoisySequential(
            from_vector(code_dim, ngf * 16), up_gan(ngf * 8, ngf * 8),
            up_gan(ngf * 8, ngf * 8), up_gan(ngf * 8, ngf * 4))

        decoder = {"64": up_gan(enc(32) + ngf * 4, dec(64))}  # reads cat(e32, s32)
        for res in _doublings(128, im_size_out):  # the up blocks above 64 px
            skip_ch = enc(res // 2) if res <= im_size_in else 0
            decoder[str(res)] = up_gan(dec(res // 2) + skip_ch, dec(res))
        self.decoder = nn.ModuleDict(decoder)
        self.gates = nn.ModuleDict({key: StyleGate(code_dim, dec(int(key))) for key in decoder})
        self.to_rgb = to_rgb(dec(im_size_out), spectral=True)
        number_noise_layers(self)

    def encoder_width(self, res: int) -> int:
        """ngf at 256 px, doubling per octave down (8ngf at 32 px)."""
        return self.ngf * 256 // res

    def decoder_width(self, res: int) -> int:
        """16ngf at 64 px, halving per octave up (ngf at 1024 px)."""
        return self.ngf * 1024 // res

    def _random_flip(self, s: torch.Tensor) -> torch.Tensor:
        flip_h, flip_w = torch.randint(0, 2, (2,)).tolist()
        if flip_h:
            s = s.flip(2)
        if flip_w:
            s = s.flip(3)
        return s

    def forward(self, ae_image: torch.Tensor, style_vectors, noise: Noise | None = None) -> torch.Tensor:
        """noise: as RefineGeneratorArt's."""
        skips, x = {}, ae_image
        for res, block in self.encoder.items():
            x = skips[int(res)] = block(x)  # down to (B, 8ngf, 32, 32)

        code = self.style(torch.cat(list(style_vectors), dim=1))  # (B, 32ngf)
        s_32 = self.from_style_32(code, noise)                    # (B, 4ngf, 32, 32)
        if self.training:  # the reference also flips at inference, making outputs random
            s_32 = self._random_flip(s_32)

        x = torch.cat([x, s_32], dim=1)
        for key, block in self.decoder.items():
            res = int(key)
            if 128 <= res <= self.im_size_in:
                x = torch.cat([skips[res // 2], x], dim=1)
            x = block(x, noise) * self.gates[key](code)
        return self.to_rgb(x)


# Refine generators by architecture (as DiT's DiT_models): Config.GENERATOR names one.
GENERATORS = {
    "art": RefineGeneratorArt,
    "face": RefineGeneratorFace,
    "shoe": functools.partial(RefineGeneratorArt, use_style=False),
}


def build_generator(name: str, nfc: int, im_size_in: int, im_size_out: int) -> nn.Module:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {sorted(GENERATORS)}")
    return GENERATORS[name](nfc=nfc, im_size_in=im_size_in, im_size_out=im_size_out)


def _d_conv(ch_in: int, ch_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
    conv = nn.Conv2d(ch_in, ch_out, kernel, stride, padding, bias=False)
    nn.init.normal_(conv.weight, 0.0, INIT_STD)
    return spectral_norm(conv)


def _d_batchnorm(ch: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(ch)
    nn.init.normal_(bn.weight, 1.0, INIT_STD)
    nn.init.zeros_(bn.bias)
    return bn


class DownBlock(nn.Module):
    """Discriminator block: two SN 3x3 convs (the first stride 2), optional skip-excitation: a feature map
    from a larger scale gives per-channel sigmoid gates and tanh shifts."""

    def __init__(self, ch_in: int, ch_out: int, ch_skip: int = 0):
        super().__init__()
        self.ch_out = ch_out
        self.main = nn.Sequential(
            _d_conv(ch_in, ch_out, 3, 2, 1), _d_batchnorm(ch_out), nn.LeakyReLU(LRELU_GAN),
            _d_conv(ch_out, ch_out, 3, 1, 1), _d_batchnorm(ch_out), nn.LeakyReLU(LRELU_GAN))
        self.skip = None
        if ch_skip:
            self.skip = nn.Sequential(
                nn.AdaptiveAvgPool2d(STYLE_POOL), _d_conv(ch_skip, ch_out, STYLE_POOL), nn.ReLU(),
                _d_conv(ch_out, ch_out * 2, 1))

    def forward(self, x: torch.Tensor, skip_feat: torch.Tensor | None = None) -> torch.Tensor:
        out = self.main(x)  # (B, ch_out, H/2, W/2)
        if self.skip is None:
            return out
        scale, shift = self.skip(skip_feat).split(self.ch_out, dim=1)  # (B, ch_out, 1, 1) each
        return out * torch.sigmoid(scale) + torch.tanh(shift)


class Discriminator(nn.Module):
    """Patch discriminator: image (B, nc, H, W) -> logits (B, 1, h, w): 5x5 at im_size, 13x13 at 2 im_size.
    A first SN conv, then DownBlocks to 8 px; block j >= 3 is excited by feature j - 3."""

    SKIP_LAG = 3  # a block is excited by the feature 3 scales (8x) above its input
    END_SIZE = 8  # the blocks stop at 8 px when the input is im_size

    def __init__(self, ndf: int = 64, im_size: int = 512, nc: int = 3):
        super().__init__()
        _check_choice("im_size", im_size, D_SIZES)
        _check_multiple("ndf", ndf, 4)
        self.ndf, self.im_size, self.nc = ndf, im_size, nc

        n_blocks = _octaves(im_size // 2, self.END_SIZE)
        widths = [ndf // 4] + [ndf // 2, ndf, ndf * 2, ndf * 4, ndf * 8][:n_blocks - 1] + [ndf * 16]
        self.first = nn.Sequential(_d_conv(nc, ndf // 4, 4, 2, 1), nn.LeakyReLU(LRELU_GAN))
        skip_widths = [widths[j - self.SKIP_LAG] if j >= self.SKIP_LAG else 0
                       for j in range(n_blocks)]
        self.blocks = nn.ModuleList(DownBlock(widths[j], widths[j + 1], skip_widths[j])
                                    for j in range(n_blocks))
        top = ndf * 16
        self.head = nn.Sequential(
            _d_conv(top, top, 1), _d_batchnorm(top), nn.LeakyReLU(LRELU_GAN),
            _d_conv(top, 1, 4))  # 4x4 valid: 8 px -> 5x5 logits

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feats = [self.first(image)]
        for j, block in enumerate(self.blocks):
            skip = feats[j - self.SKIP_LAG] if j >= self.SKIP_LAG else None
            feats.append(block(feats[-1], skip))
        return self.head(feats[-1])


@contextlib.contextmanager
def batch_norm_mode(net: nn.Module, mode: str):
    """In the block, net's BatchNorm layers use their "running" statistics or each forward's "batch" ones (how
    the reference samples its EMA generator); running statistics are restored after, no other layer changes."""
    if mode not in BN_MODES:
        raise ValueError(f"BatchNorm mode {mode!r}: must be one of {BN_MODES}")
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if mode == "batch" else []
    saved = [(m.training, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in norms]
    for m in norms:
        m.train()
    try:
        yield net
    finally:
        with torch.no_grad():
            for m, (training, buffers) in zip(norms, saved):
                m.train(training)
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (spectral-norm u/v vectors are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters())
