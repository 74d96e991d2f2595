"""The loop scaffold every trainer shares: device, precision, data, EMA, checkpoints, logs.

A stage (stages.AEStage, stages.GANStage, TOM's trainer) supplies its networks and `step` (updates through
`optimizer_step`); `run_stage` does the rest: resume, progress, log, grids, evaluation, checkpoints, NaN/Inf
handling, clean stops on SIGINT/SIGTERM. Its knobs are its own `LoopOptions`, not the project's Config.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets import InfiniteSampler, RandomStream, mix_seed
from devices import DeviceError, native_bf16, resolve_device
from errors import UserError, stopped_exit_code
from fileio import CheckpointDir, CheckpointError, JsonlLog, load_checkpoint, save_grid
from plot_log import StageMonitor

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # what stops a run cleanly (StopRequest)


@dataclass
class Runtime:
    """Where and how to compute, chosen once per process and passed down."""
    device: torch.device
    bf16: bool = False             # bf16 autocast
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1
    sync_bn: bool = False          # SyncBatchNorm across ranks (DDP)
    compile: bool = False          # torch.compile the trained networks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, net: nn.Module) -> nn.Module:
        """Move a network to the device and memory format; SyncBatchNorm under DDP if asked."""
        if self.sync_bn and self.distributed:
            net = to_sync_batchnorm(net)
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def compiled(self, net: nn.Module) -> nn.Module:
        """torch.compile in place when enabled; after any EMA copy (a copy of a compiled module calls the original)."""
        if self.compile:
            net.compile()
        return net

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def setup_runtime(device: str, seed: int, bf16: bool = True, channels_last: bool = True, compile: bool = False,
                  sync_bn: bool = False, deterministic: bool = False) -> Runtime:
    """Pick the device, join a torchrun group if any, seed, set kernels. bf16 only where native, channels-last
    only on CUDA (on the CPU it gained nothing: bench_speed.py)."""
    device = resolve_device(device)
    if sync_bn and device.type != "cuda":
        raise DeviceError("SYNC_BN=true needs CUDA devices (torch's SyncBatchNorm runs on GPUs only)")
    runtime = join_torchrun(device)
    if runtime.device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seed_everything(seed)  # same seed on every rank: identical initial weights
    cuda = runtime.device.type == "cuda"
    return dataclasses.replace(runtime, bf16=bf16 and native_bf16(runtime.device), channels_last=channels_last and cuda,
                               sync_bn=sync_bn, compile=compile)


def join_torchrun(device: torch.device) -> Runtime:
    """Under torchrun: this rank's GPU (LOCAL_RANK) and the process group (nccl, or gloo on CPU)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if device.type == "cuda":
        if world > 1:
            device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, rank=rank, world_size=world)


def from_rank0(value, runtime: Runtime):
    """Rank 0's `value` on every rank (e.g. a run folder named after the clock)."""
    if not runtime.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def to_sync_batchnorm(net: nn.Module) -> nn.Module:
    """Replace every BatchNorm with SyncBatchNorm, moving spectral-norm parametrizations over (torch's
    convert_sync_batchnorm cannot), so state-dict keys stay the same."""
    for name, child in net.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            parametrized = parametrize.is_parametrized(child, "weight")
            with torch.no_grad():
                sync.weight.copy_(child.parametrizations.weight.original if parametrized else child.weight)
                sync.bias.copy_(child.bias)
            if parametrized:
                for p in child.parametrizations.weight:
                    parametrize.register_parametrization(sync, "weight", p, unsafe=True)
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(sync, buffer).copy_(getattr(child, buffer))
            setattr(net, name, sync)
        else:
            to_sync_batchnorm(child)
    return net


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Global RNG states (torch CPU and CUDA) as tensors: checkpoint-safe under weights_only."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def infinite_batches(dataset: Dataset, batch_size: int, workers: int, set_weights, per_batch: bool, seed: int,
                     stream: int, runtime: Runtime, start: int = 0):
    """Endless batches from batch number `start` of this stream; each batch's (`per_batch`) or item's sketch set
    is drawn with the odds `set_weights`."""
    sampler = InfiniteSampler(len(dataset), set_weights, batch_size if per_batch else 1, seed=mix_seed(seed, stream),
                              start=start * batch_size, rank=runtime.rank, world_size=runtime.world_size)
    # its own generator: creating an iterator must not draw from the global RNG (exact resume)
    seeds = torch.Generator().manual_seed(mix_seed(sampler.seed, RandomStream.LOADER, start))
    return stoppable_batches(dataset, workers, batch_size=batch_size, sampler=sampler, drop_last=True,
                             pin_memory=runtime.device.type == "cuda", persistent_workers=False,
                             prefetch_factor=4 if workers else None, generator=seeds)


def stoppable_batches(dataset: Dataset, workers: int, **loader_args):
    """iter(DataLoader(...)) whose workers leave a stop signal sent to the process group to the main process."""
    loader = DataLoader(dataset, num_workers=workers, worker_init_fn=ignore_stop_signals if workers else None,
                        **loader_args)
    with stop_signals_blocked():  # the workers start here
        return iter(loader)


@contextlib.contextmanager
def stop_signals_blocked():
    """Hold SIGINT/SIGTERM back in this thread; a forked child inherits the mask. Else a group signal landing
    while a loader worker starts, before `ignore_stop_signals`, kills it and the main process fails unsaved."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader worker's init: ignore SIGINT, and SIGTERM from anyone but the parent (whose SIGTERM, its
    loader's shutdown, still ends the worker: a thread waits for it with the sender's pid; Linux only)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also drops one that came while it started
    if not hasattr(signal, "sigwaitinfo"):
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return
    parent = os.getppid()
    # SIGTERM stays blocked (born so: stop_signals_blocked); threads started later inherit the mask
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def watch():
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)  # as torch's own handler does for its parent's SIGTERM
    threading.Thread(target=watch, name="sigterm-from-parent", daemon=True).start()


def sync_gradients(params, runtime: Runtime) -> None:
    """Average gradients over ranks (DDP by hand: any number of forwards per step)."""
    if not runtime.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= runtime.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def optimizer_step(loss: torch.Tensor, optimizers, runtime: Runtime, guard: NanGuard, it: int,
                   losses: dict[str, torch.Tensor]) -> None:
    """Backward `loss` and step `optimizers` (zeroed first) if the guard allows; the one update of every trainer.
    Gradients are averaged over ranks before the guard decides (a collective: no rank may skip it); `losses`
    are detached either way, so no autograd graph outlives the step."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    sync_gradients([p for opt in optimizers for group in opt.param_groups for p in group["params"]], runtime)
    if guard.ok(it, losses):
        for opt in optimizers:
            opt.step()
    for k in losses:
        losses[k] = losses[k].detach()


def adam(params, lr: float, betas: tuple[float, float], device: torch.device,
         foreach: bool | None = True) -> torch.optim.Adam:
    """Adam, fused on CUDA, else `foreach` (False: one parameter at a time)."""
    if device.type == "cuda" and foreach is not False:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=foreach)


def lr_factor(it: int, total: int, decay_from: float) -> float:
    """1 until `decay_from` of `total` iterations, then falling linearly to 0 (decay_from=1: constant)."""
    start = decay_from * total
    return 1.0 if it < start or start >= total else max(0.0, (total - it) / (total - start))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of a network's parameters; buffers are copied."""

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        params = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(list(self.net.parameters()), params, 1.0 - self.decay)  # ema += (1 - decay)(p - ema)
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return self.net.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state)


class NonFiniteLoss(UserError, RuntimeError):
    """A loss became NaN or Inf."""


class NanGuard:
    """Watches losses for NaN/Inf: "stop" records each loss's first bad iteration on the device (no sync per
    step) and stops at the next `check`; "skip" skips bad steps, and stops after `skip_limit` in a row of one
    update (counted per update, named by its losses). Under torchrun a step is skipped on every rank if any
    rank's loss is bad. `skip_setting`: how the user asks for "skip", named in the message."""

    def __init__(self, policy: str, device: torch.device, skip_limit: int = 20,
                 skip_setting: str = "NAN_POLICY=skip", distributed: bool = False):
        self.policy, self.device, self.skip_limit, self.skip_setting = policy, device, skip_limit, skip_setting
        self.distributed = distributed
        self.first_bad: dict[str, torch.Tensor] = {}
        self.skipped = 0
        self.in_a_row: dict[tuple[str, ...], int] = {}  # per update (its loss names): skipped steps in a row
        self.last_good: Path | None = None  # run_stage keeps it current

    def ok(self, it: int, losses: dict[str, torch.Tensor]) -> bool:
        """Before an optimizer step; False: skip this update."""
        if self.policy == "skip":
            bad = [k for k, v in losses.items() if not torch.isfinite(v.detach()).all()]
            if self.distributed and self._any_rank_bad(bool(bad)) and not bad:
                bad = ["(a loss on another rank)"]
            update = tuple(losses)
            row = self.in_a_row[update] = (self.in_a_row.get(update, 0) + 1) if bad else 0
            if bad:
                self.skipped += 1
                tqdm.write(f"warning: iteration {it}: non-finite {', '.join(bad)}; step skipped", file=sys.stderr)
            if row >= self.skip_limit:
                raise NonFiniteLoss(f"{row} steps in a row skipped for NaN/Inf losses of the update of "
                                    f"{', '.join(update)} (up to iteration {it}; skip limit {self.skip_limit}): "
                                    f"the weights themselves are broken. "
                                    f"Last good checkpoint: {self.last_good or 'none saved yet'}. Lower the "
                                    f"learning rate and resume from it.")
            return not bad
        for name, value in losses.items():
            record = self.first_bad.setdefault(name, torch.full((), -1, dtype=torch.long, device=self.device))
            bad_now = ~torch.isfinite(value.detach()).all()
            record.copy_(torch.where(bad_now & (record < 0), torch.full_like(record, it), record))
        return True

    def _any_rank_bad(self, bad: bool) -> bool:
        flag = torch.tensor([float(bad)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def check(self, last_checkpoint: Path | None) -> None:
        """Raise NonFiniteLoss if any loss went bad since the start (syncs)."""
        bad = [(int(record.item()), order, name) for order, (name, record) in enumerate(self.first_bad.items())]
        bad = sorted(b for b in bad if b[0] >= 0)
        if bad:  # the earliest one is the cause; later ones follow from it
            it, _, name = bad[0]
            where = last_checkpoint or "none saved yet"
            raise NonFiniteLoss(f"loss '{name}' became NaN/Inf at iteration {it}. Last good checkpoint: "
                                f"{where}. Lower the learning rate, or skip such steps with {self.skip_setting}.")


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes the step, saves and exits. A second signal REPEAT_WINDOW
    or more later aborts without saving (KeyboardInterrupt); sooner it is GNU `timeout`'s echo to the group."""

    REPEAT_WINDOW = 1.0  # seconds

    def __init__(self):
        self.signal = 0  # the stop signal received first (0: none yet)
        self._first = 0.0  # when (time.monotonic)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return bool(self.signal)

    def __enter__(self):
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no signal handling
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.requested:
            if now - self._first >= self.REPEAT_WINDOW:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            return
        self.signal, self._first = signum, now
        tqdm.write(f"\n{signal.Signals(signum).name}: finishing this step, saving a checkpoint, then stopping "
                   f"(press again to abort without saving)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Stage(Protocol):
    """What a training stage provides to `run_stage`."""
    kind: str                  # checkpoint kind: "ae", "gan" or "tom"

    def arch(self) -> dict: ...                                  # preset and sizes: what must match to resume
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def restart_data(self, iteration: int) -> None: ...          # data iterators at this iteration
    def step(self, it: int, guard: NanGuard) -> dict[str, torch.Tensor]: ...  # one iteration
    def sample_grid(self) -> tuple[torch.Tensor, int]: ...       # (images in [-1, 1], per row)
    def evaluate(self, it: int) -> dict[str, float]: ...         # metrics (may be empty)
    def items_per_step(self) -> int: ...                         # images per iteration, all ranks


@dataclass(frozen=True)
class LoopOptions:
    """The loop's own knobs: train.py makes them from its Config, TOM from its command line."""
    total: int                     # iterations in all, counting resumed ones
    log_interval: int = 100        # iterations between log records
    image_interval: int = 500      # iterations between sample grids
    save_interval: int = 2000      # iterations between checkpoints
    keep: int = 3                  # newest checkpoints kept
    seed: int = 0                  # the fixed seed of grids and metrics (see _fixed_rng)
    nan_policy: str = "stop"       # a NaN/Inf loss: "stop" the run or "skip" the step (NanGuard)
    nan_skip_limit: int = 20       # "skip": stop after this many skipped steps in a row of one update
    nan_skip_setting: str = "NAN_POLICY=skip"  # how the user asks for "skip", named in the stop message
    eval_interval: int = 0         # iterations between stage.evaluate calls (0: never)
    logger: str = "none"           # "tensorboard": scalars and grids also in <stage_dir>/tensorboard
    config: dict = field(default_factory=dict)  # the run's settings, stored in every checkpoint


@dataclass
class StageResult:
    last_checkpoint: Path | None
    iteration: int
    stop_signal: int = 0       # the signal (SIGINT, SIGTERM) that stopped it before the end; 0: none did

    @property
    def stopped(self) -> bool:
        return bool(self.stop_signal)

    @property
    def exit_code(self) -> int:
        """0 done, 128 + the signal if one stopped it."""
        return stopped_exit_code(self.stop_signal) if self.stopped else 0


def run_stage(stage: Stage, options: LoopOptions, stage_dir: Path, runtime: Runtime,
              resume: bool | Path = False) -> StageResult:
    """Train `stage` to `options.total` iterations in `stage_dir`; `resume`: True from the folder's newest
    checkpoint (if any), a path from that checkpoint."""
    total = options.total
    ckpts = CheckpointDir(stage_dir / "checkpoints", options.keep, kind=stage.kind)
    log = JsonlLog(stage_dir / "log.jsonl")
    resume_from = resume if isinstance(resume, Path) else ckpts.last() if resume else None
    start = _resume(stage, resume_from, runtime) if resume_from is not None else 0
    if runtime.is_main:
        log.truncate_after(start - 1)  # records past the checkpoint (or all, from 0) will be written again
    stage.restart_data(start)
    guard = NanGuard(options.nan_policy, runtime.device, options.nan_skip_limit, options.nan_skip_setting,
                     distributed=runtime.distributed)
    monitor = StageMonitor(stage_dir, options.logger, start, enabled=runtime.is_main)  # curves, TensorBoard
    last = guard.last_good = ckpts.last()
    sums: dict[str, torch.Tensor] = {}
    count, t0, it = 0, time.perf_counter(), start

    def save(iteration: int) -> Path:
        guard.check(last)  # never write a checkpoint after a NaN
        return ckpts.save(checkpoint(stage, iteration, options.config), iteration)

    bar = tqdm(range(start, total), initial=start, total=total, desc=stage.kind, disable=not runtime.is_main,
               dynamic_ncols=True)
    with StopRequest() as stop:
        for it in bar:
            losses = stage.step(it, guard)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            count += 1
            done = it + 1
            if done % options.log_interval == 0 or done == total:
                guard.check(last)
                record = _log_record(it, sums, count, time.perf_counter() - t0, stage, guard)
                if runtime.is_main:
                    log.write(record)
                    monitor.log(record)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in sums})
                sums, count, t0 = {}, 0, time.perf_counter()
            if runtime.is_main and (it % options.image_interval == 0 or done == total):
                with _fixed_rng(options.seed, runtime):
                    images, nrow = stage.sample_grid()
                save_grid(images, stage_dir / "images" / f"iter_{it:08d}.png", nrow)
                monitor.grid(images, nrow, it)
            if options.eval_interval and done % options.eval_interval == 0:
                with _fixed_rng(options.seed, runtime):
                    metrics = stage.evaluate(it)
                if runtime.is_main and metrics:
                    log.write({"iter": it, **metrics})
                    monitor.log({"iter": it, **metrics})
                    tqdm.write(f"[{stage.kind}] iteration {done}: "
                               + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if done % options.save_interval == 0 or done == total or stop.requested:
                if runtime.is_main:
                    last = guard.last_good = save(done)
                if stop.requested:
                    bar.close()
                    monitor.close()
                    return StageResult(last, done, stop_signal=stop.signal)
    if start >= total and last is None and runtime.is_main:
        last = save(start)  # nothing to train (e.g. 0 iterations): still leave a loadable checkpoint
    monitor.close()
    return StageResult(last, max(start, total))


def checkpoint(stage: Stage, iteration: int, config: dict) -> dict:
    """Every stage's checkpoint (weights_only-loadable): its state, the run's settings, the RNG for an exact resume."""
    return {"kind": stage.kind, "iteration": iteration, "config": config,
            "state": stage.state_dict(), "rng": rng_state()}


@contextlib.contextmanager
def _fixed_rng(seed: int, runtime: Runtime):
    """A fixed seed in the block, the training RNG untouched: grids and metrics comparable, resume exact."""
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _resume(stage: Stage, path: Path, runtime: Runtime) -> int:
    ckpt = load_checkpoint(path, map_location=runtime.device, kind=stage.kind)
    saved = ckpt["state"].get("arch", {})
    check_arch(saved, stage.arch(), path)
    stage.load_state_dict(ckpt["state"])
    set_rng_state({k: (v.cpu() if torch.is_tensor(v) else [t.cpu() for t in v]) for k, v in ckpt["rng"].items()})
    if runtime.is_main:
        tqdm.write(f"[{stage.kind}] resumed from {path} at iteration {ckpt['iteration']}")
    return ckpt["iteration"]


def check_arch(saved: dict, current: dict, path) -> None:
    """CheckpointError naming what differs unless `saved` has the same preset and sizes."""
    differ = [k for k in current if saved.get(k) != current[k]]
    if differ:
        raise CheckpointError(f"{path} was trained with " + ", ".join(f"{k}={saved.get(k)}" for k in differ)
                              + "; this run has " + ", ".join(f"{k}={current[k]}" for k in differ)
                              + ": resume with the run's own settings (see its config.json)")


def _log_record(it, sums, count, seconds, stage: Stage, guard: NanGuard) -> dict:
    record = {"iter": it, **{k: float(v) / count for k, v in sums.items()}}
    record["img_per_s"] = count * stage.items_per_step() / max(seconds, 1e-9)
    record["sec"] = seconds  # wall time of these iterations (grids and checkpoints included): time -> quality
    if guard.skipped:
        record["skipped_steps"] = guard.skipped
    record.update(getattr(stage, "log_extras", dict)())
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in record.items()}
