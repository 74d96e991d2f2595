"""XDoG line sketches: turn an image folder into K sketch folders that pair with it by file name.

XDoG (Winnemoeller et al. 2012): u = (1 + p) G_sigma(I) - p G_{k sigma}(I), then T(u) = 1 if u >= eps
else 1 + tanh(phi (u - eps)). The built-in settings use a large p with eps < 0 (not the classic small p,
eps > 0, a tone drawing): a pixel turns dark where the DoG falls below about (eps - I) / p, nearly
independent of the grey level I, so flat areas stay white whatever their tone and only outlines are drawn.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # run as a script: the repository's top-level modules must be importable
    sys.path.insert(0, ROOT)

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from datasets import DataError, load_image, require_images, resize
from errors import cli
from fileio import check_apart, check_writable, save_png

MAX_SIGMA = 100.0  # px: a wider blur draws no lines, and its filter grows with it


@dataclass(frozen=True)
class Setting:
    """One XDoG parameter setting; `width` > 1 thickens strokes with a width x width minimum filter."""
    sigma: float = 0.9
    k: float = 1.6
    p: float = 400.0
    eps: float = -4.0
    phi: float = 0.5
    width: int = 1

    def __post_init__(self):
        if not all(math.isfinite(v) for v in asdict(self).values()):
            raise ValueError(f"setting values must be finite numbers ({self})")
        if self.sigma <= 0 or self.k <= 0 or self.phi <= 0 or self.width < 1 or int(self.width) != self.width:
            raise ValueError(f"sigma, k and phi must be > 0 and width a whole number >= 1 ({self})")
        if self.k * self.sigma > MAX_SIGMA:
            raise ValueError(f"k * sigma must be at most {MAX_SIGMA} px ({self})")


# Tuned on the demo images (128 px): every outline drawn, no texture speckle (tests/test_xdog.py
# measures both against the exact line drawings). Stroke width ~1, ~2 and ~3.5 px.
BUILTIN_SETTINGS = {
    "thin": Setting(sigma=0.6, width=1),
    "medium": Setting(sigma=0.9, width=2),
    "bold": Setting(sigma=1.2, width=3),
}
NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def xdog(gray: np.ndarray, sigma: float = 0.9, k: float = 1.6, p: float = 400.0, eps: float = -4.0,
         phi: float = 0.5, width: int = 1, binary: bool = True) -> np.ndarray:
    """XDoG sketch of a grey image (H, W) in [0, 1]: float (H, W) in [0, 1], white background, dark strokes.

    binary=True gives exactly 0 or 1: the phi -> infinity limit (dark wherever u < eps); the soft
    result draws the same strokes with grey fringes where u is just below eps.
    """
    Setting(sigma, k, p, eps, phi, width)  # validates the values
    gray = np.asarray(gray, dtype=np.float64)
    sharpened = (1 + p) * ndimage.gaussian_filter(gray, sigma, mode="nearest") \
        - p * ndimage.gaussian_filter(gray, k * sigma, mode="nearest")
    out = ((sharpened >= eps).astype(np.float64) if binary
           else np.where(sharpened >= eps, 1.0, 1.0 + np.tanh(phi * (sharpened - eps))))
    if width > 1:
        out = ndimage.minimum_filter(out, size=int(width), mode="nearest")  # dark strokes grow
    return out


def xdog_image(gray: np.ndarray, setting: Setting, binary: bool = True) -> Image.Image:
    """`xdog` of a grey image (H, W) in [0, 1] with `setting`, as an 8-bit "L" image."""
    return Image.fromarray(np.round(xdog(gray, **asdict(setting), binary=binary) * 255).astype(np.uint8), mode="L")


def parse_setting(text: str) -> tuple[str, Setting]:
    """'name:sigma=0.8,phi=20,width=2' -> (name, Setting); unnamed keys come from the built-in `name`, else medium."""
    name, _, body = text.partition(":")
    name = name.strip()
    if not NAME.match(name):
        raise ValueError(f"setting name {name!r}: use letters, digits, '_' or '-' (it names the folder xdog_<name>)")
    setting = BUILTIN_SETTINGS.get(name, BUILTIN_SETTINGS["medium"])
    known = {f.name: f.type for f in fields(Setting)}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in known:
            raise ValueError(f"setting {name!r}: {item!r} is not key=value with key in {', '.join(known)}")
        try:
            number = int(value) if key == "width" else float(value)
        except ValueError:
            raise ValueError(f"setting {name!r}: {key}={value!r} is not a number") from None
        try:
            setting = replace(setting, **{key: number})
        except ValueError as e:
            raise ValueError(f"setting {name!r}: {e}") from None
    return name, setting


def _sketch_one(task: tuple) -> tuple[int, str | None]:
    """Worker: read one image, write its missing sketches; (files written, error text or None)."""
    path, jobs, size, binary = task
    try:
        image = load_image(path, "L")
    except DataError as e:
        return 0, str(e)
    if size:
        image = resize(image, size)
    gray = np.asarray(image, dtype=np.float64) / 255.0
    for setting, out_path in jobs:
        save_png(xdog_image(gray, setting, binary), out_path, fsync=False)
    return len(jobs), None


def make_sketch_folders(input_dir, output_dir, settings: dict[str, Setting], size: int | None = None,
                        binary: bool = True, overwrite: bool = False, workers: int = 1,
                        progress: bool = True) -> dict:
    """Write `<output_dir>/xdog_<name>/<stem>.png` for every image and setting (existing ones kept unless
    `overwrite`); returns {folders (name -> path), images, written, kept, unreadable (error lines)}."""
    images = require_images(input_dir)
    output_dir = Path(output_dir)
    folders = {name: output_dir / f"xdog_{name}" for name in settings}
    tasks, kept = [], 0
    for stem, path in images.items():
        jobs = [(setting, folders[name] / f"{stem}.png") for name, setting in settings.items()]
        todo = [(setting, out_path) for setting, out_path in jobs if overwrite or not out_path.is_file()]
        kept += len(jobs) - len(todo)
        if todo:
            tasks.append((path, todo, size, binary))
    parallel = workers > 1 and len(tasks) > 1
    with ProcessPoolExecutor(max_workers=workers) if parallel else contextlib.nullcontext() as pool:
        lazy = (pool.map(_sketch_one, tasks, chunksize=max(1, min(32, len(tasks) // (4 * workers)))) if parallel
                else map(_sketch_one, tasks))
        results = list(tqdm(lazy, total=len(tasks), desc="xdog", unit="img", disable=not progress or not tasks,
                            dynamic_ncols=True))
    written = sum(count for count, _ in results)
    unreadable = [error for _, error in results if error]
    if written:
        os.sync()  # one flush for all files written above (saved without a per-file fsync)
    return {"folders": {k: str(v) for k, v in folders.items()}, "images": len(images), "written": written,
            "kept": kept, "unreadable": unreadable}


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Make XDoG sketch folders (one per setting) that pair with an image "
                                            "folder by file name.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a folder of images (--input, read flat).
Outputs: <output>/xdog_<setting>/<stem>.png, one grey PNG per image and setting; the SKETCH_DIRS= line to train with.
Example:
    python sketch_styletransfer/xdog.py --input data/photos --output data/sketches --settings thin,medium,bold""")
    p.add_argument("--input", required=True, help="image folder (read flat: .jpg .jpeg .png .webp .bmp)")
    p.add_argument("--output", required=True, help="where the xdog_<setting> folders go")
    p.add_argument("--settings", default=None,
                   help=f"built-in settings, comma-separated, from {','.join(BUILTIN_SETTINGS)} (default: all, "
                        f"or none when --setting is given)")
    p.add_argument("--setting", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="a custom setting, e.g. fine:sigma=0.5,phi=2,width=1 (keys: sigma k p eps phi "
                        "width; the rest from the built-in NAME, else medium); may be repeated")
    p.add_argument("--size", type=int, default=None, help="resize images to SIZE x SIZE first (default: keep size)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--binary", dest="binary", action="store_true", default=True,
                      help="black/white strokes (default)")
    mode.add_argument("--soft", dest="binary", action="store_false", help="soft grey strokes (tanh ramp)")
    p.add_argument("--overwrite", action="store_true", help="remake sketches that already exist")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    args = p.parse_args(argv)

    names = args.settings.split(",") if args.settings else ([] if args.setting else list(BUILTIN_SETTINGS))
    unknown = [n for n in names if n not in BUILTIN_SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {', '.join(unknown)}: built-ins are {', '.join(BUILTIN_SETTINGS)}; "
                f"define others with --setting NAME:key=value,...")
    settings = {n: BUILTIN_SETTINGS[n] for n in names}
    try:
        settings.update(parse_setting(text) for text in args.setting)
    except ValueError as e:
        p.error(str(e))
    if args.size is not None and args.size < 8:
        p.error("--size must be at least 8")
    check_writable(args.output, folder=True)
    check_apart([args.output], [args.input])
    summary = make_sketch_folders(args.input, args.output, settings, args.size, args.binary,
                                  args.overwrite, max(1, args.workers))
    print(f"{summary['images']} images: wrote {summary['written']} sketches, kept {summary['kept']} existing")
    if summary["unreadable"]:
        print(f"{len(summary['unreadable'])} unreadable image(s) skipped:", file=sys.stderr)
        for line in summary["unreadable"]:
            print(f"  {line}", file=sys.stderr)
    print("sketch folders: SKETCH_DIRS=" + ",".join(os.path.abspath(f) for f in summary["folders"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
