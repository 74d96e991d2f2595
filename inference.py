"""Use a trained model: a line sketch + a style image -> an image in the style image's style.

The model is a train.py run folder (its newest GAN checkpoint), a GAN checkpoint or an export.py file;
`SketchToImage` is the Python API. Sketches of light strokes on a dark background are inverted.
Noise: with `seed=<int>` an output depends only on (sketch, style, seed, checkpoint), at any batch size,
position or device (unless SAMPLE_BN=batch, whose BatchNorm uses the batch's statistics); None: fresh noise.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from datasets import DataError, _to_mode, load_image, mix_seed, require_images, resize, to_float, to_uint8_tensor
from errors import UserError, cli
from fileio import CheckpointDir, check_apart, newest_checkpoint, save_png, to_pil
from checkpoints import Trained, load_trained, save_exported
from models import BN_MODES, Noise, StyleVectors, batch_norm_mode
from devices import resolve_device

ImageInput = Union[str, Path, Image.Image]

BORDER_FRACTION = 0.05  # a sketch's background is judged on its outer 5 % (at least 1 px) on every side
DARK_BACKGROUND = 128   # a border median below mid-grey: light strokes on a dark background
FITS = ("stretch", "crop", "pad")  # how a non-square input becomes square
INVERT_CHOICES = ("auto", "always", "never")
CACHE_SIZE = 256  # prepared inputs kept in memory during a folder run (a style reused across sketches)
SCALES = StyleVectors._fields[::-1]  # coarse, mid, fine: the order the page and the mixing recipes list them


class InferenceError(UserError):
    """A user's mistake in what to generate: no pairs, a device that is not there, a bad option."""


def newest_run(root="train_results", data_name: str = "demo") -> Path | None:
    """The run under `root` of DATA_NAME `data_name` whose newest GAN checkpoint is newest, or None.
    A finished run (GAN stage reached ITERATION_GAN) beats any unfinished one, e.g. a later test run."""
    found = []
    for config in Path(root).glob("*/config.json"):
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
            name, total = settings.get("DATA_NAME"), settings.get("ITERATION_GAN")
        except (OSError, ValueError, AttributeError):
            continue  # a half-written or foreign folder is not a run to pick
        ckpt = newest_checkpoint(config.parent / "gan" / "checkpoints")
        if name == data_name and ckpt is not None:
            iteration = int(CheckpointDir.PATTERN.match(ckpt.name).group(1))
            finished = isinstance(total, int) and iteration >= total
            found.append((finished, ckpt.stat().st_mtime, config.parent))
    return max(found)[2] if found else None


# --- Input preparation ---

def open_image(image: ImageInput, mode: str) -> Image.Image:
    """A path or a PIL image -> 8-bit PIL image in `mode` ("L" or "RGB"), by the training loader's rules."""
    return _to_mode(image, mode) if isinstance(image, Image.Image) else load_image(image, mode)


def is_light_on_dark(gray: Image.Image) -> bool:
    """True when a sketch has light strokes on a dark background: the median of its outer border
    (strokes rarely cross it, so the median is the paper) is darker than mid-grey."""
    arr = np.asarray(gray.convert("L"))
    h, w = arr.shape
    b = max(1, round(BORDER_FRACTION * min(h, w)))
    ring = np.concatenate([arr[:b].ravel(), arr[-b:].ravel(), arr[b:-b, :b].ravel(), arr[b:-b, -b:].ravel()])
    return float(np.median(ring)) < DARK_BACKGROUND


def fit_square(img: Image.Image, size: int, fit: str = "stretch") -> Image.Image:
    """Resize to size x size (antialiased bilinear). A non-square picture is stretched (as in
    training), centre-cropped, or padded with white (a sketch's background)."""
    if fit not in FITS:
        raise InferenceError(f"fit={fit!r}: must be one of {', '.join(FITS)}")
    w, h = img.size
    if w != h and fit == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    elif w != h and fit == "pad":
        side = max(w, h)
        white = 255 if img.mode == "L" else (255, 255, 255)
        canvas = Image.new(img.mode, (side, side), white)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    return img if img.size == (size, size) else resize(img, size)


# --- Seeded noise ---

def seeded_noise(seed: int) -> Noise:
    """The generator's noise as a function of (seed, layer key) alone: drawn on the CPU (the same on every
    device) and shared by every item of a batch."""
    def noise(key: int, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(seed, key))
        return torch.randn(shape, generator=g).to(like.device, like.dtype)
    return noise


# --- The model ---

class SketchToImage:
    """A trained model in eval mode on one device: the AE and the EMA refine generator. image_size: output
    size G; ae_size: size S at which inputs are read; sample_bn: "running" or "batch" BatchNorm statistics."""

    def __init__(self, trained: Trained, device="cpu", sample_bn: str | None = None):
        self.device = resolve_device(device)
        self.ae = trained.ae.to(self.device).eval().requires_grad_(False)
        self.generator = trained.generator.to(self.device).eval().requires_grad_(False)
        self.arch, self.config = dict(trained.arch), dict(trained.config)  # config: held-out folders, ...
        self.preset = trained.arch["preset"]
        self.nfc, self.ae_size = self.ae.nfc, self.ae.im_size
        self.image_size = trained.arch.get("im_size_gan", self.ae_size)
        self.source, self.iteration = trained.source, trained.iteration
        self.sample_bn = sample_bn or self.config.get("SAMPLE_BN", "running")
        if self.sample_bn not in BN_MODES:
            raise InferenceError(f"sample_bn={self.sample_bn!r}: must be one of {', '.join(BN_MODES)}")

    @classmethod
    def from_pretrained(cls, path, device="auto", sample_bn: str | None = None) -> "SketchToImage":
        """A run folder, a GAN checkpoint or a `save_pretrained` file; else fileio.CheckpointError."""
        return cls(load_trained(path, kind="gan"), device, sample_bn)

    def save_pretrained(self, path) -> Path:
        """Write the AE and EMA generator as one safetensors file (export.py)."""
        return save_exported(Trained(self.ae, self.generator, self.arch, self.config, self.iteration, self.source),
                             path)

    def __repr__(self) -> str:
        return (f"SketchToImage(preset={self.preset!r}, nfc={self.nfc}, ae_size={self.ae_size}, "
                f"image_size={self.image_size}, device={self.device}, source={self.source})")

    def prepare_sketch(self, sketch: ImageInput, size: int | None = None, invert: str = "auto",
                       fit: str = "stretch") -> torch.Tensor:
        """A sketch (path or PIL) -> (1, 1, size, size) in [-1, 1] on the device (size: ae_size);
        inverted when `invert` is "always", or "auto" and `is_light_on_dark`."""
        if invert not in INVERT_CHOICES:
            raise InferenceError(f"invert={invert!r}: must be one of {', '.join(INVERT_CHOICES)}")
        gray = open_image(sketch, "L")
        if invert == "always" or (invert == "auto" and is_light_on_dark(gray)):
            gray = ImageOps.invert(gray)
        gray = fit_square(gray, size or self.ae_size, fit)
        return to_float(to_uint8_tensor(gray))[None].to(self.device)

    def prepare_style(self, style: ImageInput, size: int | None = None, fit: str = "stretch") -> torch.Tensor:
        """A style image (path or PIL) -> (1, 3, size, size) in [-1, 1] on the device (size: ae_size)."""
        rgb = fit_square(open_image(style, "RGB"), size or self.ae_size, fit)
        return to_float(to_uint8_tensor(rgb))[None].to(self.device)

    @torch.no_grad()
    def style_vectors(self, styles: torch.Tensor) -> StyleVectors:
        """(B, 3, S, S) style images -> StyleVectors: fine (B, 2nfc), mid (B, 4nfc), coarse (B, 8nfc)."""
        return self.ae.style(styles.to(self.device, torch.float32))

    @staticmethod
    def mix_styles(vectors: Sequence[torch.Tensor], weights: dict[str, Sequence[float]]) -> StyleVectors:
        """K exemplars' style vectors (each (K, dim)) -> one style (each (1, dim)): per scale, their
        mean weighted by weights[scale] (K numbers, not all 0); weight 1 on one alone gives its vector."""
        mixed = []
        for scale, v in zip(StyleVectors._fields, vectors):
            w = v.new_tensor(weights[scale])[:, None]
            mixed.append((w * v).sum(0, keepdim=True) / w.sum())
        return StyleVectors(*mixed)

    @torch.no_grad()
    def generate(self, sketches: torch.Tensor, styles: torch.Tensor | None = None, *,
                 style_vectors: Sequence[torch.Tensor] | None = None, seed: int | None = None,
                 return_ae: bool = False):
        """(B, 1, S, S) sketches + (B, 3, S, S) styles (or their `style_vectors`) -> (B, 3, G, G) in [-1, 1].
        A batch of 1 on either side is repeated to the other's size; `seed`: see the module docstring;
        return_ae=True also returns the AE output (B, 3, S, S)."""
        if (styles is None) == (style_vectors is None):
            raise ValueError("give either styles or style_vectors")
        sketches = sketches.to(self.device, torch.float32)
        if sketches.dim() != 4 or sketches.shape[1] not in (1, 3):
            raise ValueError(f"sketches must be (B, 1, H, W), got {tuple(sketches.shape)}")
        if sketches.shape[1] == 3:
            sketches = sketches.mean(dim=1, keepdim=True)
        vectors = StyleVectors(*(self.style_vectors(styles) if styles is not None else style_vectors))
        vectors = vectors.map(lambda v: v.to(self.device, torch.float32))
        b = max(sketches.shape[0], vectors[0].shape[0])
        if sketches.shape[0] == 1:
            sketches = sketches.expand(b, -1, -1, -1)
        if vectors[0].shape[0] == 1:
            vectors = vectors.map(lambda v: v.expand(b, -1))
        if sketches.shape[0] != vectors[0].shape[0]:
            raise ValueError(f"batch sizes differ: {sketches.shape[0]} sketches, {vectors[0].shape[0]} styles")
        ae_image = self.ae.draw(sketches, vectors)
        with batch_norm_mode(self.generator, self.sample_bn):
            out = self.generator(ae_image, vectors, None if seed is None else seeded_noise(seed))
        return (out, ae_image) if return_ae else out

    def generate_batched(self, sketches: torch.Tensor, styles: torch.Tensor | None = None, *,
                         style_vectors: Sequence[torch.Tensor] | None = None, seed: int | None = None,
                         batch_size: int = 16) -> torch.Tensor:
        """`generate` over slices of `batch_size` items; the result is on the CPU."""
        n = max(sketches.shape[0], (styles if styles is not None else style_vectors[0]).shape[0])
        outs = []
        for start in range(0, n, batch_size):
            def part(t: torch.Tensor, cut=slice(start, start + batch_size)) -> torch.Tensor:  # a batch of 1 goes to all
                return t if t.shape[0] == 1 else t[cut]
            vectors = self.style_vectors(part(styles)) if styles is not None else StyleVectors(*style_vectors).map(part)
            outs.append(self.generate(part(sketches), style_vectors=vectors, seed=seed).cpu())
        return torch.cat(outs)

    def translate(self, sketch: ImageInput, style: ImageInput, seed: int | None = 0, invert: str = "auto",
                  fit: str = "stretch") -> Image.Image:
        """One sketch + one style image (paths or PIL) -> one PIL RGB image of image_size."""
        out = self.generate(self.prepare_sketch(sketch, invert=invert, fit=fit),
                            self.prepare_style(style, fit=fit), seed=seed)
        return to_pil(out[0])

    def run(self, jobs: Sequence["Job"], batch_size: int = 16, seed: int | None = 0, invert: str = "auto",
            fit: str = "stretch", progress: bool = True) -> "RunReport":
        """Write every job's image (PNG, atomically); unreadable inputs are skipped and counted."""
        if batch_size < 1:
            raise InferenceError(f"batch size {batch_size}: must be >= 1")
        check_outputs(jobs)
        report = RunReport()
        sketches = _cached(lambda p: self.prepare_sketch(p, invert=invert, fit=fit))
        styles = _cached(lambda p: self.prepare_style(p, fit=fit))
        with tqdm(total=len(jobs), unit="img", desc="generating", disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, len(jobs), batch_size):
                batch = jobs[start:start + batch_size]
                ready = []
                for job in batch:
                    try:
                        ready.append((job, sketches(job.sketch), styles(job.style)))
                    except _Unreadable as e:
                        report.unreadable.setdefault(str(e.path), str(e.error))
                        report.skipped += 1
                if ready:
                    done, sk, st = zip(*ready)
                    images = self.generate(torch.cat(sk), torch.cat(st), seed=seed).cpu()
                    for job, image in zip(done, images):
                        save_png(image, job.out)
                        report.written.append(job.out)
                bar.update(len(batch))
        return report


class _Unreadable(Exception):
    def __init__(self, path, error: DataError):
        super().__init__(str(error))
        self.path, self.error = path, error


def _cached(load):
    """`load` with an LRU cache by path; a file that failed to load keeps failing without a re-read."""
    @functools.lru_cache(CACHE_SIZE)
    def attempt(path):
        try:
            return load(path)
        except DataError as e:
            return e

    def get(path):
        value = attempt(path)
        if isinstance(value, DataError):
            raise _Unreadable(path, value)
        return value
    return get


# --- Jobs: what to generate from which files ---

@dataclass(frozen=True)
class Job:
    sketch: Path
    style: Path
    out: Path


@dataclass
class RunReport:
    written: list[Path] = field(default_factory=list)
    skipped: int = 0                                       # outputs not made (an input was unreadable)
    unreadable: dict[str, str] = field(default_factory=dict)  # file -> why

    def summary(self) -> str:
        if not self.unreadable:
            return ""
        shown = "; ".join(list(self.unreadable.values())[:5]) + ("; ..." if len(self.unreadable) > 5 else "")
        return f"skipped {self.skipped} output(s): {len(self.unreadable)} unreadable input file(s): {shown}"


@dataclass
class Plan:
    jobs: list[Job]
    notes: list[str] = field(default_factory=list)  # unmatched files and the like, for the user


def _inputs(path: Path, what: str) -> dict[str, Path]:
    """A file -> {stem: file}; a folder -> its images by stem. DataError if none."""
    if path.is_file():
        return {path.stem: path}
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    return require_images(path, what)


def check_outputs(jobs: Sequence[Job], inputs: Sequence[Path] = ()) -> None:
    """A UserError unless every output is new: not an input (`inputs` and the jobs' files) nor inside
    one, and not written twice."""
    files = dict.fromkeys(p for job in jobs for p in (job.sketch, job.style))
    check_apart([job.out for job in jobs], [*inputs, *files])
    seen = set()
    for job in jobs:
        out = job.out.resolve()
        if out in seen:
            raise InferenceError(f"two outputs would be written to {job.out}")
        seen.add(out)


def output_stem(stem: str) -> str:
    """A stem as one half of a `<sketch>__<style>` name, escaped ("%" -> "%25", "_" -> "%5F") when it
    holds "__" or "%" or starts or ends with "_", so that every name splits back into one pair."""
    if "__" in stem or "%" in stem or stem.startswith("_") or stem.endswith("_"):
        return stem.replace("%", "%25").replace("_", "%5F")
    return stem


def plan_jobs(sketch, style, out, cross: bool = False) -> Plan:
    """file + file -> one image; a file and a folder -> it with every file of the other; folder + folder:
    pairs by file name (<name>.png), or with `cross` every sketch x every style (<sketch>__<style>.png)."""
    sketch, style, out = Path(sketch), Path(style), Path(out)
    sketches, styles = _inputs(sketch, "sketch"), _inputs(style, "style")
    if sketch.is_dir() and style.is_dir() and not cross:
        common = [s for s in sketches if s in styles]
        if not common:
            raise InferenceError(f"no sketch in {sketch} has a style image of the same file name in {style}; "
                                 f"use --cross for every sketch with every style")
        plan = Plan([Job(sketches[s], styles[s], out / f"{s}.png") for s in common])
        lonely_sketches, lonely_styles = len(sketches) - len(common), len(styles) - len(common)
        if lonely_sketches or lonely_styles:
            plan.notes.append(f"paired {len(common)} by file name; {lonely_sketches} sketch(es) without a style "
                              f"image of the same name, {lonely_styles} style image(s) without a sketch "
                              f"(--cross: every sketch with every style)")
    else:
        plan = Plan([Job(sk, st, out / f"{output_stem(a)}__{output_stem(b)}.png")
                     for a, sk in sketches.items() for b, st in styles.items()])
    check_outputs(plan.jobs, [sketch, style])
    return plan


# --- Command line ---

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Sketch + style image -> image in that style, with a trained GAN checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder, GAN checkpoint or exported model; a sketch and a style image, or two folders.
Outputs: file + file: one image <out>/<sketch>__<style>.png; folder + folder: pairs by file name
(<out>/<name>.png), or with --cross every sketch x every style; PNGs at the model's output size.
Example:
    python inference.py --checkpoint train_results/<run> --sketch my_sketch.png --style photo.jpg --out results""")
    p.add_argument("--checkpoint", required=True,
                   help="run folder of train.py, a GAN checkpoint file, or a .safetensors file from export.py")
    p.add_argument("--sketch", required=True, help="a sketch image or a folder of sketches")
    p.add_argument("--style", required=True, help="a style image or a folder of style images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cross", action="store_true", help="folders: every sketch with every style")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0, help="noise seed: same seed, same images")
    p.add_argument("--invert", choices=INVERT_CHOICES, default="auto",
                   help="invert sketches (auto: when light strokes on a dark background)")
    p.add_argument("--fit", choices=FITS, default="stretch", help="how non-square inputs become square")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_jobs(args.sketch, args.style, args.out, args.cross)
    model = SketchToImage.from_pretrained(args.checkpoint, args.device)
    print(f"model: {model.preset}, {model.ae_size} px sketches -> {model.image_size} px images "
          f"({model.source}, iteration {model.iteration}) on {model.device}")
    for note in plan.notes:
        print(note)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = model.run(plan.jobs, args.batch_size, args.seed, args.invert, args.fit, progress=not args.quiet)
    if report.summary():
        print(report.summary(), file=sys.stderr)
    if not report.written:
        raise InferenceError("no image written: every sketch or style image was unreadable")
    print(f"wrote {len(report.written)} image(s) to {Path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
