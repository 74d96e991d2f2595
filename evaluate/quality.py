"""Quality benchmark for any held-out folder: does an output keep its sketch's lines and take its
exemplar's colours? No ground truth and no pretrained network are needed.

Examples:
    python evaluate/quality.py --checkpoint train_results/<run>            # the run's held-out set
    python evaluate/quality.py --checkpoint RUN --images DIR --sketches DIR --train-images DIR --swaps 8

For each held-out image i the model draws sketch i in its own style (exemplar i: "own") and in the
styles of the next --swaps images ("swapped"). Every output is scored at the model's output size:

  psnr, ssim  own style: the output against image i (SSIM: scikit-image, Wang et al. 2004's 11x11
              Gaussian window, sigma 1.5)
  edge_f      structure: F-score of the output's lines (XDoG "thin") against sketch i's lines, both
              thinned to 1 px, a line pixel counting as matched within TOLERANCE of the side (2 px at
              128 px). A model that draws image i exactly scores image i's own score ("ignore exemplar")
  style_sw    style: sliced Wasserstein distance between the output's and exemplar j's pixel colours
              (CIE Lab, 64 fixed directions; 0: the same colour distribution)
  closer      the share of swaps whose output is closer in colour (style_sw) to exemplar j than to image i

On the demo data (a folder made by demo_data.py) the exact answer of every case is known, and four
more scores compare each output with it: truth_psnr, fill_de and bg_de (CIE76 colour error of the
shape fills and the background), shape_iou (do the sketch's regions stand out in the output).

Baselines, scored the same way in the same run:
  copy exemplar    image j itself
  ignore exemplar  image i, the sketch's own original: the best any model that ignores the exemplar can do
  mean image       the mean training image
  colour transfer  image i moved to exemplar j's Lab mean and spread per channel (Reinhard et al. 2001):
                   an oracle that knows image i; the style a structure-keeping answer can reach
  AE stage         the AE's output alone (bilinear to the output size)
KID (and FID, with at least 2 images a side) of the swapped outputs against the held-out images are
added when the FID Inception weights are present, and skipped with the reason when not.

Inputs: a train.py run folder, a GAN or an AE checkpoint (or an exported model); held-out images and their
sketches (default: the run's TEST_IMAGE_DIR and TEST_SKETCH_DIR) and training images (the mean image).
Outputs: the table on stdout; <out>/quality.json (the summary and every case's numbers), <out>/matrix.png
(sketches down the side, exemplars across the top, the diagonal in its own style) and <out>/own.png
(sketch, original, AE output, output).
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage
from skimage.color import lab2rgb, rgb2lab
from skimage.metrics import structural_similarity
from skimage.morphology import skeletonize
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import demo_data  # noqa: E402
import weights  # noqa: E402
from benchmark import fid_kid_of_arrays  # noqa: E402
from datasets import DataError, load_image, pair_folders, resize, to_float, to_uint8_tensor  # noqa: E402
from errors import cli  # noqa: E402
from evaluate import label  # noqa: E402
from fileio import check_writable, markdown_table, save_grid, write_json  # noqa: E402
from inference import SketchToImage  # noqa: E402
from checkpoints import load_trained  # noqa: E402
from sketch_styletransfer.xdog import BUILTIN_SETTINGS, xdog  # noqa: E402

PSNR_CAP = 100.0           # dB: what identical images score (a finite number for JSON)
TOLERANCE = 1 / 64         # edge F-score: a line pixel within this share of the side is matched (2 px at 128)
SW_DIRECTIONS = 64         # sliced Wasserstein: fixed random directions in Lab
EDGES = BUILTIN_SETTINGS["thin"]
KINDS = ("own", "swapped")
MODEL, AE = "model", "AE stage"
BASELINES = ("copy exemplar", "ignore exemplar", "mean image", "colour transfer")
COLUMNS = {"own": ("psnr", "ssim", "edge_f"), "swapped": ("edge_f", "style_sw", "closer")}
TRUTH = ("truth_psnr", "fill_de", "bg_de", "shape_iou")  # the demo data's ground-truth scores
PICTURE_N = 4              # sketches and exemplars in matrix.png
OWN_N = 6                  # rows of own.png


# --------------------------------------------------------------------------- metrics (pure functions)

def psnr(output: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1], capped at PSNR_CAP."""
    mse = float(np.mean((np.asarray(output, np.float64) - np.asarray(truth, np.float64)) ** 2))
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else -10 * math.log10(mse)


def ssim(output: np.ndarray, truth: np.ndarray) -> float:
    """Structural similarity of two RGB images (H, W, 3) in [0, 1], the standard Gaussian-window form."""
    return float(structural_similarity(output, truth, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False))


def sketch_lines(grey: np.ndarray) -> np.ndarray:
    """A sketch (H, W) in [0, 1], dark strokes on white -> its lines, thinned to 1 px (bool)."""
    return skeletonize(grey < 0.5)


def image_lines(rgb: np.ndarray) -> np.ndarray:
    """An image's lines: the XDoG "thin" sketch of its grey levels, thinned to 1 px (bool)."""
    grey = rgb @ np.array([0.299, 0.587, 0.114])  # PIL's "L" weights
    return sketch_lines(xdog(grey, **asdict(EDGES)))


def edge_f(lines: np.ndarray, reference: np.ndarray, tolerance: float) -> float:
    """F-score of `lines` against `reference` (bool maps): precision = share of `lines` within `tolerance`
    px of a reference pixel, recall = share of `reference` within `tolerance` of `lines`. Two empty maps
    agree (1); one empty map scores 0."""
    if not lines.any() or not reference.any():
        return float(lines.any() == reference.any())
    precision = np.mean(ndimage.distance_transform_edt(~reference)[lines] <= tolerance)
    recall = np.mean(ndimage.distance_transform_edt(~lines)[reference] <= tolerance)
    return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


@functools.cache
def directions(n: int = SW_DIRECTIONS, seed: int = 0) -> np.ndarray:
    """n fixed unit vectors in 3-d (the same every run)."""
    d = np.random.default_rng(seed).normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def projections(points: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """The sorted 1-d projections (len(dirs), N) of a point set (N, 3) on `dirs`: what sliced_wasserstein
    compares (the held-out images' are computed once)."""
    return np.sort((dirs @ points.T).astype(np.float32), axis=1)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, dirs: np.ndarray | None = None) -> float:
    """Mean over `dirs` of the 1-d Wasserstein-1 distance between two equally large point sets (N, 3), e.g.
    the Lab colours of two images' pixels; with dirs None, `a` and `b` are already their `projections`."""
    pa, pb = (a, b) if dirs is None else (projections(a, dirs), projections(b, dirs))
    assert pa.shape == pb.shape, "sliced_wasserstein compares equally large point sets"
    return float(np.mean(np.abs(pa - pb), dtype=np.float64))


def colour_transfer(image: np.ndarray, exemplar: np.ndarray) -> np.ndarray:
    """Reinhard et al. (2001): `image`'s Lab channels shifted and scaled to `exemplar`'s mean and standard
    deviation; RGB (H, W, 3) in [0, 1] in and out (out of gamut clipped)."""
    lab, target = rgb2lab(image).reshape(-1, 3), rgb2lab(exemplar).reshape(-1, 3)
    spread = lab.std(axis=0)
    moved = (lab - lab.mean(axis=0)) / np.where(spread > 0, spread, 1) * target.std(axis=0) + target.mean(axis=0)
    with warnings.catch_warnings():  # colours moved out of the sRGB gamut are clipped: expected, not news
        warnings.simplefilter("ignore", UserWarning)
        return np.clip(lab2rgb(moved.reshape(image.shape)), 0, 1)


# --------------------------------------------------------------------------- the demo data's ground truth

def regions(shapes: list[dict], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, pure) at `size` px: 0 background, k the k-th shape; pure marks pixels inside one region
    (all sub-pixels of the renderer's supersampled label map agree: no outline blends two colours there)."""
    ss = demo_data.SUPERSAMPLE
    fine = demo_data.label_map(shapes, size * ss).reshape(size, ss, size, ss).transpose(0, 2, 1, 3)
    fine = fine.reshape(size, size, ss * ss)
    return fine[..., 0].astype(np.int64), (fine == fine[..., :1]).all(axis=-1)


def region_means(lab: np.ndarray, labels: np.ndarray, pure: np.ndarray) -> dict[int, np.ndarray]:
    """Mean Lab colour of each region over its pure pixels (regions without any are left out)."""
    return {int(k): lab[pure & (labels == k)].mean(axis=0) for k in np.unique(labels[pure])}


def colour_errors(output_lab: np.ndarray, truth_lab: np.ndarray, labels: np.ndarray,
                  pure: np.ndarray) -> tuple[float, float]:
    """(mean fill distance over the shapes, background distance), CIE76 between region means; NaN when
    no shape (or no background) shows."""
    out, truth = region_means(output_lab, labels, pure), region_means(truth_lab, labels, pure)
    distance = {k: float(np.linalg.norm(out[k] - truth[k])) for k in truth}
    fills = [d for k, d in distance.items() if k > 0]
    return (float(np.mean(fills)) if fills else math.nan), distance.get(0, math.nan)


def shape_iou(output_lab: np.ndarray, labels: np.ndarray, pure: np.ndarray) -> float:
    """Mean IoU of the true regions with the partition "nearest region-mean colour of the output".
    Colour-blind on purpose: the right shapes in the wrong colours still score 1."""
    means = region_means(output_lab, labels, pure)
    keys = np.array(sorted(means))
    pixels, truth = output_lab[pure], labels[pure]
    centres = np.stack([means[k] for k in keys])
    nearest = keys[np.argmin(np.linalg.norm(pixels[:, None] - centres[None], axis=-1), axis=1)]
    ious = [np.sum((nearest == k) & (truth == k)) / np.sum((nearest == k) | (truth == k)) for k in keys]
    return float(np.mean(ious))


def truth_scores(output: np.ndarray, truth: np.ndarray, labels: np.ndarray, pure: np.ndarray) -> dict:
    output_lab, truth_lab = rgb2lab(output), rgb2lab(truth)
    fill_de, bg_de = colour_errors(output_lab, truth_lab, labels, pure)
    return {"truth_psnr": psnr(output, truth), "fill_de": fill_de, "bg_de": bg_de,
            "shape_iou": shape_iou(output_lab, labels, pure)}


# --------------------------------------------------------------------------- held-out data

@dataclass
class HeldOut:
    """Held-out images with their sketches, read once at the output size, (H, W, 3) and (H, W) in [0, 1]."""
    stems: list[str]
    images: list[Path]
    sketch_files: list[Path]
    pixels: list[np.ndarray]
    colours: list[np.ndarray]          # sorted projections of each image's Lab colours (sliced Wasserstein)
    lines: list[np.ndarray]
    size: int
    scenes: list[dict] | None = None   # the demo data's scene of every image: its exact answers

    def truth(self, i: int, j: int) -> np.ndarray:
        """Sketch i in the style of image j, exactly (demo data only)."""
        image, _ = demo_data.render(demo_data.restyle(self.scenes[i], self.scenes[j]), self.size)
        return np.asarray(image, dtype=np.float64) / 255


def read_rgb(path, size: int) -> np.ndarray:
    return to_uint8_tensor(resize(load_image(path, "RGB"), size)).permute(1, 2, 0).numpy() / 255


def load_held_out(images, sketches, size: int, n: int = 0) -> HeldOut:
    """The first n (0: all) images of `images` that have a sketch of the same name in `sketches`."""
    pairs = pair_folders(images, [sketches])
    if len(pairs) < 2:
        raise DataError(f"{images}: {len(pairs)} image(s) with a sketch in {sketches}: the benchmark needs at least 2")
    files = list(zip(pairs.images, (s[0] for s in pairs.sketches)))[:n or None]
    pixels = [read_rgb(image, size) for image, _ in files]
    grey = [to_uint8_tensor(resize(load_image(sketch, "L"), size))[0].numpy() / 255 for _, sketch in files]
    return HeldOut([p.stem for p, _ in files], [p for p, _ in files], [s for _, s in files], pixels,
                   [projections(rgb2lab(p).reshape(-1, 3), directions()) for p in pixels],
                   [sketch_lines(g) for g in grey], size,
                   _demo_scenes(Path(images), [p.stem for p, _ in files]))


def _demo_scenes(images: Path, stems: list[str]) -> list[dict] | None:
    """The scenes of a demo data set's split folder (<root>/<split>/images), or None for other data."""
    manifest = demo_data._read_manifest(images.parents[1]) if len(images.parents) > 1 else None
    split = manifest and manifest["images"].get(images.parent.name)
    if not split or images.name != "images" or not all(s in split for s in stems):
        return None
    return [split[s] for s in stems]


def mean_image(folder, size: int, limit: int = 2000) -> np.ndarray:
    """The mean of (up to `limit`) training images at `size`, (H, W, 3) in [0, 1]."""
    paths = sorted(pair_folders(folder, [folder]).images)[:limit]
    return np.mean([read_rgb(p, size) for p in paths], axis=0)


def cases(n: int, swaps: int) -> list[tuple[str, int, int]]:
    """(kind, sketch i, style j): every image in its own style, then in the next `swaps` images' styles."""
    swaps = min(swaps, n - 1)
    return [("own", i, i) for i in range(n)] + [("swapped", i, (i + s) % n) for s in range(1, swaps + 1) for i in range(n)]


# --------------------------------------------------------------------------- methods

# A method draws a batch of cases: (sketch indices, style indices) -> {row name: (B, H, W, 3) in [0, 1]}
Method = Callable[[list[int], list[int]], dict[str, np.ndarray]]


def to_numpy(images: torch.Tensor, size: int) -> np.ndarray:
    """(B, 3, h, w) in [-1, 1] -> (B, size, size, 3) in [0, 1], quantised to 8 bits as a saved PNG would be."""
    images = images.detach().float().cpu()
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(-1, 1).add(1).mul(127.5).round().div(255).permute(0, 2, 3, 1).numpy().astype(np.float64)


def model_method(model: SketchToImage, data: HeldOut, ae_only: bool, seed: int = 0) -> Method:
    """The model's final output and its AE-stage output, from the files as a user would pass them."""
    def draw(sketch_idx: list[int], style_idx: list[int]) -> dict[str, np.ndarray]:
        sketches = torch.cat([model.prepare_sketch(data.sketch_files[i]) for i in sketch_idx])
        styles = torch.cat([model.prepare_style(data.images[j]) for j in style_idx])
        final, ae_image = model.generate(sketches, styles, seed=seed, return_ae=True)
        rows = {AE: to_numpy(ae_image, data.size)}
        return rows if ae_only else {MODEL: to_numpy(final, data.size), **rows}
    return draw


def baseline_method(data: HeldOut, mean: np.ndarray) -> Method:
    """The trivial answers and the colour-transfer oracle."""
    def draw(sketch_idx: list[int], style_idx: list[int]) -> dict[str, np.ndarray]:
        pairs = list(zip(sketch_idx, style_idx))
        return {"copy exemplar": np.stack([data.pixels[j] for j in style_idx]),
                "ignore exemplar": np.stack([data.pixels[i] for i in sketch_idx]),
                "mean image": np.repeat(mean[None], len(sketch_idx), axis=0),
                "colour transfer": np.stack([data.pixels[i] if i == j else
                                             colour_transfer(data.pixels[i], data.pixels[j]) for i, j in pairs])}
    return draw


# --------------------------------------------------------------------------- the benchmark

def score_case(output: np.ndarray, data: HeldOut, kind: str, i: int, j: int, truth: tuple | None = None) -> dict:
    """Every score of one output for sketch i in the style of image j; `truth`: the demo data's
    (exact answer, region labels, pure pixels) of the case."""
    scores = {"edge_f": edge_f(image_lines(output), data.lines[i], TOLERANCE * data.size)}
    if kind == "own":
        scores.update(psnr=psnr(output, data.pixels[i]), ssim=ssim(output, data.pixels[i]))
    else:
        colours = projections(rgb2lab(output).reshape(-1, 3), directions())
        scores["style_sw"] = sliced_wasserstein(colours, data.colours[j])
        scores["closer"] = float(scores["style_sw"] < sliced_wasserstein(colours, data.colours[i]))
    if truth is not None:
        scores.update(truth_scores(output, *truth))
    return scores


def evaluate(methods: list[Method], data: HeldOut, swaps: int = 4, batch_size: int = 25,
             progress: bool = True) -> dict:
    """Score every method's rows on every case; returns {"summary": ..., "cases": [...]}."""
    todo, records = cases(len(data.stems), swaps), []
    regions_of = {}  # the demo data's region map of sketch i: its shapes' geometry, whatever the style
    for start in tqdm(range(0, len(todo), batch_size), desc="quality", disable=not progress, dynamic_ncols=True):
        batch = todo[start:start + batch_size]
        sketch_idx, style_idx = [c[1] for c in batch], [c[2] for c in batch]
        outputs = {name: rows for method in methods for name, rows in method(sketch_idx, style_idx).items()}
        for b, (kind, i, j) in enumerate(batch):
            truth = None
            if data.scenes is not None:
                if i not in regions_of:
                    regions_of[i] = regions(data.scenes[i]["shapes"], data.size)
                truth = (data.truth(i, j), *regions_of[i])
            record = {"kind": kind, "sketch": data.stems[i], "style": data.stems[j]}
            record.update({name: score_case(rows[b], data, kind, i, j, truth) for name, rows in outputs.items()})
            records.append(record)
    return {"summary": summarise(records), "cases": records}


def summarise(records: list[dict]) -> dict:
    """{row: {kind: {metric: mean over the cases of that kind (NaNs: demo regions that did not show)}}}."""
    names = [k for k in records[0] if k not in ("kind", "sketch", "style")]
    summary = {}
    for name in names:
        summary[name] = {}
        for kind in KINDS:
            values = [r[name] for r in records if r["kind"] == kind]
            if values:
                summary[name][kind] = {m: float(np.nanmean([v[m] for v in values])) for m in values[0]}
    return summary


def distribution_scores(method: Method, data: HeldOut, swaps: int, batch_size: int) -> dict:
    """KID (and FID) of the swapped outputs against the held-out images, or the reason they are skipped."""
    if not weights.available("fid_inception"):
        return {"skipped": "the FID Inception weights are not present (S2I_FID_INCEPTION_WEIGHTS, README: "
                           "Pretrained weights)"}
    swapped = [c for c in cases(len(data.stems), swaps) if c[0] == "swapped"]
    outputs = np.concatenate([method([c[1] for c in swapped[s:s + batch_size]],
                                     [c[2] for c in swapped[s:s + batch_size]])[MODEL]
                              for s in range(0, len(swapped), batch_size)])
    return fid_kid_of_arrays(outputs, np.stack(data.pixels))


FORMATS = {"psnr": ".2f", "ssim": ".3f", "edge_f": ".3f", "style_sw": ".2f", "closer": ".0%",
           "truth_psnr": ".2f", "fill_de": ".1f", "bg_de": ".1f", "shape_iou": ".3f"}


def columns(summary: dict) -> list[tuple[str, str]]:
    """The table's (kind, metric) columns: the ground-truth ones too when the summary has them."""
    truth = any(TRUTH[0] in kinds.get("swapped", {}) for kinds in summary.values())
    return [(k, m) for k in KINDS for m in COLUMNS[k]] + ([("swapped", m) for m in TRUTH] if truth else [])


def cells(kinds: dict, cols: list[tuple[str, str]]) -> list[str]:
    """One method's summary ({kind: {metric: value}}) as table cells ("-" where it has no value)."""
    values = [kinds.get(kind, {}).get(metric) for kind, metric in cols]
    return ["-" if v is None or math.isnan(v) else format(v, FORMATS[m]) for v, (_, m) in zip(values, cols)]


def format_summary(summary: dict) -> str:
    """The summary as a Markdown table: one row per method, own and swapped columns."""
    cols = columns(summary)
    return markdown_table(["", *(f"{k} {m}" for k, m in cols)], [[name, *cells(kinds, cols)]
                                                                 for name, kinds in summary.items()])


# --------------------------------------------------------------------------- pictures

def _tile(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() * 2 - 1


def _sketch_tile(data: HeldOut, i: int) -> torch.Tensor:
    grey = to_float(to_uint8_tensor(resize(load_image(data.sketch_files[i], "L"), data.size)))
    return grey[None].expand(-1, 3, -1, -1)


def matrix_picture(method: Method, data: HeldOut, out: Path, row: str, n: int = PICTURE_N) -> None:
    """Sketches down the side, exemplars across the top; the diagonal is the own style."""
    chosen = list(range(min(n, len(data.stems))))
    white = torch.ones(1, 3, data.size, data.size)
    tiles = [white] + [label(_tile(data.pixels[j]), "exemplar") for j in chosen]
    for i in chosen:
        tiles += [_sketch_tile(data, i), *(_tile(o) for o in method([i] * len(chosen), chosen)[row])]
    save_grid(torch.cat(tiles), out, nrow=1 + len(chosen))


def own_picture(method: Method, data: HeldOut, out: Path, row: str, n: int = OWN_N) -> None:
    """One held-out image per row: its sketch, the original, the AE output, the output (own style)."""
    chosen = list(range(min(n, len(data.stems))))
    drawn = method(chosen, chosen)
    tiles = []
    for b, i in enumerate(chosen):
        tiles += [_sketch_tile(data, i), _tile(data.pixels[i]), _tile(drawn[AE][b]), _tile(drawn[row][b])]
    save_grid(torch.cat(tiles), out, nrow=4)


# --------------------------------------------------------------------------- loading and command line

class _Passthrough(nn.Module):
    """Stands in for the refine generator when only an AE is scored: returns the AE output."""

    def forward(self, ae_image: torch.Tensor, style_vectors, noise=None) -> torch.Tensor:
        return ae_image


def load_model(path, device: str, sample_bn: str | None = None) -> tuple[SketchToImage, bool]:
    """(model, ae_only): a run folder, GAN checkpoint or exported model gives the whole model; an AE
    checkpoint, or a run folder without a GAN stage, gives its AE alone (scored as the "AE stage" row)."""
    trained = load_trained(path, kind=None)
    ae_only = trained.generator is None
    if ae_only:
        trained.generator = _Passthrough()
    return SketchToImage(trained, device, sample_bn), ae_only


def run(checkpoint, out="results/quality", images=None, sketches=None, train_images=None, swaps: int = 4,
        n: int = 0, device: str = "auto", batch_size: int = 25, seed: int = 0, sample_bn: str | None = None,
        progress: bool = True) -> dict:
    """The whole benchmark: load, score, write quality.json, matrix.png and own.png; returns the JSON object.
    Folders left out are the run's own: TEST_IMAGE_DIR, TEST_SKETCH_DIR and IMAGE_DIR of its config."""
    out = Path(out)
    check_writable(out, folder=True)
    model, ae_only = load_model(checkpoint, device, sample_bn)
    folders = {"images": images or model.config.get("TEST_IMAGE_DIR"),
               "sketches": sketches or model.config.get("TEST_SKETCH_DIR"),
               "train_images": train_images or model.config.get("IMAGE_DIR")}
    missing = [k for k, v in folders.items() if not v]
    if missing:
        raise DataError(f"{checkpoint}: its run names no {' or '.join(missing)} folder: give "
                        + " and ".join(f"--{k.replace('_', '-')}" for k in missing))
    data = load_held_out(folders["images"], folders["sketches"], model.image_size, n)
    drawn = model_method(model, data, ae_only, seed)
    row = AE if ae_only else MODEL
    mean = mean_image(folders["train_images"], data.size)
    result = evaluate([drawn, baseline_method(data, mean)], data, swaps, batch_size, progress)
    distribution = {"skipped": "an AE stage alone"} if ae_only else distribution_scores(drawn, data, swaps, batch_size)
    matrix_picture(drawn, data, out / "matrix.png", row)
    own_picture(drawn, data, out / "own.png", row)
    result = {"checkpoint": str(model.source), "iteration": model.iteration, **{k: str(v) for k, v in folders.items()},
              "held_out": len(data.stems), "swaps": min(swaps, len(data.stems) - 1), "size": data.size, "seed": seed,
              "sample_bn": None if ae_only else model.sample_bn, "ground_truth": data.scenes is not None,
              "distribution": distribution, **result}
    write_json(out / "quality.json", result)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder of train.py, or a GAN or AE checkpoint file")
    p.add_argument("--images", help="held-out images (default: the run's TEST_IMAGE_DIR)")
    p.add_argument("--sketches", help="their sketches, same file names (default: the run's TEST_SKETCH_DIR)")
    p.add_argument("--train-images", help="training images for the mean-image baseline (default: the run's IMAGE_DIR)")
    p.add_argument("--swaps", type=int, default=4, help="other exemplars per sketch (default 4)")
    p.add_argument("--n", type=int, default=0, help="held-out images to use (default 0: all)")
    p.add_argument("--out", default="results/quality", help="folder for quality.json and the pictures")
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
    result = run(args.checkpoint, args.out, args.images, args.sketches, args.train_images, args.swaps, args.n,
                 args.device, args.batch_size, args.seed, args.sample_bn, not args.quiet)
    print(f"{result['held_out']} held-out images x (own + {result['swaps']} swapped styles), {result['size']} px, "
          f"checkpoint {result['checkpoint']} (iteration {result['iteration']})")
    print(format_summary(result["summary"]))
    distribution = result["distribution"]
    print("KID/FID: " + (f"skipped: {distribution['skipped']}" if "skipped" in distribution else
                         ", ".join(f"{k} {v:.4g}" for k, v in distribution.items())))
    print(f"wrote {Path(args.out) / 'quality.json'}, matrix.png and own.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
