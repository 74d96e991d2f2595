"""Style mixing: style vectors of two to four exemplars (A, B, C, D) combined per scale.

A recipe says where each scale's vector (coarse: 8 px maps, mid: 16, fine: 32) comes from: one exemplar
or the mean of several ("C+D"); "collage" is the style of the 2x2 collage of the exemplars (the reference's
mixing). In the grid each recipe's row starts with a tile of its sources: coarse, mid, fine as stripes.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from errors import cli  # noqa: E402
from evaluate import as_rgb, blank, choose, image_files, label, slug  # noqa: E402
from datasets import DataError  # noqa: E402
from fileio import check_apart, save_grid, save_png  # noqa: E402
from inference import SCALES, InferenceError, SketchToImage  # noqa: E402

LETTERS = "ABCD"


@dataclass(frozen=True)
class Recipe:
    """Where each scale's style vector comes from: letters of exemplars (several: their mean)."""
    name: str
    coarse: tuple[str, ...] = ()
    mid: tuple[str, ...] = ()
    fine: tuple[str, ...] = ()
    collage: bool = False  # the style of the 2x2 collage of all exemplars instead

    def weights(self, n_styles: int) -> dict[str, list[int]]:
        """SketchToImage.mix_styles's weights: per scale, how often each exemplar is named."""
        return {scale: [getattr(self, scale).count(x) for x in LETTERS[:n_styles]] for scale in SCALES}


def parse_recipe(spec: str, n_styles: int) -> Recipe:
    """"coarse=A,mid=B,fine=C+D" (a scale left out: A); "mean=A+B" (every scale); "collage"; "A"."""
    letters = LETTERS[:n_styles]
    spec = spec.strip()
    if spec == "collage":
        return Recipe("collage", collage=True)
    if spec in letters:
        return _pure(spec)
    scales = {s: ("A",) for s in SCALES}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        sources = tuple(v.strip() for v in value.split("+") if v.strip())
        if not sep or key not in (*SCALES, "mean") or not sources or any(s not in letters for s in sources):
            raise InferenceError(f"--recipe {spec!r}: expected scale=letters pairs such as coarse=A,mid=B,fine=C+D "
                                 f"(scales: coarse, mid, fine, or mean for all; letters: {', '.join(letters)})")
        for scale in (SCALES if key == "mean" else (key,)):
            scales[scale] = sources
    return Recipe(spec.replace(" ", ""), **scales)


def _pure(letter: str) -> Recipe:
    return Recipe(letter, (letter,), (letter,), (letter,))


def builtin_recipes(n_styles: int) -> list[Recipe]:
    letters = LETTERS[:n_styles]
    recipes = [_pure(x) for x in letters]
    recipes += [Recipe("coarse A, mid+fine B", ("A",), ("B",), ("B",)),
                Recipe("coarse B, mid+fine A", ("B",), ("A",), ("A",)),
                Recipe("coarse+mid A, fine B", ("A",), ("A",), ("B",)),
                *(Recipe(f"coarse A, mid B, fine {x}", ("A",), ("B",), (x,)) for x in letters[2:])]
    if n_styles == 4:
        recipes += [Recipe("coarse A, mid B, fine C+D", ("A",), ("B",), ("C", "D")), Recipe("collage", collage=True)]
    everything = tuple(letters)
    recipes.append(Recipe("mean " + "+".join(letters), everything, everything, everything))
    return recipes


def collage(styles: torch.Tensor) -> torch.Tensor:
    """(K, 3, S, S) exemplars -> (1, 3, S, S): 2 side by side, 3 or 4 as a 2x2 (the 4th repeats A)."""
    k, _, s, _ = styles.shape
    if k == 2:
        big = torch.cat([styles[0], styles[1]], dim=2)
    else:
        tiles = [styles[i % k] for i in range(4)]
        big = torch.cat([torch.cat(tiles[:2], dim=2), torch.cat(tiles[2:], dim=2)], dim=1)
    return F.interpolate(big[None], size=(s, s), mode="bilinear", align_corners=False, antialias=True)


def recipe_tile(recipe: Recipe, tiles: torch.Tensor) -> torch.Tensor:
    """A (1, 3, G, G) picture of the recipe: coarse, mid, fine sources as stripes top to bottom."""
    g = tiles.shape[-1]
    if recipe.collage:
        return label(collage(tiles), "collage")
    if len({recipe.coarse, recipe.mid, recipe.fine}) == 1 and len(recipe.coarse) == 1:
        return label(tiles[LETTERS.index(recipe.coarse[0])][None], recipe.coarse[0])
    tile = blank(g)
    bounds = [round(i * g / 3) for i in range(4)]
    for i, scale in enumerate(SCALES):
        sources = getattr(recipe, scale)
        top, bottom = bounds[i], bounds[i + 1]
        cuts = [round(j * g / len(sources)) for j in range(len(sources) + 1)]
        for j, x in enumerate(sources):  # several sources side by side within the stripe
            tile[..., top:bottom, cuts[j]:cuts[j + 1]] = tiles[LETTERS.index(x), :, top:bottom, cuts[j]:cuts[j + 1]]
        tile = label(tile, f"{scale} {'+'.join(sources)}", top)
    return tile


def generate_mix(model: SketchToImage, sketches: list[Path], style_files: list[Path], out: Path,
                 recipes: list[Recipe], n_sketches: int = 4, seed: int = 0) -> Path:
    """Write the mixing grid and the single images; returns the grid's path."""
    g = model.image_size
    try:
        styles = torch.cat([model.prepare_style(p) for p in style_files])
        tiles = torch.cat([as_rgb(model.prepare_style(p, size=g)) for p in style_files])
    except DataError as e:
        raise InferenceError(f"style exemplar: {e}") from None
    vectors = model.style_vectors(styles)
    chosen = choose(sketches, n_sketches, seed, lambda p: model.prepare_sketch(p), "sketch")
    sketch_batch = torch.cat([t for _, t in chosen])
    rows = [blank(g)] + [as_rgb(model.prepare_sketch(p, size=g)) for p, _ in chosen]
    for recipe in recipes:
        mixed = (model.style_vectors(collage(styles)) if recipe.collage
                 else model.mix_styles(vectors, recipe.weights(len(style_files))))
        images = model.generate(sketch_batch, style_vectors=mixed, seed=seed).cpu()
        for (path, _), image in zip(chosen, images):
            save_png(image, out / "images" / f"{path.stem}__{slug(recipe.name)}.png")
        rows += [recipe_tile(recipe, tiles), images]
    grid = out / "mix_grid.png"
    save_grid(torch.cat(rows), grid, nrow=len(chosen) + 1)
    return grid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Style mixing: style vectors of 2-4 exemplars combined per scale.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder, GAN checkpoint or exported model; a sketch (or a folder of them); 2 to 4 style images.
Outputs: <out>/mix_grid.png (one row per recipe) and <out>/images/<sketch>__<recipe>.png.
Example:
    python evaluate/generate_mix.py --checkpoint train_results/<run> --sketch s.png --styles a.jpg b.jpg --out mix""")
    p.add_argument("--checkpoint", required=True,
                   help="run folder of train.py, a GAN checkpoint file, or a .safetensors file from export.py")
    p.add_argument("--sketch", required=True, help="a sketch, or a folder of sketches")
    p.add_argument("--styles", required=True, nargs="+", help="2 to 4 style images: A B [C [D]]")
    p.add_argument("--recipe", action="append", default=[],
                   help="coarse=A,mid=B,fine=C+D | mean=A+B | collage | A (repeatable; default: built-in list)")
    p.add_argument("--out", default="mix", help="output folder")
    p.add_argument("--n-sketches", type=int, default=4, help="sketches from a folder (0: all)")
    p.add_argument("--seed", type=int, default=0, help="picks the sketches and the noise")
    p.add_argument("--device", default="auto")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 2 <= len(args.styles) <= 4:
        raise InferenceError(f"--styles: give 2 to 4 style images, got {len(args.styles)}")
    style_files = [Path(s) for s in args.styles]
    for s in style_files:
        if not s.is_file():
            raise DataError(f"style image not found: {s}")
    recipes = [parse_recipe(r, len(style_files)) for r in args.recipe] or builtin_recipes(len(style_files))
    sketches = image_files(args.sketch, "sketch")
    out = Path(args.out)
    check_apart([out / "mix_grid.png", *(out / "images" / f"{p.stem}__{slug(r.name)}.png" for p in sketches
                                         for r in recipes)], [args.sketch, *style_files])
    model = SketchToImage.from_pretrained(args.checkpoint, args.device)
    grid = generate_mix(model, sketches, style_files, out, recipes, args.n_sketches, args.seed)
    for letter, path in zip(LETTERS, style_files):
        print(f"{letter} = {path}")
    print("rows: " + "; ".join(r.name for r in recipes))
    print(f"wrote {grid} and single images in {out / 'images'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
