"""Train TOM, the sketch synthesizer, on a folder of photos and an unpaired folder of real sketches.

The loop is training.run_stage, train.py's (TOMTrainer is its stage): the same run folder layout,
--checkpoint resume (options not given keep the run's values), NaN policy, Ctrl-C/SIGTERM stop and
torchrun support (--batch_size per process, rank 0 alone writes). Then make sketches with evaluate.py.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # run as a script: the repository's top-level modules must be importable
    sys.path.insert(0, ROOT)

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Dataset

import weights
from datasets import (DataError, FolderDataset, InfiniteSampler, RandomStream, iteration_generator, mix_seed,
                      paired_crop_flip, require_images, to_float)
from errors import UserError, cli
from checkpoints import find_checkpoint, run_folder
from fileio import load_checkpoint, locked_folder, write_json
from losses import d_hinge  # the style discriminator's: real sketches above +1, generated below -1
from sketch_styletransfer.tom_models import (THRESHOLD, StyleDiscriminator, TOMGenerator, VGGFeatures, check_size,
                                             content_loss, gram_input, gram_loss, sketch_photos, to_sketch)
from devices import resolve_device
from training import (LoopOptions, NanGuard, Runtime, StageResult, from_rank0, join_torchrun, optimizer_step, run_stage,
                      seed_everything, stoppable_batches)

KIND = "tom"
CROP_SCALE = 292 / 256   # the reference resizes 256 px training images to 292, then crops 256
DEFAULTS = dict(path_a=None, path_b=None, im_size=256, batch_size=4, total_iter=5000, lr=2e-4, mse_weight=0.2,
                gram_weight=1.0, nfc=128, seed=0, save_interval=500, image_interval=100, log_interval=100,
                keep=10, grid_n=8, workers=2, nan_policy="stop", nan_skip_limit=20)


class RunError(UserError):
    """A refused or impossible run (an existing run folder, missing arguments)."""


# --------------------------------------------------------------------------- the stage

class TOMTrainer:
    """TOM's networks, optimizers and data, and one iteration (D step, then G step): a training.Stage.
    `args` are the run's (DEFAULTS fill the missing ones)."""

    kind = KIND

    def __init__(self, vgg_features: nn.Sequential, args: dict, runtime: Runtime | None = None):
        self.args = {**DEFAULTS, **args}
        self.rt = runtime or Runtime(device=torch.device("cpu"))  # under torchrun: gradients averaged over ranks
        device, lr = self.rt.device, self.args["lr"]
        self.vgg = VGGFeatures(vgg_features).to(device)
        self.g = TOMGenerator(nfc=self.args["nfc"]).to(device)
        self.d = StyleDiscriminator().to(device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr, betas=(0.5, 0.99))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr, betas=(0.5, 0.99))

    # --- the loop's interface ------------------------------------------------------------------
    def arch(self) -> dict:
        # the generator is fully convolutional: only its width must match to resume (--im_size may change)
        return {"nfc": self.args["nfc"]}

    def state_dict(self) -> dict:
        return {"networks": {"g": self.g.state_dict(), "d": self.d.state_dict()},
                "optimizers": {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()}, "arch": self.arch()}

    def load_state_dict(self, state: dict) -> None:
        self.g.load_state_dict(state["networks"]["g"])
        self.d.load_state_dict(state["networks"]["d"])
        self.opt_g.load_state_dict(state["optimizers"]["g"])
        self.opt_d.load_state_dict(state["optimizers"]["d"])

    def restart_data(self, iteration: int) -> None:
        a = self.args
        self.photos, self.sketches = (Stream(a[key], a["im_size"], a["batch_size"], a["seed"], stream, iteration,
                                             a["workers"], self.rt)
                                      for key, stream in (("path_a", RandomStream.TOM_PHOTOS),
                                                          ("path_b", RandomStream.TOM_SKETCHES)))

    def items_per_step(self) -> int:
        return self.args["batch_size"] * self.rt.world_size

    def log_extras(self) -> dict:
        return {"skipped": self.photos.skipped + self.sketches.skipped}

    def evaluate(self, it: int) -> dict:
        return {}

    def step(self, it: int, guard: NanGuard) -> dict[str, torch.Tensor]:
        return self.update(self.photos.batch(it), self.sketches.batch(it), it, guard)

    def update(self, photos: torch.Tensor, sketches: torch.Tensor, it: int, guard: NanGuard) -> dict[str, torch.Tensor]:
        """One iteration on photos and unpaired real sketches (both (B, 3, H, W) in [-1, 1]); detached losses."""
        n = min(photos.shape[0], sketches.shape[0])  # an unreadable file shrinks one batch: no silent broadcast
        photos, sketches = photos[:n], sketches[:n]
        with torch.no_grad():
            photo_pool3 = self.vgg(photos, levels=3)[2]
            real = self.vgg(sketches, levels=4)[1:]          # pool2, pool3, pool4
        fake = self.vgg(self.g(photo_pool3), levels=4)[1:]
        real_grams, fake_grams = gram_input(real), gram_input(fake)
        d_parts = {"d_hinge": d_hinge(self.d(real_grams), self.d(fake_grams.detach()))}
        optimizer_step(d_parts["d_hinge"], [self.opt_d], self.rt, guard, it, d_parts)
        g_parts = {"g_adv": -self.d(fake_grams).mean(), "mse": content_loss(fake[1], photo_pool3, real[1]),
                   "gram": gram_loss(fake, real)}
        loss = g_parts["g_adv"] + self.args["mse_weight"] * g_parts["mse"] + self.args["gram_weight"] * g_parts["gram"]
        optimizer_step(loss, [self.opt_g], self.rt, guard, it, g_parts)
        return {**d_parts, **g_parts}

    @cached_property
    def grid_photos(self) -> torch.Tensor:
        """Read at the first grid: a trainer that only holds weights (e.g. a test's) reads no folder."""
        return fixed_photos(self.args["path_a"], self.args["im_size"], self.args["grid_n"]).to(self.rt.device)

    @torch.no_grad()
    def sample_grid(self) -> tuple[torch.Tensor, int]:
        """Three rows: the photos, their grey sketches, their binary sketches (threshold 0.7). The generator
        runs in eval mode (BatchNorm running statistics)."""
        photos = self.grid_photos
        self.g.eval()
        try:
            raw = sketch_photos(self.g, self.vgg, photos)
        finally:
            self.g.train()
        grey, binary = (to_sketch(raw, t).mul(2).sub(1).expand(-1, 3, -1, -1) for t in (None, THRESHOLD))
        return torch.cat([photos, grey, binary]), photos.shape[0]


# --------------------------------------------------------------------------- data

class _ByPosition(Dataset):
    """Adapts FolderDataset to InfiniteSampler's (index, sketch_set) items."""

    def __init__(self, data: FolderDataset):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, item):
        return self.data[item[0]]


class Stream:
    """Endless augmented batches of one folder: resize to 1.14x, random crop and flip (per-iteration seeds).
    Under torchrun each rank reads its own share of the folder and draws its own crops."""

    def __init__(self, folder, size: int, batch_size: int, seed: int, stream: int, start: int, workers: int,
                 runtime: Runtime):
        data = FolderDataset(folder, round(size * CROP_SCALE), "RGB", nested=True)
        self.n = len(data)
        sampler = InfiniteSampler(self.n, seed=mix_seed(seed, stream), start=start * batch_size, rank=runtime.rank,
                                  world_size=runtime.world_size)
        self.loader = stoppable_batches(_ByPosition(data), workers, batch_size=batch_size, sampler=sampler,
                                        pin_memory=runtime.device.type == "cuda", persistent_workers=workers > 0)
        self.size, self.seed, self.stream, self.rt = size, seed, stream, runtime
        self.skipped = 0

    def batch(self, it: int) -> torch.Tensor:
        """The batch of iteration `it` in [-1, 1]; unreadable images are dropped (and counted)."""
        while True:
            batch = next(self.loader)
            ok = batch["ok"]
            self.skipped += int((~ok).sum())
            if ok.any():
                break
        images = to_float(batch["image"][ok].to(self.rt.device, non_blocking=True))
        g = iteration_generator(self.seed, self.stream, it, self.rt.rank)
        return paired_crop_flip([images], self.size, g)[0]


def fixed_photos(folder, size: int, n: int) -> torch.Tensor:
    """The first n readable photos (file-name order), resized, for the sample grids."""
    data = FolderDataset(folder, size, "RGB", nested=True)
    items = [data[i] for i in range(min(len(data), 4 * n))]
    images = [item["image"] for item in items if item["ok"]][:n]
    if not images:
        raise DataError(f"no readable image among the first files of {folder}")
    return to_float(torch.stack(images))


# --------------------------------------------------------------------------- run folder, checkpoints

@dataclass
class Plan:
    """What a run will do: its full arguments, its folder, and the checkpoint it resumes (or None)."""
    args: dict
    out: Path
    counts: tuple[int, int]              # images in path_a and path_b
    checkpoint_path: Path | None = None


def plan_run(options: dict) -> Plan:
    """Merge CLI options (None: not given) with a resumed run's args, else the defaults; check the run folder."""
    path, saved = None, {}
    if options.get("checkpoint"):
        path = find_checkpoint(options["checkpoint"], KIND)
        saved = load_checkpoint(path, kind=KIND)["config"]
    args = {k: options[k] if options.get(k) is not None else saved.get(k, default) for k, default in DEFAULTS.items()}
    counts = []
    for key in ("path_a", "path_b"):
        if not args[key]:
            raise RunError(f"--{key} is required ({'photos' if key == 'path_a' else 'real sketches'} folder)")
        args[key] = str(Path(args[key]).resolve())  # absolute: a resume may start from another folder
        counts.append(len(require_images(args[key], f"--{key}", nested=True)))
    try:
        check_size(args["im_size"])
    except ValueError as e:
        raise RunError(f"--im_size: {e}") from None
    if args["nfc"] != saved.get("nfc", args["nfc"]):  # refused before VGG loads (run_stage checks it too)
        raise RunError(f"--nfc {args['nfc']} differs from the checkpoint's {saved['nfc']}")
    if options.get("out"):
        out = Path(options["out"])
    elif path is not None:
        out = run_folder(path)
    else:
        out = Path("train_results") / f"tom-{time.strftime('%Y%m%d-%H%M%S')}"
    holds_run = any((out / name).exists() for name in ("checkpoints", "log.jsonl", "args.json", "images"))
    if holds_run and (path is None or out.resolve() != run_folder(path).resolve()):
        hint = f"continue it with --checkpoint {out}" if path is None else "its own checkpoint resumes into it"
        raise RunError(f"run folder {out} already holds a run: {hint}, or choose another --out")
    return Plan(args, out, tuple(counts), path)


def loop_options(args: dict) -> LoopOptions:
    """The training loop's knobs from TOM's arguments (stored in checkpoints: resume reads them)."""
    return LoopOptions(total=args["total_iter"], log_interval=args["log_interval"],
                       image_interval=args["image_interval"], save_interval=args["save_interval"], keep=args["keep"],
                       seed=args["seed"], nan_policy=args["nan_policy"], nan_skip_limit=args["nan_skip_limit"],
                       nan_skip_setting="--nan_policy skip", config=dict(args))


# --------------------------------------------------------------------------- the run

def train(plan: Plan, vgg_features: nn.Sequential, runtime: Runtime | None = None) -> StageResult:
    """Train (or resume) the run `plan_run` planned. Rank 0 alone writes, holding the run folder
    (fileio.locked_folder) so that a second process on it stops before writing."""
    args, out = plan.args, plan.out
    rt = runtime or Runtime(device=torch.device("cpu"))
    seed_everything(args["seed"])  # the same on every rank: identical initial weights
    trainer = TOMTrainer(vgg_features, args, rt)
    with locked_folder(out, "choose another --out") if rt.is_main else contextlib.nullcontext():
        if rt.is_main:
            write_json(out / "args.json", args)
            print(f"run folder: {out}\n{plan.counts[0]} photos, {plan.counts[1]} sketches, {args['total_iter']} "
                  f"iterations on {rt.device}")
        result = run_stage(trainer, loop_options(args), out, rt, resume=plan.checkpoint_path or False)
    if result.stopped and rt.is_main:
        print(f"stopped at iteration {result.iteration}; resume with:\n  {_command('train.py', '--checkpoint', out)}",
              file=sys.stderr)
    return result


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train TOM: photos (--path_a) -> line sketches in the style of real "
                                            "sketches (--path_b, unpaired).",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a folder of photos and a folder of real sketches (flat or with sub-folders), or --checkpoint to resume.
Outputs: a run folder (--out): args.json, log.jsonl, images/ (sample grids), checkpoints/; at the end, the
evaluate.py command that makes the sketches.
Example:
    python sketch_styletransfer/train.py --path_a data/photos --path_b data/real_sketches --total_iter 20000""")
    d = DEFAULTS
    p.add_argument("--path_a", help="folder of photos (and its sub-folders)")
    p.add_argument("--path_b", help="folder of real sketches (and its sub-folders; unpaired with the photos)")
    p.add_argument("--im_size", type=int, help=f"training size, a multiple of 8 (default {d['im_size']})")
    p.add_argument("--batch_size", type=int, help=f"default {d['batch_size']}")
    p.add_argument("--total_iter", type=int,
                   help=f"iterations in total, counting resumed ones (default {d['total_iter']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d['lr']})")
    p.add_argument("--mse_weight", type=float, help=f"weight of the AdaIN content loss (default {d['mse_weight']})")
    p.add_argument("--gram_weight", type=float, help=f"weight of the Gram style loss (default {d['gram_weight']})")
    p.add_argument("--nfc", type=int, help=f"generator width (default {d['nfc']}: the reference network)")
    p.add_argument("--seed", type=int, help=f"default {d['seed']}")
    p.add_argument("--checkpoint", help="resume: a checkpoint file or a run folder (its newest checkpoint)")
    p.add_argument("--out", help="run folder (default train_results/tom-<time>; resuming: the checkpoint's run)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--save_interval", type=int, help=f"checkpoint every N iterations (default {d['save_interval']})")
    p.add_argument("--keep", type=int, help=f"checkpoints kept (default {d['keep']}: ten sketch sets from one run)")
    p.add_argument("--image_interval", type=int, help=f"sample grid every N iterations (default {d['image_interval']})")
    p.add_argument("--log_interval", type=int, help=f"log line every N iterations (default {d['log_interval']})")
    p.add_argument("--grid_n", type=int, help=f"photos in the sample grid (default {d['grid_n']})")
    p.add_argument("--workers", type=int, help=f"data loading processes (default {d['workers']})")
    p.add_argument("--nan_policy", choices=("stop", "skip"),
                   help=f"a NaN/Inf loss: stop the run, or skip that step's update (default {d['nan_policy']})")
    p.add_argument("--nan_skip_limit", type=int,
                   help=f"with skip: stop after this many skipped steps in a row of one update (G or D; default "
                        f"{d['nan_skip_limit']})")
    args = p.parse_args(argv)
    for key in ("batch_size", "total_iter", "save_interval", "image_interval", "log_interval", "keep", "grid_n", "nfc",
                "nan_skip_limit"):
        value = getattr(args, key)
        if value is not None and value < (0 if key == "total_iter" else 1):
            p.error(f"--{key} must be positive")
    for key in ("lr", "mse_weight", "gram_weight"):
        value = getattr(args, key)
        if value is not None and not (math.isfinite(value) and (value > 0 if key == "lr" else value >= 0)):
            p.error(f"--{key} {value}: must be a finite number " + ("> 0" if key == "lr" else ">= 0"))
    return args


@cli
def main(argv: list[str] | None = None, vgg_features: nn.Module | None = None) -> int:
    """Tests pass `vgg_features` (a random VGG16) to skip the download."""
    args = parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k != "device"}
    runtime = join_torchrun(resolve_device(args.device))
    plan = plan_run(options)  # refuse early, before loading VGG weights, if the run cannot start
    if runtime.distributed:  # every rank has planned before rank 0 writes; all use rank 0's folder
        dist.barrier()
        plan.out = from_rank0(plan.out, runtime)
    if vgg_features is None:  # only the command line needs the pretrained weights
        vgg_features = weights.vgg16_features()
    result = train(plan, vgg_features, runtime=runtime)
    if result.stopped or not runtime.is_main:
        return result.exit_code  # 130 or 143 when a signal stopped it (errors.stopped_exit_code)
    out = plan.out
    checkpoints = f"{shlex.quote(str(out.resolve() / 'checkpoints'))}/ckpt_*.pt"  # the glob left to the shell
    print(f"done: {out}\nmake sketches of the photos with (--path_result: any folder):\n  "
          f"{_command('evaluate.py', '--path_content', plan.args['path_a'], '--path_result', out / 'sketches')}"
          f" --checkpoint {checkpoints}")
    return 0


def _command(script: str, *args) -> str:
    """A shell command running `script` of this folder, with absolute paths: it works from any folder."""
    words = [sys.executable, Path(__file__).resolve().parent / script, *args]
    return " ".join(shlex.quote(os.path.abspath(w) if isinstance(w, Path) else str(w)) for w in words)


if __name__ == "__main__":
    sys.exit(main())
