"""LPIPS over folders: two folders -> mean distance of same-named pairs; one folder -> diversity.

Inputs: one or two image folders (read flat; pairs by file name).
Outputs: the mean distance (and counts) on stdout and, with --out, as JSON.
Examples:
    python -m lpips --dir0 A --dir1 B [--net vgg|alex] [--size 256] [--out result.json]
    python -m lpips --dir0 A [--max-pairs 2000] [--seed 0]       # mean pairwise distance
Unreadable images are skipped and counted (with every pair they are in).
"""
from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets import DataError, list_images, load_image, resize, to_float, to_uint8_tensor
from errors import cli
from fileio import check_apart, check_writable, format_table, write_json
from lpips import LPIPS
from devices import DeviceError, resolve_device

MIN_SIZE = {"vgg": 16, "alex": 31}  # smallest input whose deepest layer LPIPS reads is still 1x1


def matched_pairs(dir0, dir1) -> tuple[list[tuple[Path, Path]], list[str], list[str]]:
    """Files of two folders paired by stem; also the stems found in only one of them."""
    a, b = list_images(dir0), list_images(dir1)
    pairs = [(a[s], b[s]) for s in a if s in b]
    return pairs, sorted(set(a) - set(b)), sorted(set(b) - set(a))


def sampled_pairs(paths: list[Path], max_pairs: int, seed: int) -> list[tuple[Path, Path]]:
    """All unordered pairs of distinct files, or `max_pairs` of them drawn without replacement."""
    n = len(paths)
    total = n * (n - 1) // 2
    rng = random.Random(seed)
    if total <= 2 * max_pairs:  # few enough to list: take a subset of all of them
        chosen = list(itertools.combinations(range(n), 2))
        if total > max_pairs:
            chosen = sorted(rng.sample(chosen, max_pairs))
    else:  # many pairs: rejection sampling, which rarely draws a duplicate at this density
        seen: set[tuple[int, int]] = set()
        while len(seen) < max_pairs:
            i, j = rng.sample(range(n), 2)
            seen.add((min(i, j), max(i, j)))
        chosen = sorted(seen)
    return [(paths[i], paths[j]) for i, j in chosen]


class PairImages(Dataset):
    """Items: both images of a pair resized to `size` (uint8), or the names of the unreadable ones."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int):
        self.pairs, self.size = pairs, size

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        images, bad = [], []
        for path in self.pairs[i]:
            try:
                images.append(to_uint8_tensor(resize(load_image(path, "RGB"), self.size)))
            except DataError:
                bad.append(str(path))
        return {"images": images, "bad": bad}


def pair_distances(model: torch.nn.Module, pairs: list[tuple[Path, Path]], size: int, batch_size: int,
                   device, workers: int = 0) -> tuple[list[float], set[str]]:
    """LPIPS of every readable pair, and the set of unreadable files."""
    # collated as a plain list: pairs with an unreadable image are dropped below, not stacked
    loader = DataLoader(PairImages(pairs, size), batch_size=batch_size, num_workers=workers, collate_fn=list)
    model = model.to(device)
    distances, bad = [], set()
    with torch.inference_mode():
        for items in tqdm(loader, desc="LPIPS", unit="batch"):
            good = [it["images"] for it in items if not it["bad"]]
            bad.update(p for it in items for p in it["bad"])
            if good:
                x = to_float(torch.stack([g[0] for g in good]).to(device))
                y = to_float(torch.stack([g[1] for g in good]).to(device))
                distances.extend(model(x, y).float().cpu().tolist())
    return distances, bad


def summary(distances: list[float]) -> dict:
    """Mean, sample standard deviation and standard error of the mean."""
    n = len(distances)
    mean = sum(distances) / n if n else float("nan")
    std = math.sqrt(sum((d - mean) ** 2 for d in distances) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n) if n > 1 else float("nan"), "n_pairs": n}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lpips", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir0", required=True, help="first folder (alone: diversity within it)")
    p.add_argument("--dir1", help="second folder: pairs are files with the same name (stem)")
    p.add_argument("--net", choices=("vgg", "alex"), default="alex",
                   help="backbone (alex: the package's default for evaluation)")
    p.add_argument("--size", type=int, default=256, help="images are resized to size x size (bilinear)")
    p.add_argument("--max-pairs", type=int, default=2000, help="one folder: pairs drawn at most")
    p.add_argument("--seed", type=int, default=0, help="one folder: seed of the pair draw")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="image decoding processes")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.size < MIN_SIZE[args.net]:
        p.error(f"--size {args.size}: LPIPS-{args.net} needs at least {MIN_SIZE[args.net]} px")
    for name, low in (("batch_size", 1), ("max_pairs", 1), ("workers", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least {low}")
    try:
        args.device = resolve_device(args.device)
    except DeviceError as e:
        p.error(str(e))
    return args


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out:  # before the work: an unwritable --out costs no measurement
        check_writable(args.out)
        check_apart([args.out], [args.dir0, args.dir1])
    mode = "paired" if args.dir1 else "diversity"
    if args.dir1:
        pairs, only0, only1 = matched_pairs(args.dir0, args.dir1)
    else:
        pairs, only0, only1 = sampled_pairs(list(list_images(args.dir0).values()), args.max_pairs, args.seed), [], []
    if not pairs:
        raise DataError(f"no pairs to compare in {args.dir0}" + (f" and {args.dir1}" if args.dir1 else ""))
    model = LPIPS(args.net)
    distances, bad = pair_distances(model, pairs, args.size, args.batch_size, args.device, args.workers)
    if not distances:
        raise DataError(f"every pair has an unreadable image ({len(bad)} unreadable files)")
    result = {"mode": mode, "net": args.net, "size": args.size, "dir0": str(args.dir0), "dir1": args.dir1,
              **summary(distances), "pairs_considered": len(pairs), "skipped_pairs": len(pairs) - len(distances),
              "unreadable_files": sorted(bad), "unmatched_dir0": only0, "unmatched_dir1": only1}
    if mode == "diversity":
        result.update(max_pairs=args.max_pairs, seed=args.seed)
    rows = [("mode", mode), ("net", args.net), ("LPIPS mean", result["mean"]), ("std", result["std"]),
            ("pairs", result["n_pairs"]), ("skipped pairs", result["skipped_pairs"]),
            ("unreadable files", len(bad))]
    if mode == "paired":
        rows += [("only in dir0", len(only0)), ("only in dir1", len(only1))]
    print(format_table(rows))
    for path in sorted(bad):
        print(f"warning: skipped unreadable {path}", file=sys.stderr)
    if args.out:
        write_json(args.out, result)
    return 0
