"""Every setting in one typed, frozen object; presets by DATA_NAME; your values on top.

Where each setting's value comes from, lowest to highest precedence (the one rule):
    1. the field defaults of `Config` (the reference code's "art" settings);
    2. the preset that DATA_NAME names (`PRESETS`; DEFAULT_PRESET when DATA_NAME is set nowhere),
       or, with RESUME=true, the resumed run's own config.json instead of 1 and 2;
    3. the values written in the EDIT HERE block just below;
    4. `KEY=value` on the command line:
       python train.py DATA_NAME=face IMAGE_DIR=data/celeba/img SKETCH_DIRS=data/celeba/skt1,data/celeba/skt2

`python train.py --help` lists every setting with its type, value and origin; at start
train.py prints those that differ from the field defaults and where each came from, and writes
the same into the run folder (settings.txt). Nothing here touches the disk or the clock at
import time.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from errors import UserError

_NAMES_ABOVE_THE_BLOCK = set(globals())
# =================================== EDIT HERE ===================================================
# As in the original config.py: uncomment a line and change it. Any setting of `Config` below
# may be set here; these values go on top of the preset, and `KEY=value` on the command line
# goes on top of them. DATA_NAME picks the preset: "art", "face", "shoe" or "demo" (default).
# UPPER_CASE names are settings (a misspelt one is an error); lower-case names are your own helpers.
# DATA_NAME = "art"
# IMAGE_DIR = "data/art/train/images"
# SKETCH_DIRS = ("data/art/train/sketches/xdog_thin", "data/art/train/sketches/xdog_medium",
#                "data/art/train/sketches/xdog_bold")
# TEST_IMAGE_DIR = "data/art/test/images"
# TEST_SKETCH_DIR = "data/art/test/sketches/xdog_thin"
# IM_SIZE_AE = 512
# IM_SIZE_GAN = 1024
# BATCH_SIZE_AE = 32
# BATCH_SIZE_GAN = 16
# ITERATION_AE = 100_000
# ITERATION_GAN = 200_000
# =================================================================================================
_USER_BLOCK = {k: v for k, v in globals().items() if k not in _NAMES_ABOVE_THE_BLOCK and k.isupper()
               and not k.startswith("_")}

DEFAULT_PRESET = "demo"  # what `python train.py` runs with no arguments
GENERATOR_NAMES = ("art", "face", "shoe")  # models.GENERATORS (a test keeps the two equal; no network import here)


class ConfigError(UserError, ValueError):
    """An unknown setting or a value of the wrong type or range."""


# To configure a run, use the EDIT HERE block above, not these defaults: every preset overrides some.
@dataclass(frozen=True)
class Config:
    # --- data -------------------------------------------------------------------------------
    DATA_NAME: str = "art"                   # preset: "art", "face", "shoe" or "demo"
    IMAGE_DIR: Optional[str] = None          # folder of RGB training images (read flat)
    SKETCH_DIRS: tuple[str, ...] = ()        # K >= 1 sketch folders, paired with IMAGE_DIR by file stem
    TEST_IMAGE_DIR: Optional[str] = None     # held-out RGB images: FID and sample grids, never augmented
    TEST_SKETCH_DIR: Optional[str] = None    # sketches of the held-out images (same stems)
    DATALOADER_WORKERS: int = 8              # loader processes per GPU (0: load in the main process)

    # --- networks ---------------------------------------------------------------------------
    NFC: int = 64                            # base width of every network (reference: 64)
    NBR_CLS: int = 500                       # images per self-supervised subset = classes of the head
    IM_SIZE_AE: int = 512                    # autoencoder resolution (64..512, a power of two)
    IM_SIZE_GAN: int = 1024                  # final output resolution: IM_SIZE_AE or 2 * IM_SIZE_AE
    IM_SIZE_D: int = 512                     # discriminator structure size (reference: 512 even at 1024 px);
                                             # when not set, at most IM_SIZE_GAN
    GENERATOR: str = "art"                   # refine generator architecture: "art", "face" or "shoe"
                                             # (the art one without style input; models.GENERATORS)

    # --- AE stage ---------------------------------------------------------------------------
    BATCH_SIZE_AE: int = 32                  # images per AE step, per process
    ITERATION_AE: int = 100_000              # AE iterations (each = one self-supervised + one AE step)
    LR_AE: float = 2e-4                      # Adam learning rate of encoders, decoder and head
    LR_AE_AFTER_SWITCH: float = 1e-4         # lr of style encoder and decoder after the first subset switch
    BETAS: tuple[float, float] = (0.5, 0.999)  # Adam betas of every optimizer of both stages
    SUBSET_PASSES: int = 100                 # the subset moves on every NBR_CLS * SUBSET_PASSES // BATCH_SIZE_AE its
    W_CLS: float = 1.0                       # instance classification (cross-entropy, both views)
    W_STYLE: float = 1.0                     # style consistency (cosine, derangement negatives)
    W_CONTENT: float = 1.0                   # content consistency (margin loss over sketch variants)
    CONTENT_MARGIN: float = 2.0              # margin of the content consistency loss
    W_REC_MSE: float = 1.0                   # AE reconstruction: mean squared error
    W_REC_L1_A: float = 0.0                  # AE step A (self-supervised) reconstruction: L1 (the reference's "shoe")
    W_REC_L1_B: float = 0.0                  # AE step B (plain AE) reconstruction: L1 (reference: none in any preset)
    W_REC_LPIPS: float = 1.0                 # AE reconstruction: LPIPS-VGG (summed over the batch)
    W_GREY: float = 0.0                      # AE step B: grey-level loss under another image's style
    W_MI: float = 0.0                        # content/style mutual information (CLUB upper bound)
    MI_HIDDEN: int = 256                     # hidden width of the CLUB variational network
    LPIPS_SIZE: int = 256                    # images are average-pooled to this size before LPIPS

    # --- GAN stage --------------------------------------------------------------------------
    BATCH_SIZE_GAN: int = 16                 # images per GAN step, per process
    ITERATION_GAN: int = 200_000             # GAN iterations (reference: 20 epochs x 10,000)
    LR_GAN: float = 2e-4                     # Adam learning rate of generator and discriminator
    W_ADV: float = 1.0                       # generator hinge adversarial loss
    W_GAN_MSE: float = 0.0                   # GAN reconstruction: mean squared error
    W_GAN_L1: float = 0.0                    # GAN reconstruction: L1
    W_GAN_LPIPS: float = 10.0                # GAN reconstruction: LPIPS-VGG (summed over the batch)
    W_GAN_GREY: float = 0.0                  # GAN grey-level loss under another image's style
    EMA_DECAY: float = 0.999                 # generator EMA; grids and FID use the EMA weights
    SAMPLE_BN: str = "running"               # BatchNorm of the EMA generator in grids, FID and inference:
                                             # "running" statistics or each batch's (the reference: "batch")

    # --- sampling and augmentation of the paired data (defaults are the reference's) --------
    PAIRED_FLIP: bool = False                # random horizontal flip in AE step B and the GAN stage (reference:
                                             # none; the self-supervised step A always flips, as the reference)
    SKETCH_SET_WEIGHTS: tuple[float, ...] = ()  # odds of the K sketch sets in AE step B and the GAN stage;
                                             # () = the reference's: 1 per set, 2 for the last (K=3: 1/4, 1/4, 1/2)
    SKETCH_SET_PER: str = "batch"            # draw the sketch set once per "batch" (reference) or per "item"
    SS_SKETCH_SETS: str = "last"             # sketches of the self-supervised step A: the "last" set (reference)
                                             # or "all" (drawn as in step B)

    # --- logging, evaluation, checkpoints ---------------------------------------------------
    LOG_INTERVAL: int = 100                  # iterations between JSON-lines log records
    SAVE_IMAGE_INTERVAL: int = 500           # iterations between PNG sample grids
    SAVE_MODEL_INTERVAL: int = 2000          # iterations between checkpoints
    KEEP_CHECKPOINTS: int = 3                # newest checkpoints kept per stage
    FID_INTERVAL: int = 2000                 # GAN iterations between FIDs on the held-out set (0: off)
    FID_N_SAMPLES: int = 5000                # generated images per FID (at most the held-out set size)
    GRID_N: int = 8                          # images per row of a sample grid
    LOGGER: str = "none"                     # "tensorboard": also scalars and grids in <stage>/tensorboard

    # --- run --------------------------------------------------------------------------------
    SAVE_FOLDER: str = "train_results"       # parent folder of run folders
    TRIAL_NAME: Optional[str] = None         # run folder name (default: <DATA_NAME>-<date>-<time>)
    RESUME: bool = False                     # continue TRIAL_NAME's stages from their last checkpoints
    PRETRAINED_AE_PATH: Optional[str] = None  # AE checkpoint (file or run folder) for the GAN stage
    TRAIN_AE_ONLY: bool = False              # stop after the AE stage
    TRAIN_GAN_ONLY: bool = False             # skip the AE stage (needs PRETRAINED_AE_PATH or RESUME)
    DEVICE: str = "auto"                     # "auto" (cuda if present), "cpu", "cuda", "cuda:1", ...
    BF16: bool = True                        # bf16 autocast on CUDA and on CPUs with native bf16 (false: fp32)
    CHANNELS_LAST: bool = True               # channels-last memory format on CUDA
    COMPILE: bool = False                    # torch.compile the networks (CUDA)
    SYNC_BN: bool = False                    # SyncBatchNorm under DDP
    SEED: int = 0                            # seeds data order, augmentation and initialisation
    DETERMINISTIC: bool = False              # deterministic kernels (for exact-resume checks)
    NAN_POLICY: str = "stop"                 # a NaN/Inf loss: "stop" the run or "skip" the step
    NAN_SKIP_LIMIT: int = 20                 # NAN_POLICY=skip: stop after this many skips in a row of one update

    def __post_init__(self):
        _check_choice("DATA_NAME", self.DATA_NAME, PRESETS)
        _check_choice("GENERATOR", self.GENERATOR, GENERATOR_NAMES)
        _check_choice("NAN_POLICY", self.NAN_POLICY, ("stop", "skip"))
        self._check_sampling()
        _check_choice("LOGGER", self.LOGGER, ("none", "tensorboard"))
        for name in ("IM_SIZE_AE", "IM_SIZE_GAN", "IM_SIZE_D"):
            size = getattr(self, name)
            if size < 64 or size & (size - 1):
                raise ConfigError(f"{name}={size}: must be a power of two >= 64")
        if self.IM_SIZE_AE > 512:
            raise ConfigError(f"IM_SIZE_AE={self.IM_SIZE_AE}: the autoencoder supports 64..512")
        if self.IM_SIZE_GAN not in (self.IM_SIZE_AE, 2 * self.IM_SIZE_AE):
            raise ConfigError(f"IM_SIZE_GAN={self.IM_SIZE_GAN}: must be IM_SIZE_AE ({self.IM_SIZE_AE}) "
                              f"or twice it")
        if self.NFC < 8 or self.NFC % 8:
            raise ConfigError(f"NFC={self.NFC}: must be a multiple of 8")
        if self.IM_SIZE_D > self.IM_SIZE_GAN:
            raise ConfigError(f"IM_SIZE_D={self.IM_SIZE_D}: must be at most IM_SIZE_GAN ({self.IM_SIZE_GAN})")
        positive = ("NBR_CLS", "BATCH_SIZE_AE", "BATCH_SIZE_GAN", "LOG_INTERVAL", "SAVE_IMAGE_INTERVAL",
                    "SAVE_MODEL_INTERVAL", "KEEP_CHECKPOINTS", "SUBSET_PASSES", "GRID_N", "LPIPS_SIZE",
                    "MI_HIDDEN", "FID_N_SAMPLES", "NAN_SKIP_LIMIT", "LR_AE", "LR_AE_AFTER_SWITCH", "LR_GAN")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be positive")
        for name in ("ITERATION_AE", "ITERATION_GAN", "FID_INTERVAL", "DATALOADER_WORKERS"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.BATCH_SIZE_AE < 2 or self.BATCH_SIZE_GAN < 2:
            raise ConfigError("batch sizes must be >= 2 (negatives are other items of the batch)")
        if bool(self.TEST_IMAGE_DIR) != bool(self.TEST_SKETCH_DIR):
            raise ConfigError("TEST_IMAGE_DIR and TEST_SKETCH_DIR go together (held-out images and their "
                              "sketches): set both, or neither")
        if self.TRAIN_AE_ONLY and self.TRAIN_GAN_ONLY:
            raise ConfigError("TRAIN_AE_ONLY and TRAIN_GAN_ONLY are both set: choose one")
        if not 0.0 <= self.EMA_DECAY < 1.0:
            raise ConfigError(f"EMA_DECAY={self.EMA_DECAY}: must be in [0, 1)")
        if not all(0.0 <= beta < 1.0 for beta in self.BETAS):
            raise ConfigError(f"BETAS={','.join(map(str, self.BETAS))}: each must be in [0, 1) (Adam's betas)")
        for name in _FLOATS:  # checked here, before any run folder exists (Adam would raise only later)
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name}={getattr(self, name)}: must be a finite number")
            if name.startswith("W_") and getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: a loss weight must be >= 0")
        if self.CONTENT_MARGIN < 0:
            raise ConfigError(f"CONTENT_MARGIN={self.CONTENT_MARGIN}: must be >= 0")
        self._check_reconstruction()
        _check_trial_name(self.TRIAL_NAME)

    def _check_reconstruction(self) -> None:
        """Each reconstruction loss a stage of this run trains has a term: without one the decoder or
        generator learns nothing from the image (the face and art presets' only GAN term is LPIPS)."""
        stages = {}
        if not self.TRAIN_GAN_ONLY:
            stages["AE step A"] = ("W_REC_MSE", "W_REC_L1_A", "W_REC_LPIPS")
            stages["AE step B"] = ("W_REC_MSE", "W_REC_L1_B", "W_REC_LPIPS")
        if not self.TRAIN_AE_ONLY:
            stages["GAN stage"] = ("W_GAN_MSE", "W_GAN_L1", "W_GAN_LPIPS")
        for stage, names in stages.items():
            if not any(getattr(self, name) > 0 for name in names):
                hint = " ".join(f"{k}={v:g}" for k, v in NO_LPIPS_LOSSES.items() if k in names and v > 0)
                raise ConfigError(f"the {stage} has no reconstruction term ({', '.join(names)} are all 0): set "
                                  f"one > 0" + (f" (without LPIPS the shoe preset has {hint})" if hint else ""))

    def _check_sampling(self) -> None:
        _check_choice("SAMPLE_BN", self.SAMPLE_BN, ("running", "batch"))
        _check_choice("SKETCH_SET_PER", self.SKETCH_SET_PER, ("batch", "item"))
        _check_choice("SS_SKETCH_SETS", self.SS_SKETCH_SETS, ("last", "all"))
        weights = self.SKETCH_SET_WEIGHTS
        if weights and (not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0):
            raise ConfigError(f"SKETCH_SET_WEIGHTS={','.join(map(str, weights))}: finite, non-negative, not all 0")
        if weights and self.SKETCH_DIRS and len(weights) != len(self.SKETCH_DIRS):
            raise ConfigError(f"SKETCH_SET_WEIGHTS has {len(weights)} values for {len(self.SKETCH_DIRS)} "
                              f"SKETCH_DIRS: give one per sketch folder")

    # --- conversions ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """Rebuild from `to_dict()` output (e.g. a run's config.json), type-checked."""
        if "GENERATOR" not in values:  # its default would silently build another network than the run's
            raise ConfigError("settings without GENERATOR: written by an older version of this code: start a new run")
        return cls(**{key: _coerce(key, value) for key, value in _known(values).items()})

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **{k: _coerce(k, v) for k, v in _known(changes).items()})


# Each preset names its refine generator and lists what else differs from the field defaults (the
# reference "art" settings). A new preset needs only an entry here: GENERATOR picks the network.
ARCH_KEYS = ("DATA_NAME", "NFC", "IM_SIZE_AE", "IM_SIZE_GAN", "IM_SIZE_D")  # fixed for the life of a run
NO_LPIPS_LOSSES = dict(W_REC_LPIPS=0.0, W_REC_L1_A=1.0, W_GAN_LPIPS=0.0, W_GAN_MSE=10.0, W_GAN_L1=10.0)
PRESETS: dict[str, dict] = {
    "art": dict(GENERATOR="art"),    # WikiArt, 512 px AE, 1024 px GAN
    "face": dict(GENERATOR="face"),  # CelebA-HQ: as art, with the lighter face refine generator
    "shoe": dict(    # small data sets (a few thousand images): no LPIPS, grey-level losses, no style input in G
        NO_LPIPS_LOSSES, GENERATOR="shoe", W_GREY=1.0, W_GAN_GREY=10.0),
    "demo": dict(    # the built-in procedural data set; trains on 2 CPU cores in minutes
        NO_LPIPS_LOSSES, GENERATOR="art",
        IMAGE_DIR="data/demo/train/images",
        # the exact line drawings last: step A reads the last set, the others are drawn more often
        SKETCH_DIRS=("data/demo/train/xdog_thin", "data/demo/train/xdog_bold", "data/demo/train/sketches"),
        TEST_IMAGE_DIR="data/demo/test/images",
        TEST_SKETCH_DIR="data/demo/test/sketches",
        DATALOADER_WORKERS=0,  # loading in the main process is fastest on 2 cores (bench_demo.py)
        NFC=8, NBR_CLS=64, IM_SIZE_AE=64, IM_SIZE_GAN=128, IM_SIZE_D=128,
        # small batches at a high learning rate: more steps per CPU minute (issue 13's sweep);
        # 600 + 300 iterations: `make demo` in about 10 minutes on 2 cores (README: the quality it buys)
        BATCH_SIZE_AE=8, ITERATION_AE=600, LR_AE=1e-3, LR_AE_AFTER_SWITCH=1e-3,
        BATCH_SIZE_GAN=8, ITERATION_GAN=300,
        LR_GAN=1e-3,  # 300 GAN steps: 5x the reference's rate colours better (README: LR_GAN sweep)
        SUBSET_PASSES=50, W_MI=0.0, MI_HIDDEN=64,
        LOG_INTERVAL=10, SAVE_IMAGE_INTERVAL=100, SAVE_MODEL_INTERVAL=100, FID_INTERVAL=0,
        FID_N_SAMPLES=200, EMA_DECAY=0.99),
    "portraits": dict(  # 241 painted portraits (python portraits.py); 128 px output on 2 CPU cores
        NO_LPIPS_LOSSES, GENERATOR="art",
        IMAGE_DIR="data/portraits/train/images",
        SKETCH_DIRS=("data/portraits/train/sketches/xdog_thin", "data/portraits/train/sketches/xdog_bold",
                     "data/portraits/train/sketches/xdog_medium"),
        TEST_IMAGE_DIR="data/portraits/test/images",
        TEST_SKETCH_DIR="data/portraits/test/sketches/xdog_medium",
        DATALOADER_WORKERS=0, NFC=16, NBR_CLS=64, IM_SIZE_AE=64, IM_SIZE_GAN=128, IM_SIZE_D=128,
        BATCH_SIZE_AE=8, ITERATION_AE=1200, LR_AE=1e-3, LR_AE_AFTER_SWITCH=1e-3,
        BATCH_SIZE_GAN=8, ITERATION_GAN=600, LR_GAN=1e-3,
        SUBSET_PASSES=50, MI_HIDDEN=64,
        LOG_INTERVAL=20, SAVE_IMAGE_INTERVAL=200, SAVE_MODEL_INTERVAL=200, FID_INTERVAL=0,
        FID_N_SAMPLES=200, EMA_DECAY=0.99),
}


def preset(name: str, **overrides) -> Config:
    """The preset `name` with `overrides` on top (type-checked)."""
    _check_choice("DATA_NAME", name, PRESETS)
    values = {**PRESETS[name], **overrides, "DATA_NAME": name}
    if "IM_SIZE_D" not in overrides and "IM_SIZE_GAN" in overrides:  # D's size follows a smaller output size
        values["IM_SIZE_D"] = min(values.get("IM_SIZE_D", _DEFAULTS["IM_SIZE_D"]),
                                  _coerce("IM_SIZE_GAN", overrides["IM_SIZE_GAN"]))
    return Config().replace(**values)


def _check_trial_name(name: Optional[str]) -> None:
    """A run folder stays inside SAVE_FOLDER: TRIAL_NAME is a relative name (sub-folders allowed), no '..'."""
    if name is None:
        return
    path = Path(name)
    if path.is_absolute() or not path.parts or ".." in path.parts:
        raise ConfigError(f"TRIAL_NAME={name}: must be a folder name under SAVE_FOLDER (relative, without '..'); "
                          f"to write elsewhere set SAVE_FOLDER")


def parse_overrides(args: list[str]) -> dict:
    """["KEY=value", ...] -> {KEY: typed value}; raises ConfigError naming the bad item."""
    out = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep:
            raise ConfigError(f"'{arg}': expected KEY=value (e.g. BATCH_SIZE_AE=8)")
        key = key.strip()
        _check_known(key)
        out[key] = _parse(key, text.strip())
    return out


def from_args(args: list[str]) -> Config:
    """The config of a command line (`from_command_line`)."""
    return from_command_line(args)[0]


def from_command_line(args: list[str]) -> tuple[Config, dict[str, str]]:
    """The config of train.py's command line `args` (KEY=value) and each setting's origin: the preset,
    then the EDIT HERE block, then `args`; with RESUME=true the run's own config.json takes the
    place of the preset."""
    cli = parse_overrides(args)
    wanted = {**user_settings(), **cli}
    if not wanted.get("RESUME"):
        return resolve(cli)
    return resolve(cli, base=_resumed(wanted), base_name="resumed run")


def _resumed(wanted: dict) -> Config:
    """The saved config of the run RESUME=true continues (SAVE_FOLDER/TRIAL_NAME/config.json), or
    ConfigError before anything is written: a failed resume must not change the run."""
    _check_trial_name(wanted.get("TRIAL_NAME"))
    run_dir = Path(wanted.get("SAVE_FOLDER", Config.SAVE_FOLDER)) / str(wanted.get("TRIAL_NAME"))
    if not wanted.get("TRIAL_NAME") or not (run_dir / "config.json").is_file():
        raise ConfigError(f"RESUME=true needs TRIAL_NAME of an existing run (no {run_dir / 'config.json'})")
    try:
        values = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{run_dir / 'config.json'} is damaged ({e}): restore it (every run's settings are "
                          f"also in its checkpoints, under 'config')") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{run_dir / 'config.json'} is damaged: not a JSON object of settings")
    try:
        saved = Config.from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{run_dir / 'config.json'}: {e}") from None
    changed = [k for k in ARCH_KEYS if k in wanted and wanted[k] != getattr(saved, k)]
    if changed:
        raise ConfigError(f"run {run_dir} was trained with " + ", ".join(f"{k}={getattr(saved, k)}" for k in changed)
                          + "; RESUME=true cannot change " + ", ".join(f"{k}={wanted[k]}" for k in changed))
    return saved


def user_settings() -> dict:
    """The EDIT HERE block's values, typed; a ConfigError names config.py and the bad line's setting."""
    out = {}
    for key, value in _USER_BLOCK.items():
        try:
            _check_known(key)
            text_ok = isinstance(value, str) and _is_optional(_HINTS[key])[1] is not str
            out[key] = _parse(key, value) if text_ok else _coerce(key, value)
        except ConfigError as e:
            raise ConfigError(f"config.py (EDIT HERE block): {e}") from None
    return out


def resolve(cli: dict, base: Optional[Config] = None, base_name: str = "") -> tuple[Config, dict[str, str]]:
    """The config of a run and the origin of each setting that is not a field default.

    `cli`: typed command-line overrides (parse_overrides). Without `base`, the preset that
    DATA_NAME names is the start; with `base` (a resumed run's config, called `base_name` in
    origins), that config is. The EDIT HERE block goes on top, then `cli`.
    """
    user = user_settings()
    wanted = {**user, **cli}
    if base is None:
        name = wanted.pop("DATA_NAME", DEFAULT_PRESET)
        cfg = preset(name, **wanted)
        origins = {k: f"preset {name}" for k in PRESETS[name]}
        origins["DATA_NAME"] = "DEFAULT_PRESET"
        if cfg.IM_SIZE_D != PRESETS[name].get("IM_SIZE_D", _DEFAULTS["IM_SIZE_D"]) and "IM_SIZE_D" not in wanted:
            origins["IM_SIZE_D"] = "follows IM_SIZE_GAN"  # preset()
    else:
        cfg = base.replace(**wanted)
        origins = {k: base_name for k in _HINTS if getattr(base, k) != _DEFAULTS[k]}
    origins.update({k: "config.py" for k in user})
    origins.update({k: "command line" for k in cli})
    return cfg, origins


def settings_report(cfg: Config, origins: dict[str, str]) -> str:
    """Every setting that differs from its field default, or that config.py or the command line set,
    with where it came from: what train.py prints at start and writes to <run>/settings.txt."""
    explicit = ("config.py", "command line")
    rows = [(k, origins.get(k, "default"), _text(getattr(cfg, k))) for k in _HINTS
            if getattr(cfg, k) != _DEFAULTS[k] or origins.get(k) in explicit]
    key_w, origin_w = (max((len(r[i]) for r in rows), default=0) for i in (0, 1))
    return (f"{len(rows)} settings differ from the Config defaults or were set in config.py or on the command "
            f"line (precedence: defaults < preset < config.py < command line):\n"
            + "\n".join(f"  {k:<{key_w}}  {o:<{origin_w}}  {v}" for k, o, v in rows))


def help_text(cfg: Config, origins: dict[str, str]) -> str:
    """Every setting, grouped as in the Config class: type, value under `cfg` (and its origin), comment."""
    out = []
    for group, fields in _groups():
        out.append(f"\n{group}:")
        for key, comment in fields:
            origin = origins.get(key)
            value = (_text(getattr(cfg, key)) or "(empty)") + (f"   [{origin}]" if origin else "")
            out.append(f"  {key} ({_type_name(_HINTS[key])}) = {value}\n      {comment}")
    return "\n".join(out)


def _groups() -> list[tuple[str, list[tuple[str, str]]]]:
    """(group title, [(setting, its one-line comment)]) in the order of the Config class source."""
    groups: list[tuple[str, list]] = []
    for line in inspect.getsource(Config).splitlines():
        stripped = line.strip()
        if stripped.startswith("# ---"):
            title = stripped.strip("#- ")
            if title == "conversions":
                break
            groups.append((title, []))
        elif groups and ":" in stripped and stripped.split(":")[0] in _HINTS:
            groups[-1][1].append((stripped.split(":")[0], stripped.partition("#")[2].strip()))
    return groups


def _text(value) -> str:
    """A value as it is written on the command line (tuples comma-separated, none, true/false)."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


# --------------------------------------------------------------------------- type checking

_HINTS = typing.get_type_hints(Config)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}  # the field defaults
_FLOATS = [name for name, tp in _HINTS.items() if tp is float]


def _check_known(key: str) -> None:
    if key not in _HINTS:
        close = difflib.get_close_matches(key, _HINTS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown setting '{key}'{hint}")


def _known(values: dict) -> dict:
    for key in values:
        _check_known(key)
    return values


def _check_choice(name, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: must be one of {', '.join(map(repr, choices))}")


def _is_optional(tp) -> tuple[bool, type]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return True, next(a for a in args if a is not type(None))
    return False, tp


def _parse(key: str, text: str):
    """Command-line text -> value of the field's type."""
    optional, tp = _is_optional(_HINTS[key])
    if optional and text.lower() in ("none", "null", ""):
        return None
    if typing.get_origin(tp) is tuple:
        return _coerce(key, [part.strip() for part in text.split(",") if part.strip()])
    if tp is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected true or false")
    return _coerce(key, text)


def _coerce(key: str, value):
    """A value (from Python, JSON or text) -> the field's type, or ConfigError."""
    optional, tp = _is_optional(_HINTS[key])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}=None: a value is required")
    try:
        if typing.get_origin(tp) is tuple:
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise TypeError
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_scalar(args[0], v) for v in value)
            if len(value) != len(args):
                raise ConfigError(f"{key}={value!r}: expected {len(args)} values")
            return tuple(_scalar(a, v) for a, v in zip(args, value))
        return _scalar(tp, value)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}={value!r}: expected {_type_name(_HINTS[key])}") from None


def _scalar(tp, value):
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if tp is int:
        if isinstance(value, bool) or isinstance(value, float):
            raise TypeError
        return int(value)  # int("8.5") raises ValueError
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    raise TypeError


def _type_name(tp) -> str:
    optional, inner = _is_optional(tp)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        inner_name = f"comma-separated {args[0].__name__}s"
    else:
        inner_name = inner.__name__
    return f"{inner_name} or none" if optional else inner_name
