"""FID and KID with the standard pytorch-fid Inception protocol; a statistics cache.

Inputs: image folders (read flat), .npz statistics, or a GAN checkpoint with sketch and style folders.
Outputs: the numbers on stdout and, with --out, as JSON (stats: an .npz file); folder statistics
are cached in fid_stats/. `python benchmark.py COMMAND --help` details each command.

Examples:
    python benchmark.py fid --real DIR_OR_NPZ --fake DIR_OR_NPZ [--size N] [--kid] [--out results.json]
    python benchmark.py fid --real DIR_OR_NPZ --checkpoint RUN --sketch DIR --style DIR [--pairing shifted]
    python benchmark.py stats --folder DIR --out stats.npz [--features]

Protocol (pytorch-fid): files read as pytorch-fid reads them, RGB in [-1, 1], bilinear resize to 299x299
without antialiasing, pytorch-fid's FID Inception, 2048-d pool3 features, float64 statistics. `--size N`
first resizes to NxN (PIL bilinear, antialiased). .npz files are read without pickle (pytorch-fid's too).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import inference
import weights
from datasets import (READ_ERRORS, DataError, PairedDataset, load_image, require_images, resize, to_float,
                      to_uint8_tensor)
from errors import UserError, cli
from fileio import OutputError, atomic_path, check_apart, check_writable, format_table, save_png, write_json
from devices import DeviceError, resolve_device

INCEPTION_SIZE = 299
MIN_SAMPLES = 2048          # below this many samples the 2048-d covariance is singular
EXTRACTOR_ID = "pytorch-fid-inception-v3-pool3:" + weights.SPECS["fid_inception"].file
CACHE_FORMAT = 1            # bump when the cached statistics change meaning
DEFAULT_CACHE = "fid_stats"


class StatsError(UserError, ValueError):
    """A statistics file is unreadable, of the wrong layout, or lacks what the command needs."""


# --------------------------------------------------------------------------- Frechet distance

def _checked(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"statistics of different dimensions: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    return mu1, sigma1, mu2, sigma2


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64. S1 S2 is similar to the PSD
    S1^(1/2) S2 S1^(1/2): the trace is the sum of the square roots of its eigenvalues. It is not symmetric
    (no eigvalsh): rounding's imaginary parts are dropped, tiny negative eigenvalues clipped to 0."""
    mu1, sigma1, mu2, sigma2 = _checked(mu1, sigma1, mu2, sigma2)
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    tr_covmean = np.sqrt(np.clip(eigenvalues.real, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def warn_if_few(n: int) -> None:
    if n < MIN_SAMPLES:
        warnings.warn(f"FID statistics from only {n} samples (fewer than {MIN_SAMPLES}): the 2048x2048 Inception "
                      f"covariance is singular and the FID is biased upwards and depends on the sample count; compare "
                      f"FIDs only at equal counts, or use KID (--kid) for small sets", stacklevel=3)


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mean, covariance) in float64; warns below 2048 samples."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise StatsError(f"statistics need at least 2 images ((N >= 2, D) features), got shape {features.shape}")
    warn_if_few(features.shape[0])
    return features.mean(axis=0), np.cov(features, rowvar=False)


# --------------------------------------------------------------------------- KID

def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples under k(x, y) = (x.y / d + 1)^3 (diagonals left out)."""
    m = x.shape[0]
    kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def kid(feats_a, feats_b, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) of unbiased MMD^2 over random subsets (Binkowski et al. 2018)."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise StatsError(f"KID needs at least 2 samples on each side, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
              for _ in range(n_subsets)]
    return float(np.mean(values)), float(np.std(values))


# --------------------------------------------------------------------------- features

class InceptionFeatures(nn.Module):
    """(B, C, H, W) images in [-1, 1] (or uint8) -> (B, 2048) FID features, pytorch-fid protocol.
    An injected `net` (tests) needs its own `extractor_id`: its statistics never share a cache entry."""

    def __init__(self, net: nn.Module | None = None, extractor_id: str | None = None):
        super().__init__()
        if net is not None and extractor_id is None:
            raise ValueError("an injected feature network needs its own extractor_id (the statistics cache key)")
        self.net = weights.fid_inception() if net is None else net
        self.extractor_id = EXTRACTOR_ID if net is None else extractor_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = to_float(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey images as RGB, as PIL's convert("RGB")
        return self.net(to_inception_size(x.float()))


def to_inception_size(x: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to 299x299 without antialiasing (pytorch-fid's F.interpolate call)."""
    if x.shape[-2:] == (INCEPTION_SIZE, INCEPTION_SIZE):
        return x
    return F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False,
                         antialias=False)


def extract_features(batches: Iterable[torch.Tensor], model: nn.Module, device, total: int | None = None,
                     desc: str = "features") -> np.ndarray:
    """Features of every image of every batch, as (N, D) float64."""
    model = model.to(device).eval()
    chunks = []
    with torch.inference_mode():
        for batch in tqdm(batches, total=total, desc=desc, unit="batch"):
            chunks.append(model(batch.to(device, non_blocking=True)).double().cpu().numpy())
    if not chunks:
        raise ValueError(f"{desc}: no images to extract features from")
    return np.concatenate(chunks)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> the 8-bit values a saved PNG holds, back in [-1, 1] (fileio.to_pil's rounding)."""
    return to_float(images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8))


def generated_features(generate_fn: Callable[[int], torch.Tensor], n: int, batch_size: int, device,
                       save_dir=None, model: nn.Module | None = None) -> np.ndarray:
    """FID features of n images from generate_fn(k) -> (k, C, H, W) in [-1, 1]; optionally saved as
    `save_dir`/000000.png, ... Quantized to 8 bits first: the features equal those of the PNGs."""
    model = InceptionFeatures() if model is None else model
    save_dir = Path(save_dir) if save_dir is not None else None

    def batches():
        done = 0
        while done < n:
            k = min(batch_size, n - done)
            with torch.no_grad():
                images = quantize(generate_fn(k))
            if images.shape[0] != k:
                raise ValueError(f"generate_fn({k}) returned {images.shape[0]} images")
            if save_dir is not None:
                for i, img in enumerate(images):
                    save_png(img, save_dir / f"{done + i:06d}.png")
            done += k
            yield images

    return extract_features(batches(), model, device, total=-(-n // batch_size), desc="generated")


def fid_kid_of_arrays(a: np.ndarray, b: np.ndarray, device="cpu", model: nn.Module | None = None) -> dict:
    """FID and KID between two sets of RGB images (N, H, W, 3) in [0, 1] (e.g. a benchmark's outputs and
    its held-out images): {"fid", "kid", "kid_std", "n_a", "n_b"}. FID below 2048 samples warns."""
    model = InceptionFeatures() if model is None else model
    tensors = [torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() * 2 - 1 for x in (a, b)]
    feats = [extract_features(t.split(50), model, device, desc=name) for t, name in zip(tensors, ("a", "b"))]
    mean_kid, std_kid = kid(*feats)
    return {"fid": frechet_distance(*statistics(feats[0]), *statistics(feats[1])), "kid": mean_kid,
            "kid_std": std_kid, "n_a": len(a), "n_b": len(b)}


READINGS = ("pytorch-fid", "training")  # how FID reads an image file: the one place that decides


def read_image(path, reading: str = "pytorch-fid") -> Image.Image:
    """An image file as FID reads it, in 8-bit RGB; DataError if unreadable. "pytorch-fid": pytorch-fid's
    `Image.open(path).convert("RGB")` (alpha dropped, no EXIF rotation, 16-bit clipped), comparable with
    published FIDs; "training": datasets.load_image, what the model saw."""
    if reading == "training":
        return load_image(path, "RGB")
    if reading != "pytorch-fid":
        raise ValueError(f"reading={reading!r}: must be one of {', '.join(READINGS)}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except READ_ERRORS as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


class ImageFiles(Dataset):
    """Image files -> (3, 299, 299) in [-1, 1], resized per image so that mixed sizes batch."""

    def __init__(self, paths: list[Path], size: int | None = None, reading: str = "pytorch-fid"):
        self.paths, self.size, self.reading = paths, size, reading

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = read_image(self.paths[i], self.reading)
        if self.size:
            img = resize(img, self.size)
        return to_inception_size(to_float(to_uint8_tensor(img))[None])[0]


def folder_files(folder, max_samples: int | None = None) -> list[Path]:
    """The folder's images in file-name order, the first `max_samples` if given; DataError below 2."""
    paths = list(require_images(folder).values())
    paths = paths[:max_samples] if max_samples else paths
    if len(paths) < 2:
        raise DataError(f"{folder}: statistics need at least 2 images, there is {len(paths)}")
    return paths


def folder_features(folder, model: nn.Module, device, size: int | None = None, batch_size: int = 50,
                    workers: int = 0, max_samples: int | None = None, reading: str = "pytorch-fid") -> np.ndarray:
    """(N, 2048) float64 features of a folder's images."""
    paths = folder_files(folder, max_samples)
    loader = DataLoader(ImageFiles(paths, size, reading), batch_size=batch_size, num_workers=workers,
                        pin_memory=torch.device(device).type == "cuda")
    return extract_features(loader, model, device, total=len(loader), desc=Path(folder).name)


# --------------------------------------------------------------------------- statistics files and cache

@dataclass
class Stats:
    """FID statistics of one image set; `features` kept only when KID needs them."""
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @classmethod
    def of(cls, features: np.ndarray, keep_features: bool = False, info: dict | None = None) -> "Stats":
        """Statistics of (N, D) features (kept as float32 if asked)."""
        mu, sigma = statistics(features)
        return cls(mu, sigma, len(features), features.astype(np.float32) if keep_features else None, info or {})


def save_stats(path, stats: Stats) -> None:
    """Write statistics as .npz (mu, sigma, n, info as JSON text, features if kept), atomically."""
    arrays = {"mu": stats.mu, "sigma": stats.sigma, "n": np.int64(stats.n), "info": np.str_(json.dumps(stats.info))}
    if stats.features is not None:
        arrays["features"] = stats.features
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)


def load_stats(path) -> Stats:
    """Read statistics written by save_stats or by pytorch-fid (mu, sigma); never unpickles."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # np.load would call any other file "pickled"
        raise StatsError(f"{path}: not an image folder or .npz statistics file")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:  # missing, not an npz, or object arrays (pickle)
        raise StatsError(f"{path}: cannot read statistics ({type(e).__name__}: {e})") from None
    if "mu" not in data or "sigma" not in data:
        raise StatsError(f"{path}: not FID statistics (needs arrays 'mu' and 'sigma', has {sorted(data)})")
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise StatsError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    check_gaussian(mu, sigma, path)
    n = int(data["n"]) if "n" in data else -1  # -1: unknown (pytorch-fid's files do not say)
    info = json.loads(str(data["info"])) if "info" in data else {}
    return Stats(mu, sigma, n, data.get("features"), info)


def check_gaussian(mu: np.ndarray, sigma: np.ndarray, source) -> None:
    """StatsError unless (mu, sigma) can be a mean and a covariance: finite, sigma symmetric and positive
    semi-definite, both to a relative tolerance of 1e-6 of sigma's largest entry (rounding, float32 files)."""
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise StatsError(f"{source}: the statistics hold NaN or Inf values")
    tol = 1e-6 * max(float(np.abs(sigma).max(initial=0.0)), np.finfo(np.float64).tiny)
    if np.abs(sigma - sigma.T).max(initial=0.0) > tol:
        raise StatsError(f"{source}: sigma is not symmetric, so it is not a covariance")
    try:  # Cholesky succeeds iff sigma + tol I is positive definite: sigma is PSD up to tol
        np.linalg.cholesky(sigma + tol * np.eye(len(sigma)))
    except np.linalg.LinAlgError:
        raise StatsError(f"{source}: sigma has negative eigenvalues, so it is not a covariance") from None


def content_digest(paths: list[Path]) -> str:
    """sha256 over the files' names, sizes and contents (not times: a copied folder keeps its key)."""
    h = hashlib.sha256()
    for path in tqdm(paths, desc="hashing", unit="file", leave=False):
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        h.update(f"{path.name}\0{path.stat().st_size}\0{digest}\n".encode("utf-8", "surrogateescape"))  # any name
    return h.hexdigest()


def resize_mode(size: int | None) -> str:
    """How images reach 299x299, as recorded in the cache key."""
    bilinear = f"torch-bilinear-{INCEPTION_SIZE}-no-antialias"
    return bilinear if not size else f"pil-bilinear-{size}+{bilinear}"


def cache_key(paths: list[Path], size: int | None, extractor_id: str, reading: str = "pytorch-fid") -> dict:
    """Everything the statistics depend on."""
    return {"format": CACHE_FORMAT, "content": content_digest(paths), "n": len(paths), "size": size,
            "resize": resize_mode(size), "extractor": extractor_id, "reading": reading}


def cache_file(cache_dir, folder, key: dict) -> Path:
    """The cache entry of `key`: named after the folder, for people, and the key's hash, for lookups."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{Path(folder).name}-{digest}.npz"


def folder_stats(folder, model_fn: Callable[[], nn.Module], device, size: int | None = None,
                 batch_size: int = 50, workers: int = 0, max_samples: int | None = None,
                 cache_dir=DEFAULT_CACHE, extractor_id: str = EXTRACTOR_ID, keep_features: bool = False,
                 reading: str = "pytorch-fid") -> Stats:
    """Statistics of a folder, from the cache when its key matches; model_fn() is called on a miss only."""
    paths = folder_files(folder, max_samples)
    key = cache_key(paths, size, extractor_id, reading)
    path = cache_file(cache_dir, folder, key) if cache_dir else None
    if path is not None and path.is_file():
        cached = load_stats(path)
        if cached.info.get("key") == key and (cached.features is not None or not keep_features):
            warn_if_few(cached.n)
            cached.info["cached"] = True
            return cached
    feats = folder_features(folder, model_fn(), device, size, batch_size, workers, max_samples, reading)
    stats = Stats.of(feats, keep_features, {"key": key, "folder": str(folder)})
    if path is not None:
        try:
            save_stats(path, stats)
        except OutputError as e:  # a read-only cache costs the next run time, not this result
            warnings.warn(f"statistics not cached: {e}", stacklevel=2)
    stats.info["cached"] = False
    return stats


# --------------------------------------------------------------------------- FID of a model

def held_out_generate(data, generate: Callable, device, shift: int) -> Callable[[int], torch.Tensor]:
    """generate_fn(k) for generated_features: the next k held-out sketches, each drawn in the style
    of the held-out image `shift` places further on (0: its own image, 1: another image's)."""
    position = 0

    def generate_fn(k: int) -> torch.Tensor:
        nonlocal position
        idx = range(position, position + k)
        position += k
        sketch = torch.stack([data[i]["sketch"] for i in idx])
        style = torch.stack([data[(i + shift) % len(data)]["image"] for i in idx])
        return generate(to_float(sketch).to(device), to_float(style).to(device))

    return generate_fn


def training_fid(cfg, runtime, held_out, model: nn.Module | None = None, cache_dir=DEFAULT_CACHE) -> Callable:
    """The GAN stage's metric: callable(generate) -> {"fid", "fid_mismatched", "fid_n"}, where
    `generate(sketch, style_image)` -> (AE output, EMA output). On the `held_out` pairs at IM_SIZE_GAN,
    "fid" draws each sketch in its own image's style, "fid_mismatched" in the next one's; the real
    statistics are of TEST_IMAGE_DIR read as training reads it (cached). The Inception loads now, so
    missing weights stop the run before training. Only rank 0 measures; the others return {}."""
    if not runtime.is_main:
        return lambda generate: {}
    model = (InceptionFeatures() if model is None else model).to(runtime.device)
    data = PairedDataset(held_out, cfg.IM_SIZE_GAN, crop=False)
    n = min(cfg.FID_N_SAMPLES, len(data))
    real = None

    def measure(generate) -> dict[str, float]:
        nonlocal real
        if real is None:
            real = folder_stats(cfg.TEST_IMAGE_DIR, lambda: model, runtime.device, size=cfg.IM_SIZE_GAN,
                                cache_dir=cache_dir, extractor_id=model.extractor_id, reading="training")
        result = {}
        for name, shift in (("fid", 0), ("fid_mismatched", 1)):
            fn = held_out_generate(data, lambda s, x: generate(s, x)[1], runtime.device, shift)
            fake = Stats.of(generated_features(fn, n, cfg.BATCH_SIZE_GAN, runtime.device, model=model))
            result[name] = frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
        return {**result, "fid_n": n}

    return measure


def checkpoint_pairs(sketch_dir, style_dir, pairing: str) -> list[tuple[Path, Path]]:
    """(sketch, style image) pairs: by file name ("name"), or every sketch with the style image
    after its own position in file-name order ("shifted": styles the sketch was not drawn from)."""
    sketches = folder_files(sketch_dir)
    styles = require_images(style_dir, "style")
    if pairing == "shifted":
        ordered = list(styles.values())
        return [(sketch, ordered[(i + 1) % len(ordered)]) for i, sketch in enumerate(sketches)]
    pairs = [(sketch, styles[sketch.stem]) for sketch in sketches if sketch.stem in styles]
    if not pairs:
        raise DataError(f"no sketch in {sketch_dir} has a style image of the same name in {style_dir}")
    return pairs


def checkpoint_stats(args, model_fn) -> Stats:
    """Statistics of images a GAN checkpoint draws from --sketch and --style (saved as PNG first)."""
    pairs = checkpoint_pairs(args.sketch, args.style, args.pairing)[:args.max_samples or None]
    save_dir = Path(args.save_dir)
    jobs = [inference.Job(sketch, style, save_dir / f"{i:06d}.png") for i, (sketch, style) in enumerate(pairs)]
    generator = inference.SketchToImage.from_pretrained(args.checkpoint, args.device)
    report = generator.run(jobs, args.batch_size, args.seed)
    if report.summary():
        print(report.summary(), file=sys.stderr)
    if not report.written:
        raise DataError("no image generated: every sketch or style image was unreadable")
    features = extract_features(DataLoader(ImageFiles(report.written), batch_size=args.batch_size),
                                model_fn(), args.device, desc="generated")
    return Stats.of(features, keep_features=args.kid, info={"source": str(args.checkpoint),
                                                          "image_size": generator.image_size})


# --------------------------------------------------------------------------- command line

def _source_stats(source: str, args, model_fn, keep_features: bool) -> Stats:
    """Statistics of a --real/--fake argument: an .npz file or an image folder."""
    if Path(source).is_file():
        stats = load_stats(source)
        if keep_features and stats.features is None:
            raise StatsError(f"{source}: KID needs features, and these statistics have none "
                             f"(pass the image folder, or write them with `benchmark.py stats --features`)")
        if stats.n >= 0:
            warn_if_few(stats.n)
        stats.info["cached"] = None
        return stats
    return folder_stats(source, model_fn, args.device, args.size, args.batch_size, args.workers,
                        args.max_samples, None if args.no_cache else args.cache_dir, keep_features=keep_features,
                        reading=args.reading)


def _model_factory(device) -> Callable[[], nn.Module]:
    """Build the Inception once, on first use (cache hits and .npz inputs never load it)."""
    return functools.cache(lambda: InceptionFeatures().to(device))


def cmd_fid(args) -> dict:
    """FID (and KID) of --fake against --real."""
    model_fn = _model_factory(args.device)
    stats = {}
    for side in ("real", "fake"):  # .npz files first: a bad one fails before any slow extraction
        source = getattr(args, side)
        if source and Path(source).is_file():
            stats[side] = _source_stats(source, args, model_fn, args.kid)
    if args.checkpoint:
        model_fn()  # the generated images need the Inception: missing weights stop us before generating them
        stats["fake"] = checkpoint_stats(args, model_fn)
        args.size = args.size or stats["fake"].info["image_size"]  # real images at the model's resolution
        args.fake = (f"{args.checkpoint} ({args.pairing} pairs of {args.sketch} and {args.style}, "
                     f"PNGs in {args.save_dir})")
    for side in ("real", "fake"):
        if side not in stats:
            stats[side] = _source_stats(getattr(args, side), args, model_fn, args.kid)
    real, fake = stats["real"], stats["fake"]
    if real.mu.shape != fake.mu.shape:
        raise StatsError(f"feature dimensions differ: {args.real} has {real.mu.shape[0]}, "
                         f"{args.fake} has {fake.mu.shape[0]}")
    result = {"fid": frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma),
              "real": {"source": args.real, "n": real.n, "cached": real.info.get("cached")},
              "fake": {"source": args.fake, "n": fake.n, "cached": fake.info.get("cached")},
              "settings": {"size": args.size, "resize": resize_mode(args.size), "extractor": EXTRACTOR_ID,
                           "max_samples": args.max_samples, "reading": args.reading}}
    rows = [("FID", result["fid"]), ("real images", real.n), ("fake images", fake.n)]
    if args.kid:
        mean, std = kid(real.features, fake.features, args.kid_subsets, args.kid_subset_size, args.seed)
        result["kid"] = {"mean": mean, "std": std, "subsets": args.kid_subsets,
                         "subset_size": min(args.kid_subset_size, real.n, fake.n), "seed": args.seed}
        rows += [("KID mean", mean), ("KID std", std)]
    print(format_table(rows))
    return result


def cmd_stats(args) -> dict:
    """Write a folder's statistics to --out."""
    stats = folder_stats(args.folder, _model_factory(args.device), args.device, args.size, args.batch_size,
                         args.workers, args.max_samples, None if args.no_cache else args.cache_dir,
                         keep_features=args.features, reading=args.reading)
    stats.info.pop("cached")
    if not args.features:
        stats.features = None  # a cache entry made for KID may hold them
    save_stats(args.out, stats)
    print(format_table([("folder", args.folder), ("images", stats.n), ("written", args.out)]))
    return {"folder": args.folder, "n": stats.n, "out": args.out}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def extraction_options(q):
        q.add_argument("--size", type=int, default=None,
                       help="resize images to size x size (PIL bilinear) before the 299 resize; "
                            "default: as they are (the pytorch-fid protocol)")
        q.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, mps")
        q.add_argument("--batch-size", type=int, default=50)
        q.add_argument("--workers", type=int, default=None,
                       help="image decoding processes (default: 0 on CPU, 4 on GPU)")
        q.add_argument("--max-samples", type=int, default=None, help="use the first N images (file-name order)")
        q.add_argument("--reading", choices=READINGS, default="pytorch-fid",
                       help="how image files are read: as pytorch-fid (default: alpha dropped, no EXIF rotation) "
                            "or as training (alpha on white, EXIF-rotated)")
        q.add_argument("--cache-dir", default=DEFAULT_CACHE, help="statistics cache folder")
        q.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")

    q = sub.add_parser("fid", help="FID (and KID) between two image folders or .npz statistics")
    q.add_argument("--real", required=True, help="image folder or .npz statistics")
    fake = q.add_mutually_exclusive_group(required=True)
    fake.add_argument("--fake", help="image folder or .npz statistics")
    fake.add_argument("--checkpoint", help="instead of --fake: a GAN checkpoint or run folder; it draws the "
                                           "--sketch images in the style of the --style images")
    q.add_argument("--sketch", help="with --checkpoint: sketch folder")
    q.add_argument("--style", help="with --checkpoint: style image folder")
    q.add_argument("--pairing", choices=("name", "shifted"), default="name",
                   help="with --checkpoint: each sketch with the style image of its own name (name), or of "
                        "the next name in file-name order (shifted: unseen styles)")
    q.add_argument("--save-dir", default="results/fid_images",
                   help="with --checkpoint: where the generated PNGs go (000000.png, ...)")
    extraction_options(q)
    q.add_argument("--kid", action="store_true", help="also KID (needs features: folders, or stats --features)")
    q.add_argument("--kid-subsets", type=int, default=100)
    q.add_argument("--kid-subset-size", type=int, default=1000)
    q.add_argument("--seed", type=int, default=0, help="KID subsets and, with --checkpoint, the generator noise")
    q.add_argument("--out", help="write the results as JSON here")

    q = sub.add_parser("stats", help="write a folder's FID statistics (.npz)")
    q.add_argument("--folder", required=True)
    q.add_argument("--out", required=True, help=".npz file to write")
    q.add_argument("--features", action="store_true", help="keep the features too (for KID), float32")
    extraction_options(q)

    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # `python benchmark.py` alone, as the original README runs it: the full help
        p.print_help()
        p.exit(0)
    args = p.parse_args(argv)
    if getattr(args, "checkpoint", None) and not (args.sketch and args.style):
        p.error("--checkpoint needs --sketch and --style folders")
    least = dict(batch_size=1, size=1, max_samples=2, kid_subsets=1, kid_subset_size=2, workers=0)
    for name, low in least.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            p.error(f"--{name.replace('_', '-')} {value}: must be at least {low}")
    try:
        args.device = resolve_device(args.device)
    except DeviceError as e:
        p.error(str(e))
    if getattr(args, "workers", 0) is None:
        args.workers = 4 if torch.device(args.device).type == "cuda" else 0
    return args


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    out, save_dir = getattr(args, "out", None), args.save_dir if getattr(args, "checkpoint", None) else None
    if out:  # outputs are checked first: a bad one costs no measurement
        check_writable(out)
    if save_dir:
        check_writable(save_dir, folder=True)
    check_apart([out, save_dir], [getattr(args, name, None) for name in ("real", "fake", "sketch", "style", "folder")])
    result = {"fid": cmd_fid, "stats": cmd_stats}[args.command](args)
    if out and args.command != "stats":
        write_json(args.out, {"argv": list(sys.argv[1:] if argv is None else argv), **result})
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
