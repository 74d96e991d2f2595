"""Train the sketch-to-image model: the AE stage, then the GAN stage (or one of them).

Inputs: settings (DATA_NAME's preset, then config.py's EDIT HERE block, then KEY=value arguments); the
image folder IMAGE_DIR and its sketch folders SKETCH_DIRS (paired by name); optionally TEST_IMAGE_DIR and
TEST_SKETCH_DIR, a held-out pair.
Outputs: a run folder <SAVE_FOLDER>/<TRIAL_NAME> with config.json, settings.txt and per stage (ae/, gan/)
log.jsonl, loss_curves.png, images/ and checkpoints/. Under torchrun rank 0 writes. See README.md.

Examples:
    python train.py                                  # the demo preset (makes its data first)
    python train.py DATA_NAME=art IMAGE_DIR=... SKETCH_DIRS=a,b,c TEST_IMAGE_DIR=... TEST_SKETCH_DIR=...
    python train.py SAVE_FOLDER=train_results TRIAL_NAME=<run> RESUME=true   # continue a run
    python train.py DATA_NAME=face --help            # every setting, with the face preset's values
    python train_step_1_ae.py KEY=value ...          # the AE stage alone (same as TRAIN_AE_ONLY=true)
    python train_step_2_gan.py PRETRAINED_AE_PATH=<run> KEY=value ...   # the GAN stage alone
"""
from __future__ import annotations

import sys

from errors import EXIT_INTERRUPTED, cli, quiet_start

if __name__ == "__main__":  # Ctrl-C while the libraries load, a syntax error in config.py: one line
    sys.excepthook = quiet_start

import contextlib  # after the hook: the imports below take seconds (torch)
import itertools
import os
import shlex
import time
from pathlib import Path
from typing import Iterator

import torch.distributed as dist

import benchmark
import config as C
from config import Config, ConfigError
from datasets import Pairs, pair_folders, require_readable
from demo_data import ensure_demo_data
from devices import fit_threads_to_free_cores
from fileio import (LOCK_FILE, CheckpointDir, CheckpointError, OutputError, load_checkpoint, locked_folder,
                    remove_stale_temporaries, write_json, write_text)
from plot_log import require_tensorboard
from losses import build_lpips
from checkpoints import load_trained
from models import AutoEncoder
from stages import AEStage, GANStage, check_autoencoder, runtime_for
from training import LoopOptions, Runtime, StageResult, check_arch, from_rank0, run_stage

RUN_ENTRIES = {"config.json", "settings.txt", "ae", "gan", LOCK_FILE}


@cli
def main(argv: list[str]) -> int:
    wants_help = any(arg in ("-h", "--help") for arg in argv)
    argv = [arg for arg in argv if arg not in ("-h", "--help")]
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped, never crashes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        cfg, origins = C.from_command_line(argv)
        if wants_help:
            print(help_text(cfg, origins))
            return 0
        report = C.settings_report(cfg, origins)
        if int(os.environ.get("RANK", 0)) == 0:  # under torchrun: once (the runtime is not set up yet)
            print(report)
        return train(cfg, report)
    except KeyboardInterrupt:  # Ctrl-C during start-up, or a second one while saving
        print("interrupted: nothing saved since the last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED


def help_text(cfg: Config, origins: dict[str, str]) -> str:
    return (f"usage: python train.py [KEY=value ...] [-h | --help]\n\n{__doc__.strip()}\n\n"
            f"Settings under preset '{cfg.DATA_NAME}', as in config.py: SETTING (type) = value [where it was "
            f"set],\nthen its comment. Precedence: Config defaults < preset < config.py EDIT HERE block < command "
            f"line.\n" + C.help_text(cfg, origins))


def train(cfg: Config, settings: str = "") -> int:
    """Train `cfg`; `settings` (the report of changed settings) goes to <run>/settings.txt."""
    runtime = runtime_for(cfg)
    if runtime.device.type == "cpu" and runtime.world_size == 1 and (line := fit_threads_to_free_cores()):
        print(line)
    if cfg.LOGGER == "tensorboard":
        require_tensorboard()  # before any run folder exists
    if cfg.IMAGE_DIR == C.PRESETS["demo"]["IMAGE_DIR"] and runtime.is_main:
        ensure_demo_data()
    _barrier(runtime)
    # every input is checked before the run folder exists
    pairs = require_readable(pair_folders(cfg.IMAGE_DIR, cfg.SKETCH_DIRS))
    grid_pairs = pairs
    if cfg.TEST_IMAGE_DIR:
        grid_pairs = require_readable(pair_folders(cfg.TEST_IMAGE_DIR, [cfg.TEST_SKETCH_DIR]))
    if cfg.FID_INTERVAL and not cfg.TRAIN_AE_ONLY and not cfg.TEST_IMAGE_DIR:  # Config pairs it with TEST_SKETCH_DIR
        raise ConfigError("FID_INTERVAL > 0 needs a held-out set: set TEST_IMAGE_DIR and TEST_SKETCH_DIR "
                          "(FID on augmented training crops is not a valid number), or FID_INTERVAL=0")
    pretrained = None
    if cfg.TRAIN_GAN_ONLY:  # PRETRAINED_AE_PATH's AE, or that of the run RESUME continues
        pretrained = load_ae(cfg, Path(cfg.SAVE_FOLDER) / cfg.TRIAL_NAME if cfg.RESUME else None, None)
    if cfg.RESUME:
        check_resume(cfg, Path(cfg.SAVE_FOLDER) / cfg.TRIAL_NAME, len(pairs))
    lpips = build_lpips(max(cfg.W_REC_LPIPS, cfg.W_GAN_LPIPS), runtime.device)
    fid = benchmark.training_fid(cfg, runtime, grid_pairs) if cfg.FID_INTERVAL and not cfg.TRAIN_AE_ONLY else None
    with prepare_run_dir(cfg, runtime) as run_dir:
        if runtime.is_main:
            write_text(run_dir / "settings.txt", (settings or C.settings_report(cfg, {})) + "\n")
            print(f"run folder: {run_dir}\n{len(pairs)} training pairs, {len(pairs.sketches[0])} sketch set(s) each")
            if pairs.missing:
                print(pairs.report())
        return train_stages(cfg, runtime, run_dir, pairs, grid_pairs, lpips, fid, pretrained)


def train_stages(cfg: Config, runtime: Runtime, run_dir: Path, pairs: Pairs, grid_pairs: Pairs, lpips, fid,
                 pretrained: AutoEncoder | None) -> int:
    """The stages of `cfg` in the prepared `run_dir`; returns the exit code."""
    ae_checkpoint = None
    if not cfg.TRAIN_GAN_ONLY:
        stage = AEStage(cfg, runtime, pairs, grid_pairs, lpips)
        result = run_stage(stage, loop_options(cfg, cfg.ITERATION_AE), run_dir / "ae", runtime, resume=cfg.RESUME)
        if result.stopped:
            return _stopped(cfg, run_dir, runtime, result)
        ae_checkpoint = result.last_checkpoint
        _barrier(runtime)
    if not cfg.TRAIN_AE_ONLY:
        ae = pretrained if pretrained is not None and ae_checkpoint is None else load_ae(cfg, run_dir, ae_checkpoint)
        stage = GANStage(cfg, runtime, pairs, grid_pairs, ae, lpips, fid)
        result = run_stage(stage, loop_options(cfg, cfg.ITERATION_GAN, cfg.FID_INTERVAL), run_dir / "gan", runtime,
                           resume=cfg.RESUME)
        if result.stopped:
            return _stopped(cfg, run_dir, runtime, result)
    if runtime.is_main:
        print(f"done: grids in {run_dir}/*/images, checkpoints in {run_dir}/*/checkpoints")
    return 0


def check_resume(cfg: Config, run_dir: Path, n_pairs: int) -> None:
    """RESUME=true: refuse, before anything is written, checkpoints whose networks do not fit `cfg`, or an AE
    trained on after the GAN stage started from it (the GAN checkpoints would put the old AE back)."""
    ae_last = CheckpointDir(run_dir / "ae" / "checkpoints", kind="ae").last()
    gan_last = CheckpointDir(run_dir / "gan" / "checkpoints", kind="gan").last()
    if ae_last is not None and not cfg.TRAIN_GAN_ONLY:
        saved = load_checkpoint(ae_last, kind="ae")
        check_arch(saved["state"]["arch"], AEStage.arch_of(cfg), ae_last)
        classes, saved_classes = AEStage.classes(cfg, n_pairs), saved["state"].get("nbr_cls")
        if saved_classes not in (None, classes):
            raise ConfigError(f"{ae_last} was trained with {saved_classes} classes per subset; this run has {classes} "
                              f"(NBR_CLS={cfg.NBR_CLS}, {n_pairs} training pairs): resume with the run's own NBR_CLS "
                              f"and IMAGE_DIR (see its config.json)")
        if gan_last is not None and saved["iteration"] < cfg.ITERATION_AE:
            raise ConfigError(f"run {run_dir}: its GAN stage started from the AE of iteration {saved['iteration']}, "
                              f"so ITERATION_AE={cfg.ITERATION_AE} cannot train that AE on (the GAN stage would put "
                              f"the AE of {saved['iteration']} back): keep ITERATION_AE={saved['iteration']}, or train "
                              f"a new run's GAN stage on an AE trained further")
    if gan_last is not None and not cfg.TRAIN_AE_ONLY:
        saved = load_checkpoint(gan_last, kind="gan")
        check_arch(saved["state"]["arch"], GANStage.arch_of(cfg), gan_last)


def loop_options(cfg: Config, total: int, eval_interval: int = 0) -> LoopOptions:
    return LoopOptions(total=total, log_interval=cfg.LOG_INTERVAL, image_interval=cfg.SAVE_IMAGE_INTERVAL,
                       save_interval=cfg.SAVE_MODEL_INTERVAL, keep=cfg.KEEP_CHECKPOINTS, seed=cfg.SEED,
                       nan_policy=cfg.NAN_POLICY, nan_skip_limit=cfg.NAN_SKIP_LIMIT, eval_interval=eval_interval,
                       logger=cfg.LOGGER, config=cfg.to_dict())


@contextlib.contextmanager
def prepare_run_dir(cfg: Config, runtime: Runtime) -> Iterator[Path]:
    """Name the run folder (<DATA_NAME>-<date>-<time>[-n] without TRIAL_NAME), lock it for the block and write
    config.json (rank 0). An existing folder is reused only by RESUME=true or if it holds no checkpoint."""
    run_dir = None
    with contextlib.ExitStack() as held:
        if runtime.is_main:
            try:
                run_dir = _claim_run_dir(cfg)
                held.enter_context(locked_folder(run_dir, "choose another TRIAL_NAME"))
                stale = remove_stale_temporaries(run_dir)
                if stale:
                    print(f"removed {stale} temporary file(s) left in {run_dir} by an interrupted write")
                name = run_dir.relative_to(cfg.SAVE_FOLDER).as_posix()
                write_json(run_dir / "config.json", cfg.replace(TRIAL_NAME=name).to_dict())
            except (OSError, OutputError) as e:
                where = Path(cfg.SAVE_FOLDER) / (cfg.TRIAL_NAME or "")
                reason = e.strerror if isinstance(e, OSError) else str(e)
                raise ConfigError(f"cannot write the run folder {where} ({reason}): set SAVE_FOLDER") from None
        yield from_rank0(run_dir, runtime)  # every rank uses rank 0's folder name


def _claim_run_dir(cfg: Config) -> Path:
    parent = Path(cfg.SAVE_FOLDER)
    if not cfg.TRIAL_NAME:
        base = f"{cfg.DATA_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            run_dir = parent / (base if n == 1 else f"{base}-{n}")
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
    run_dir = parent / cfg.TRIAL_NAME
    if run_dir.exists() and not cfg.RESUME and not _holds_no_run(run_dir):
        raise ConfigError(f"run folder {run_dir} already exists: continue it with RESUME=true, or choose "
                          f"another TRIAL_NAME")
    return run_dir


def _holds_no_run(run_dir: Path) -> bool:
    """An empty folder, or one that holds only an earlier attempt that saved no checkpoint."""
    if not run_dir.is_dir():
        return False
    return ({p.name for p in run_dir.iterdir()} <= RUN_ENTRIES
            and not any(run_dir.glob("*/checkpoints/ckpt_*.pt")))


def load_ae(cfg: Config, run_dir: Path | None, just_trained: Path | None) -> AutoEncoder:
    """The AE the GAN stage starts from: the one just trained, else PRETRAINED_AE_PATH's (a checkpoint or run
    folder), else that of the run RESUME continues; checked against this run's preset and sizes."""
    if just_trained is None and cfg.PRETRAINED_AE_PATH:
        try:
            trained = load_trained(cfg.PRETRAINED_AE_PATH, kind="ae")
        except CheckpointError as e:
            raise CheckpointError(f"PRETRAINED_AE_PATH: {e}") from None
    elif just_trained is None and run_dir is None:
        raise CheckpointError("TRAIN_GAN_ONLY needs an AE: set PRETRAINED_AE_PATH to an AE checkpoint or run "
                              "folder, or resume a run that trained its AE")
    else:
        trained = load_trained(just_trained or run_dir, kind="ae")
    preset = trained.config["DATA_NAME"]
    if preset != cfg.DATA_NAME:
        raise CheckpointError(f"the AE checkpoint belongs to preset '{preset}', this run is '{cfg.DATA_NAME}'")
    check_autoencoder(trained.ae, cfg)
    return trained.ae


def _stopped(cfg: Config, run_dir: Path, runtime: Runtime, result: StageResult) -> int:
    """Saved and stopped by a signal: print the resume command (absolute paths) and return 130 or 143."""
    if runtime.is_main:
        name = run_dir.relative_to(cfg.SAVE_FOLDER).as_posix()
        print(f"stopped cleanly; resume with:\n  {shlex.quote(sys.executable)} "
              f"{shlex.quote(str(Path(__file__).resolve()))} "
              f"{shlex.quote(f'SAVE_FOLDER={os.path.abspath(cfg.SAVE_FOLDER)}')} "
              f"{shlex.quote(f'TRIAL_NAME={name}')} RESUME=true", file=sys.stderr)
    return result.exit_code


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
