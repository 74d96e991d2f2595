"""Style transfer: a content photo -> its line sketch (XDoG or a TOM checkpoint) -> an image in the
style of other photos. Each photo's grid: the styles on top; the photo, its sketch and the outputs below.
Files are chosen with --seed when a folder has more than asked: the same seed gives the same files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from errors import cli  # noqa: E402
from evaluate import as_rgb, blank, choose, image_files, model_arguments  # noqa: E402
from fileio import check_apart, save_grid, save_png  # noqa: E402
from inference import SketchToImage, open_image  # noqa: E402
from sketch_styletransfer.sketch import XDOG_DEFAULT, Sketcher, make_sketcher  # noqa: E402
from devices import resolve_device  # noqa: E402


def style_transfer(model: SketchToImage, photos: list[Path], styles: list[Path], sketcher: Sketcher, out: Path,
                   n: int = 4, n_styles: int = 4, seed: int = 0, batch_size: int = 16) -> list[Path]:
    """Write sketches, single images and one grid per content photo; returns the grid paths."""
    g = model.image_size
    chosen_styles = choose(styles, n_styles, seed + 1, lambda p: model.prepare_style(p), "style image")
    style_tiles = torch.cat([as_rgb(model.prepare_style(p, size=g)) for p, _ in chosen_styles])
    vectors = model.style_vectors(torch.cat([t for _, t in chosen_styles]))
    grids = []
    for photo_path, photo in choose(photos, n, seed, lambda p: open_image(p, "RGB"), "photo"):
        stem = photo_path.stem
        drawing = sketcher(photo)
        save_png(drawing, out / "sketches" / f"{stem}.png")
        sketch = model.prepare_sketch(drawing)                                     # (1, 1, S, S)
        images = model.generate_batched(sketch, style_vectors=vectors, seed=seed, batch_size=batch_size)
        for (style_path, _), image in zip(chosen_styles, images):
            save_png(image, out / "images" / f"{stem}__{style_path.stem}.png")
        rows = [blank(g), blank(g), style_tiles,
                as_rgb(model.prepare_style(photo, size=g)), as_rgb(model.prepare_sketch(drawing, size=g)), images]
        grid = out / f"{stem}_grid.png"
        save_grid(torch.cat(rows), grid, nrow=len(chosen_styles) + 2)
        grids.append(grid)
    return grids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Photo -> sketch -> image in the style of other photos.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder, GAN checkpoint or exported model; content photos; style photos; XDoG or a TOM checkpoint.
Outputs: per content photo P: <out>/sketches/P.png, <out>/images/P__<style>.png and <out>/P_grid.png.
Example:
    python evaluate/style_transfer.py --checkpoint train_results/<run> --photos A/ --styles B/ --out st \
        --sketcher xdog:bold""")
    model_arguments(p)
    p.add_argument("--photos", required=True, help="content photo, or a folder of them")
    p.add_argument("--styles", required=True, help="style image, or a folder of them")
    p.add_argument("--sketcher", default=f"xdog:{XDOG_DEFAULT}", help="xdog[:thin|medium|bold] or tom:CHECKPOINT")
    p.add_argument("--out", default="style_transfer", help="output folder")
    p.add_argument("--n", type=int, default=4, help="content photos (0: all)")
    p.add_argument("--n-styles", type=int, default=4, help="style images (0: all)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    photos, styles = image_files(args.photos, "photo"), image_files(args.styles, "style")
    check_apart([args.out], [args.photos, args.styles])
    device = resolve_device(args.device)
    model = SketchToImage.from_pretrained(args.checkpoint, device)
    sketcher = make_sketcher(args.sketcher, model.image_size, device)
    out = Path(args.out)
    grids = style_transfer(model, photos, styles, sketcher, out, args.n, args.n_styles, args.seed,
                           args.batch_size)
    print(f"wrote {len(grids)} grid(s) to {out}: " + ", ".join(p.name for p in grids))
    print(f"sketches in {out / 'sketches'}, single images in {out / 'images'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
