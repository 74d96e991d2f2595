"""A small model for the app's tests, built in seconds without gradient training.

The real networks (NFC=8, 64 px) with their random initial weights, BatchNorm statistics taken
from a few forward passes, and the two final RGB convolutions (the decoder's and the refine
generator's) solved by ridge regression so that the model draws random line sketches as dark
strokes on the exemplar's mean colour. Its outputs follow the drawn strokes and change with the
exemplar: what the app's tests need to see through a browser, at no training cost. It is saved
with `checkpoints.save_exported`, so the app loads it like any exported model.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import Trained, save_exported
from models import AutoEncoder, build_generator

NFC = 8
INK = -0.9  # target value of a stroke pixel (near black)
RIDGE = 1e-2


def random_strokes(n: int, size: int, g: torch.Generator, lines: int = 4, half_width: float = 0.02) -> torch.Tensor:
    """(n, 1, size, size) ink masks in {0, 1}: `lines` random segments each."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    ink = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(lines):
            a, b = torch.rand(2, generator=g), torch.rand(2, generator=g)
            d = b - a
            t = (((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / (d @ d + 1e-6)).clamp(0, 1)
            near = torch.hypot(xx - a[0] - t * d[0], yy - a[1] - t * d[1]) < half_width
            ink[i, 0] = torch.maximum(ink[i, 0], near.float())
    return ink


def _batch(n: int, size: int, g: torch.Generator):
    """Sketches (dark strokes on white, [-1, 1]), exemplars (a random colour plus noise), targets."""
    ink = random_strokes(n, size, g)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 1.6 - 0.8
    style = (colour + 0.2 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)
    target = colour * (1 - ink) + INK * ink
    return 1 - 2 * ink, style, target


def _solve_rgb(conv: nn.Conv2d, features: torch.Tensor, target: torch.Tensor) -> None:
    """Set a bias-free 3x3 conv (followed by tanh) so that tanh(conv(features)) ~ target: ridge
    regression of atanh(target) on the 3x3 neighbourhoods of the features."""
    c = features.shape[1]
    x = F.unfold(features, 3, padding=1).transpose(1, 2).reshape(-1, c * 9).double()
    y = torch.atanh(target.clamp(-0.95, 0.95)).permute(0, 2, 3, 1).reshape(-1, 3).double()
    gram = x.T @ x + RIDGE * x.shape[0] * torch.eye(c * 9, dtype=x.dtype)
    conv.weight.copy_(torch.linalg.solve(gram, x.T @ y).T.reshape(3, c, 3, 3).float())


def _input_of(module: nn.Module, run) -> torch.Tensor:
    box = {}
    handle = module.register_forward_pre_hook(lambda m, args: box.setdefault("x", args[0]))
    try:
        run()
    finally:
        handle.remove()
    return box["x"]


@contextlib.contextmanager
def _threads(n: int):
    """Fewer threads for a few small ops: on a busy machine, idle OpenMP threads only wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def build_stroke_model(path, size: int = 64, seed: int = 0, n_fit: int = 8) -> Path:
    """Write the model to `path` (.safetensors) and return it."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    with _threads(1):
        ae = AutoEncoder(NFC, size)
        style_enc, content_enc, decoder = ae.style_encoder, ae.content_encoder, ae.decoder
        generator = build_generator("art", NFC, size, size)
        nets = (style_enc, content_enc, decoder, generator)
        for m in (m for net in nets for m in net.modules()):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # running statistics = the plain average over the passes below
        for net in nets:
            net.train()
        sketch, style, _ = _batch(n_fit, size, g)
        vectors = style_enc(style)
        generator(decoder(content_enc(sketch), vectors), vectors)
        for net in nets:
            net.eval()

        sketch, style, target = _batch(n_fit, size, g)
        vectors, content = style_enc(style), content_enc(sketch)
        _solve_rgb(decoder.to_rgb[0], _input_of(decoder.to_rgb, lambda: decoder(content, vectors)), target)
        ae_image = decoder(content, vectors)
        _solve_rgb(generator.to_rgb[0], _input_of(generator.to_rgb, lambda: generator(ae_image, vectors)), target)
    arch = {"preset": "demo", "generator": "art", "nfc": NFC, "im_size_ae": size, "im_size_gan": size}
    return save_exported(Trained(ae, generator, arch, {"DATA_NAME": "demo"}, iteration=0), path)
