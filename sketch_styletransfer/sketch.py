"""Photo -> sketch: an XDoG setting or a TOM checkpoint; one picture or a whole folder.

`make_sketcher` gives a function from one photo to its sketch (the app, evaluate/style_transfer.py);
`make_sketches` writes the TOM sketches of a photo folder, one folder per (checkpoint, threshold)
(evaluate.py, prepare_data.py). XDoG sketch folders: xdog.make_sketch_folders.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import weights
from checkpoints import find_checkpoint, load_tom, run_folder
from datasets import FolderDataset, resize, to_float, to_uint8_tensor
from errors import UserError
from fileio import save_png
from sketch_styletransfer.tom_models import THRESHOLD, TOMGenerator, VGGFeatures, check_size, sketch_photos, to_sketch
from sketch_styletransfer.xdog import BUILTIN_SETTINGS, parse_setting, xdog_image

Sketcher = Callable[[Image.Image], Image.Image]  # RGB photo -> "L" sketch (dark strokes on white)
XDOG_DEFAULT = "medium"
XDOG_CHOICES = tuple(f"xdog:{name}" for name in BUILTIN_SETTINGS)  # the built-in XDoG sketchers' specs
TOM_SIZE = 256  # TOM's training size, for a checkpoint that does not name its own


class SketcherError(UserError):
    """A sketcher that cannot be made: an unknown XDoG setting, a TOM sketcher without its checkpoint."""


def make_sketcher(spec: str, size: int | None = None, device="cpu") -> Sketcher:
    """xdog[:setting] (drawn at `size` px, None: the photo's) or tom:CHECKPOINT (at TOM's training size)."""
    kind, _, arg = spec.partition(":")
    if kind == "xdog":
        return xdog_sketcher(arg or XDOG_DEFAULT, size)
    if kind == "tom":
        if not arg:
            raise SketcherError("--sketcher tom:CHECKPOINT needs the TOM checkpoint path")
        return tom_sketcher(arg, device)
    raise SketcherError(f"--sketcher {spec!r}: expected xdog[:setting] or tom:CHECKPOINT")


def xdog_sketcher(spec: str = XDOG_DEFAULT, size: int | None = None) -> Sketcher:
    """Binary XDoG lines of the photo resized to `size` (a model's output size: the scale its training
    sketches were drawn at). spec: thin, medium, bold, or name:key=value,... as xdog.py's --setting."""
    name, _, body = spec.partition(":")
    if not body and name not in BUILTIN_SETTINGS:  # parse_setting would take it for a new name of medium
        keys = ", ".join(f.name for f in dataclasses.fields(BUILTIN_SETTINGS[XDOG_DEFAULT]))
        raise SketcherError(f"--sketcher xdog:{spec}: unknown setting; built-in: {', '.join(BUILTIN_SETTINGS)} "
                            f"(or name:key=value,... with keys {keys})")
    try:
        _, setting = parse_setting(spec)
    except ValueError as e:
        raise SketcherError(f"--sketcher xdog:{spec}: {e}") from None

    def sketch(photo: Image.Image) -> Image.Image:
        gray = photo.convert("L")
        return xdog_image(np.asarray(resize(gray, size) if size else gray, dtype=np.float64) / 255.0, setting)
    return sketch


def tom_sketcher(checkpoint, device, vgg_features: nn.Module | None = None) -> Sketcher:
    """A TOM checkpoint (file or run folder): photo -> binary sketch at the size TOM was trained at.
    vgg_features: None for the pretrained VGG16."""
    generator, size = _tom(checkpoint, device)
    vgg = _vgg(vgg_features, device)

    def sketch(photo: Image.Image) -> Image.Image:
        x = to_float(to_uint8_tensor(resize(photo.convert("RGB"), size)))[None].to(device)
        return Image.fromarray(_grey(sketch_photos(generator, vgg, x), THRESHOLD)[0], mode="L")
    return sketch


def _tom(checkpoint, device) -> tuple[TOMGenerator, int]:
    generator, ckpt = load_tom(checkpoint)
    return generator.to(device), int(ckpt["config"].get("im_size", TOM_SIZE))


def _vgg(vgg_features: nn.Module | None, device) -> VGGFeatures:
    return VGGFeatures(weights.vgg16_features() if vgg_features is None else vgg_features).to(device)


def _grey(raw: torch.Tensor, threshold: float | None) -> np.ndarray:
    """TOM's raw output (B, 3, H, W) -> (B, H, W) uint8 sketches: binary at `threshold`, grey for None."""
    return to_sketch(raw, threshold)[:, 0].mul(255).round().to(torch.uint8).cpu().numpy()


def parse_threshold(text: str) -> float | None:
    """'0.7' -> 0.7; 'none' (or 'soft') -> None: grey sketches without a threshold."""
    if text.lower() in ("none", "soft"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"threshold {text!r}: a number between 0 and 1, or 'none'") from None
    if not 0 < value < 1:
        raise ValueError(f"threshold {text!r}: must lie strictly between 0 and 1")
    return value


def checkpoint_labels(paths: list[Path]) -> list[str]:
    """File stems; checkpoints of different runs with the same stem get their run folder's name in front."""
    stems = [p.stem for p in paths]
    labels = [f"{run_folder(p).name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(set(labels)) < len(labels):
        raise UserError(f"checkpoints would write into the same folder: {', '.join(map(str, paths))}")
    return labels


def make_sketches(vgg_features: nn.Module | None, checkpoints: list, path_content, path_result, thresholds: list,
                  size: int | None = None, batch_size: int = 8, device="cpu", overwrite: bool = False,
                  workers: int = 0, progress: bool = True) -> dict:
    """Write `<path_result>/<checkpoint>_t<threshold>/<name>.png` (`_soft`: grey) for every photo of `path_content`
    and its sub-folders (cats/01.jpg -> cats__01.png); existing ones are kept unless `overwrite`.
    Returns {folders, written, kept, unreadable}."""
    device = torch.device(device)
    vgg = _vgg(vgg_features, device)
    paths = list(dict.fromkeys(find_checkpoint(c, "tom") for c in checkpoints))  # same file twice: once
    by_size: dict[int, FolderDataset] = {}   # the photo folder at each output size
    folders, written, kept, unreadable = [], 0, 0, set()
    for path, label in zip(paths, checkpoint_labels(paths)):
        generator, side = _tom(path, device)
        side = size or side
        check_size(side)
        data = by_size.setdefault(side, FolderDataset(path_content, side, "RGB", nested=True))
        outs = [Path(path_result) / (f"{label}_soft" if t is None else f"{label}_t{t:g}") for t in thresholds]
        folders += outs
        exists = {} if overwrite else {s: [(f / f"{s}.png").is_file() for f in outs] for s in data.names}
        todo = [i for i, s in enumerate(data.names) if not all(exists.get(s, [False]))]
        kept += sum(map(sum, exists.values()))
        loader = DataLoader(Subset(data, todo), batch_size=batch_size, num_workers=workers)
        for batch in tqdm(loader, desc=label, unit="batch", disable=not progress or not todo, dynamic_ncols=True):
            ok = batch["ok"]
            unreadable.update(name for name, good in zip(batch["name"], ok.tolist()) if not good)
            if not ok.any():
                continue
            raw = sketch_photos(generator, vgg, to_float(batch["image"][ok].to(device)))
            names = [name for name, good in zip(batch["name"], ok.tolist()) if good]
            for threshold, out in zip(thresholds, outs):
                written += _write(_grey(raw, threshold), names, out, overwrite)
    if written:
        os.sync()  # one flush for every PNG written above (saved without a per-file fsync)
    return {"folders": [os.path.abspath(f) for f in folders], "written": written, "kept": kept,
            "unreadable": sorted(unreadable)}


def _write(grey: np.ndarray, names: list[str], folder: Path, overwrite: bool) -> int:
    """Write the (B, H, W) uint8 sketches that are missing (or all, with overwrite); returns the count."""
    count = 0
    for image, name in zip(grey, names):
        target = folder / f"{name}.png"
        if overwrite or not target.is_file():
            save_png(Image.fromarray(image, mode="L"), target, fsync=False)
            count += 1
    return count
