"""Export a trained model as one slim safetensors file: only what inference needs.

    python export.py train_results/demo-20250101-120000 --out demo.safetensors
    python export.py RUN_OR_CKPT --out model.safetensors --overwrite

The file holds the AE networks (style encoder, content encoder, decoder) and the EMA refine
generator as tensors, and the architecture, the training config and the iteration as JSON
metadata; no pickle, so loading it cannot run code. It leaves out what only training needs (the
discriminator, the live generator, the optimizers, RNG states), so it is a fraction of a GAN
checkpoint's size. Load it with `SketchToImage.from_pretrained(path)`; inference.py, evaluate/,
benchmark.py and app.py take it wherever they take a run folder or a checkpoint. Its model card,
<name>.md beside it, says what it learnt from (data and sketch folders, the data's licence when a
source.json or prepare.json above the training images records one), its sizes and iterations, and
how to use it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from errors import cli
from fileio import check_apart, write_text
from inference import InferenceError, SketchToImage


def export(source, out, overwrite: bool = False) -> tuple[SketchToImage, Path]:
    """Load `source` (run folder, GAN checkpoint or exported file) and write it to `out`, its card beside it."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InferenceError(f"--out {out}: name the file *.safetensors")
    for path in (out, out.with_suffix(".md")):
        if path.exists() and not overwrite:
            raise InferenceError(f"{path} exists: choose another --out, or pass --overwrite")
    model = SketchToImage.from_pretrained(source, device="cpu")
    check_apart([out, out.with_suffix(".md")], [model.source])
    model.save_pretrained(out)
    write_text(out.with_suffix(".md"), model_card(model, out))
    return model, out


def model_card(model: SketchToImage, out: Path) -> str:
    """The Markdown card beside an exported file: what the model learnt from, and how to use it."""
    c = model.config
    return "\n".join([
        f"# {out.stem}", "", "A sketch-to-image model (Self-Supervised Sketch-to-Image Synthesis, AAAI 2021), "
        f"exported by export.py from `{model.source}`.", "",
        f"- preset: {model.preset}, refine generator: {model.arch.get('generator')}, NFC {model.nfc}",
        f"- sizes: sketches and exemplars read at {model.ae_size} px, images made at {model.image_size} px",
        f"- iterations: AE stage {c.get('ITERATION_AE', '?')}, GAN stage {model.iteration} of "
        f"{c.get('ITERATION_GAN', '?')}",
        f"- training images: {c.get('IMAGE_DIR') or 'unknown'}",
        f"- sketch folders: {', '.join(c.get('SKETCH_DIRS') or ()) or 'unknown'}",
        f"- held-out images and sketches: {c.get('TEST_IMAGE_DIR') or 'none'}, {c.get('TEST_SKETCH_DIR') or 'none'}",
        f"- data licence: {data_licence(c.get('IMAGE_DIR'))}", "", "## Use", "", "```",
        f"python inference.py --checkpoint {out.name} --sketch SKETCH --style EXEMPLAR --out results",
        f"python app.py --checkpoint {out.name}", "```", "",
        f"From Python: `SketchToImage.from_pretrained(\"{out.name}\").translate(sketch, exemplar)` (inference.py).", ""])


def data_licence(image_dir) -> str:
    """The licence ("licence" or "license") that a source.json or prepare.json in a parent folder of the
    training images records, naming that file; else "unknown"."""
    for folder in Path(image_dir).parents if image_dir else ():
        for record in (folder / "source.json", folder / "prepare.json"):
            try:
                found = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            licence = (found.get("licence") or found.get("license")) if isinstance(found, dict) else None
            if isinstance(licence, str) and licence.strip():
                return f"{licence.strip()} (as {record} records)"
    return "unknown"


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Export a trained model (AE + EMA generator) as one safetensors file.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder (its newest GAN checkpoint), a GAN checkpoint file, or an exported file.
Outputs: --out, a .safetensors file with the architecture as JSON metadata (no pickle, no D, no optimizers),
and its model card beside it, <name>.md (data, sizes, iterations, data licence, how to use it).
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
          f"{full / 2**20:.2f} MiB); its model card: {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
