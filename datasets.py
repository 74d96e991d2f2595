"""Paired image/sketch data: robust loading, pairing by file stem, samplers, augmentations.

The loader workers only decode and resize (uint8, 1.1x and 1.3x the training size); the reference's random
augmentations are batched tensor functions run by the training step on its device, drawing from a CPU
generator seeded per iteration; `InfiniteSampler` is addressed by position. So resume is exact.
"""
from __future__ import annotations

import enum
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from errors import UserError

REQUIRED_PYTHON = (3, 11)  # hashlib.file_digest (weights, FID cache) and the typing the code relies on


def python_error(version: tuple = tuple(sys.version_info)) -> str | None:
    if tuple(version[:2]) < REQUIRED_PYTHON:
        return (f"error: this project needs Python >= {'.'.join(map(str, REQUIRED_PYTHON))} (this is Python "
                f"{'.'.join(map(str, version[:3]))}); see README 'Quick start'")


if python_error():  # every command imports this module: a one-line message at start, not a traceback later
    sys.exit(python_error())

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CROP_SCALE = 1.1    # paired crop: resize to 1.1x, crop back at a random offset
STYLE_SCALE = 1.3   # style view: resize to 1.3x, random crop, rotation, flip
MAX_ROTATION = 30.0  # degrees, style view
BOLD = ImageFilter.MinFilter(3)  # the bold sketch variant: dark strokes one file pixel thicker per side
ERASE_P, ERASE_AREA, ERASE_RATIO, ERASE_PASSES = 0.8, (0.02, 0.1), (0.3, 3.3), 2


class DataError(UserError):
    """A user's data problem: missing folder, nothing to pair, an unreadable image."""


# what PIL raises for unreadable, truncated or decompression-bomb files
READ_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError)


def load_image(path, mode: str = "RGB") -> Image.Image:
    """Any image as 8-bit "RGB" or "L" (alpha on white, 16-bit scaled, EXIF-rotated); DataError if unreadable."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return _to_mode(img, mode)
    except READ_ERRORS as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0  # 16-bit -> 8-bit
        img = Image.fromarray(np.clip(arr / scale, 0, 255).round().astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return img.convert(mode)


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL "RGB"/"L" -> (C, H, W) uint8 tensor."""
    arr = np.atleast_3d(np.asarray(img, dtype=np.uint8))  # "L": (H, W) -> (H, W, 1)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def resize(img: Image.Image, size: int) -> Image.Image:
    """Square resize as the reference's torchvision `Resize((size, size))` on a PIL image."""
    return img.resize((size, size), Image.BILINEAR)


def list_images(folder, nested: bool = False) -> dict[str, Path]:
    """Image files of a folder keyed by stem; `nested`: sub-folders too (hidden ones left out), keyed by
    `flat_name`. Two images with one name (a.jpg, a.png) are a DataError: files pair by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    found: dict[str, Path] = {}
    clashes: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*") if nested else folder.iterdir()):
        rel = path.relative_to(folder)
        if nested and any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            name = flat_name(rel)
            if name in found:
                clashes.setdefault(name, [found[name].name]).append(path.name)
            found.setdefault(name, path)
    if clashes:
        shown = "; ".join(", ".join(names) for names in list(clashes.values())[:5])
        raise DataError(f"{folder}: {len(clashes)} name(s) used by more than one image ({shown}"
                        f"{'; ...' if len(clashes) > 5 else ''}): files pair by "
                        f"name without extension, so rename or remove all but one of each")
    return found


def flat_name(relative_path) -> str:
    """cats/01.jpg -> cats__01 (a flat file: its stem)."""
    return "__".join(Path(relative_path).with_suffix("").parts)


def require_images(folder, what: str = "", nested: bool = False) -> dict[str, Path]:
    """list_images, or a DataError naming the folder when it holds no image."""
    found = list_images(folder, nested)
    if not found:
        where = f"{what} folder {folder}" if what else str(folder)
        if nested:
            where += " or its sub-folders"
        elif list_images(folder, nested=True):
            where += (" (only its sub-folders hold images, and this folder is read flat: `python prepare_data.py "
                      "PHOTOS OUT` makes flat folders of a tree)")
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {where}")
    return found


@dataclass
class Pairs:
    images: list[Path]
    sketches: list[tuple[Path, ...]]          # sketches[i][k]: image i's sketch in folder k
    missing: dict[str, list[str]] = field(default_factory=dict)  # sketch folder -> stems without a sketch

    def __len__(self):
        return len(self.images)

    def report(self) -> str:
        lines = []
        for folder, stems in self.missing.items():
            shown = ", ".join(stems[:5]) + (", ..." if len(stems) > 5 else "")
            lines.append(f"{len(stems)} image(s) have no sketch in {folder} and are left out: {shown}")
        return "\n".join(lines)


def pair_folders(image_dir, sketch_dirs) -> Pairs:
    if not image_dir:
        raise DataError("no image folder configured (set IMAGE_DIR=...)")
    if not sketch_dirs:
        raise DataError("no sketch folders configured (set SKETCH_DIRS=folder1,folder2,...)")
    images = require_images(image_dir)
    sketch_maps = [list_images(d) for d in sketch_dirs]
    missing = {str(d): sorted(set(images) - set(m)) for d, m in zip(sketch_dirs, sketch_maps)}
    stems = [s for s in images if all(s in m for m in sketch_maps)]
    if not stems:
        raise DataError(f"no image in {image_dir} has a sketch with the same file name in every one of "
                        f"{', '.join(map(str, sketch_dirs))}")
    return Pairs(images=[images[s] for s in stems],
                 sketches=[tuple(m[s] for m in sketch_maps) for s in stems],
                 missing={d: s for d, s in missing.items() if s})


def require_readable(pairs: Pairs) -> Pairs:
    """`pairs`, or a DataError if not one pair can be read (reads until the first readable one)."""
    first_error = None
    for image, sketches in zip(pairs.images, pairs.sketches):
        try:
            for path, mode in ((image, "RGB"), *((s, "L") for s in sketches)):
                load_image(path, mode)
            return pairs
        except DataError as e:
            first_error = first_error or e
    raise DataError(f"none of the {len(pairs)} image/sketch pairs of {pairs.images[0].parent} can be read "
                    f"(first: {first_error})")


class PairedDataset(Dataset):
    """Items (index, sketch_set) -> uint8 image and sketch at int(1.1 * size); `style_view`: also `style_src` at
    int(1.3 * size); `bold`: also `sketch_bold`, thickened at the file's resolution before resizing (reference).
    An unreadable pair is replaced by the next one; `skipped` counts them."""

    def __init__(self, pairs: Pairs, size: int, style_view: bool = False, crop: bool = True, bold: bool = False):
        self.pairs, self.size, self.style_view, self.bold = pairs, size, style_view, bold
        self.load_size = int(size * CROP_SCALE) if crop else size
        self.style_size = int(size * STYLE_SCALE)
        self.skips: set[str] = set()  # the errors already warned of: once per unreadable file (per process)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, item):
        index, sketch_set = item if isinstance(item, tuple) else (item, 0)
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                out = self._load(i, sketch_set)
            except DataError as e:
                if str(e) not in self.skips:
                    self.skips.add(str(e))
                    print(f"warning: skipping {e}", file=sys.stderr)
                continue
            out["skipped"] = attempt
            return out
        raise DataError("no readable image/sketch pair left in the data set")

    def _load(self, i: int, sketch_set: int) -> dict:
        image = load_image(self.pairs.images[i], "RGB")
        sketch = load_image(self.pairs.sketches[i][sketch_set % len(self.pairs.sketches[i])], "L")
        out = {"image": to_uint8_tensor(resize(image, self.load_size)),
               "sketch": to_uint8_tensor(resize(sketch, self.load_size)),
               "index": i}
        if self.style_view:
            out["style_src"] = to_uint8_tensor(resize(image, self.style_size))
        if self.bold:
            out["sketch_bold"] = to_uint8_tensor(resize(sketch.filter(BOLD), self.load_size))
        return out


def fixed_batch(pairs: Pairs, n: int, size: int) -> dict[str, torch.Tensor]:
    """The first n pairs, resized without augmentation: every sample grid's inputs."""
    data = PairedDataset(pairs, size, crop=False)
    items = [data[(i, 0)] for i in range(min(n, len(data)))]
    return {"image": to_float(torch.stack([it["image"] for it in items])),
            "sketch": to_float(torch.stack([it["sketch"] for it in items]))}


class SelfSupervisedDataset(Dataset):
    """A rotating subset of `nbr_cls` pairs, each its own class. Subset t is a window of a seeded shuffle, a
    pure function of (seed, t)."""

    def __init__(self, pairs: Pairs, size: int, nbr_cls: int, seed: int = 0, subset: int = 0):
        if nbr_cls > len(pairs):
            raise DataError(f"NBR_CLS={nbr_cls} is larger than the data set ({len(pairs)} pairs): "
                            f"set NBR_CLS to at most {len(pairs)}")
        self.data = PairedDataset(pairs, size, style_view=True, bold=True)
        self.nbr_cls, self.seed, self.subset = nbr_cls, seed, subset
        self.members = self._members()

    def _members(self) -> torch.Tensor:
        per_shuffle = len(self.data) // self.nbr_cls
        shuffle, window = divmod(self.subset, per_shuffle)
        order = torch.randperm(len(self.data), generator=_generator(self.seed, RandomStream.SUBSET_SHUFFLE, shuffle))
        return order[window * self.nbr_cls:(window + 1) * self.nbr_cls]

    def next_subset(self) -> None:
        self.set_subset(self.subset + 1)

    def set_subset(self, subset: int) -> None:
        self.subset = subset
        self.members = self._members()

    def __len__(self):
        return self.nbr_cls

    def __getitem__(self, item):
        label, sketch_set = item if isinstance(item, tuple) else (item, 0)
        out = self.data[(int(self.members[label]), sketch_set)]
        out["label"] = label
        return out


class FolderDataset(Dataset):
    """Every image of a folder (`nested`: and sub-folders), resized, (C, H, W) uint8, with its name; an
    unreadable file gives zeros and ok=False."""

    def __init__(self, folder, size: int, mode: str = "RGB", nested: bool = False):
        found = require_images(folder, nested=nested)
        self.names, self.paths = list(found), list(found.values())
        self.size, self.mode = size, mode

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = to_uint8_tensor(resize(load_image(self.paths[i], self.mode), self.size))
            return {"image": img, "ok": True, "name": self.names[i]}
        except DataError as e:
            print(f"warning: skipping {e}", file=sys.stderr)
            channels = 3 if self.mode == "RGB" else 1
            return {"image": torch.zeros(channels, self.size, self.size, dtype=torch.uint8),
                    "ok": False, "name": self.names[i]}


@enum.unique
class RandomStream(enum.IntEnum):
    """Every random stream's id (unique), mixed into its seed: changing one changes every measured result."""
    SUBSET_SHUFFLE = 7919        # SelfSupervisedDataset: which images form the classifier's subset
    SAMPLER_ORDER = 104729       # InfiniteSampler: the order of each epoch
    SAMPLER_SETS = 15485863      # InfiniteSampler: which sketch set each batch (or item) reads
    LOADER = 3                   # DataLoader's own generator (worker base seeds)
    TOM_PHOTOS, TOM_SKETCHES = 1, 2         # sketch_styletransfer: the two unpaired folders
    AE_SS, AE_PAIRED, AE_AUG_A, AE_AUG_B = 11, 12, 13, 14  # AE stage: data of steps B and A, their augmentation
    GAN, GAN_AUG = 21, 22                   # GAN stage: data order, augmentation


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, stream id, counter, rank...)."""
    mixed = 0
    for part in parts:
        mixed = (mixed * 1_000_003 + int(part)) % (2 ** 63 - 1)
    return mixed


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(*parts))


def sketch_set_weights(k: int, weights: Sequence[float] = ()) -> torch.Tensor:
    """Odds of the k sketch sets: `weights`, else the reference's 1 per set and 2 for the last."""
    weights = list(weights) or [1.0] * (k - 1) + [2.0]
    if len(weights) != k or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"sketch set weights {weights}: need {k} finite, non-negative values, not all 0")
    return torch.tensor(weights, dtype=torch.float64)


def only_last_set(k: int) -> torch.Tensor:
    """Odds that always pick the last of k sketch sets."""
    return sketch_set_weights(k, [0.0] * (k - 1) + [1.0])


class InfiniteSampler(Sampler):
    """Endless shuffled (index, sketch_set) items from position `start`; rank r takes every world_size-th item.
    The sketch set is drawn with the odds `set_weights` once per `set_group` items (the batch size, as the
    reference; 1: per item)."""

    SET_BLOCK = 1024  # sketch sets are drawn for this many groups at a time

    def __init__(self, n: int, set_weights: Sequence[float] = (1.0,), set_group: int = 1, seed: int = 0,
                 start: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.start = n, seed, start
        self.set_weights, self.set_group = torch.as_tensor(set_weights, dtype=torch.float64), set_group
        self.rank, self.world_size = rank, world_size

    def _epoch(self, epoch: int) -> list[int]:
        return torch.randperm(self.n, generator=_generator(self.seed, RandomStream.SAMPLER_ORDER, epoch)).tolist()

    def _sets(self, block: int) -> list[int]:
        g = _generator(self.seed, RandomStream.SAMPLER_SETS, block, self.rank)
        return torch.multinomial(self.set_weights, self.SET_BLOCK, replacement=True, generator=g).tolist()

    def __iter__(self):
        position, cached_epoch, cached_block = self.start, None, None
        while True:
            epoch, offset = divmod(position * self.world_size + self.rank, self.n)
            if epoch != cached_epoch:
                order, cached_epoch = self._epoch(epoch), epoch
            block, group = divmod(position // self.set_group, self.SET_BLOCK)
            if block != cached_block:
                sets, cached_block = self._sets(block), block
            yield order[offset], sets[group]
            position += 1


def iteration_generator(seed: int, stream: int, iteration: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one training step's augmentation draws."""
    return _generator(seed, stream, iteration, rank)


# Augmentations: float (B, C, H, W) in [-1, 1] on any device; draws from a CPU generator (same results on CPU
# and GPU), their small parameter tensors sent with `async_to`, so a step never waits on the host.

def async_to(t: torch.Tensor, device) -> torch.Tensor:
    """Copy a small CPU tensor to `device` without a host sync."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


def paired_crop_flip(tensors: list[torch.Tensor], size: int, g: torch.Generator,
                     flip: bool = True) -> list[torch.Tensor]:
    """Crop all tensors at one random offset per item, then (`flip`) flip them together with probability 1/2."""
    b, _, h, w = tensors[0].shape
    top = torch.randint(h - size + 1, (b,), generator=g)
    left = torch.randint(w - size + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    return _crop(tensors, size, top, left, flip)


def _crop(tensors: list[torch.Tensor], size: int, top: torch.Tensor, left: torch.Tensor,
          flip: torch.Tensor) -> list[torch.Tensor]:
    """Per-item crops at (top, left), mirrored where `flip`: one gather per tensor."""
    b = tensors[0].shape[0]
    ar = torch.arange(size)
    cols = left[:, None] + ar
    cols = torch.where(flip[:, None], cols.flip(1), cols)                  # flip = read columns backwards
    device = tensors[0].device
    rows, cols = async_to(top[:, None] + ar, device), async_to(cols, device)  # (B, size) each
    batch = torch.arange(b, device=device)[:, None, None]
    crops = [t[batch, :, rows[:, :, None], cols[:, None, :]] for t in tensors]  # (B, size, size, C)
    return [_like(crop.permute(0, 3, 1, 2), t) for crop, t in zip(crops, tensors)]


def _like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    channels_last = not reference.is_contiguous() and reference.is_contiguous(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def style_view_params(g: torch.Generator, b: int, source: int, size: int):
    """`style_view`'s draws for b items: crop (top, left), angle in degrees, mirror."""
    top = torch.randint(source - size + 1, (b,), generator=g)
    left = torch.randint(source - size + 1, (b,), generator=g)
    angle = _uniform(g, b, -MAX_ROTATION, MAX_ROTATION)
    mirror = torch.rand(b, generator=g) < 0.5
    return top, left, angle, mirror


def style_view(src: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """x~ as the reference's RandomCrop, RandomRotation(30) (nearest, uncovered corners black), then
    RandomHorizontalFlip, from the 1.3x image; rotation and mirror are one affine map per item."""
    b, c, r, _ = src.shape
    top, left, angle, mirror = style_view_params(g, b, r, size)
    (crop,) = _crop([src], size, top, left, torch.zeros(b, dtype=torch.bool))
    rad = angle * math.pi / 180
    cos, sin, m, zero = rad.cos(), rad.sin(), 1 - 2 * mirror.float(), torch.zeros(b)
    theta = torch.stack([torch.stack([m * cos, -sin, zero], dim=1),
                         torch.stack([m * sin, cos, zero], dim=1)], dim=1)  # +angle, counter-clockwise as PIL
    grid = F.affine_grid(async_to(theta, src.device).to(src.dtype), [b, c, size, size], align_corners=False)
    out = F.grid_sample(crop + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out - 1  # outside the crop: 0 - 1 = black


def erase(sketch: torch.Tensor, g: torch.Generator, passes: int = ERASE_PASSES, p: float = ERASE_P,
          area=ERASE_AREA, ratio=ERASE_RATIO) -> torch.Tensor:
    """Random erasing (torchvision's rule), `passes` times, filling with white (+1)."""
    b, _, h, w = sketch.shape
    out = sketch
    ys = torch.arange(h, device=sketch.device)[None, :, None]
    xs = torch.arange(w, device=sketch.device)[None, None, :]
    for _ in range(passes):
        boxes = torch.zeros(b, 4, dtype=torch.long)  # top, left, height, width (0: no erase)
        for i in range(b):
            if torch.rand(1, generator=g).item() < p:
                boxes[i] = _erase_box(h, w, g, area, ratio)
        top, left, eh, ew = async_to(boxes, sketch.device)[:, :, None, None].unbind(1)
        mask = (ys >= top) & (ys < top + eh) & (xs >= left) & (xs < left + ew)   # (B, H, W)
        out = torch.where(mask[:, None], torch.ones_like(out), out)
    return out


def _erase_box(h: int, w: int, g: torch.Generator, area, ratio) -> torch.Tensor:
    """torchvision RandomErasing's box draw."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = h * w * _uniform(g, 1, *area).item()
        aspect = math.exp(_uniform(g, 1, *log_ratio).item())
        eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < eh < h and 0 < ew < w:
            top = torch.randint(h - eh + 1, (1,), generator=g).item()
            left = torch.randint(w - ew + 1, (1,), generator=g).item()
            return torch.tensor([top, left, eh, ew])
    return torch.zeros(4, dtype=torch.long)


def sketch_variants(sketch: torch.Tensor, thick: torch.Tensor,
                    g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference's three variants of a sketch batch, given its bold version: bold, erased, bold + erased."""
    return thick, erase(sketch, g), erase(thick, g)

