"""Speed benchmark: images/s, peak memory and MFU of the AE and GAN training steps, "reference"
mode vs "fast" mode, plus the data loaders' images/s.

    python bench_speed.py                                   # defaults for the device found
    python bench_speed.py --stages ae --size-ae 512 --batch-ae 32 --out bench_ae.json
    python bench_speed.py --batch-ae 8 --batch-gan 4 --modes fast      # peak memory at small batch
    python bench_speed.py --data generated     # demo-data pictures at the training size (loader numbers at full size)

Both modes run OUR stage classes (train_step_1_ae.AEStage, train_step_2_gan.GANStage), so they
execute exactly the same passes in the same order; only the execution settings differ:

  reference  what the reference code executes (reference_execution.py): fp32, NCHW,
             cudnn.benchmark off, Adam's and the EMA's per-parameter loops, zero_grad filling
             zeros, and a `.item()` of every loss after every step.
  fast       ours: bf16 autocast and channels_last (CUDA only), cudnn.benchmark on, the stage's
             own Adam (fused on CUDA, foreach on CPU), optional torch.compile (--compile), no
             host sync in the timed window except one at its end.

The step timing is compute only: a handful of batches is decoded beforehand by the stage's own
loaders and cycled. The host-to-device copy and OUR batched augmentation (crop/flip, style view,
erased sketch variants, on the device; the bold sketch is made by the loader) are inside the step
in both modes; the reference did its augmentation with PIL in the loader, so its mode is charged
a little more here than the reference's own step (the loader table gives that cost: "device
augmentation").

Known difference from the original reference code, which makes the reference mode here faster
than the original (so the fast/reference ratio is conservative): the original GAN step computed
an extra AE reconstruction loss, for its log only, with a host sync in the middle of the step.
(Its frozen AE ran without autograd, as here: `AE.forward` is decorated with `torch.no_grad()`.)

The data loaders are measured separately: ours (decode + resize only, in `--workers` worker
processes, plus the device cost of our batched augmentation) vs the reference's per-item PIL work
(reference_execution.reference_dataset), with the same number of workers.

Step-1 check: both modes start from the same weights (seeded before each build), the same first
batch and the same augmentation draws; their step-1 losses must agree within the precision's
tolerance (fp32 vs fp32: rel 1e-4; bf16 vs fp32: |a - b| <= 5e-2 * max(|a|, |b|) + 5e-2).

MFU = FLOPs per step (torch.utils.flop_counter.FlopCounterMode over one full step, forward and
backward) * steps/s / the device's peak (bf16 dense for fast, TF32 dense for reference).

LPIPS is off unless --lpips is given (it needs pretrained VGG weights): the reconstruction
losses are then the project's no-LPIPS ones (AE: MSE + L1; GAN: 10 MSE + 10 L1).
Gradient checkpointing is not implemented (no GPU measurement has shown it to be needed yet).

Prints a table and writes a JSON file (machine, versions, settings, all numbers). The exit code
is 1 if a step-1 loss check failed, else 0.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import itertools
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

import config as C
import reference_execution as R
from benchmark import markdown_table
from datasets import (PairedDataset, Pairs, RandomStream, iteration_generator, pair_folders, paired_crop_flip,
                      sketch_variants, style_view, to_float)
from demo_data import ensure_demo_data, make_demo_data
from errors import cli
from fileio import write_json
from losses import build_lpips
from models import AutoEncoder
from train_step_1_ae import AEStage
from train_step_2_gan import GANStage
from training import NanGuard, seed_everything, setup_runtime

MODES = ("reference", "fast")
STAGES = ("ae", "gan")
PRELOAD_BATCHES = 4  # decoded batches per loader, cycled through the timed steps

# Dense peak TFLOP/s by GPU name (first substring match): (bf16, tf32). --peak-tflops overrides.
PEAK_TFLOPS = (
    ("H200", 989.0, 494.0),
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 418.0),
    ("H100", 989.0, 494.0),       # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0, 156.0),
)

# step-1 loss agreement: |a - b| <= rtol * max(|a|, |b|) + atol
TOL_FP32 = {"rtol": 1e-4, "atol": 1e-6}
TOL_BF16 = {"rtol": 5e-2, "atol": 5e-2}


# --------------------------------------------------------------------------- data source

def _sketch_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "images")


def resolve_data(data: str | None, generated_size: int, tmp: list) -> tuple[Pairs, dict]:
    """The benchmark's pairs and a description of where they come from.

    --data DIR: DIR/images with sketch folders beside it (DIR/sketches, ...), or DIR/train/...
    likewise; a plain image folder is used as its own sketches (read as greyscale). --data
    generated: 64 demo-data pictures at `generated_size` in a temporary folder (loader numbers at
    the training size). Default: the built-in demo data (made on first use).
    """
    if data == "generated":
        folder = Path(tempfile.mkdtemp(prefix="bench_speed_"))
        tmp.append(folder)
        make_demo_data(folder, 64, 0, generated_size, progress=False)
        return pair_folders(folder / "train" / "images", [folder / "train" / "sketches"]), {
            "source": "demo_data pictures (temporary folder)", "n": 64, "size": generated_size}
    if data:
        folder = Path(data)
        for base in (folder, folder / "train"):
            if (base / "images").is_dir() and _sketch_dirs(base):
                pairs = pair_folders(base / "images", _sketch_dirs(base))
                return pairs, {"source": str(base), "sketch_dirs": [str(d) for d in _sketch_dirs(base)]}
        pairs = pair_folders(folder, [folder])
        return pairs, {"source": str(folder), "note": "plain image folder: each image is also its own sketch"}
    demo = C.PRESETS["demo"]
    ensure_demo_data()
    return pair_folders(demo["IMAGE_DIR"], demo["SKETCH_DIRS"]), {"source": "demo_data (built-in demo set)",
                                                                  "image_dir": demo["IMAGE_DIR"]}


def _describe_images(pairs: Pairs) -> dict:
    with Image.open(pairs.images[0]) as im:
        return {"n_pairs": len(pairs), "first_image_size": list(im.size), "first_image_format": im.format}


# --------------------------------------------------------------------------- machine

def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_name=props.name, gpu_memory_bytes=props.total_memory,
                    gpu_capability=f"{props.major}.{props.minor}", gpu_sm_count=props.multi_processor_count,
                    cuda_runtime=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        with contextlib.suppress(Exception):
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    return info


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__}


def peak_tflops(device: torch.device, args) -> dict:
    """{"fast": bf16 dense peak, "reference": TF32 dense peak} in TFLOP/s, or None where unknown."""
    if device.type != "cuda":
        return {"fast": None, "reference": None}
    name = torch.cuda.get_device_name(device)
    bf16 = tf32 = None
    for key, b, t in PEAK_TFLOPS:
        if key.lower() in name.lower():
            bf16, tf32 = b, t
            break
    return {"fast": args.peak_tflops or bf16, "reference": args.peak_tflops_tf32 or tf32}


# --------------------------------------------------------------------------- stages and modes

def stage_config(kind: str, args, mode: str) -> C.Config:
    """The art preset with the benchmark's sizes and the mode's precision settings."""
    fast = mode == "fast"
    if kind == "ae":
        sizes = dict(IM_SIZE_AE=args.size_ae, IM_SIZE_GAN=args.size_ae, IM_SIZE_D=min(512, args.size_ae))
    else:
        ae = args.size_ae if args.size_gan in (args.size_ae, 2 * args.size_ae) else min(512, args.size_gan // 2)
        sizes = dict(IM_SIZE_AE=ae, IM_SIZE_GAN=args.size_gan, IM_SIZE_D=min(512, args.size_gan))
    values = dict(sizes, NFC=args.nfc, BATCH_SIZE_AE=args.batch_ae, BATCH_SIZE_GAN=args.batch_gan,
                  DATALOADER_WORKERS=args.workers, DEVICE=args.device, FID_INTERVAL=0,
                  SUBSET_PASSES=10 ** 6,  # no subset switch inside the benchmark
                  BF16=fast, CHANNELS_LAST=fast, COMPILE=fast and args.compile, SEED=args.seed)
    if not args.lpips:
        values.update(C.NO_LPIPS_LOSSES)
    return C.preset("art", **values)


def build_ae(cfg: C.Config):
    """A randomly initialised (seeded) AE to feed the GAN stage."""
    seed_everything(cfg.SEED)
    return AutoEncoder(cfg.NFC, cfg.IM_SIZE_AE)


def build_stage(kind: str, cfg: C.Config, runtime, pairs: Pairs, ae, lpips_on: bool):
    lpips = build_lpips(max(cfg.W_REC_LPIPS, cfg.W_GAN_LPIPS), runtime.device) if lpips_on else None
    seed_everything(cfg.SEED)  # the same initial weights in every mode
    if kind == "ae":
        return AEStage(cfg, runtime, pairs, pairs, lpips)
    return GANStage(cfg, runtime, pairs, pairs, copy.deepcopy(ae), lpips)  # a copy: the stage moves its AE


BATCH_ATTRS = {"ae": ("ss_batches", "paired_batches"), "gan": ("batches",)}


def preload(stage, kind: str, n: int) -> dict[str, list]:
    """n decoded batches from each of the stage's own loaders (then the loaders are dropped)."""
    stage.restart_data(0)
    batches = {attr: [next(getattr(stage, attr)) for _ in range(n)] for attr in BATCH_ATTRS[kind]}
    for attr in BATCH_ATTRS[kind]:
        setattr(stage, attr, None)  # shuts the worker processes down
    return batches


def install(stage, batches: dict[str, list]) -> None:
    for attr, items in batches.items():
        setattr(stage, attr, itertools.cycle(items))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(stage, it: int, guard) -> int:
    """FLOPs of one full training step (all forward and backward passes), counted once."""
    counter = FlopCounterMode(display=False)
    with counter:
        stage.step(it, guard)
    return int(counter.get_total_flops())


def count_host_syncs(stage, it: int, guard, device: torch.device) -> int | None:
    """Host synchronisations inside one step (CUDA only), via torch's sync debug mode."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            stage.step(it, guard)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def free_memory(device: torch.device, compiled: bool = False) -> None:
    gc.collect()
    if compiled:
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_mode(kind: str, mode: str, args, pairs: Pairs, ae, batches, want_flops: bool) -> tuple[dict, dict, int | None]:
    """Build the stage in `mode`, run step 1 (loss check), warm up, time `args.steps` steps."""
    cfg = stage_config(kind, args, mode)
    reference = mode == "reference"
    runtime = R.runtime(setup_runtime(cfg)) if reference else setup_runtime(cfg)
    device = runtime.device
    R.backend_flags(reference, device)
    stage = build_stage(kind, cfg, runtime, pairs, ae, args.lpips)
    if batches is None:
        batches = preload(stage, kind, min(PRELOAD_BATCHES, args.warmup + args.steps))
    install(stage, batches)
    guard = NanGuard("stop", device)
    if device.type == "cuda":
        free_memory(device)
        torch.cuda.reset_peak_memory_stats(device)

    seed_everything(cfg.SEED)  # the same global RNG (generator noise) at step 1 in every mode
    step1 = {k: float(v) for k, v in stage.step(0, guard).items()}
    for it in range(1, args.warmup):
        losses = stage.step(it, guard)
        if reference:
            R.log_every_loss(losses)
    synchronize(device)
    t0 = time.perf_counter()
    for it in range(args.warmup, args.warmup + args.steps):
        losses = stage.step(it, guard)
        if reference:
            R.log_every_loss(losses)
    synchronize(device)
    seconds = time.perf_counter() - t0
    guard.check(None)  # a NaN during the benchmark is an error, not a number
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    nxt = args.warmup + args.steps
    result = {"img_per_s": args.steps * stage.items_per_step() / seconds, "step_ms": 1000 * seconds / args.steps,
              "images_per_step": stage.items_per_step(), "peak_mem_bytes": peak, "step1_losses": step1,
              "bf16": runtime.bf16, "channels_last": runtime.channels_last, "compiled": runtime.compile,
              "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
              "optimizer": _describe_optimizer(next(iter(stage.opt.values()))),
              "host_syncs_per_step": count_host_syncs(stage, nxt, guard, device)}
    flops = count_flops(stage, nxt + 1, guard) if want_flops and not runtime.compile else None
    del stage
    free_memory(device, compiled=runtime.compile)
    return result, batches, flops


def _describe_optimizer(opt: torch.optim.Optimizer) -> str:
    d = opt.defaults
    return f"{type(opt).__name__}(foreach={d.get('foreach')}, fused={d.get('fused')})"


def check_losses(ref: dict, fast: dict, tol: dict) -> dict:
    losses, passed = {}, True
    for name in ref:
        a, b = ref[name], fast.get(name, float("nan"))
        diff = abs(a - b)
        bound = tol["rtol"] * max(abs(a), abs(b)) + tol["atol"]
        ok = math.isfinite(a) and math.isfinite(b) and diff <= bound
        passed &= ok
        losses[name] = {"reference": a, "fast": b, "abs_diff": diff, "bound": bound, "pass": ok}
    return {"tolerance": tol, "passed": bool(passed), "losses": losses}


def bench_stage(kind: str, args, pairs: Pairs, peaks: dict) -> dict:
    ae = build_ae(stage_config("gan", args, "reference")) if kind == "gan" else None
    out = {"size": args.size_ae if kind == "ae" else args.size_gan,
           "batch": args.batch_ae if kind == "ae" else args.batch_gan, "modes": {}}
    batches, flops = None, None
    for mode in args.modes:
        try:
            result, batches, counted = run_mode(kind, mode, args, pairs, ae, batches, want_flops=flops is None)
        except torch.cuda.OutOfMemoryError:
            result = None
        if result is None:  # outside the except block: its traceback no longer holds the stage
            free_memory(torch.device("cuda"))
            out["modes"][mode] = {"error": "out of memory"}
            print(f"[{kind}] {mode}: out of memory", file=sys.stderr)
            continue
        flops = flops if flops is not None else counted
        out["modes"][mode] = result
        print(f"[{kind}] {mode}: {result['img_per_s']:.2f} img/s ({result['step_ms']:.1f} ms/step)", file=sys.stderr)
    if flops is None and batches is not None:  # only compiled modes ran: count on an uncompiled fast stage
        args_nc = argparse.Namespace(**{**vars(args), "compile": False})
        cfg = stage_config(kind, args_nc, "fast")
        runtime = setup_runtime(cfg)
        stage = build_stage(kind, cfg, runtime, pairs, ae, args.lpips)
        install(stage, batches)
        flops = count_flops(stage, 0, NanGuard("stop", runtime.device))
        del stage
        free_memory(runtime.device)
    out["flops_per_step"] = flops
    for mode, result in out["modes"].items():
        if "error" in result:
            continue
        steps_per_s = result["img_per_s"] / result["images_per_step"]
        result["achieved_tflops"] = flops * steps_per_s / 1e12 if flops else None
        result["peak_tflops"] = peaks.get(mode)
        result["mfu"] = (result["achieved_tflops"] / peaks[mode]) if flops and peaks.get(mode) else None
    ref, fast = out["modes"].get("reference", {}), out["modes"].get("fast", {})
    if "img_per_s" in ref and "img_per_s" in fast:
        out["ratio_fast_over_reference"] = fast["img_per_s"] / ref["img_per_s"]
        out["loss_check"] = check_losses(ref["step1_losses"], fast["step1_losses"],
                                         TOL_BF16 if fast["bf16"] else TOL_FP32)
    return out


# --------------------------------------------------------------------------- loaders

MIN_SECONDS = 1.0  # loader and augmentation timings run at least this long (up to 50x the batches asked)


def _loader_rate(dataset: Dataset, batch: int, workers: int, n_batches: int) -> tuple[float, object]:
    """Images/s of a DataLoader in steady state (after `workers` warm-up batches); also the first batch."""
    warm, most = max(1, workers), 50 * n_batches
    order = [i % len(dataset) for i in range((warm + most) * batch)]
    loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    it = iter(loader)
    first = next(it)
    for _ in range(warm - 1):
        next(it)
    done, t0 = 0, time.perf_counter()
    while done < n_batches or (time.perf_counter() - t0 < MIN_SECONDS and done < most):
        next(it)
        done += 1
    seconds = time.perf_counter() - t0
    del it
    return done * batch / seconds, first


def _augment_rate(kind: str, batch: dict, size: int, device: torch.device, n: int, seed: int) -> float:
    """Images/s of our batched augmentation on the device (H2D copy included), as in the step."""
    if device.type == "cuda":
        batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}

    def one(i: int):
        g = iteration_generator(seed, RandomStream.AE_AUG_A, i)
        keys = ("image", "sketch", "sketch_bold") if kind == "ae" else ("image", "sketch")
        x, sketch, *thick = paired_crop_flip([to_float(batch[k].to(device, non_blocking=True)) for k in keys], size, g)
        if kind == "ae":
            style_view(to_float(batch["style_src"].to(device, non_blocking=True)), size, g)
            sketch_variants(sketch, thick[0], g)

    one(0)
    synchronize(device)
    done, t0 = 0, time.perf_counter()
    while done < n or (time.perf_counter() - t0 < MIN_SECONDS and done < 50 * n):
        done += 1
        one(done)
        if done == n:
            synchronize(device)
    synchronize(device)
    return done * batch["image"].shape[0] / (time.perf_counter() - t0)


def bench_loader(kind: str, args, pairs: Pairs, device: torch.device) -> dict:
    size, batch = (args.size_ae, args.batch_ae) if kind == "ae" else (args.size_gan, args.batch_gan)
    n = args.loader_batches
    ours_ds = PairedDataset(pairs, size, style_view=kind == "ae", bold=kind == "ae")
    ref_ds = R.reference_dataset(kind, pairs, size)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    ref_rate, _ = _loader_rate(ref_ds, batch, args.workers, n)
    ours_rate, first = _loader_rate(ours_ds, batch, args.workers, n)
    aug_rate = _augment_rate(kind, first, size, device, n, args.seed)
    combined = 1.0 / (1.0 / ours_rate + 1.0 / aug_rate)  # serial: as if nothing overlapped
    what = ("SelfSupervisedDataset: flip, 1.3x resize + crop + rotate + flip, 1.1x resize + crop of image, "
            "sketch and MinFilter(3) bold sketch, 2x2 RandomErasing" if kind == "ae" else
            "PairedMultiDataset: an image and 3 sketches, 1.1x resize + crop")
    return {"size": size, "batch": batch, "workers": args.workers, "batches_timed_min": n,
            "min_seconds": MIN_SECONDS,
            "reference_style_pil": {"img_per_s": ref_rate, "work": what},
            "ours_decode_resize": {"img_per_s": ours_rate},
            "ours_device_augmentation": {"img_per_s": aug_rate, "device": str(device),
                                         "ms_per_batch": 1000 * batch / aug_rate},
            "ours_total_serial": {"img_per_s": combined},
            "ratio_ours_over_reference": combined / ref_rate}


# --------------------------------------------------------------------------- output

def _fmt_bytes(n) -> str:
    return "n/a" if n is None else f"{n / 2 ** 30:.2f} GiB"


def _fmt_pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def report(results: dict) -> str:
    rows = []
    for kind, st in results["stages"].items():
        label = f"{kind.upper()} {st['size']} px, batch {st['batch']}"
        for mode, r in st["modes"].items():
            if "error" in r:
                rows.append([label, mode, r["error"], "", "", "", ""])
                continue
            ratio = f"{st['ratio_fast_over_reference']:.2f}x" if mode == "fast" and "ratio_fast_over_reference" in st else ""
            check = ""
            if mode == "fast" and "loss_check" in st:
                lc = st["loss_check"]
                n_ok = sum(v["pass"] for v in lc["losses"].values())
                check = f"{'PASS' if lc['passed'] else 'FAIL'} ({n_ok}/{len(lc['losses'])})"
            mfu = _fmt_pct(r["mfu"])
            if r.get("achieved_tflops") is not None:
                mfu += f" ({r['achieved_tflops']:.3g} TFLOP/s)"
            rows.append([label, mode, f"{r['img_per_s']:.2f}", ratio, _fmt_bytes(r["peak_mem_bytes"]), mfu, check])
    text = [markdown_table(["stage", "mode", "img/s", "fast/reference", "peak mem", "MFU", "loss check"], rows)]
    for kind, st in results["stages"].items():
        if "loss_check" in st:
            tol = st["loss_check"]["tolerance"]
            text.append(f"\nstep-1 loss check, {kind} (|ref - fast| <= {tol['rtol']:g} * max + {tol['atol']:g}):")
            for name, v in st["loss_check"]["losses"].items():
                text.append(f"  {name:<10} reference {v['reference']:<12.6g} fast {v['fast']:<12.6g} "
                            f"|diff| {v['abs_diff']:.3g} <= {v['bound']:.3g}  {'PASS' if v['pass'] else 'FAIL'}")
        if st.get("flops_per_step"):
            text.append(f"{kind}: {st['flops_per_step'] / 1e9:.2f} GFLOP per step (forward + backward, "
                        f"FlopCounterMode)")
    if results["loader"]:
        rows = []
        for kind, ld in results["loader"].items():
            label = f"{kind.upper()} {ld['size']} px, batch {ld['batch']}, {ld['workers']} workers"
            rows += [[label, "reference-style (PIL, in the loader)", f"{ld['reference_style_pil']['img_per_s']:.1f}", ""],
                     [label, "ours: decode + resize (loader)", f"{ld['ours_decode_resize']['img_per_s']:.1f}", ""],
                     [label, f"ours: augmentation on {ld['ours_device_augmentation']['device']}",
                      f"{ld['ours_device_augmentation']['img_per_s']:.1f}", ""],
                     [label, "ours: both, serial", f"{ld['ours_total_serial']['img_per_s']:.1f}",
                      f"{ld['ratio_ours_over_reference']:.2f}x"]]
        text.append("\n" + markdown_table(["loader", "what", "img/s", "ours/reference"], rows))
    s = results["settings"]
    text.append(f"\nLPIPS {'on' if s['lpips'] else 'off (reconstruction: AE MSE + L1, GAN 10 MSE + 10 L1; --lpips to include it)'}"
                f"; {s['steps']} timed steps after {s['warmup']} warm-up steps; step time includes H2D copy and our "
                f"batched augmentation (both modes)")
    d = s["data"]
    w, h = d["first_image_size"]
    text.append(f"data: {d['source']}, {d['n_pairs']} pairs, first image {w}x{h} {d['first_image_format']}")
    if min(w, h) < max(s["size_ae"], s["size_gan"]):
        text.append("note: the images are smaller than the training size: the loader numbers (both loaders) "
                    "are optimistic; use --data with real images or --data generated")
    if results["settings"]["device_resolved"] == "cpu":
        text.append("note: on CPU the modes differ only in the optimizer implementation and per-step .item() "
                    "(free on CPU): expect fast/reference near 1 within timing noise")
    m = results["machine"]
    text.append(f"machine: {m.get('gpu_name') or m.get('cpu_model') or m['machine']}, {m['cpu_count']} CPUs; "
                f"torch {results['versions']['torch']}\ncommand: {results['command']}")
    return "\n".join(text)


# --------------------------------------------------------------------------- CLI

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="""\
Inputs: training images (--data: a folder, 'generated', or by default the built-in demo data).
Outputs: a table on stdout and the JSON file --out: machine, versions, settings, images/s, peak
GPU memory, MFU and the step-1 loss check of each stage and mode, and the loaders' images/s.
Examples:
    python bench_speed.py --out bench.json
    python bench_speed.py --modes fast --batch-ae 8 --batch-gan 4 --loader-batches 0 --out mem.json""")
    p.add_argument("--stages", default="ae,gan", help="comma-separated: ae, gan")
    p.add_argument("--modes", default="reference,fast", help="comma-separated: reference, fast")
    p.add_argument("--size-ae", type=int, help="AE resolution (CUDA default 512, CPU 64)")
    p.add_argument("--size-gan", type=int, help="GAN resolution (CUDA default 1024, CPU 128)")
    p.add_argument("--batch-ae", type=int, help="AE batch (CUDA default 32, CPU 8)")
    p.add_argument("--batch-gan", type=int, help="GAN batch (CUDA default 16, CPU 4)")
    p.add_argument("--nfc", type=int, help="network width (CUDA default 64, CPU 16)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per stage and mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1; step 1 is the loss check)")
    p.add_argument("--workers", type=int, default=4, help="data loader worker processes")
    p.add_argument("--loader-batches", type=int, default=8, help="batches timed per loader (0: skip the loaders)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks in fast mode")
    p.add_argument("--lpips", action="store_true", help="include LPIPS-VGG (needs its pretrained weights)")
    p.add_argument("--data", help="image folder (DIR/images + DIR/<sketch folders>, or plain images), or "
                                  "'generated' (64 demo-data pictures at the largest training size, in a temporary "
                                  "folder); default: the built-in demo data")
    p.add_argument("--peak-tflops", type=float, help="device peak for fast mode (bf16 dense), TFLOP/s")
    p.add_argument("--peak-tflops-tf32", type=float, help="device peak for reference mode (TF32 dense), TFLOP/s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_results.json", help="JSON output path")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for name, values, allowed in (("--stages", args.stages, STAGES), ("--modes", args.modes, MODES)):
        if not values or set(values) - set(allowed):
            p.error(f"{name}: choose from {', '.join(allowed)}")
    args.modes = [m for m in MODES if m in args.modes]  # reference first: it also counts the FLOPs
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be >= 1")
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device.startswith("cuda")
    defaults = dict(size_ae=512, size_gan=1024, batch_ae=32, batch_gan=16, nfc=64) if cuda else \
        dict(size_ae=64, size_gan=128, batch_ae=8, batch_gan=4, nfc=16)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


@cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    tmp: list[Path] = []
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        pairs, data_info = resolve_data(args.data, max(args.size_ae, args.size_gan), tmp)
        data_info.update(_describe_images(pairs))
        device = setup_runtime(stage_config(args.stages[0], args, "fast")).device
        peaks = peak_tflops(device, args)
        results = {
            "command": "python bench_speed.py" + "".join(" " + shlex.quote(a) for a in argv),
            "machine": machine_info(device), "versions": versions(),
            "settings": {**{k: v for k, v in vars(args).items()}, "data": data_info, "device_resolved": str(device),
                         "peak_tflops": peaks, "loss_tolerance": {"fp32": TOL_FP32, "bf16": TOL_BF16},
                         "preload_batches": min(PRELOAD_BATCHES, args.warmup + args.steps),
                         "configs": {k: stage_config(k, args, "fast").to_dict() for k in args.stages}},
            "stages": {}, "loader": {}}
        for kind in args.stages:
            results["stages"][kind] = bench_stage(kind, args, pairs, peaks)
        if args.loader_batches > 0:
            for kind in args.stages:
                results["loader"][kind] = bench_loader(kind, args, pairs, device)
        checks = [st["loss_check"]["passed"] for st in results["stages"].values() if "loss_check" in st]
        results["all_loss_checks_passed"] = all(checks) if checks else None
        write_json(args.out, results)
        print(report(results))
        print(f"wrote {args.out}")
        return 0 if all(checks) else 1
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        for folder in tmp:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
