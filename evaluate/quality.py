"""Ground-truth quality benchmark: does an output take its colours from the exemplar and its shapes
from the sketch?

    python evaluate/quality.py --checkpoint train_results/<run>        # held-out demo split, 4 swaps
    python evaluate/quality.py --checkpoint RUN_OR_CKPT --data data/demo --swaps 4 --out results/quality

On the procedural demo data the answer is known: render(restyle(scene_i, scene_j)) is sketch i
drawn in the style of image j (demo_data.py). For each held-out image i the model draws its
exact line drawing in its own style ("own") and in the styles of the next --swaps images
("swapped"), and every output is scored against that ground truth, at the model's output size:

  psnr       dB over RGB (capped at 100: identical images)
  fill_de    CIE76 distance (Lab) between the mean colours of output and truth in each shape's
             region, averaged over the shapes: did the shapes get the exemplar's fills?
  bg_de      the same for the background
  shape_iou  do the sketch's regions stand out in the output? Each pixel goes to the region whose
             mean output colour is nearest; the mean IoU of that partition with the true regions

Regions are read on pure pixels only (no outline crosses them: antialiased edge pixels blend
two colours). The ground truth itself scores 100 dB, 0, 0 and 1.

Baselines, scored the same way in the same run:
  copy exemplar    the exemplar image j itself
  ignore exemplar  image i, the sketch's own original: the best any model that ignores the
                   exemplar can do (perfect shapes, the wrong colours whenever j's style differs)
  mean image       the mean training image
  AE stage         the AE's output alone (bilinear to the output size)

Writes <out>/quality.json (the summary and every case's numbers) and <out>/quality.png (sketches
down the side, exemplars across the top, each output beside its ground truth), and prints the
table. An AE-stage checkpoint (or a run without a GAN stage) is scored as its AE alone.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import demo_data  # noqa: E402
from benchmark import markdown_table  # noqa: E402
from datasets import DataError, load_image, resize, to_float, to_uint8_tensor  # noqa: E402
from errors import cli  # noqa: E402
from evaluate import label  # noqa: E402
from fileio import save_grid, write_json  # noqa: E402
from inference import SketchToImage  # noqa: E402
from models import load_trained  # noqa: E402

PSNR_CAP = 100.0   # dB: what identical images score (a finite number for JSON)
METRICS = ("psnr", "fill_de", "bg_de", "shape_iou")
KINDS = ("own", "swapped")
MODEL, AE = "model", "AE stage"
BASELINES = ("copy exemplar", "ignore exemplar", "mean image")
PICTURE_N = 4      # sketches and exemplars in quality.png


# --------------------------------------------------------------------------- metrics (pure functions)

def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1], shape (..., 3) -> CIE L*a*b* (D65 white), shape (..., 3)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4124564, 0.3575761, 0.1804375],
                       [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])  # relative to the white point
    delta = 6 / 29
    f = np.where(xyz > delta ** 3, np.cbrt(xyz), xyz / (3 * delta ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def psnr(output: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1], capped at PSNR_CAP."""
    mse = float(np.mean((np.asarray(output, np.float64) - np.asarray(truth, np.float64)) ** 2))
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else -10 * math.log10(mse)


def regions(shapes: list[dict], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, pure) at `size` px: 0 background, k the k-th shape; pure marks pixels inside one region.

    Read off the renderer's supersampled label map: a pixel is pure when all its sub-pixels carry
    the same label, so in the rendered image it holds exactly that region's colour (+ texture).
    """
    ss = demo_data.SUPERSAMPLE
    fine = demo_data.label_map(shapes, size * ss).reshape(size, ss, size, ss).transpose(0, 2, 1, 3)
    fine = fine.reshape(size, size, ss * ss)
    return fine[..., 0].astype(np.int64), (fine == fine[..., :1]).all(axis=-1)


def region_means(lab: np.ndarray, labels: np.ndarray, pure: np.ndarray) -> dict[int, np.ndarray]:
    """Mean Lab colour of each region over its pure pixels (regions without any are left out)."""
    return {int(k): lab[pure & (labels == k)].mean(axis=0) for k in np.unique(labels[pure])}


def colour_errors(output_lab: np.ndarray, truth_lab: np.ndarray, labels: np.ndarray,
                  pure: np.ndarray) -> tuple[float, float]:
    """(mean fill distance over the shapes, background distance), CIE76 between region means.

    A region missing from the pure pixels is skipped; NaN when no shape (or no background) shows.
    """
    out, truth = region_means(output_lab, labels, pure), region_means(truth_lab, labels, pure)
    distance = {k: float(np.linalg.norm(out[k] - truth[k])) for k in truth}
    fills = [d for k, d in distance.items() if k > 0]
    return (float(np.mean(fills)) if fills else math.nan), distance.get(0, math.nan)


def shape_iou(output_lab: np.ndarray, labels: np.ndarray, pure: np.ndarray) -> float:
    """Mean IoU of the true regions with the partition "nearest region-mean colour of the output".

    Colour-blind on purpose: the prototypes are the output's own region colours, so a model that
    draws the right shapes in the wrong colours still scores 1, and one that ignores the sketch
    (or paints two regions alike) does not.
    """
    means = region_means(output_lab, labels, pure)
    keys = np.array(sorted(means))
    pixels, truth = output_lab[pure], labels[pure]
    nearest = keys[np.argmin(np.linalg.norm(pixels[:, None] - np.stack([means[k] for k in keys])[None], axis=-1), axis=1)]
    ious = [np.sum((nearest == k) & (truth == k)) / np.sum((nearest == k) | (truth == k)) for k in keys]
    return float(np.mean(ious))


def score(output: np.ndarray, truth: np.ndarray, labels: np.ndarray, pure: np.ndarray) -> dict[str, float]:
    """Every metric of one output (H, W, 3) in [0, 1] against its ground truth."""
    output_lab, truth_lab = srgb_to_lab(output), srgb_to_lab(truth)
    fill_de, bg_de = colour_errors(output_lab, truth_lab, labels, pure)
    return {"psnr": psnr(output, truth), "fill_de": fill_de, "bg_de": bg_de,
            "shape_iou": shape_iou(output_lab, labels, pure)}


# --------------------------------------------------------------------------- held-out data and cases

@dataclass
class HeldOut:
    """A split of a demo data set: scenes (from manifest.json), image and sketch files."""
    root: Path
    stems: list[str]
    scenes: list[dict]
    images: list[Path]
    sketches: list[Path]
    train_images: Path


def load_split(root, split: str = "test", n: int = 0, sketch_folder: str = "sketches") -> HeldOut:
    """The first n images (0: all) of a split of a demo data set made by demo_data.py, with their
    sketches from `sketch_folder` (the exact line drawings, or e.g. an XDoG set of the split)."""
    root = Path(root)
    manifest = demo_data._read_manifest(root)
    if manifest is None:
        raise DataError(f"{root}: not a demo data set of this version (no manifest.json with format "
                        f"{demo_data.FORMAT}); make it with: python demo_data.py --root {root}")
    stems = sorted(manifest["images"][split])[:n or None]
    missing = [s for s in stems for folder in ("images", sketch_folder) if not (root / split / folder / f"{s}.png").is_file()]
    if missing:
        raise DataError(f"{root}/{split}: {len(missing)} file(s) of the manifest are missing (e.g. {missing[0]}.png): "
                        f"repair the set with: python demo_data.py --root {root}")
    return HeldOut(root, stems, [manifest["images"][split][s] for s in stems],
                   [root / split / "images" / f"{s}.png" for s in stems],
                   [root / split / sketch_folder / f"{s}.png" for s in stems], root / "train" / "images")


def cases(n: int, swaps: int) -> list[tuple[str, int, int]]:
    """(kind, sketch i, style j): every image in its own style, then in the next `swaps` images' styles."""
    swaps = min(swaps, n - 1)
    return [("own", i, i) for i in range(n)] + [("swapped", i, (i + s) % n) for s in range(1, swaps + 1) for i in range(n)]


def ground_truth(data: HeldOut, i: int, j: int, size: int) -> np.ndarray:
    """render(restyle(scene_i, scene_j)) at `size`, (H, W, 3) in [0, 1]."""
    image, _ = demo_data.render(demo_data.restyle(data.scenes[i], data.scenes[j]), size)
    return np.asarray(image, dtype=np.float64) / 255


# --------------------------------------------------------------------------- methods

# A method draws a batch of cases: (sketch indices, style indices) -> {row name: (B, H, W, 3) in [0, 1]}
Method = Callable[[list[int], list[int]], dict[str, np.ndarray]]


def to_numpy(images: torch.Tensor, size: int) -> np.ndarray:
    """(B, 3, h, w) in [-1, 1] -> (B, size, size, 3) in [0, 1], quantised to 8 bits as a saved PNG would be."""
    images = images.detach().float().cpu()
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(-1, 1).add(1).mul(127.5).round().div(255).permute(0, 2, 3, 1).numpy().astype(np.float64)


def model_method(model: SketchToImage, data: HeldOut, size: int, ae_only: bool, seed: int = 0) -> Method:
    """The model's final output and its AE-stage output, from the files as a user would pass them."""
    def draw(sketch_idx: list[int], style_idx: list[int]) -> dict[str, np.ndarray]:
        sketches = torch.cat([model.prepare_sketch(data.sketches[i]) for i in sketch_idx])
        styles = torch.cat([model.prepare_style(data.images[j]) for j in style_idx])
        final, ae_image = model.generate(sketches, styles, seed=seed, return_ae=True)
        rows = {AE: to_numpy(ae_image, size)}
        return rows if ae_only else {MODEL: to_numpy(final, size), **rows}
    return draw


def baseline_method(data: HeldOut, size: int, mean_image: np.ndarray) -> Method:
    """The trivial answers: the exemplar, the sketch's own image, the mean training image. Each own-style
    render serves many cases: it is drawn once (kept as uint8; ground_truth's values exactly)."""
    own: dict[int, np.ndarray] = {}

    def own_style(k: int) -> np.ndarray:
        if k not in own:
            own[k] = np.round(ground_truth(data, k, k, size) * 255).astype(np.uint8)
        return own[k] / 255

    def draw(sketch_idx: list[int], style_idx: list[int]) -> dict[str, np.ndarray]:
        return {"copy exemplar": np.stack([own_style(j) for j in style_idx]),
                "ignore exemplar": np.stack([own_style(i) for i in sketch_idx]),
                "mean image": np.repeat(mean_image[None], len(sketch_idx), axis=0)}
    return draw


def mean_image(folder: Path, size: int, limit: int = 2000) -> np.ndarray:
    """The mean of (up to `limit`) training images at `size`, (H, W, 3) in [0, 1]."""
    paths = sorted(folder.glob("*.png"))[:limit]
    if not paths:
        raise DataError(f"no training images in {folder} (the mean-image baseline needs them)")
    total = np.zeros((size, size, 3))
    for path in paths:
        total += to_uint8_tensor(resize(load_image(path, "RGB"), size)).permute(1, 2, 0).numpy()
    return total / (255 * len(paths))


# --------------------------------------------------------------------------- the benchmark

def evaluate(methods: list[Method], data: HeldOut, size: int, swaps: int = 4, batch_size: int = 25,
             progress: bool = True) -> dict:
    """Score every method's rows on every case; returns {"summary": ..., "cases": [...]}."""
    todo = cases(len(data.scenes), swaps)
    region_cache = {i: regions(data.scenes[i]["shapes"], size) for i in range(len(data.scenes))}
    records = []
    for start in tqdm(range(0, len(todo), batch_size), desc="quality", disable=not progress, dynamic_ncols=True):
        batch = todo[start:start + batch_size]
        sketch_idx, style_idx = [c[1] for c in batch], [c[2] for c in batch]
        outputs = {name: rows for method in methods for name, rows in method(sketch_idx, style_idx).items()}
        for b, (kind, i, j) in enumerate(batch):
            truth = ground_truth(data, i, j, size)
            record = {"kind": kind, "sketch": data.stems[i], "style": data.stems[j]}
            record.update({name: score(rows[b], truth, *region_cache[i]) for name, rows in outputs.items()})
            records.append(record)
    return {"summary": summarise(records), "cases": records}


def summarise(records: list[dict]) -> dict:
    """{row: {kind: {metric: mean over the cases of that kind (NaNs: regions that did not show)}}}."""
    names = [k for k in records[0] if k not in ("kind", "sketch", "style")]
    summary = {}
    for name in names:
        summary[name] = {}
        for kind in KINDS:
            values = [r[name] for r in records if r["kind"] == kind]
            if values:
                summary[name][kind] = {m: float(np.nanmean([v[m] for v in values])) for m in METRICS}
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a Markdown table: one row per method, own and swapped columns."""
    header = ["", *(f"{kind} {m}" for kind in KINDS for m in ("PSNR", "fill dE", "bg dE", "shape IoU"))]
    rows = []
    for name, kinds in summary.items():
        cells = [name]
        for kind in KINDS:
            v = kinds.get(kind)
            cells += ["-"] * 4 if v is None else [f"{v['psnr']:.2f}", f"{v['fill_de']:.1f}", f"{v['bg_de']:.1f}",
                                                  f"{v['shape_iou']:.3f}"]
        rows.append(cells)
    return markdown_table(header, rows)


def picture(method: Method, data: HeldOut, size: int, out: Path, row: str, n: int = PICTURE_N) -> None:
    """Sketches down the side, exemplars across the top (images of distinct palettes); each cell is
    the output beside its ground truth. The diagonal is the own style."""
    chosen, palettes = [], set()
    for i, scene in enumerate(data.scenes):
        if scene["palette"] not in palettes and len(chosen) < n:
            chosen.append(i)
            palettes.add(scene["palette"])
    tile = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() * 2 - 1  # noqa: E731
    white = torch.ones(1, 3, size, size)
    tiles = [white]
    for j in chosen:
        tiles += [label(tile(ground_truth(data, j, j, size)), "exemplar"), label(white.clone(), "truth")]
    for i in chosen:
        sketch = to_float(to_uint8_tensor(resize(load_image(data.sketches[i], "L"), size)))[None].expand(-1, 3, -1, -1)
        outputs = method([i] * len(chosen), chosen)[row]
        tiles.append(sketch)
        for b, j in enumerate(chosen):
            tiles += [tile(outputs[b]), tile(ground_truth(data, i, j, size))]
    save_grid(torch.cat(tiles), out, nrow=1 + 2 * len(chosen))


# --------------------------------------------------------------------------- loading and command line

class _Passthrough(nn.Module):
    """Stands in for the refine generator when only an AE is scored: returns the AE output."""

    def forward(self, ae_image: torch.Tensor, style_vectors) -> torch.Tensor:
        return ae_image


def load_model(path, device: str, sample_bn: str | None = None) -> tuple[SketchToImage, bool]:
    """(model, ae_only): a run folder, GAN checkpoint or exported model gives the whole model; an AE
    checkpoint, or a run folder without a GAN stage, gives its AE alone (scored as the "AE stage" row)."""
    trained = load_trained(path, kind=None)
    ae_only = trained.generator is None
    if ae_only:
        trained.generator = _Passthrough()
    return SketchToImage(trained, device, sample_bn), ae_only


def run(checkpoint, data_root="data/demo", out="results/quality", swaps: int = 4, n: int = 0, device: str = "auto",
        batch_size: int = 25, seed: int = 0, sketch_folder: str = "sketches", sample_bn: str | None = None,
        progress: bool = True) -> dict:
    """The whole benchmark: load, score, write quality.json and quality.png; returns the JSON object."""
    data = load_split(data_root, "test", n, sketch_folder)
    model, ae_only = load_model(checkpoint, device, sample_bn)
    size = model.image_size
    drawn = model_method(model, data, size, ae_only, seed)
    result = evaluate([drawn, baseline_method(data, size, mean_image(data.train_images, size))], data, size, swaps,
                      batch_size, progress)
    out = Path(out)
    picture(drawn, data, size, out / "quality.png", AE if ae_only else MODEL)
    result = {"checkpoint": str(model.source), "iteration": model.iteration, "data": str(data.root), "split": "test",
              "sketches": sketch_folder, "images": len(data.stems), "swaps": min(swaps, len(data.stems) - 1),
              "size": size, "seed": seed, "sample_bn": None if ae_only else model.sample_bn,
              **result}
    write_json(out / "quality.json", result)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Score a model against the exact ground truth of the demo data: own and swapped styles, "
                    "PSNR, colour error of fills and background (CIE76), shape IoU; with trivial baselines.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder, a GAN or an AE checkpoint (or an exported model); a demo data set (its test split).
Outputs: the table on stdout; <out>/quality.json (summary and every case); <out>/quality.png (sketch x exemplar,
         each output beside its ground truth).
Example:
    python evaluate/quality.py --checkpoint train_results/demo-20261202-120000 --out results/quality""")
    p.add_argument("--checkpoint", required=True, help="run folder of train.py, or a GAN or AE checkpoint file")
    p.add_argument("--data", default="data/demo", help="demo data set made by demo_data.py (its test split is used)")
    p.add_argument("--sketches", default="sketches",
                   help="the held-out sketch folder to draw from (default: the exact line drawings)")
    p.add_argument("--swaps", type=int, default=4, help="other exemplars per sketch (default 4)")
    p.add_argument("--n", type=int, default=0, help="held-out images to use (default 0: all)")
    p.add_argument("--out", default="results/quality", help="folder for quality.json and quality.png")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--seed", type=int, default=0, help="the refine generator's noise")
    p.add_argument("--sample-bn", choices=("running", "batch"), default=None,
                   help="the generator's BatchNorm statistics (default: the run's SAMPLE_BN)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.swaps < 1 or args.n < 0 or args.batch_size < 1:
        parser.error("--swaps and --batch-size must be >= 1 and --n >= 0")
    result = run(args.checkpoint, args.data, args.out, args.swaps, args.n, args.device, args.batch_size,
                 args.seed, args.sketches, args.sample_bn, not args.quiet)
    print(f"{result['images']} held-out images x (own + {result['swaps']} swapped styles), {result['size']} px, "
          f"checkpoint {result['checkpoint']} (iteration {result['iteration']})")
    print(format_summary(result["summary"]))
    print(f"wrote {Path(args.out) / 'quality.json'} and {Path(args.out) / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
