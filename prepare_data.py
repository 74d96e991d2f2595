"""Your photos -> the folders train.py reads: a train/test split and K sketch sets, then the command to train.

Inputs: PHOTOS, a folder of photos, flat or nested (ImageFolder-style: cats/01.jpg, dogs/01.jpg),
any of .jpg .jpeg .png .webp .bmp; hidden files and folders are left out.
Outputs: in OUT,
    train/images/<name>.<ext>                 the training photos (copied; PNG at --size if given)
    train/sketches/<set>/<name>.png           K sketch sets (XDoG settings, TOM checkpoints, or yours)
    test/images/..., test/sketches/<set>/...  the held-out photos (--test-ratio) and their sketches
    prepare.json                              the split, the sketcher, the counts, the train.py command
and, printed, the exact train.py command (absolute paths: it works from any folder).

Examples:
    python prepare_data.py ~/photos data/mine                            # XDoG thin, medium, bold; 10 % held out
    python prepare_data.py ~/photos data/mine --tom train_results/tom-<time> --threshold 0.6 0.7 0.8
    python prepare_data.py celeba/rgb data/celeba --sketch-dirs celeba/sketch_1 celeba/sketch_2 celeba/sketch_3

Names: cats/01.jpg -> cats__01. The split depends on the names only (SHA-1 order): adding photos moves
no existing one into the held-out set. Files already in OUT are kept unless --overwrite (an interrupted
call just resumes); an OUT holding another split is refused rather than mixed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

import config as C
import weights
from checkpoints import find_checkpoint
from datasets import DataError, list_images, load_image, require_images, resize
from errors import cli
from fileio import atomic_path, remove_stale_temporaries, save_png, write_json
from sketch_styletransfer import sketch
from sketch_styletransfer.xdog import BUILTIN_SETTINGS, make_sketch_folders
from devices import resolve_device

ROOT = Path(__file__).resolve().parent
SMALL_DATA = 10_000   # fewer training photos than this: the "shoe" preset (the original README's advice)
SPLITS = ("train", "test")


def split_names(names, test_ratio: float) -> dict[str, list[str]]:
    """{"train": [...], "test": [...]}: the first round(ratio * N) names in SHA-1 order are held out."""
    names = sorted(names)
    n_test = round(test_ratio * len(names))
    if test_ratio > 0 and len(names) >= 2:
        n_test = max(1, n_test)
    # surrogateescape: a file name that is not UTF-8 hashes as its own bytes (the same split on any machine)
    order = sorted(names, key=lambda name: hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest())
    test = set(order[:n_test])
    return {"train": [n for n in names if n not in test], "test": [n for n in names if n in test]}


def _copy_one(task: tuple) -> tuple[str, str | None]:
    """Worker: check that a photo decodes, then copy it (or write it resized); (name, error or None)."""
    name, source, target, size = task
    try:
        image = load_image(source, "RGB")
    except DataError as e:
        return name, str(e)
    if size:
        save_png(resize(image, size), target, fsync=False)
    else:
        _copy(source, target)
    return name, None


def _copy(source: Path, target: Path) -> None:
    """Copy atomically: a full disk or a kill leaves no half file that a re-run would keep (main flushes)."""
    with atomic_path(target, fsync=False) as tmp:
        shutil.copyfile(source, tmp)


def _existing(folder: Path) -> dict[str, Path]:
    return list_images(folder) if folder.is_dir() else {}


def copy_photos(photos: dict[str, Path], split: dict[str, list[str]], out: Path, size: int | None,
                overwrite: bool, workers: int, progress: bool = True) -> dict:
    """Copy each readable photo into out/<split>/images; returns {copied, kept, unreadable: {name: error}}."""
    assignment = {name: part for part, names in split.items() for name in names}
    for part in SPLITS:  # refuse to mix two splits: a photo in train and test would be a leak
        stale = [n for n in _existing(out / part / "images") if assignment.get(n) != part]
        if stale:
            raise DataError(f"{out / part / 'images'} holds {len(stale)} image(s) that this split does not put "
                            f"there (e.g. {stale[0]}): another --test-ratio or photo set. Use a new OUT folder, "
                            f"or delete {out} first")
    tasks, kept = [], 0
    for part, names in split.items():
        present = _existing(out / part / "images")
        for name in names:
            if name in present and not overwrite:
                kept += 1
                continue
            suffix = ".png" if size else photos[name].suffix.lower()
            if name in present and present[name].suffix.lower() != suffix:
                present[name].unlink()  # --overwrite with another --size: one file per name
            tasks.append((name, photos[name], out / part / "images" / f"{name}{suffix}", size))
    unreadable = {}
    bar = tqdm(total=len(tasks), desc="photos", unit="img", disable=not progress or not tasks, dynamic_ncols=True)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(tasks) > 1 else None
    results = pool.map(_copy_one, tasks, chunksize=max(1, min(32, len(tasks) // (4 * workers)))) if pool \
        else map(_copy_one, tasks)
    try:
        for name, error in results:
            if error:
                unreadable[name] = error
            bar.update()
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return {"copied": len(tasks) - len(unreadable), "kept": kept, "unreadable": unreadable}


def make_sketches(out: Path, args, vgg_features=None, progress: bool = True) -> dict[str, list[str]]:
    """K sketch sets of each split's images; {split: [absolute sketch folder, ...]} (sets in the same order)."""
    folders = {}
    for part in SPLITS:
        images, sketches = out / part / "images", out / part / "sketches"
        if not _existing(images):
            continue
        if args.sketch_dirs:
            made = copy_sketches(args.sketch_dirs, images, sketches, args.overwrite)
        elif args.tom:
            made = sketch.make_sketches(vgg_features, args.tom, images, sketches, args.thresholds,
                                        batch_size=args.batch_size, device=args.device, overwrite=args.overwrite,
                                        workers=0, progress=progress)["folders"]
        else:
            made = make_sketch_folders(images, sketches, args.settings, overwrite=args.overwrite,
                                       workers=args.workers, progress=progress)["folders"].values()
        folders[part] = [os.path.abspath(f) for f in made]
    return folders


def copy_sketches(sources: list[Path], images: Path, out: Path, overwrite: bool) -> list[Path]:
    """Your own sketch sets (e.g. the original data's), split like the photos: out/<set>/<name>.<ext>."""
    labels = [src.name if [s.name for s in sources].count(src.name) == 1 else f"{i}_{src.name}"
              for i, src in enumerate(sources)]
    names = list(_existing(images))
    folders = []
    for src, label in zip(sources, labels):
        found, folder = list_images(src, nested=True), out / label
        for name in names:
            if name in found and (overwrite or name not in _existing(folder)):
                _copy(found[name], folder / f"{name}{found[name].suffix.lower()}")
        folders.append(folder)  # photos without a sketch here: train.py leaves them out and says so
    return folders


def resolve_preset(preset: str, n_train: int) -> str:
    """The printed command's preset: for "auto" the paper's shoe (below SMALL_DATA photos) or art preset on a
    GPU, the portraits CPU recipe without one."""
    if preset != "auto":
        return preset
    return ("shoe" if n_train < SMALL_DATA else "art") if torch.cuda.is_available() else "portraits"


def train_command(n_train: int, folders: dict[str, list[str]], out: Path, preset: str) -> str:
    """The train.py command for the prepared folders (absolute paths) under `preset`; FID only where held-out
    images and the FID Inception weights are present."""
    cfg = C.preset(preset)
    values = [f"DATA_NAME={preset}", f"IMAGE_DIR={os.path.abspath(out / 'train' / 'images')}",
              "SKETCH_DIRS=" + ",".join(folders["train"])]
    if folders.get("test"):
        values += [f"TEST_IMAGE_DIR={os.path.abspath(out / 'test' / 'images')}",
                   f"TEST_SKETCH_DIR={folders['test'][0]}"]
    elif cfg.TEST_IMAGE_DIR:  # the preset's own held-out folders are not these photos'
        values += ["TEST_IMAGE_DIR=none", "TEST_SKETCH_DIR=none"]
    if cfg.FID_INTERVAL and not (folders.get("test") and weights.available("fid_inception")):
        values.append("FID_INTERVAL=0")
    if n_train < cfg.NBR_CLS:  # one self-supervised subset cannot be larger than the data
        values.append(f"NBR_CLS={n_train}")
    return " ".join(shlex.quote(w) for w in (sys.executable, str(ROOT / "train.py"), *values))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python prepare_data.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", help="folder of photos, flat or nested")
    p.add_argument("out", help="where train/ and test/ go")
    p.add_argument("--test-ratio", type=float, default=0.1, help="share of photos held out (default 0.1; 0: none)")
    p.add_argument("--size", type=int, default=None,
                   help="write the photos as SIZE x SIZE PNGs (sketches are made at that size); "
                        "default: copy as they are")
    p.add_argument("--xdog", default="thin,medium,bold",
                   help=f"XDoG sketch sets, comma-separated, from {','.join(BUILTIN_SETTINGS)} (default: all three)")
    p.add_argument("--tom", nargs="+", metavar="CHECKPOINT",
                   help="instead of XDoG: TOM checkpoints or run folders (one sketch set per checkpoint and threshold)")
    p.add_argument("--threshold", nargs="+", default=["0.7"], help="with --tom: grey levels in (0, 1), or 'none'")
    p.add_argument("--sketch-dirs", nargs="+", type=Path, metavar="DIR",
                   help="instead of making sketches: your sketch folders, files named like the photos (e.g. the "
                        "original CelebA/WikiArt data's sketch folders); split with the photos")
    p.add_argument("--preset", default="auto", choices=("auto", "art", "face", "shoe", "portraits"),
                   help=f"DATA_NAME of the printed command (auto: on a GPU shoe below {SMALL_DATA:,} training photos, "
                        "else art; on a CPU portraits, the 128 px CPU recipe)")
    p.add_argument("--overwrite", action="store_true", help="remake photos and sketches that already exist")
    p.add_argument("--workers", type=int, default=1, help="processes for copying and XDoG (default 1)")
    p.add_argument("--device", default="auto", help="with --tom: auto, cpu, cuda, ...")
    p.add_argument("--batch-size", type=int, default=8, help="with --tom: photos per batch")
    args = p.parse_args(argv)
    if not 0 <= args.test_ratio < 1:
        p.error("--test-ratio must be in [0, 1)")
    if args.size is not None and args.size < 8:
        p.error("--size must be at least 8")
    names = [n.strip() for n in args.xdog.split(",") if n.strip()]
    if not names or any(n not in BUILTIN_SETTINGS for n in names):
        p.error(f"--xdog: choose from {', '.join(BUILTIN_SETTINGS)} (got {args.xdog!r})")
    args.settings = {n: BUILTIN_SETTINGS[n] for n in names}
    if args.tom and args.sketch_dirs:
        p.error("--tom makes sketches, --sketch-dirs brings them: choose one")
    args.workers = max(1, args.workers)
    if args.tom:
        try:
            args.thresholds = list(dict.fromkeys(sketch.parse_threshold(t) for t in args.threshold))
        except ValueError as e:
            p.error(str(e))
    return args


def prepare(photos: dict[str, Path], args: argparse.Namespace, vgg_features=None) -> str:
    """Split `photos` ({name: file}) into args.out, sketch both splits, write prepare.json; returns (and
    prints) the train.py command."""
    out = Path(args.out)
    split = split_names(photos, args.test_ratio)
    if out.is_dir() and (stale := remove_stale_temporaries(out)):  # a killed run's half files: nothing else writes here
        print(f"removed {stale} temporary file(s) that an interrupted run left in {out}")
    copied = copy_photos(photos, split, out, args.size, args.overwrite, args.workers)
    n = {part: len(_existing(out / part / "images")) for part in SPLITS}
    if n["train"] < 2:
        raise DataError(f"only {n['train']} readable training photo(s) in {args.photos}: train.py needs at least 2")
    folders = make_sketches(out, args, vgg_features)
    os.sync()  # every copy and sketch is on disk before prepare.json says the folders are ready
    preset = resolve_preset(args.preset, n["train"])
    command = train_command(n["train"], folders, out, preset)
    source = os.path.abspath(args.photos) if Path(args.photos).exists() else args.photos  # a folder, or a package
    write_json(out / "prepare.json", {"photos": source, "test_ratio": args.test_ratio,
                                      "size": args.size, "split": split, "unreadable": sorted(copied["unreadable"]),
                                      "sketcher": {"sketch_dirs": [os.path.abspath(d) for d in args.sketch_dirs]}
                                      if args.sketch_dirs else {"tom": args.tom, "thresholds": args.threshold}
                                      if args.tom else {"xdog": list(args.settings)},
                                      "sketch_folders": folders, "train_command": command})
    print(f"{n['train']} training and {n['test']} held-out photos in {os.path.abspath(out)} "
          f"({copied['copied']} copied, {copied['kept']} kept), {len(folders['train'])} sketch set(s) each")
    if copied["unreadable"]:
        print(f"{len(copied['unreadable'])} unreadable file(s) skipped:", file=sys.stderr)
        for line in copied["unreadable"].values():
            print(f"  {line}", file=sys.stderr)
    print(f"train with:\n  {command}")
    if preset != "portraits" and not torch.cuda.is_available():
        print("note: this is a 512/1024 px recipe for GPUs (days of training); on this CPU use --preset portraits")
    return command


@cli
def main(argv: list[str] | None = None, vgg_features=None) -> int:
    """Tests pass `vgg_features` (a random VGG16) for --tom."""
    args = parse_args(argv)
    photos = require_images(args.photos, nested=True)
    inside = Path(os.path.abspath(args.out))  # OUT inside PHOTOS: its files are not photos to prepare
    photos = {n: p for n, p in photos.items() if inside not in Path(os.path.abspath(p)).parents}
    for folder in args.sketch_dirs or []:  # checked before any file is written
        require_images(folder, "--sketch-dirs", nested=True)
    if args.tom:
        args.device = resolve_device(args.device)
        for checkpoint in args.tom:
            find_checkpoint(checkpoint, "tom")
        if vgg_features is None:  # only TOM needs the pretrained VGG16
            vgg_features = weights.vgg16_features()
    prepare(photos, args, vgg_features)
    return 0


if __name__ == "__main__":
    sys.exit(main())
