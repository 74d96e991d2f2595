"""Make TOM sketches of a photo folder, named like the photos, so they pair with them for training.

    python sketch_styletransfer/evaluate.py --path_content PHOTOS --path_result SKETCHES \
        --checkpoint train_results/tom-<time>/checkpoints/ckpt_*.pt --threshold 0.7

Every (checkpoint, threshold) combination writes `<path_result>/<checkpoint>_t<threshold>/<stem>.png`
(`_soft` for `--threshold none`: grey, not thresholded), one sketch per readable photo, at the
checkpoint's training size or --size. Ten checkpoints (a run keeps its last ten by default) give
the paper's ten sketches per photo; the folders printed at the end go into SKETCH_DIRS= as they
are. Existing sketches are kept unless --overwrite, so an interrupted call can simply be re-run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # run as a script: the repository's top-level modules must be importable
    sys.path.insert(0, ROOT)

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import weights
from datasets import FolderDataset, require_images, to_float
from errors import UserError, cli
from fileio import check_apart, check_writable, save_png
from sketch_styletransfer.tom_models import (VGGFeatures, check_size, sketch_photos,
                                             to_sketch)
from checkpoints import find_checkpoint, load_tom
from training import resolve_device


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


def folder_name(label: str, threshold: float | None) -> str:
    """Sub-folder of one (checkpoint, threshold) combination, e.g. ckpt_00005000_t0.7 or ckpt_00005000_soft."""
    return f"{label}_soft" if threshold is None else f"{label}_t{threshold:g}"


def checkpoint_labels(paths: list[Path]) -> list[str]:
    """File stems; checkpoints of different runs with the same stem get their run folder's name in front."""
    stems = [p.stem for p in paths]
    labels = [f"{_run_name(p)}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(set(labels)) < len(labels):
        raise UserError(f"checkpoints would write into the same folder: {', '.join(map(str, paths))}")
    return labels


def _run_name(path: Path) -> str:
    return (path.parent.parent if path.parent.name == "checkpoints" else path.parent).name


def _pending(folders: list[Path], stems: list[str], overwrite: bool) -> list[int]:
    """Indices of the photos that miss their sketch in at least one folder."""
    return [i for i, stem in enumerate(stems) if overwrite or not all((f / f"{stem}.png").is_file() for f in folders)]


def make_sketches(vgg_features: nn.Module, checkpoints: list, path_content, path_result, thresholds: list,
                  size: int | None = None, batch_size: int = 8, device="cpu", overwrite: bool = False,
                  workers: int = 0, progress: bool = True) -> dict:
    """Write every (checkpoint, threshold) sketch folder; returns {folders, written, kept, unreadable}."""
    device = torch.device(device)
    vgg = VGGFeatures(vgg_features).to(device)
    paths = list(dict.fromkeys(find_checkpoint(c, "tom") for c in checkpoints))  # same file twice: once
    labels = checkpoint_labels(paths)
    result_dir = Path(path_result)
    by_size: dict[int, FolderDataset] = {}   # the photo folder at each output size
    folders, written, kept, unreadable = [], 0, 0, set()
    for path, label in zip(paths, labels):
        generator, ckpt = load_tom(path)
        generator = generator.to(device)
        side = size or int(ckpt["config"]["im_size"])
        check_size(side)
        data = by_size.setdefault(side, FolderDataset(path_content, side, "RGB", nested=True))
        stems = data.names  # cats/01.jpg -> cats__01.png: one flat folder of sketches per combination
        outs = [result_dir / folder_name(label, t) for t in thresholds]
        folders += outs
        todo = _pending(outs, stems, overwrite)
        kept += 0 if overwrite else sum((f / f"{s}.png").is_file() for f in outs for s in stems)
        loader = DataLoader(Subset(data, todo), batch_size=batch_size, num_workers=workers)
        for batch in tqdm(loader, desc=label, unit="batch", disable=not progress or not todo, dynamic_ncols=True):
            ok = batch["ok"]
            unreadable.update(name for name, good in zip(batch["name"], ok.tolist()) if not good)
            if not ok.any():
                continue
            raw = sketch_photos(generator, vgg, to_float(batch["image"][ok].to(device)))
            names = [name for name, good in zip(batch["name"], ok.tolist()) if good]
            for threshold, out in zip(thresholds, outs):
                grey = to_sketch(raw, threshold)[:, 0].mul(255).round().to(torch.uint8).cpu().numpy()
                written += _write(grey, names, out, overwrite)
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


@cli
def main(argv: list[str] | None = None, vgg_features: nn.Module | None = None) -> int:
    """Command-line entry; returns the exit code. Tests pass `vgg_features` (a random VGG16) to skip the download."""
    p = argparse.ArgumentParser(description="Make TOM sketches of a photo folder, one sub-folder per "
                                            "(checkpoint, threshold), files named like the photos.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a folder of photos (with its sub-folders); TOM checkpoints (or run folders) of train.py.
Outputs: <path_result>/<checkpoint>_t<threshold>/<name>.png per photo; the SKETCH_DIRS= line to train with.
Example:
    python sketch_styletransfer/evaluate.py --path_content data/photos --path_result data/sketches \\
        --checkpoint train_results/tom-<time> --threshold 0.6 0.7 0.8""")
    p.add_argument("--path_content", required=True,
                   help="folder of photos, and its sub-folders (a/b.jpg is sketched as a__b.png)")
    p.add_argument("--path_result", required=True, help="where the sketch folders go")
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="one or more TOM checkpoints (a run folder stands for its newest checkpoint)")
    p.add_argument("--threshold", nargs="+", default=["0.7"],
                   help="one or more grey levels in (0, 1) above which a pixel is paper (default 0.7), or 'none' "
                        "for grey sketches")
    p.add_argument("--size", type=int, default=None, help="output side (default: the checkpoint's training size)")
    p.add_argument("--batch_size", type=int, default=8, help="photos per batch (default 8)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=2, help="image loading processes (default 2)")
    p.add_argument("--overwrite", action="store_true", help="remake sketches that already exist")
    args = p.parse_args(argv)
    try:
        thresholds = list(dict.fromkeys(parse_threshold(t) for t in args.threshold))
        if args.size is not None:
            check_size(args.size)
    except ValueError as e:
        p.error(str(e))
    if args.batch_size < 1:
        p.error("--batch_size must be positive")
    device = resolve_device(args.device)
    check_apart([args.path_result], [args.path_content], nested=True)  # the photos are read with sub-folders
    for checkpoint in args.checkpoint:  # refuse bad inputs before loading the VGG weights
        find_checkpoint(checkpoint, "tom")
    require_images(args.path_content, nested=True)
    check_writable(args.path_result, folder=True)
    if vgg_features is None:  # only the command line needs the pretrained weights
        vgg_features = weights.vgg16_features()
    summary = make_sketches(vgg_features, args.checkpoint, args.path_content, args.path_result, thresholds,
                            args.size, args.batch_size, device, args.overwrite, max(0, args.workers))
    print(f"wrote {summary['written']} sketches, kept {summary['kept']} existing")
    if summary["unreadable"]:
        print(f"{len(summary['unreadable'])} unreadable photo(s) skipped: {', '.join(summary['unreadable'])}",
              file=sys.stderr)
    print("sketch folders:\n" + "\n".join(f"  {f}" for f in summary["folders"]))
    print("SKETCH_DIRS=" + ",".join(summary["folders"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
