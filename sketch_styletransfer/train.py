"""Train TOM, the sketch synthesizer, on a folder of photos and an unpaired folder of real sketches.

    python sketch_styletransfer/train.py --path_a PHOTOS --path_b SKETCHES          # or, inside this folder:
    cd sketch_styletransfer && python train.py --path_a ../PHOTOS --path_b ../SKETCHES
    python sketch_styletransfer/train.py --checkpoint train_results/tom-<time>      # continue a run
    torchrun --nproc_per_node 4 sketch_styletransfer/train.py --path_a PHOTOS --path_b SKETCHES  # 4 GPUs

Both folders are read with their sub-folders (flat folders or ImageFolder-style trees of .jpg .jpeg
.png .webp .bmp; hidden files and folders are left out). A run folder
(--out, default train_results/tom-<time>) holds args.json, log.jsonl (JSON lines), images/
(PNG grids: photos, their grey sketches, their binary sketches) and checkpoints/ (the newest
--keep, last.txt points at the newest). --checkpoint takes a checkpoint file or a run folder and
restores weights, optimizers and the iteration count; unspecified options keep the run's values.
Ctrl-C finishes the current step, saves a checkpoint and stops. Then make sketches with
evaluate.py. Under torchrun --batch_size is per process, every rank reads its own share of the
photos and sketches, gradients are averaged (identical weights), and rank 0 alone writes.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # run as a script: the repository's top-level modules must be importable
    sys.path.insert(0, ROOT)

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets import (DataError, FolderDataset, InfiniteSampler, iteration_generator, paired_crop_flip,
                      require_images, to_float)
from fileio import (CheckpointDir, CheckpointError, JsonlLog, OutputError, load_checkpoint, newest_checkpoint,
                    save_grid, write_json)
from sketch_styletransfer.tom_models import (THRESHOLD, StyleDiscriminator, TOMGenerator, VGGFeatures, check_size,
                                             content_loss, d_hinge, gram_input, gram_loss, sketch_photos, to_sketch)
from config import ConfigError
from training import (Runtime, StopRequest, from_rank0, ignore_stop_signals, join_torchrun, resolve_device,
                      rng_state, seed_everything, set_rng_state, sync_gradients)

KIND, FORMAT = "tom", 1
CROP_SCALE = 292 / 256   # the reference resizes 256 px training images to 292, then crops 256
PHOTO_STREAM, SKETCH_STREAM = 1, 2   # separate random streams for the two unpaired folders
DEFAULTS = dict(path_a=None, path_b=None, im_size=256, batch_size=4, total_iter=5000, lr=2e-4, mse_weight=0.2,
                gram_weight=1.0, nfc=128, seed=0, save_interval=500, image_interval=100, log_interval=100,
                keep=10, grid_n=8, workers=2)


class RunError(Exception):
    """A refused or impossible run (an existing run folder, missing arguments, non-finite losses)."""


# --------------------------------------------------------------------------- the model and its step

class TOMTrainer:
    """TOM's networks and optimizers, and one training iteration (D step, then G step)."""

    def __init__(self, vgg_features: nn.Sequential, nfc: int = 128, lr: float = 2e-4, mse_weight: float = 0.2,
                 gram_weight: float = 1.0, device: torch.device | str = "cpu", runtime: Runtime | None = None):
        self.rt = runtime or Runtime(device=torch.device(device))  # under torchrun: gradients averaged over ranks
        self.device = self.rt.device
        self.vgg = VGGFeatures(vgg_features).to(self.device)
        self.g = TOMGenerator(nfc=nfc).to(self.device)
        self.d = StyleDiscriminator().to(self.device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr, betas=(0.5, 0.99))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr, betas=(0.5, 0.99))
        self.mse_weight, self.gram_weight = mse_weight, gram_weight

    def step(self, photos: torch.Tensor, sketches: torch.Tensor) -> dict[str, torch.Tensor]:
        """One iteration on photos and unpaired real sketches (both (B, 3, H, W) in [-1, 1]); detached losses."""
        n = min(photos.shape[0], sketches.shape[0])  # an unreadable file shrinks one batch: no silent broadcast
        photos, sketches = photos[:n], sketches[:n]
        with torch.no_grad():
            photo_pool3 = self.vgg(photos, levels=3)[2]
            real = self.vgg(sketches, levels=4)[1:]          # pool2, pool3, pool4
        fake = self.vgg(self.g(photo_pool3), levels=4)[1:]
        real_grams, fake_grams = gram_input(real), gram_input(fake)

        self.opt_d.zero_grad(set_to_none=True)
        loss_d = d_hinge(self.d(real_grams), self.d(fake_grams.detach()))
        loss_d.backward()
        sync_gradients(self.d.parameters(), self.rt)
        self.opt_d.step()

        self.opt_g.zero_grad(set_to_none=True)
        adv = -self.d(fake_grams).mean()
        mse = content_loss(fake[1], photo_pool3, real[1])
        style = gram_loss(fake, real)
        (adv + self.mse_weight * mse + self.gram_weight * style).backward()
        sync_gradients(self.g.parameters(), self.rt)
        self.opt_g.step()
        return {"d_hinge": loss_d.detach(), "g_adv": adv.detach(), "mse": mse.detach(), "gram": style.detach()}

    @torch.no_grad()
    def sketch(self, photos: torch.Tensor) -> torch.Tensor:
        """Raw generator output for photos, in eval mode (BatchNorm running statistics)."""
        self.g.eval()
        try:
            return sketch_photos(self.g, self.vgg, photos)
        finally:
            self.g.train()

    def state_dict(self) -> dict:
        return {"networks": {"g": self.g.state_dict(), "d": self.d.state_dict()},
                "optimizers": {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()}}

    def load_state_dict(self, state: dict) -> None:
        self.g.load_state_dict(state["networks"]["g"])
        self.d.load_state_dict(state["networks"]["d"])
        self.opt_g.load_state_dict(state["optimizers"]["g"])
        self.opt_d.load_state_dict(state["optimizers"]["d"])


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
        sampler = InfiniteSampler(self.n, seed=seed * 7919 + stream, start=start * batch_size, rank=runtime.rank,
                                  world_size=runtime.world_size)
        self.loader = iter(DataLoader(_ByPosition(data), batch_size=batch_size, sampler=sampler, num_workers=workers,
                                      pin_memory=runtime.device.type == "cuda", persistent_workers=workers > 0,
                                      worker_init_fn=ignore_stop_signals if workers else None))
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

def resolve_checkpoint(path) -> Path:
    """A checkpoint file, or a run folder (or its checkpoints/ folder) -> its newest checkpoint."""
    path = Path(path)
    if path.is_dir():
        last = newest_checkpoint(path, ("checkpoints",))
        if last is None:
            raise CheckpointError(f"no checkpoint in {path}")
        return last
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint file belongs to."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def _holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("checkpoints", "log.jsonl", "args.json", "images"))


@dataclass
class Plan:
    """What a run will do: its full arguments, its folder, and the checkpoint it resumes (or None)."""
    args: dict
    out: Path
    checkpoint: dict | None = None
    checkpoint_path: Path | None = None


def plan_run(options: dict) -> Plan:
    """Merge CLI options (None: not given) with a resumed run's args, else the defaults; check the run folder."""
    ckpt, path, saved = None, None, {}
    if options.get("checkpoint"):
        path = resolve_checkpoint(options["checkpoint"])
        ckpt = load_checkpoint(path, kind=KIND)
        if ckpt.get("format") != FORMAT:
            raise CheckpointError(f"{path}: TOM checkpoint format {ckpt.get('format')}, this code reads {FORMAT}")
        saved = ckpt["args"]
    args = {k: options[k] if options.get(k) is not None else saved.get(k, default) for k, default in DEFAULTS.items()}
    for key in ("path_a", "path_b"):
        if not args[key]:
            raise RunError(f"--{key} is required ({'photos' if key == 'path_a' else 'real sketches'} folder)")
        args[key] = str(Path(args[key]).resolve())  # absolute: a resume may start from another folder
        require_images(args[key], f"--{key}", nested=True)
    try:
        check_size(args["im_size"])
    except ValueError as e:
        raise RunError(f"--im_size: {e}") from None
    if ckpt is not None and args["nfc"] != saved.get("nfc", args["nfc"]):
        raise RunError(f"--nfc {args['nfc']} differs from the checkpoint's {saved['nfc']}")
    if options.get("out"):
        out = Path(options["out"])
    elif path is not None:
        out = run_folder_of(path)
    else:
        out = Path("train_results") / f"tom-{time.strftime('%Y%m%d-%H%M%S')}"
    if _holds_run(out) and (path is None or out.resolve() != run_folder_of(path).resolve()):
        hint = f"continue it with --checkpoint {out}" if path is None else "its own checkpoint resumes into it"
        raise RunError(f"run folder {out} already holds a run: {hint}, or choose another --out")
    return Plan(args, out, ckpt, path)


def checkpoint_dict(trainer: TOMTrainer, iteration: int, args: dict) -> dict:
    """Everything a resume needs, as tensors and plain data (loadable with weights_only=True)."""
    return {"kind": KIND, "format": FORMAT, "iteration": iteration, **trainer.state_dict(), "args": dict(args),
            "rng": rng_state()}


# --------------------------------------------------------------------------- the loop

def train(plan: Plan, vgg_features: nn.Sequential, device: torch.device | str = "cpu", progress: bool = True,
          runtime: Runtime | None = None) -> Path:
    """Train (or resume) the run `plan_run` planned; returns the run folder. Under torchrun (`runtime`
    from join_torchrun) every rank trains on its share of the data and rank 0 alone writes."""
    args, out, ckpt = plan.args, plan.out, plan.checkpoint
    rt = runtime or Runtime(device=torch.device(device))
    device, progress = rt.device, progress and rt.is_main
    seed_everything(args["seed"])  # the same on every rank: identical initial weights
    trainer = TOMTrainer(vgg_features, args["nfc"], args["lr"], args["mse_weight"], args["gram_weight"], runtime=rt)
    start = 0
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        set_rng_state(ckpt["rng"])
        start = int(ckpt["iteration"])
        tqdm.write(f"resumed from {plan.checkpoint_path} at iteration {start}")
    total = args["total_iter"]
    photos = Stream(args["path_a"], args["im_size"], args["batch_size"], args["seed"], PHOTO_STREAM, start,
                    args["workers"], rt)
    sketches = Stream(args["path_b"], args["im_size"], args["batch_size"], args["seed"], SKETCH_STREAM, start,
                      args["workers"], rt)
    grid_photos = fixed_photos(args["path_a"], args["im_size"], args["grid_n"]).to(device)
    log = JsonlLog(out / "log.jsonl")
    if rt.is_main:
        write_json(out / "args.json", args)
        log.truncate_after(start - 1)
    ckpts = CheckpointDir(out / "checkpoints", keep=args["keep"])
    if progress:
        print(f"run folder: {out}\n{photos.n} photos, {sketches.n} sketches, {total} iterations on {device}")
    sums: dict[str, torch.Tensor] = {}
    count, t0, last = 0, time.perf_counter(), None
    bar = tqdm(range(start, total), initial=start, total=total, desc="tom", disable=not progress, dynamic_ncols=True)
    with StopRequest() as stop:
        for it in bar:
            losses = trainer.step(photos.batch(it), sketches.batch(it))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v
            count, done = count + 1, it + 1
            if done % args["log_interval"] == 0 or done == total:
                record = {"iter": it, **{k: round(float(v) / count, 6) for k, v in sums.items()},
                          "img_per_s": round(count * args["batch_size"] / max(time.perf_counter() - t0, 1e-9), 3),
                          "skipped": photos.skipped + sketches.skipped}
                _check_finite(sums, it, last or ckpts.last())
                if rt.is_main:
                    log.write(record)
                bar.set_postfix({k: f"{record[k]:.3g}" for k in sums})
                sums, count, t0 = {}, 0, time.perf_counter()
            if rt.is_main and (it % args["image_interval"] == 0 or done == total):
                save_sample_grid(trainer, grid_photos, out / "images" / f"iter_{it:08d}.png")
            if done % args["save_interval"] == 0 or done == total or stop.requested:
                _check_finite(sums, it, last or ckpts.last())  # never save weights that saw a NaN
                if rt.is_main:
                    last = ckpts.save(checkpoint_dict(trainer, done, args), done)
                if stop.requested:
                    bar.close()
                    if rt.is_main:
                        print(f"stopped at iteration {done}; resume with:\n  {_command('train.py', '--checkpoint', out)}",
                              file=sys.stderr)
                    return out
    if rt.is_main and start >= total and ckpts.last() is None:
        ckpts.save(checkpoint_dict(trainer, start, args), start)  # nothing to train: still leave a checkpoint
    return out


def _check_finite(sums: dict[str, torch.Tensor], it: int, last_good: Path | None) -> None:
    """Stop with a clear message if a loss summed since the last log line is NaN or infinite."""
    bad = [k for k, v in sums.items() if not math.isfinite(float(v))]
    if bad:
        raise RunError(f"loss {', '.join(bad)} became NaN/Inf by iteration {it}; last good checkpoint: "
                       f"{last_good or 'none'}. Lower --lr and resume from it.")


def save_sample_grid(trainer: TOMTrainer, photos: torch.Tensor, path: Path) -> None:
    """Three rows: the photos, their grey sketches, their binary sketches (threshold 0.7)."""
    raw = trainer.sketch(photos)
    grey = to_sketch(raw, None).mul(2).sub(1).expand(-1, 3, -1, -1)
    binary = to_sketch(raw, THRESHOLD).mul(2).sub(1).expand(-1, 3, -1, -1)
    save_grid(torch.cat([photos, grey, binary]), path, nrow=photos.shape[0])


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
    args = p.parse_args(argv)
    for key in ("batch_size", "total_iter", "save_interval", "image_interval", "log_interval", "keep", "grid_n", "nfc"):
        value = getattr(args, key)
        if value is not None and value < (0 if key == "total_iter" else 1):
            p.error(f"--{key} must be positive")
    for key in ("lr", "mse_weight", "gram_weight"):
        value = getattr(args, key)
        if value is not None and not (math.isfinite(value) and (value > 0 if key == "lr" else value >= 0)):
            p.error(f"--{key} {value}: must be a finite number " + ("> 0" if key == "lr" else ">= 0"))
    return args


def main(argv: list[str] | None = None, vgg_features: nn.Module | None = None) -> int:
    """Command-line entry; returns the exit code. Tests pass `vgg_features` (a random VGG16) to skip the download."""
    args = parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k != "device"}
    try:
        runtime = join_torchrun(resolve_device(args.device))
        plan = plan_run(options)  # refuse early, before loading VGG weights, if the run cannot start
        if runtime.distributed:  # every rank has planned before rank 0 writes; all use rank 0's folder
            dist.barrier()
            plan.out = from_rank0(plan.out, runtime)
        if vgg_features is None:
            import weights  # only the command line needs the pretrained weights
            try:
                vgg_features = weights.vgg16_features()
            except weights.WeightsError as e:
                raise RunError(str(e)) from None
        out = train(plan, vgg_features, runtime=runtime)
    except (RunError, DataError, CheckpointError, ConfigError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not runtime.is_main:
        return 0
    checkpoints = f"{shlex.quote(str(Path(out).resolve() / 'checkpoints'))}/ckpt_*.pt"  # the glob left to the shell
    print(f"done: {out}\nmake sketches of the photos with (--path_result: any folder):\n  "
          f"{_command('evaluate.py', '--path_content', plan.args['path_a'], '--path_result', Path(out) / 'sketches')}"
          f" --checkpoint {checkpoints}")
    return 0


def _command(script: str, *args) -> str:
    """A shell command running `script` of this folder, with absolute paths: it works from any folder."""
    words = [sys.executable, Path(__file__).resolve().parent / script, *args]
    return " ".join(shlex.quote(os.path.abspath(w) if isinstance(w, Path) else str(w)) for w in words)


if __name__ == "__main__":
    sys.exit(main())
