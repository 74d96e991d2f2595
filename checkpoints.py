"""The one loader every command uses (as stylegan2-ada's legacy.py): the checkpoint a path means (run folder,
stage folder, file), the trained networks in it (AE, GAN, TOM, or export.py's safetensors file), and that export.
Anything wrong is a one-line CheckpointError.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from fileio import (CHECKSUM_KEY, CheckpointDir, CheckpointError, atomic_path, load_checkpoint, newest_checkpoint,
                    nonfinite_tensors, state_checksum)
from models import AE_NETWORKS, AutoEncoder, build_generator
from sketch_styletransfer.tom_models import TOMGenerator


EXPORTED_NETWORKS = (*AE_NETWORKS, "generator")  # an exported file's tensor prefixes; "generator": the EMA weights
EXPORT_FORMAT = "sketch-to-image"  # safetensors metadata "format" of a file written by save_exported
EXPORT_VERSION = "1"               # bump when the exported layout changes
STAGE_CHECKPOINTS = {"ae": "an AE-stage checkpoint ('ae')", "gan": "a GAN-stage checkpoint ('gan')",
                     "tom": "a TOM checkpoint ('tom')"}


@dataclass
class Trained:
    """The networks in eval mode without gradients, on the CPU."""

    ae: AutoEncoder
    generator: nn.Module | None  # the EMA refine generator; None for an AE-stage checkpoint
    arch: dict                   # the stage's arch entry: preset, generator, nfc and sizes
    config: dict                 # the training config (Config.to_dict()), {} when unknown
    iteration: int | None = None
    source: Path | None = None   # the file it was read from


def load_trained(path, kind: str | None = "gan") -> Trained:
    """The networks in a run folder (its newest checkpoint), a checkpoint file or an exported .safetensors file.
    kind "gan": the AE and the EMA generator; "ae": an AE-stage checkpoint's AE; None: either (GAN first)."""
    if is_exported(path) or Path(path).suffix == ".safetensors":
        if kind == "ae":
            raise _wrong_kind(path, "an exported model", kind)
        return _load_exported(Path(path))
    file = find_checkpoint(path, kind)
    ckpt = load_checkpoint(file)
    found = ckpt["kind"]
    if found not in STAGE_CHECKPOINTS or kind not in (None, found):
        raise _wrong_kind(file, STAGE_CHECKPOINTS.get(found, f"a '{found}' checkpoint"), kind)
    try:
        arch, nets = ckpt["state"]["arch"], dict(ckpt["state"]["networks"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{file}: a checkpoint without its networks or architecture") from None
    if found == "gan":
        if "generator_ema" not in nets:  # never the live generator in place of the EMA one
            raise CheckpointError(f"{file}: GAN checkpoint without generator_ema")
        nets["generator"] = nets["generator_ema"]
    return build_trained(arch, nets, ckpt.get("config") or {}, ckpt.get("iteration"), file)


def find_checkpoint(path, kind: str | None = "gan") -> Path:
    """`path` if it is a file; else the newest checkpoint of a run folder (<run>/<kind>/checkpoints; kind
    None: GAN, else AE), of a stage folder, or of a checkpoints/ folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} ({_expected(kind)})")
    stages = [kind] if kind else ["gan", "ae"]
    found = newest_checkpoint(path, (*(f"{stage}/checkpoints" for stage in stages), "checkpoints"))
    if found is not None:
        return found
    if kind == "gan" and newest_checkpoint(path / "ae" / "checkpoints") is not None:
        raise CheckpointError(f"{path}: this run has an AE-stage checkpoint but no GAN-stage one; it needs "
                              f"the GAN stage: train it (python train.py SAVE_FOLDER={path.parent} "
                              f"TRIAL_NAME={path.name} RESUME=true)")
    raise CheckpointError(f"{path}: no checkpoint in this folder ({_expected(kind)})")


def _expected(kind: str | None) -> str:
    if kind == "tom":  # a TOM run (sketch_styletransfer/train.py --out) keeps its own checkpoints/
        return "give a TOM run folder with checkpoints/, or a checkpoint file <run>/checkpoints/ckpt_*.pt"
    return (f"give a run folder of train.py, a checkpoint file <run>/{kind or 'gan'}/checkpoints/ckpt_*.pt "
            f"or an exported .safetensors file")


def run_folder(checkpoint: Path) -> Path:
    """The folder that holds a checkpoint file's checkpoints/ folder, if it is in one."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def _wrong_kind(path, what: str, wanted: str | None) -> CheckpointError:
    needed = STAGE_CHECKPOINTS[wanted] if wanted else "an AE- or GAN-stage checkpoint"
    return CheckpointError(f"{path}: is {what}; this needs {needed}: <run>/{wanted or 'gan'}/checkpoints/"
                           f"ckpt_*.pt, or the run folder itself")


def build_trained(arch: dict, nets: dict, config: dict, iteration, source: Path) -> Trained:
    """The networks of `arch` (an AE or GAN stage's) with `nets` loaded strictly (CheckpointError if unfit)."""
    if not isinstance(arch, dict) or not isinstance(arch.get("preset"), str):
        raise CheckpointError(f"{source}: its architecture entry names no preset: not a model this code wrote "
                              f"(or a damaged one)")
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: its training config is a {type(config).__name__}, not a dict of settings")
    gan = "im_size_gan" in arch
    missing = [k for k in (EXPORTED_NETWORKS if gan else AE_NETWORKS) if k not in nets]
    if missing:
        raise CheckpointError(f"{source}: a model without {', '.join(missing)}")
    try:
        ae = AutoEncoder(arch["nfc"], arch["im_size_ae"] if gan else arch["im_size"])
        for name in AE_NETWORKS:
            getattr(ae, name).load_state_dict(nets[name])
        generator = None
        if gan:
            generator = build_generator(arch["generator"], ae.nfc, ae.im_size, arch["im_size_gan"])
            generator.load_state_dict(nets["generator"])
            generator.eval().requires_grad_(False)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source}: a model whose networks do not load ({first})") from None
    return Trained(ae.eval().requires_grad_(False), generator, arch, config, iteration, source)


def is_exported(path) -> bool:
    """Whether `path`'s content is safetensors: an 8-byte little-endian header length, then a JSON header."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def save_exported(trained: Trained, path) -> Path:
    """Write the AE networks and EMA generator as one safetensors file, atomically; arch, config and
    iteration go in its JSON metadata."""
    nets = {**{name: getattr(trained.ae, name) for name in AE_NETWORKS}, "generator": trained.generator}
    tensors = {f"{net}.{name}": tensor.detach().cpu().contiguous().clone()
               for net, module in nets.items() for name, tensor in module.state_dict().items()}
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(f"{path}: not written: the weights hold NaN/Inf ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): export a checkpoint from before the run diverged")
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
            "arch": json.dumps(trained.arch, sort_keys=True), "config": json.dumps(trained.config, sort_keys=True),
            "iteration": "" if trained.iteration is None else str(trained.iteration),
            "exported_from": "" if trained.source is None else Path(trained.source).name}
    meta[CHECKSUM_KEY] = exported_checksum(tensors, meta)
    data = safetensors_bytes(tensors, metadata=meta)  # written by Python: a full disk is an OSError (OutputError)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # ...not the Rust writer's opaque SafetensorError
        f.write(data)
    return Path(path)


def exported_checksum(tensors: dict, meta: dict) -> str:
    """state_checksum of an export's tensors and metadata (less the checksum), in name order."""
    return state_checksum({"tensors": {k: tensors[k] for k in sorted(tensors)},
                           "metadata": {k: meta[k] for k in sorted(meta) if k != CHECKSUM_KEY}})


def _load_exported(file: Path) -> Trained:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{file}: a safetensors file, but not a model written by export.py "
                              f"(metadata format={meta.get('format')!r}, expected {EXPORT_FORMAT!r})")
    if meta.get("format_version") != EXPORT_VERSION:
        raise CheckpointError(f"{file}: exported model format version {meta.get('format_version')!r}; this "
                              f"code reads version {EXPORT_VERSION}")
    if CHECKSUM_KEY not in meta:
        raise CheckpointError(f"{file}: exported without a checksum (before exports carried one), so damage "
                              f"cannot be ruled out: export it again with export.py")
    if meta[CHECKSUM_KEY] != exported_checksum(tensors, meta):
        raise CheckpointError(f"{file}: damaged: its contents do not match the checksum stored in it (a disk or "
                              f"copy error); export it again")
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(f"{file}: holds NaN/Inf values ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
                              f": exported after the run diverged; export an earlier checkpoint")
    try:
        arch, config = json.loads(meta["arch"]), json.loads(meta.get("config", "{}"))
    except (KeyError, ValueError):
        raise CheckpointError(f"{file}: exported model without a readable 'arch' entry") from None
    if not isinstance(arch, dict) or "im_size_gan" not in arch:
        raise CheckpointError(f"{file}: exported model whose 'arch' entry is not a GAN stage's")
    nets: dict[str, dict] = {}
    for key, tensor in tensors.items():
        net, _, name = key.partition(".")
        nets.setdefault(net, {})[name] = tensor
    iteration = int(meta["iteration"]) if meta.get("iteration", "").isdigit() else None
    return build_trained(arch, nets, config, iteration, file)


def load_tom(path) -> tuple[TOMGenerator, dict]:
    """TOM's generator (eval mode) in a TOM run folder or checkpoint file, and the checkpoint itself."""
    file = find_checkpoint(path, "tom")
    ckpt = load_checkpoint(file, kind="tom")
    generator = TOMGenerator(nfc=int(ckpt["config"].get("nfc", 128)))
    try:
        generator.load_state_dict(ckpt["state"]["networks"]["g"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{file}: generator weights do not fit ({str(e).splitlines()[0]})") from None
    return generator.eval(), ckpt


def stage_checkpoints(run) -> list[tuple[str, int, Path]]:
    """(stage, iteration, file) of every loadable checkpoint of a train.py run, AE stage first."""
    run, found = Path(run), []
    for stage in ("ae", "gan"):
        if (run / stage / "checkpoints").is_dir():
            found += [(stage, it, path) for it, path in CheckpointDir(run / stage / "checkpoints", kind=stage).all()]
    if not found:
        raise CheckpointError(f"no checkpoint in {run}/ae/checkpoints or {run}/gan/checkpoints")
    return found
