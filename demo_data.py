"""The built-in demo data set: 1-3 procedural shapes (content) in named palettes and textures (style).

A shape's fill follows from its kind, so `restyle(scene_i, scene_j)` is the exact ground truth of "sketch i
in the style of image j" (evaluate/quality.py). Each image has its exact line drawing and two XDoG sketches;
everything is a pure function of (seed, split, index): the same seed gives byte-identical PNGs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm import tqdm

from datasets import DataError
from errors import cli
from fileio import save_png, write_json
from sketch_styletransfer.xdog import BUILTIN_SETTINGS, make_sketch_folders

FORMAT = 2           # 2: fills follow the shape kind (1: fills drawn at random)
SUPERSAMPLE = 4          # shapes are rasterised at 4x and averaged down: antialiased edges
STROKE_WIDTH = 2.0       # sketch stroke width in pixels at 128 px (scales with the image size)
MIN_VISIBLE = 0.3        # a scene is redrawn if a shape shows less than this share of its area
RADIUS = {1: (0.26, 0.40), 2: (0.19, 0.32), 3: (0.15, 0.26)}  # shape radius range by shape count
SPLITS = {"train": 0, "test": 1}   # the split number enters the seed: disjoint random streams
XDOG_SETS = ("thin", "bold")       # the XDoG sketch sets ensure_demo_data adds
STEM = re.compile(r"^\d{5}\.png$")

# name: background, then three shades of one hue, darkest first (sRGB). Every fill differs from the background
# and the other fills in luma (every outline is an edge in a grey image); backgrounds differ (tests check both).
PALETTES = {
    "paper":   ((246, 240, 226), (72, 13, 13), (197, 36, 36), (230, 99, 99)),
    "sky":     ((200, 226, 250), (52, 25, 5), (143, 68, 12), (230, 113, 24)),
    "blossom": ((252, 214, 230), (6, 42, 39), (15, 115, 107), (65, 170, 162)),
    "meadow":  ((210, 238, 190), (47, 16, 63), (130, 43, 174), (177, 103, 214)),
    "sand":    ((238, 206, 140), (14, 31, 75), (37, 84, 206), (102, 138, 230)),
    "night":   ((18, 24, 72), (150, 120, 18), (218, 175, 26), (252, 227, 139)),
    "wine":    ((92, 14, 36), (41, 159, 103), (62, 230, 151), (185, 246, 217)),
    "forest":  ((12, 66, 36), (196, 86, 71), (251, 139, 123), (254, 213, 207)),
    "plum":    ((66, 20, 96), (29, 153, 167), (62, 215, 233), (185, 240, 247)),
    "coal":    ((44, 44, 44), (68, 128, 189), (116, 183, 251), (204, 229, 253)),
}
TEXTURES = ("flat", "gradient", "stripes", "dots", "noise")
# shape classes, in fill order: a shape's kind fixes which of the palette's fills it takes
SHAPE_CLASSES = (("circle", "ellipse", "ring", "blob"), ("triangle", "square", "rectangle"), ("star", "cross"))
SHAPES = tuple(kind for kinds in SHAPE_CLASSES for kind in kinds)
FILL_OF_KIND = {kind: fill for fill, kinds in enumerate(SHAPE_CLASSES) for kind in kinds}
POLYGON_SIDES = {"triangle": 3, "square": 4}


def luma(rgb) -> float:
    """Rec. 601 luma of an sRGB triple, in [0, 1] (PIL's "L" conversion)."""
    r, g, b = rgb
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255.0


def random_scene(rng: np.random.Generator) -> dict:
    """One image's labels: palette, texture and 1-3 shapes."""
    palette = str(rng.choice(list(PALETTES)))
    n = int(rng.integers(1, 4))
    radius = RADIUS[n]
    classes = rng.permutation(len(SHAPE_CLASSES))[:n]  # distinct classes: overlapping shapes differ in colour
    shapes = [_random_shape(rng, radius, str(rng.choice(SHAPE_CLASSES[c]))) for c in classes]
    return {"palette": palette, "texture": _random_texture(rng), "shapes": shapes}


def restyle(scene: dict, style: dict) -> dict:
    """`scene`'s shapes in `style`'s palette and texture: exactly sketch i drawn in the style of image j."""
    return {**scene, "palette": style["palette"], "texture": style["texture"]}


def _random_shape(rng: np.random.Generator, radius: tuple[float, float], kind: str) -> dict:
    shape = {"kind": kind, "cx": rng.uniform(0.22, 0.78), "cy": rng.uniform(0.22, 0.78),
             "r": rng.uniform(*radius), "rotation": rng.uniform(0, 360), "fill": FILL_OF_KIND[kind]}
    if kind in ("ellipse", "rectangle"):
        shape["aspect"] = rng.uniform(0.45, 0.75)
    elif kind == "star":
        shape["points"] = int(rng.integers(5, 7))
        shape["inner"] = rng.uniform(0.42, 0.55)
    elif kind == "cross":
        shape["arm"] = rng.uniform(0.3, 0.42)
    elif kind == "ring":
        shape["inner"] = rng.uniform(0.5, 0.65)
    elif kind == "blob":
        shape["harmonics"] = [[int(k), rng.uniform(0.06, 0.14), rng.uniform(0, 2 * math.pi)]
                              for k in rng.choice([2, 3, 4], size=2, replace=False)]
    return _rounded(shape)


def _random_texture(rng: np.random.Generator) -> dict:
    kind = str(rng.choice(TEXTURES))
    texture = {"kind": kind}
    if kind == "gradient":
        texture.update(angle=rng.uniform(0, 360), amplitude=rng.uniform(0.04, 0.07))
    elif kind == "stripes":
        texture.update(angle=rng.uniform(0, 180), period=rng.uniform(10, 18), amplitude=rng.uniform(0.02, 0.035),
                       phase=rng.uniform(0, 2 * math.pi))
    elif kind == "dots":
        texture.update(spacing=rng.uniform(11, 17), amplitude=rng.uniform(0.035, 0.05) * rng.choice([-1, 1]))
    elif kind == "noise":
        texture.update(amplitude=rng.uniform(0.006, 0.01), seed=int(rng.integers(2 ** 31)))
    return _rounded(texture)


def _rounded(d: dict) -> dict:
    """Floats to 4 decimals, so an image re-rendered from its manifest entry is the same image."""
    def r(v):
        if isinstance(v, (float, np.floating)):
            return round(float(v), 4)
        if isinstance(v, list):
            return [r(x) for x in v]
        return v
    return {k: r(v) for k, v in d.items()}


def outline(shape: dict, n_curve: int = 192) -> list[np.ndarray]:
    """A shape's boundary as closed polygons ((N, 2), fractions of the image side); a ring has two."""
    kind, r = shape["kind"], shape["r"]
    theta = np.linspace(0, 2 * math.pi, n_curve, endpoint=False)
    if kind == "circle":
        loops = [(np.full_like(theta, r), theta)]
    elif kind == "ellipse":
        b = r * shape["aspect"]
        loops = [(r * b / np.hypot(b * np.cos(theta), r * np.sin(theta)), theta)]
    elif kind == "rectangle":
        w, h = r, r * shape["aspect"]
        corners = np.array([[w, h], [-w, h], [-w, -h], [w, -h]])
        loops = [(np.hypot(*corners.T), np.arctan2(corners[:, 1], corners[:, 0]))]
    elif kind in POLYGON_SIDES:
        n = POLYGON_SIDES[kind]
        loops = [(np.full(n, r), np.arange(n) * 2 * math.pi / n)]
    elif kind == "star":
        n = 2 * shape["points"]
        loops = [(np.tile([r, r * shape["inner"]], n // 2), np.arange(n) * 2 * math.pi / n)]
    elif kind == "cross":  # a plus sign: arms of half-width arm * r
        a = r * shape["arm"]
        corners = np.array([[r, a], [a, a], [a, r], [-a, r], [-a, a], [-r, a],
                            [-r, -a], [-a, -a], [-a, -r], [a, -r], [a, -a], [r, -a]])
        loops = [(np.hypot(*corners.T), np.arctan2(corners[:, 1], corners[:, 0]))]
    elif kind == "ring":
        loops = [(np.full_like(theta, r), theta), (np.full_like(theta, r * shape["inner"]), theta)]
    elif kind == "blob":
        wobble = sum(amp * np.sin(k * theta + phase) for k, amp, phase in shape["harmonics"])
        loops = [(r * (1 + wobble), theta)]
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    a = math.radians(shape["rotation"])
    return [np.stack([shape["cx"] + rho * np.cos(t + a), shape["cy"] + rho * np.sin(t + a)], axis=1)
            for rho, t in loops]


def label_map(shapes: list[dict], size: int) -> np.ndarray:
    """(size, size) uint8 map: 0 background, i the i-th shape; later shapes cover earlier ones."""
    labels = Image.new("L", (size, size), 0)
    for i, shape in enumerate(shapes, start=1):
        outer, *holes = outline(shape)
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        draw.polygon([tuple(p) for p in outer * size], fill=255)
        for hole in holes:  # a ring's hole shows whatever lies below it
            draw.polygon([tuple(p) for p in hole * size], fill=0)
        labels.paste(i, mask=mask)
    return np.asarray(labels)


def visible_fractions(shapes: list[dict], size: int) -> list[float]:
    """Share of each shape's own area that no later shape covers (at `size` px)."""
    labels = label_map(shapes, size)
    return [float((labels == i).sum()) / max(1, int((label_map([s], size) > 0).sum()))
            for i, s in enumerate(shapes, start=1)]


def _texture(texture: dict, size: int) -> np.ndarray:
    """(size, size) additive luminance field without strong edges."""
    kind = texture["kind"]
    if kind == "flat":
        return np.zeros((size, size))
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    scale = size / 128.0  # texture periods are given in pixels at 128 px
    if kind == "gradient":
        a = math.radians(texture["angle"])
        ramp = ((xs - size / 2) * math.cos(a) + (ys - size / 2) * math.sin(a)) / (size / 2)
        return texture["amplitude"] * np.clip(ramp, -1, 1)
    if kind == "stripes":
        a = math.radians(texture["angle"])
        along = (xs * math.cos(a) + ys * math.sin(a)) / (texture["period"] * scale)
        return texture["amplitude"] * np.sin(2 * math.pi * along + texture["phase"])
    if kind == "dots":
        spacing = texture["spacing"] * scale
        du = np.mod(xs, spacing) - spacing / 2
        dv = np.mod(ys, spacing) - spacing / 2
        return texture["amplitude"] * np.exp(-(du * du + dv * dv) / (2 * (0.18 * spacing) ** 2))
    if kind == "noise":
        noise = np.random.default_rng(texture["seed"]).standard_normal((size, size))
        noise = ndimage.gaussian_filter(noise, 1.5 * scale, mode="wrap")
        return texture["amplitude"] * noise / max(noise.std(), 1e-8)
    raise ValueError(f"unknown texture kind {kind!r}")


def render(scene: dict, size: int = 128) -> tuple[Image.Image, Image.Image]:
    """(RGB image, "L" line drawing of the visible outlines) of a scene."""
    labels = label_map(scene["shapes"], size * SUPERSAMPLE)
    bg, *fills = PALETTES[scene["palette"]]
    colours = np.array([bg] + [fills[s["fill"]] for s in scene["shapes"]], dtype=np.float64) / 255.0
    coverage = np.stack([_coverage(labels == k, size) for k in range(len(colours))], axis=-1)  # (H, W, K)
    coverage /= coverage.sum(axis=-1, keepdims=True)  # exact partition of unity despite 8-bit rounding
    rgb = coverage @ colours + _texture(scene["texture"], size)[..., None]
    image = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), mode="RGB")
    return image, _line_drawing(labels, size)


def _coverage(mask: np.ndarray, size: int) -> np.ndarray:
    """Share of each output pixel that a supersampled boolean mask covers, in [0, 1]."""
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize((size, size), Image.BOX)
    return np.asarray(img, dtype=np.float64) / 255.0


def _line_drawing(labels: np.ndarray, size: int) -> Image.Image:
    """Strokes along every change of the label map, antialiased, black on white."""
    edge = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    # the marked band is 2 sub-pixels wide: grow it by a disk to the stroke width (+0.2: a rounder
    # discrete disk), then average down
    stroke = _dilate_disk(edge, STROKE_WIDTH * size / 128.0 * SUPERSAMPLE / 2 - 1 + 0.2)
    return Image.fromarray(255 - np.round(_coverage(stroke, size) * 255).astype(np.uint8), mode="L")


def _dilate_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation by a disk, as a union of rectangles (separable 1-D maximum filters)."""
    grown = np.zeros_like(mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return grown
    reach = int(radius)
    box = (slice(max(rows[0] - reach, 0), rows[-1] + reach + 1), slice(max(cols[0] - reach, 0), cols[-1] + reach + 1))
    m = mask[box].view(np.uint8)  # only the area around the outlines: most images are mostly empty
    # half-width -> the tallest half-height of a disk row that wide
    tallest = {int(math.sqrt(radius * radius - h * h)): h for h in range(reach + 1)}
    for w, h in tallest.items():
        wide = ndimage.maximum_filter1d(m, 2 * w + 1, axis=1)
        grown[box] |= ndimage.maximum_filter1d(wide, 2 * h + 1, axis=0).view(bool)
    return grown


def scene_for(seed: int, split: str, index: int) -> dict:
    """Image `index`'s scene: its own random stream, redrawn until every shape shows."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    for _ in range(20):
        scene = random_scene(rng)
        if min(visible_fractions(scene["shapes"], 128)) >= MIN_VISIBLE:  # 128 px at any size: same scenes
            return scene
    return scene  # practically unreachable; a mostly hidden shape is still a valid image


def make_demo_data(root="data/demo", n_train: int = 2000, n_test: int = 200, size: int = 128, seed: int = 0,
                   progress: bool = True) -> Path:
    """Write the demo images, their exact line drawings and manifest.json (written last: the "done" mark)."""
    root = Path(root)
    (root / "manifest.json").unlink(missing_ok=True)  # until it is rewritten, the set counts as incomplete
    labels: dict[str, dict[str, dict]] = {}
    bar = tqdm(total=n_train + n_test, desc="demo data", disable=not progress, dynamic_ncols=True)
    for split, n in {"train": n_train, "test": n_test}.items():
        split_dir = root / split
        _remove_stale(split_dir, n)
        labels[split] = {}
        for i in range(n):
            scene = scene_for(seed, split, i)
            image, sketch = render(scene, size)
            save_png(image, split_dir / "images" / f"{i:05d}.png", fsync=False)
            save_png(sketch, split_dir / "sketches" / f"{i:05d}.png", fsync=False)
            labels[split][f"{i:05d}"] = scene
            bar.update()
    bar.close()
    os.sync()  # every PNG is on disk before the manifest marks the set complete
    write_json(root / "manifest.json", {
        "format": FORMAT, "seed": seed, "size": size, "n_train": n_train, "n_test": n_test,
        "supersample": SUPERSAMPLE, "stroke_width": STROKE_WIDTH,
        "palettes": {k: [list(c) for c in v] for k, v in PALETTES.items()},
        "textures": list(TEXTURES), "shapes": list(SHAPES), "images": labels})
    return root


def _remove_stale(split_dir: Path, n: int) -> None:
    """Delete numbered PNGs a previous larger set left (and old XDoG ones): they would pair wrongly."""
    if not split_dir.is_dir():
        return
    for folder in split_dir.iterdir():
        if not folder.is_dir():
            continue
        derived = folder.name.startswith("xdog_")  # made from the old images: remade by ensure_demo_data
        for path in folder.iterdir():
            if STEM.match(path.name) and (derived or int(path.stem) >= n):
                path.unlink()


def _read_manifest(root: Path) -> dict | None:
    """The manifest of a finished set made by this version of the code, else None."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    keys = ("n_train", "n_test", "size", "seed", "images")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or any(k not in manifest for k in keys):
        return None
    return manifest


def _missing(root: Path, manifest: dict, folders) -> dict[str, list[str]]:
    """split/folder -> the stems the manifest promises but the folder lacks."""
    missing = {}
    for split in SPLITS:
        stems = set(manifest["images"][split])
        for folder in folders:
            d = root / split / folder
            have = {p.stem for p in d.iterdir() if STEM.match(p.name)} if d.is_dir() else set()
            if stems - have:
                missing[f"{split}/{folder}"] = sorted(stems - have)
    return missing


def ensure_demo_data(root="data/demo", n_train: int = 2000, n_test: int = 200, size: int = 128, seed: int = 0,
                     progress: bool = True) -> dict:
    """Make the demo data and its XDoG sketch sets if missing or incomplete, saying so in one line. A finished
    set (with its manifest) is repaired with its own parameters; the arguments only shape a new one."""
    root = Path(root)
    manifest = _read_manifest(root)
    if manifest is not None:
        n_train, n_test, size, seed = (manifest[k] for k in ("n_train", "n_test", "size", "seed"))
    remake = manifest is None or bool(_missing(root, manifest, ("images", "sketches")))
    if remake:
        print(f"demo data: making {n_train} train + {n_test} test images ({size} px) and their sketches in {root}")
        make_demo_data(root, n_train, n_test, size, seed, progress)
        manifest = _read_manifest(root)
    todo = _missing(root, manifest, [f"xdog_{name}" for name in XDOG_SETS])
    if not remake:
        print(f"demo data: adding missing XDoG sketches ({', '.join(todo)}) in {root}" if todo
              else f"demo data: complete in {root}")
    settings = {name: BUILTIN_SETTINGS[name] for name in XDOG_SETS}
    written = sum(make_sketch_folders(root / split / "images", root / split, settings, progress=progress)["written"]
                  for split in sorted({key.split("/")[0] for key in todo}))
    return {"root": str(root), "made_images": remake, "xdog_written": written}


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Make the built-in demo data set (images, exact sketches, XDoG sketches).",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: none (procedural, a pure function of --seed).
Outputs: <root>/{train,test}/{images,sketches,xdog_thin,xdog_bold}/00000.png ... and <root>/manifest.json.
Example:
    python demo_data.py --root data/demo_small --n-train 500 --n-test 50""")
    p.add_argument("--root", default="data/demo", help="output folder (default data/demo)")
    p.add_argument("--n-train", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--n-test", type=int, default=200, help="held-out images (default 200)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="make the set again even if a complete one is there")
    args = p.parse_args(argv)
    if not (0 <= args.n_train < 100_000 and 0 <= args.n_test < 100_000) or args.size < 16:
        p.error("counts must lie in 0..99999 (5-digit file names) and --size be at least 16")
    root = Path(args.root)
    wanted = {"n_train": args.n_train, "n_test": args.n_test, "size": args.size, "seed": args.seed}
    if args.overwrite:
        (root / "manifest.json").unlink(missing_ok=True)  # no finished set: ensure_demo_data makes it anew
    elif (manifest := _read_manifest(root)) is not None:
        differs = {k: manifest.get(k) for k, v in wanted.items() if manifest.get(k) != v}
        if differs:
            raise DataError(f"{root} holds a demo set made with {differs}; add --overwrite to replace it")
    ensure_demo_data(root, **wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
