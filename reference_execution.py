"""How the reference code executes a training step and loads its data, for bench_speed.py's
"reference" mode: the same passes as ours, run the way the reference runs them.

- Precision and kernels: fp32 (convolutions in TF32, torch's default; matmuls in full fp32),
  NCHW, cudnn.benchmark off (`backend_flags`; bench_speed's reference config sets BF16,
  CHANNELS_LAST and COMPILE off).
- Updates: torch.optim.Adam's per-parameter loop (foreach=False, fused=False), zero_grad that
  fills zeros (torch 1.x), the generator EMA one parameter at a time (`runtime`: the stages read
  Runtime.reference_loops; nothing is patched).
- Logging: a `.item()` of every loss after every step, one host sync per loss (`log_every_loss`).
- Data: the reference's per-item PIL work in the loader (`ReferenceSelfSupervisedDataset`,
  `ReferencePairedMultiDataset`), where ours only decodes and resizes and augments batched on
  the device.
"""
from __future__ import annotations

import dataclasses
import random

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import transforms as T

from datasets import Pairs
from training import Runtime


def runtime(ours: Runtime) -> Runtime:
    """`ours` with the reference's per-parameter update loops (precision and layout come from the config)."""
    return dataclasses.replace(ours, reference_loops=True)


def backend_flags(reference: bool, device: torch.device) -> None:
    """cuDNN autotuning and TF32 matmuls: off as in the reference, or on as ours (setup_runtime)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not reference
    torch.backends.cuda.matmul.allow_tf32 = not reference  # torch's default (since 1.12) is off
    torch.backends.cudnn.allow_tf32 = True                  # torch's default: TF32 convolutions


def log_every_loss(losses: dict[str, torch.Tensor]) -> list[float]:
    """The reference prints every loss of every step: one host sync each."""
    return [v.item() for v in losses.values()]


def _rescale(t: torch.Tensor) -> torch.Tensor:
    return t * 2.0 - 1.0


class ReferenceSelfSupervisedDataset(Dataset):
    """The reference SelfSupervisedDataset's per-item PIL work (rand_crop=True), for timing.

    Returns (img_rd, img_normal, skt_normal, skt_bold, skt_erased, skt_erased_bold, idx) in
    [-1, 1]: the 3x3 minimum-filtered (bold) sketch is made at the file's resolution; image and
    sketches are flipped together at random; x~ = resize 1.3x, random crop, RandomRotation(30),
    random flip; image, sketch and bold sketch are resized 1.1x and cropped at one random offset;
    two RandomErasing passes (p 0.8, white) on the sketch and on the bold sketch.
    """

    def __init__(self, pairs: Pairs, im_size: int):
        s = im_size
        self.pairs, self.im_size = pairs, s
        self.transform_rd = T.Compose([T.Resize((int(s * 1.3), int(s * 1.3))), T.RandomCrop((s, s)),
                                       T.RandomRotation(30), T.RandomHorizontalFlip(), T.ToTensor(), _rescale])
        self.resize = T.Resize((int(s * 1.1), int(s * 1.1)))
        self.to_tensor = T.Compose([T.ToTensor(), _rescale])
        self.rand_range = int(s * 0.1)
        self.erase = T.Compose([T.RandomErasing(p=0.8, scale=(0.02, 0.1), value=1),
                                T.RandomErasing(p=0.8, scale=(0.02, 0.1), value=1)])

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, idx):
        img = Image.open(self.pairs.images[idx]).convert("RGB")
        skt = Image.open(self.pairs.sketches[idx][-1]).convert("L")  # the reference: its 3rd sketch set
        skt_bold = skt.filter(ImageFilter.MinFilter(size=3))
        if random.randint(0, 1) == 1:
            img, skt, skt_bold = TF.hflip(img), TF.hflip(skt), TF.hflip(skt_bold)
        img_rd = self.transform_rd(img)
        i, j = random.randint(0, self.rand_range), random.randint(0, self.rand_range)
        img_n, skt_n, skt_b = (self.to_tensor(TF.crop(self.resize(x), i, j, self.im_size, self.im_size))
                               for x in (img, skt, skt_bold))
        return img_rd, img_n, skt_n, skt_b, self.erase(skt_n), self.erase(skt_b), idx


class ReferencePairedMultiDataset(Dataset):
    """The reference PairedMultiDataset's per-item work (rand_crop=True): an image and three
    sketches, each resized 1.1x and cropped at one random offset, to [-1, 1]. With fewer than
    three sketch folders the available ones are read again (the same decoding work)."""

    def __init__(self, pairs: Pairs, im_size: int):
        s = im_size
        self.pairs, self.im_size = pairs, s
        self.resize = T.Resize((int(s * 1.1), int(s * 1.1)))
        self.to_tensor = T.Compose([T.ToTensor(), _rescale])
        self.rand_range = int(s * 0.1)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, idx):
        sketches = self.pairs.sketches[idx]
        imgs = [Image.open(self.pairs.images[idx]).convert("RGB")]
        imgs += [Image.open(sketches[k % len(sketches)]).convert("L") for k in range(3)]
        i, j = random.randint(0, self.rand_range), random.randint(0, self.rand_range)
        return tuple(self.to_tensor(TF.crop(self.resize(x), i, j, self.im_size, self.im_size)) for x in imgs)


def reference_dataset(kind: str, pairs: Pairs, size: int) -> Dataset:
    """The reference's dataset of the AE ("ae") or GAN stage."""
    return ReferenceSelfSupervisedDataset(pairs, size) if kind == "ae" else ReferencePairedMultiDataset(pairs, size)
