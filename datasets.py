"""Paired image/sketch data: robust loading, pairing by file stem, samplers, augmentations.

Split of work (so augmentation can run batched on any device, and resume is exact):
- the loader (worker processes) only decodes and resizes: uint8 tensors at 1.1x (paired crop
  source) and 1.3x (style-view source) of the training size;
- the reference's augmentations are batched tensor functions below (`paired_crop_flip`,
  `style_view`, `bold`, `erase`), run by the training step on its device, their random
  parameters drawn from a CPU generator seeded per iteration;
- `InfiniteSampler` is addressed by position, so a resumed run sees the same batches.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CROP_SCALE = 1.1    # paired crop: resize to 1.1x, crop back at a random offset
STYLE_SCALE = 1.3   # style view: resize to 1.3x, random crop, rotation, flip
MAX_ROTATION = 30.0  # degrees, style view
ERASE_P, ERASE_AREA, ERASE_RATIO, ERASE_PASSES = 0.8, (0.02, 0.1), (0.3, 3.3), 2


class DataError(Exception):
    """A user's data problem: missing folder, nothing to pair, an unreadable image."""


# --------------------------------------------------------------------------- loading

def load_image(path, mode: str = "RGB") -> Image.Image:
    """Open any image as 8-bit "RGB" or "L": alpha composited on white, 16-bit scaled, EXIF-rotated.

    Raises DataError for unreadable, truncated or oversized (decompression bomb) files.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return _to_mode(img, mode)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError) as e:
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
    """PIL "RGB"/"L" -> (C,H,W) uint8 tensor."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def resize(img: Image.Image, size: int) -> Image.Image:
    """Square resize with PIL's antialiased bicubic filter."""
    return img.resize((size, size), Image.BICUBIC)


# --------------------------------------------------------------------------- pairing

def list_images(folder) -> dict[str, Path]:
    """Image files of a folder (flat, any listed extension in any case) keyed by file stem.

    Files pair by stem, so two images with one stem (a.jpg and a.png) are refused with a DataError
    naming them: either could be the one a sketch was drawn from.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    found: dict[str, Path] = {}
    clashes: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            if path.stem in found:
                clashes.setdefault(path.stem, [found[path.stem].name]).append(path.name)
            found.setdefault(path.stem, path)
    if clashes:
        shown = "; ".join(", ".join(names) for names in list(clashes.values())[:5])
        raise DataError(f"{folder}: {len(clashes)} name(s) used by more than one image ({shown}"
                        f"{'; ...' if len(clashes) > 5 else ''}): files pair by "
                        f"name without extension, so rename or remove all but one of each")
    return found


def require_images(folder, what: str = "") -> dict[str, Path]:
    """list_images, or a DataError naming the folder when it holds no image."""
    found = list_images(folder)
    if not found:
        where = f"{what} folder {folder}" if what else str(folder)
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {where}")
    return found


@dataclass
class Pairs:
    """Images with one sketch in each of K folders, and what could not be paired."""
    images: list[Path]
    sketches: list[tuple[Path, ...]]          # sketches[i][k]: image i's sketch in folder k
    missing: dict[str, list[str]] = field(default_factory=dict)  # sketch folder -> stems without a sketch

    def __len__(self):
        return len(self.images)

    def report(self) -> str:
        """One line per sketch folder that lacks sketches of some images."""
        lines = []
        for folder, stems in self.missing.items():
            shown = ", ".join(stems[:5]) + (", ..." if len(stems) > 5 else "")
            lines.append(f"{len(stems)} image(s) have no sketch in {folder} and are left out: {shown}")
        return "\n".join(lines)


def pair_folders(image_dir, sketch_dirs) -> Pairs:
    """Pair each image with its sketch in every sketch folder by file stem."""
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
    """`pairs`, or a DataError if not one image and its sketches can be read (checked until the first
    readable pair: one read when the data is fine). Unreadable files are otherwise skipped in training."""
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


# --------------------------------------------------------------------------- datasets

class _SkipCounter:
    """Warn once per unreadable file (per process); bad files are replaced by the next good one."""

    def __init__(self):
        self.seen: set[str] = set()

    def note(self, error: DataError) -> None:
        key = str(error)
        if key not in self.seen:
            self.seen.add(key)
            print(f"warning: skipping {key}", file=sys.stderr)


class PairedDataset(Dataset):
    """Items (index, sketch_set) -> image and one of its sketches, decoded and resized (uint8).

    image/sketch are at int(1.1 * size) (the paired crop source); with `style_view=True` the
    item also holds `style_src`, the image at int(1.3 * size). `skipped` counts unreadable
    files replaced to build this item (the training loop sums and reports them).
    """

    def __init__(self, pairs: Pairs, size: int, style_view: bool = False, crop: bool = True):
        self.pairs, self.size, self.style_view = pairs, size, style_view
        self.load_size = int(size * CROP_SCALE) if crop else size
        self.style_size = int(size * STYLE_SCALE)
        self.skips = _SkipCounter()

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, item):
        index, sketch_set = item if isinstance(item, tuple) else (item, 0)
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                out = self._load(i, sketch_set)
            except DataError as e:
                self.skips.note(e)
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
        return out


class SelfSupervisedDataset(Dataset):
    """A rotating subset of `nbr_cls` pairs, each its own class; `next_subset()` moves it on.

    Subset t is the t-th window of `nbr_cls` items in a shuffle of all pairs; when a shuffle is
    used up a new one is drawn. Subset t is a pure function of (seed, t), so resuming needs t only.
    """

    def __init__(self, pairs: Pairs, size: int, nbr_cls: int, seed: int = 0, subset: int = 0):
        if nbr_cls > len(pairs):
            raise DataError(f"NBR_CLS={nbr_cls} is larger than the data set ({len(pairs)} pairs): "
                            f"set NBR_CLS to at most {len(pairs)}")
        self.data = PairedDataset(pairs, size, style_view=True)
        self.nbr_cls, self.seed, self.subset = nbr_cls, seed, subset
        self.members = self._members()

    def _members(self) -> torch.Tensor:
        per_shuffle = len(self.data) // self.nbr_cls
        shuffle, window = divmod(self.subset, per_shuffle)
        order = torch.randperm(len(self.data), generator=_generator(self.seed, 7919, shuffle))
        return order[window * self.nbr_cls:(window + 1) * self.nbr_cls]

    def next_subset(self) -> None:
        self.set_subset(self.subset + 1)

    def set_subset(self, subset: int) -> None:
        """Jump to subset number `subset` (resume)."""
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
    """Every image of one folder, resized, as (C,H,W) uint8; unreadable files are dropped and counted."""

    def __init__(self, folder, size: int, mode: str = "RGB"):
        self.paths = list(require_images(folder).values())
        self.size, self.mode = size, mode

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = to_uint8_tensor(resize(load_image(self.paths[i], self.mode), self.size))
            return {"image": img, "ok": True, "name": self.paths[i].stem}
        except DataError as e:
            print(f"warning: skipping {e}", file=sys.stderr)
            channels = 3 if self.mode == "RGB" else 1
            return {"image": torch.zeros(channels, self.size, self.size, dtype=torch.uint8),
                    "ok": False, "name": self.paths[i].stem}


# --------------------------------------------------------------------------- sampling

def _generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded from several integers (seed, stream, counter...)."""
    mixed = 0
    for s in seeds:
        mixed = (mixed * 1_000_003 + int(s)) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(mixed)


class InfiniteSampler(Sampler):
    """Endless shuffled stream of (index, sketch_set) items, addressable by position.

    Item p of the global stream comes from epoch p // n of a seeded reshuffle, so starting at
    `start` reproduces a stopped run exactly. Under DDP each rank takes every world_size-th
    item, so ranks see disjoint data.
    """

    def __init__(self, n: int, n_sets: int = 1, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.n_sets, self.seed, self.start = n, n_sets, seed, start
        self.rank, self.world_size = rank, world_size

    def _epoch(self, epoch: int):
        g = _generator(self.seed, 104729, epoch)
        return torch.randperm(self.n, generator=g).tolist(), torch.randint(self.n_sets, (self.n,), generator=g).tolist()

    def __iter__(self):
        position, cached_epoch, order, sets = self.start, None, None, None
        while True:
            epoch, offset = divmod(position * self.world_size + self.rank, self.n)
            if epoch != cached_epoch:
                order, sets = self._epoch(epoch)
                cached_epoch = epoch
            yield order[offset], sets[offset]
            position += 1


def iteration_generator(seed: int, stream: int, iteration: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one training step's augmentation draws (reproducible on resume)."""
    return _generator(seed, stream, iteration, rank)


# --------------------------------------------------------------------------- augmentations
# All take float tensors (B,C,H,W) in [-1, 1] on any device; random draws come from a CPU
# generator, so results are identical on CPU and GPU given the same seed. The few small
# parameter tensors go to the device with `async_to`, so a training step never waits on the host.

def async_to(t: torch.Tensor, device) -> torch.Tensor:
    """Copy a small CPU tensor to `device` without a host sync (pinned, non-blocking on CUDA)."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


def paired_crop_flip(tensors: list[torch.Tensor], size: int, g: torch.Generator) -> list[torch.Tensor]:
    """Crop every tensor of the list at the same random offset per item, then flip them together."""
    b, _, h, w = tensors[0].shape
    top = torch.randint(h - size + 1, (b,), generator=g)
    left = torch.randint(w - size + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    ar = torch.arange(size)
    cols = left[:, None] + ar
    cols = torch.where(flip[:, None], cols.flip(1), cols)                  # flip = read columns backwards
    device = tensors[0].device
    rows, cols = async_to(top[:, None] + ar, device), async_to(cols, device)  # (B, size) each
    batch = torch.arange(b, device=device)[:, None, None]
    crops = [t[batch, :, rows[:, :, None], cols[:, None, :]] for t in tensors]  # (B, size, size, C)
    return [_like(crop.permute(0, 3, 1, 2), t) for crop, t in zip(crops, tensors)]


def _like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """x in the memory format of `reference` (channels-last on CUDA runs, contiguous otherwise)."""
    channels_last = not reference.is_contiguous() and reference.is_contiguous(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def style_view(src: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """x~: random crop of the 1.3x image, rotation up to 30 degrees, random flip (one resampling).

    The three steps compose into one affine map per item (output -> source, in grid_sample's
    normalised coordinates), so only a (B, 2, 3) matrix travels to the device. Corners uncovered
    by the rotation are black, as in the reference (torchvision fill 0).
    """
    b, c, r, _ = src.shape
    top = torch.randint(r - size + 1, (b,), generator=g).float()
    left = torch.randint(r - size + 1, (b,), generator=g).float()
    angle = _uniform(g, b, -MAX_ROTATION, MAX_ROTATION) * math.pi / 180
    mirror = 1 - 2 * (torch.rand(b, generator=g) < 0.5).float()  # -1: flip horizontally
    k, cos, sin = size / r, angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([k * cos * mirror, -k * sin, (size + 2 * left) / r - 1], dim=1),
                         torch.stack([k * sin * mirror, k * cos, (size + 2 * top) / r - 1], dim=1)], dim=1)
    grid = F.affine_grid(async_to(theta, src.device).to(src.dtype), [b, c, size, size], align_corners=False)
    out = F.grid_sample(src + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out - 1


def bold(sketch: torch.Tensor) -> torch.Tensor:
    """3x3 minimum filter: dark strokes get one pixel thicker on each side."""
    return -F.max_pool2d(-sketch, kernel_size=3, stride=1, padding=1)


def erase(sketch: torch.Tensor, g: torch.Generator, passes: int = ERASE_PASSES, p: float = ERASE_P,
          area=ERASE_AREA, ratio=ERASE_RATIO) -> torch.Tensor:
    """Random erasing (torchvision's rule), `passes` times, filling with white (+1)."""
    b, _, h, w = sketch.shape
    boxes = torch.zeros(b, 4, dtype=torch.long)  # top, left, height, width (0: no erase)
    out = sketch
    ys = torch.arange(h, device=sketch.device)[None, :, None]
    xs = torch.arange(w, device=sketch.device)[None, None, :]
    for _ in range(passes):
        boxes.zero_()
        for i in range(b):
            if torch.rand(1, generator=g).item() < p:
                boxes[i] = _erase_box(h, w, g, area, ratio)
        top, left, eh, ew = async_to(boxes.clone(), sketch.device)[:, :, None, None].unbind(1)
        mask = (ys >= top) & (ys < top + eh) & (xs >= left) & (xs < left + ew)   # (B, H, W)
        out = torch.where(mask[:, None], torch.ones_like(out), out)
    return out


def _erase_box(h: int, w: int, g: torch.Generator, area, ratio) -> torch.Tensor:
    """torchvision RandomErasing's box draw: up to 10 tries of area fraction and log-uniform ratio."""
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


def sketch_variants(sketch: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference's three variants of a sketch batch: bold, erased, bold + erased."""
    thick = bold(sketch)
    return thick, erase(sketch, g), erase(thick, g)


def warn_missing(pairs: Pairs) -> None:
    """Print the pairing report (images left out for lack of a sketch) if there is one."""
    if pairs.missing:
        warnings.warn(pairs.report(), stacklevel=2)
