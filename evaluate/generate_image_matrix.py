"""A sketch x style matrix: sketches down the left side, style images across the top, results inside.
Files are chosen with --seed when a folder has more than asked: the same seed gives the same picture."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from errors import cli  # noqa: E402
from evaluate import as_rgb, blank, choose, image_files, model_arguments  # noqa: E402
from fileio import check_apart, save_grid  # noqa: E402
from inference import InferenceError, SketchToImage  # noqa: E402


def image_matrix(model: SketchToImage, sketches: list[Path], styles: list[Path], out: Path, n_sketches: int = 4,
                 n_styles: int = 4, seed: int = 0, batch_size: int = 16) -> tuple[int, int]:
    """Write the matrix PNG; returns (rows, columns) of results."""
    g = model.image_size
    chosen_sketches = choose(sketches, n_sketches, seed, lambda p: model.prepare_sketch(p), "sketch")
    chosen_styles = choose(styles, n_styles, seed + 1, lambda p: model.prepare_style(p), "style image")
    vectors = model.style_vectors(torch.cat([t for _, t in chosen_styles]))
    rows = [blank(g)] + [as_rgb(model.prepare_style(p, size=g)) for p, _ in chosen_styles]
    for path, sketch in chosen_sketches:
        rows.append(as_rgb(model.prepare_sketch(path, size=g)))
        rows.append(model.generate_batched(sketch, style_vectors=vectors, seed=seed, batch_size=batch_size))
    save_grid(torch.cat(rows), out, nrow=len(chosen_styles) + 1)
    return len(chosen_sketches), len(chosen_styles)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Sketches x styles: one picture, inputs on the margins.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder, GAN checkpoint or exported model; a folder of sketches and a folder of style images.
Outputs: one PNG (--out): the styles across the top, the sketches down the side, sketch i in style j inside.
Example:
    python evaluate/generate_image_matrix.py --checkpoint train_results/<run> --sketches data/demo/test/sketches \\
        --styles data/demo/test/images --n-sketches 4 --n-styles 5 --out matrix.png""")
    model_arguments(p)
    p.add_argument("--sketches", required=True, help="folder of sketches (or one sketch)")
    p.add_argument("--styles", required=True, help="folder of style images (or one)")
    p.add_argument("--n-sketches", type=int, default=4, help="rows (0: every sketch)")
    p.add_argument("--n-styles", type=int, default=4, help="columns (0: every style image)")
    p.add_argument("--out", default="matrix.png", help="output PNG")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if not out.suffix:
        out = out.with_suffix(".png")
    if out.suffix.lower() != ".png":
        raise InferenceError(f"--out {out}: the matrix is written as PNG: give a .png file name")
    sketches, styles = image_files(args.sketches, "sketch"), image_files(args.styles, "style")
    check_apart([out], [*sketches, *styles, args.sketches, args.styles])
    model = SketchToImage.from_pretrained(args.checkpoint, args.device)
    n_rows, n_cols = image_matrix(model, sketches, styles, out, args.n_sketches, args.n_styles, args.seed,
                                  args.batch_size)
    print(f"wrote {out}: {n_rows} sketch(es) x {n_cols} style(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
