"""Export a trained model as one slim safetensors file: only what inference needs.

The file holds the AE networks and the EMA refine generator, with the architecture, config and iteration
as JSON metadata (no pickle); it leaves out the discriminator, live generator, optimizers and RNG states.
A model card, <name>.md, goes beside it. --reference converts a GAN checkpoint of the reference code
(<run>/models/<epoch>.pth): keys renamed (REFERENCE_KEYS), EMA weights taken, sizes read from the tensors.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from errors import cli
from fileio import CheckpointError, check_apart, write_text
from inference import InferenceError, SketchToImage
from checkpoints import Trained, build_trained
from models import AE_NETWORKS


def export(source, out, overwrite: bool = False, reference: bool = False) -> tuple[SketchToImage, Path]:
    """Load `source` (with `reference`: a reference GAN checkpoint) and write it to `out`, its card beside it."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InferenceError(f"--out {out}: name the file *.safetensors")
    for path in (out, out.with_suffix(".md")):
        if path.exists() and not overwrite:
            raise InferenceError(f"{path} exists: choose another --out, or pass --overwrite")
    model = SketchToImage(from_reference(source)) if reference else SketchToImage.from_pretrained(source, "cpu")
    check_apart([out, out.with_suffix(".md")], [model.source])
    model.save_pretrained(out)
    write_text(out.with_suffix(".md"), model_card(model, out))
    return model, out


# ------------------------------------------------------------------------------------ reference checkpoints
# The reference code's key names -> ours, per network: the first (pattern, replacement) that matches a key
# renames it; a replacement of None drops the key (the instance classifier; the "shoe" generator's unused
# style layers). Then _SN renames the spectral norm's tensors.
_SN = [(r"\.weight_orig$", ".parametrizations.weight.original"), (r"\.weight_u$", ".parametrizations.weight.0._u"),
       (r"\.weight_v$", ".parametrizations.weight.0._v")]  # torch's old spectral_norm -> parametrizations


def _trunk(p: str) -> list:  # stems at 512 px: conv, LeakyReLU, (conv, BN, LeakyReLU) x 2; then three stages
    return [(rf"^{p}_256\.0\.", "trunk.stem.0."), (rf"^{p}_128\.(\d)\.", lambda m: f"trunk.stem.{2 + int(m[1])}."),
            (rf"^{p}_64\.(\d)\.", lambda m: f"trunk.stem.{5 + int(m[1])}."), (rf"^{p}_32\.", "trunk.stage32.0."),
            (rf"^{p}_16\.(\d)\.", lambda m: f"trunk.stage16.0.{int(m[1]) - 1}."),
            (rf"^{p}_8\.(\d)\.", lambda m: f"trunk.stage8.{int(m[1]) - 1}.")]


REFERENCE_KEYS = {
    "style_encoder": [*_trunk("sf"), (r"^sfv_32\.", "to_vectors.0."), (r"^sfv_16\.", "to_vectors.1."),
                      (r"^sfv_8\.", "to_vectors.2."), (r"^final_cls\.", None)],
    "content_encoder": _trunk("cf"),
    "decoder": [(r"^base_feat$", "const"), (r"^feat_8_1\.", "block_8_in."), (r"^feat_8_2\.", "block_8_out."),
                (r"^feat_(16|32|64)\.", r"block_\1."),
                (r"^feat_(128|256|512)\.", lambda m: f"up_blocks.{(int(m[1]) // 128).bit_length() - 1}."),
                (r"^style_(64|128|256)\.", r"gates.\1.mlp.")],
    "art": [(r"^from_noise_32\.([123])\.", r"from_noise.0.\1."),
            (r"^from_noise_32\.(\d)\.", lambda m: f"from_noise.{int(m[1]) - 3}."),
            (r"^from_style\.([123])\.", r"from_style.0.\1."), (r"^from_style\.4\.", "from_style.1."),
            (r"^encode_(\d+)\.", r"encoder.\1."), (r"^decode_(\d+)\.", r"decoder.\1."),
            (r"^style_(\d+)\.", r"gates.\1.mlp.")],
    "shoe": [(r"^(from_style|style_\d+)\.|^bs_\d$", None)],  # then the art rules
    "face": [(r"^encode_(\d)\.", lambda m: f"encoder.{512 >> int(m[1])}."),
             (r"^from_style_32\.([012])\.", lambda m: f"from_style_32.0.{int(m[1]) + 1}."),
             (r"^from_style_32\.(\d)\.", lambda m: f"from_style_32.{int(m[1]) - 2}."),
             (r"^decode_(\d+)\.", r"decoder.\1."),
             (r"^style_blocks\.(\d)\.", lambda m: f"gates.{64 << int(m[1])}.mlp."),
             (r"^final\.", "to_rgb.")]}


def reference_state_dict(state: dict, net: str) -> dict:
    """A state dict of the reference's network `net` (a key of REFERENCE_KEYS) with our key names."""
    rules = REFERENCE_KEYS[net] + (REFERENCE_KEYS["art"] if net == "shoe" else [])
    out = {}
    for key, value in state.items():
        if key.endswith(("weight_u", "weight_v")) and state[key[:-2] + "_orig"].ndim == 1:
            continue  # ours divides a 1-D weight (a BatchNorm gain) by its norm itself: no power-iteration vectors
        pattern, replacement = next(((p, r) for p, r in rules if re.search(p, key)), ("^$", ""))
        if replacement is None:
            continue
        key = re.sub(pattern, replacement, key)
        for pattern, replacement in _SN:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def from_reference(path) -> Trained:
    """The AE and the EMA generator of a reference GAN checkpoint ('ae', 'ig', 'ig_ema')."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - missing, not torch, pickled objects: one line
        raise CheckpointError(f"{path}: not a readable reference checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not {"ae", "ig", "ig_ema"} <= ckpt.keys():
        raise CheckpointError(f"{path}: not a reference GAN checkpoint (it needs 'ae', 'ig' and 'ig_ema' entries)")
    ae, ig = ({k.removeprefix("module."): v for k, v in ckpt[n].items()} for n in ("ae", "ig"))  # DataParallel
    buffers = ("running_mean", "running_var", "num_batches_tracked", "weight_u", "weight_v")
    params = [k for k in ig if not k.endswith(buffers)]
    if len(params) != len(ckpt["ig_ema"]):
        raise CheckpointError(f"{path}: 'ig_ema' holds {len(ckpt['ig_ema'])} tensors for {len(params)} parameters")
    ig.update(zip(params, ckpt["ig_ema"]))  # the EMA weights (a list, in parameter order); buffers are shared
    generator = "face" if "style_blocks.0.0.weight" in ig else "shoe" if "bs_0" in ig else "art"
    nets = {net: reference_state_dict({k.removeprefix(net + "."): v for k, v in ae.items() if k.startswith(net + ".")},
                                      net) for net in AE_NETWORKS}
    nets["generator"] = reference_state_dict(ig, generator)
    arch = {"preset": generator, "generator": generator, "nfc": int(ae["decoder.base_feat"].shape[1]) // 8,
            "im_size_ae": 512, "im_size_gan": 1024 if "decode_1024.1.weight_orig" in ig else 512, "im_size_d": 512}
    return build_trained(arch, nets, {"DATA_NAME": generator}, None, Path(path))


def model_card(model: SketchToImage, out: Path) -> str:
    """The Markdown card beside an exported file: what the model learnt from, and how to use it."""
    c = model.config
    return "\n".join([
        f"# {out.stem}", "", "A sketch-to-image model (Self-Supervised Sketch-to-Image Synthesis, AAAI 2021), "
        f"exported by export.py from `{model.source}`.", "",
        f"- preset: {model.preset}, refine generator: {model.arch.get('generator')}, NFC {model.nfc}",
        f"- sizes: sketches and exemplars read at {model.ae_size} px, images made at {model.image_size} px",
        f"- iterations: AE stage {c.get('ITERATION_AE', '?')}, GAN stage "
        f"{'?' if model.iteration is None else model.iteration} of {c.get('ITERATION_GAN', '?')}",
        f"- training images: {c.get('IMAGE_DIR') or 'unknown'}",
        f"- sketch folders: {', '.join(c.get('SKETCH_DIRS') or ()) or 'unknown'}",
        f"- held-out images and sketches: {c.get('TEST_IMAGE_DIR') or 'none'}, {c.get('TEST_SKETCH_DIR') or 'none'}",
        f"- data licence: {data_licence(c.get('IMAGE_DIR'))}", "", "## Use", "", "```",
        f"python inference.py --checkpoint {out.name} --sketch SKETCH --style EXEMPLAR --out results",
        f"python app.py --checkpoint {out.name}", "```", "",
        f"From Python (inference.py): `SketchToImage.from_pretrained(\"{out.name}\").translate(sketch, exemplar)`.",
        ""])


def data_licence(image_dir) -> str:
    """The licence a source.json or prepare.json above the training images records (and which); else "unknown"."""
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
    p.add_argument("--reference", action="store_true",
                   help="source is a GAN checkpoint of the reference code (its <run>/models/<epoch>.pth): converted")
    args = p.parse_args(argv)
    model, out = export(args.source, args.out, args.overwrite, args.reference)
    size, full = out.stat().st_size, Path(model.source).stat().st_size
    print(f"wrote {out}: {model.preset}, {model.ae_size} px sketches -> {model.image_size} px images, "
          f"iteration {model.iteration}; {size / 2**20:.2f} MiB ({size / full:.0%} of {Path(model.source).name}, "
          f"{full / 2**20:.2f} MiB); its model card: {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
