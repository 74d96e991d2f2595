"""LPIPS v0.1 (Zhang et al., CVPR 2018) with VGG16 or AlexNet backbones: a training loss and a metric.

The same computation as the `lpips` package on PyPI (tests/test_lpips.py checks parity to 1e-5).
The metric over folders is `python -m lpips` (lpips/metric.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

import weights

# backbone `features` index ranges ending at the ReLUs LPIPS reads
SLICES = {"vgg": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),    # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
          "alex": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))}     # relu1 .. relu5
EPS = 1e-10  # the package's normalize_tensor eps


class LPIPS(nn.Module):
    """LPIPS distance, differentiable in its inputs, every parameter frozen. `backbone` (torchvision
    `features`) and `linear_state_dict` (official layout, `lin{k}.model.1.weight`) default to weights.py's."""

    def __init__(self, net: str = "vgg", backbone: nn.Module | None = None, linear_state_dict: dict | None = None):
        super().__init__()
        layout = weights.lpips_linear_layout(net)  # also rejects an unknown `net`
        if backbone is None:
            backbone = weights.vgg16_features() if net == "vgg" else weights.alexnet_features()
        if linear_state_dict is None:
            linear_state_dict = weights.lpips_linear_state_dict(net)
        weights.check_layout(linear_state_dict, layout, f"LPIPS {net} linear weights")
        self.net = net
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.slices = nn.ModuleList(backbone[a:b] for a, b in SLICES[net])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in weights.LPIPS_CHANNELS[net])
        for k, lin in enumerate(self.lins):
            lin.weight.data.copy_(linear_state_dict[f"lin{k}.model.1.weight"])
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pairs in [-1, 1] -> (B,) distances."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS compares images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        b = x.shape[0]
        h = (torch.cat([x, y]) - self.shift) / self.scale  # both images in one backbone pass
        total = 0  # summed in the package's order (0 + layer 1 + layer 2 ...)
        for block, lin in zip(self.slices, self.lins):
            h = block(h)
            unit = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)
            total = total + lin((unit[:b] - unit[b:]) ** 2).mean(dim=(2, 3), keepdim=True)
        return total.flatten()
