"""Export a trained model as one slim safetensors file: only what inference needs.

    python export.py train_results/demo-20250101-120000 --out demo.safetensors
    python export.py RUN_OR_CKPT --out model.safetensors --overwrite

The file holds the AE networks (style encoder, content encoder, decoder) and the EMA refine
generator as tensors, and the architecture, the training config and the iteration as JSON
metadata; no pickle, so loading it cannot run code. It leaves out what only training needs (the
discriminator, the live generator, the optimizers, RNG states), so it is a fraction of a GAN
checkpoint's size. Load it with `SketchToImage.from_pretrained(path)`; inference.py, evaluate/,
benchmark.py and app.py take it wherever they take a run folder or a checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from errors import cli
from fileio import check_apart
from inference import InferenceError, SketchToImage


def export(source, out, overwrite: bool = False) -> tuple[SketchToImage, Path]:
    """Load `source` (run folder, GAN checkpoint or exported file) and write it to `out`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InferenceError(f"{out} exists: choose another --out, or pass --overwrite")
    if out.suffix != ".safetensors":
        raise InferenceError(f"--out {out}: name the file *.safetensors")
    model = SketchToImage.from_pretrained(source, device="cpu")
    check_apart([out], [model.source])
    return model, model.save_pretrained(out)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Export a trained model (AE + EMA generator) as one safetensors file.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder (its newest GAN checkpoint), a GAN checkpoint file, or an exported file.
Outputs: --out, a .safetensors file with the architecture as JSON metadata (no pickle, no D, no optimizers).
Example:
    python export.py train_results/demo-20261202-120000 --out demo.safetensors""")
    p.add_argument("source", help="run folder of train.py, a GAN checkpoint file, or an exported file")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    model, out = export(args.source, args.out, args.overwrite)
    size, full = out.stat().st_size, Path(model.source).stat().st_size
    print(f"wrote {out}: {model.preset}, {model.ae_size} px sketches -> {model.image_size} px images, "
          f"iteration {model.iteration}; {size / 2**20:.2f} MiB ({size / full:.0%} of {Path(model.source).name}, "
          f"{full / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
