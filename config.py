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
import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path

from errors import UserError

_NAMES_ABOVE_THE_BLOCK = set(globals())
# =================================== EDIT HERE ===================================================
# As in the original config.py: uncomment a line and change it. Any setting of `Config` below
# may be set here; these values go on top of the preset, and `KEY=value` on the command line
# goes on top of them. DATA_NAME picks the preset: "art", "face", "shoe", "portraits" or "demo" (default).
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


_current_group = ""  # set by group() while the Config class body runs


def group(title: str) -> None:
    """Start a group of settings in the Config class: a heading of `python train.py --help`."""
    global _current_group
    _current_group = title


def setting(default, comment: str):
    """A Config field: its default, and the comment that --help shows under it in the current group."""
    return dataclasses.field(default=default, metadata={"comment": comment, "group": _current_group})


# To configure a run, use the EDIT HERE block above, not these defaults: every preset overrides some.
@dataclass(frozen=True)
class Config:
    group("data")  # --------------------------------------------------------------------------
    DATA_NAME: str = setting("art", 'preset: "art", "face", "shoe", "demo" or "portraits" (PRESETS)')
    IMAGE_DIR: str | None = setting(None, "folder of RGB training images (read flat)")
    SKETCH_DIRS: tuple[str, ...] = setting((), "K >= 1 sketch folders, paired with IMAGE_DIR by file stem")
    TEST_IMAGE_DIR: str | None = setting(None, "held-out RGB images: FID and sample grids, never augmented")
    TEST_SKETCH_DIR: str | None = setting(None, "sketches of the held-out images (same stems)")
    DATALOADER_WORKERS: int = setting(8, "loader processes per GPU (0: load in the main process)")

    group("networks")  # ----------------------------------------------------------------------
    NFC: int = setting(64, "base width of every network (reference: 64)")
    NBR_CLS: int = setting(500, "images per self-supervised subset = classes of the head")
    IM_SIZE_AE: int = setting(512, "autoencoder resolution (64..512, a power of two)")
    IM_SIZE_GAN: int = setting(1024, "final output resolution: IM_SIZE_AE or 2 * IM_SIZE_AE")
    IM_SIZE_D: int = setting(512, "discriminator structure size (reference: 512 even at 1024 px); "
                                  "when not set, at most IM_SIZE_GAN")
    GENERATOR: str = setting("art", 'refine generator architecture: "art", "face" or "shoe" '
                                    "(the art one without style input; models.GENERATORS)")

    group("AE stage")  # ----------------------------------------------------------------------
    BATCH_SIZE_AE: int = setting(32, "images per AE step, per process")
    ITERATION_AE: int = setting(100_000, "AE iterations (each = one self-supervised + one AE step)")
    LR_AE: float = setting(2e-4, "Adam learning rate of encoders, decoder and head")
    LR_AE_AFTER_SWITCH: float = setting(1e-4, "lr of style encoder and decoder after the first subset switch")
    BETAS: tuple[float, float] = setting((0.5, 0.999), "Adam betas of every optimizer of both stages")
    LR_DECAY_FROM: float = setting(1.0, "share of each stage after which its learning rates fall linearly to 0 "
                                        "at its last iteration (1: constant, the reference)")
    SUBSET_PASSES: int = setting(100, "the subset moves on every NBR_CLS * SUBSET_PASSES // BATCH_SIZE_AE "
                                      "iterations")
    W_CLS: float = setting(1.0, "instance classification (cross-entropy, both views)")
    W_STYLE: float = setting(1.0, "style consistency (cosine, derangement negatives)")
    W_CONTENT: float = setting(1.0, "content consistency (margin loss over sketch variants)")
    CONTENT_MARGIN: float = setting(2.0, "margin of the content consistency loss")
    W_REC_MSE: float = setting(1.0, "AE reconstruction, steps A and B: mean squared error")
    W_REC_L1_A: float = setting(0.0, "AE step A (self-supervised) reconstruction: L1 (the reference's \"shoe\")")
    W_REC_L1_B: float = setting(0.0, "AE step B (plain AE) reconstruction: L1 (the reference: none in any preset)")
    W_REC_LPIPS: float = setting(1.0, "AE reconstruction, steps A and B: LPIPS-VGG (summed over the batch)")
    W_GREY: float = setting(0.0, "AE step B: grey-level loss under another image's style")
    W_MI: float = setting(0.0, "content/style mutual information (CLUB upper bound)")
    MI_HIDDEN: int = setting(256, "hidden width of the CLUB variational network")
    LPIPS_SIZE: int = setting(256, "images are average-pooled to this size before LPIPS")

    group("GAN stage")  # ---------------------------------------------------------------------
    BATCH_SIZE_GAN: int = setting(16, "images per GAN step, per process")
    ITERATION_GAN: int = setting(200_000, "GAN iterations (reference: 20 epochs x 10,000)")
    LR_GAN: float = setting(2e-4, "Adam learning rate of generator and discriminator")
    W_ADV: float = setting(1.0, "generator hinge adversarial loss")
    W_GAN_MSE: float = setting(0.0, "GAN reconstruction: mean squared error")
    W_GAN_L1: float = setting(0.0, "GAN reconstruction: L1")
    W_GAN_LPIPS: float = setting(10.0, "GAN reconstruction: LPIPS-VGG (summed over the batch)")
    W_GAN_GREY: float = setting(0.0, "GAN grey-level loss under another image's style")
    EMA_DECAY: float = setting(0.999, "generator EMA; grids and FID use the EMA weights")
    SAMPLE_BN: str = setting("running", "BatchNorm of the EMA generator in grids, FID and inference: "
                                        '"running" statistics or each batch\'s (the reference: "batch")')

    group("sampling and augmentation of the paired data (defaults are the reference's)")  # ---------
    PAIRED_FLIP: bool = setting(False, "random horizontal flip in AE step B and the GAN stage (reference: none; "
                                       "the self-supervised step A always flips, as the reference)")
    SKETCH_SET_WEIGHTS: tuple[float, ...] = setting((), "odds of the K sketch sets in AE step B and the GAN stage; "
                                                        "() = the reference's: 1 per set, 2 for the last "
                                                        "(K=3: 1/4, 1/4, 1/2)")
    SKETCH_SET_PER: str = setting("batch", 'draw the sketch set once per "batch" (reference) or per "item"')
    SS_SKETCH_SETS: str = setting("last", 'sketches of the self-supervised step A: the "last" set (reference) '
                                          'or "all" (drawn as in step B)')

    group("logging, evaluation, checkpoints")  # ----------------------------------------------
    LOG_INTERVAL: int = setting(100, "iterations between JSON-lines log records")
    SAVE_IMAGE_INTERVAL: int = setting(500, "iterations between PNG sample grids")
    SAVE_MODEL_INTERVAL: int = setting(2000, "iterations between checkpoints")
    KEEP_CHECKPOINTS: int = setting(3, "newest checkpoints kept per stage")
    FID_INTERVAL: int = setting(2000, "GAN iterations between FIDs on the held-out set (0: off)")
    FID_N_SAMPLES: int = setting(5000, "generated images per FID (at most the held-out set size)")
    GRID_N: int = setting(8, "images per row of a sample grid")
    LOGGER: str = setting("none", '"tensorboard": also scalars and grids in <stage>/tensorboard')

    group("run")  # ---------------------------------------------------------------------------
    SAVE_FOLDER: str = setting("train_results", "parent folder of run folders")
    TRIAL_NAME: str | None = setting(None, "run folder name (default: <DATA_NAME>-<date>-<time>)")
    RESUME: bool = setting(False, "continue TRIAL_NAME's stages from their last checkpoints")
    PRETRAINED_AE_PATH: str | None = setting(None, "AE checkpoint (file or run folder) for the GAN stage")
    TRAIN_AE_ONLY: bool = setting(False, "stop after the AE stage")
    TRAIN_GAN_ONLY: bool = setting(False, "skip the AE stage (needs PRETRAINED_AE_PATH or RESUME)")
    DEVICE: str = setting("auto", '"auto" (cuda if present), "cpu", "cuda", "cuda:1", ...')
    BF16: bool = setting(True, "bf16 autocast on CUDA and on CPUs with native bf16 (false: fp32)")
    CHANNELS_LAST: bool = setting(True, "channels-last memory format on CUDA")
    COMPILE: bool = setting(False, "torch.compile the networks (CUDA)")
    SYNC_BN: bool = setting(False, "SyncBatchNorm under DDP")
    SEED: int = setting(0, "seeds data order, augmentation and initialisation")
    DETERMINISTIC: bool = setting(False, "deterministic kernels (for exact-resume checks)")
    NAN_POLICY: str = setting("stop", 'a NaN/Inf loss: "stop" the run or "skip" the step')
    NAN_SKIP_LIMIT: int = setting(20, "NAN_POLICY=skip: stop after this many skips in a row of one update")

    def __post_init__(self):
        for name, choices in {"DATA_NAME": PRESETS, **CHOICES}.items():
            _check_choice(name, getattr(self, name), choices)
        self._check_sketch_sets()
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
        if not 0.0 <= self.LR_DECAY_FROM <= 1.0:
            raise ConfigError(f"LR_DECAY_FROM={self.LR_DECAY_FROM}: must be in [0, 1]")
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

    def _check_sketch_sets(self) -> None:
        weights = self.SKETCH_SET_WEIGHTS
        if weights and (not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0):
            raise ConfigError(f"SKETCH_SET_WEIGHTS={','.join(map(str, weights))}: finite, non-negative, not all 0")
        if weights and self.SKETCH_DIRS and len(weights) != len(self.SKETCH_DIRS):
            raise ConfigError(f"SKETCH_SET_WEIGHTS has {len(weights)} values for {len(self.SKETCH_DIRS)} "
                              f"SKETCH_DIRS: give one per sketch folder")

    # --- conversions ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """Rebuild from `to_dict()` output (e.g. a run's config.json), type-checked."""
        if "GENERATOR" not in values:  # its default would silently build another network than the run's
            raise ConfigError("settings without GENERATOR: written by an older version of this code: start a new run")
        return cls(**{key: _typed(key, value) for key, value in values.items()})

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **{key: _typed(key, value) for key, value in changes.items()})


_FIELDS = dataclasses.fields(Config)  # in the class's order
_DEFAULTS = {f.name: f.default for f in _FIELDS}
_FLOATS = [f.name for f in _FIELDS if f.type is float]


# The settings that take one of a few words (DATA_NAME: a key of PRESETS)
CHOICES = dict(GENERATOR=GENERATOR_NAMES, SAMPLE_BN=("running", "batch"), SKETCH_SET_PER=("batch", "item"),
               SS_SKETCH_SETS=("last", "all"), LOGGER=("none", "tensorboard"), NAN_POLICY=("stop", "skip"))
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
        DATALOADER_WORKERS=0,  # a loader process competes with the 2 torch threads of a 2-core machine
        NFC=8, NBR_CLS=64, IM_SIZE_AE=64, IM_SIZE_GAN=128, IM_SIZE_D=128,
        # chosen by the quality benchmark at the old preset's CPU time (docs/results.md): the AE at batch 16
        # (20 % cheaper per image on a CPU), high rates falling to 0 over each stage's second half
        BATCH_SIZE_AE=16, ITERATION_AE=450, LR_AE=1e-3, LR_AE_AFTER_SWITCH=1e-3,
        BATCH_SIZE_GAN=8, ITERATION_GAN=370, LR_GAN=1e-3, LR_DECAY_FROM=0.5,
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
        DATALOADER_WORKERS=0, NFC=16, NBR_CLS=64, IM_SIZE_AE=128, IM_SIZE_GAN=128, IM_SIZE_D=128,
        BATCH_SIZE_AE=8, ITERATION_AE=1600, LR_AE=1e-3, LR_AE_AFTER_SWITCH=1e-3,
        BATCH_SIZE_GAN=8, ITERATION_GAN=800, LR_GAN=1e-3,
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
                                  _typed("IM_SIZE_GAN", overrides["IM_SIZE_GAN"]))
    return Config().replace(**values)


def _check_trial_name(name: str | None) -> None:
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
        out[key.strip()] = _typed(key.strip(), text.strip(), cli=True)
    return out


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
    """The EDIT HERE block's values, typed (text for a setting that is not a str is parsed as on the
    command line); a ConfigError names config.py and the bad line's setting."""
    try:
        return {key: _typed(key, value) for key, value in _USER_BLOCK.items()}
    except ConfigError as e:
        raise ConfigError(f"config.py (EDIT HERE block): {e}") from None


def resolve(cli: dict, base: Config | None = None, base_name: str = "") -> tuple[Config, dict[str, str]]:
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
        origins = {k: base_name for k in _DEFAULTS if getattr(base, k) != _DEFAULTS[k]}
    origins.update({k: "config.py" for k in user})
    origins.update({k: "command line" for k in cli})
    return cfg, origins


def settings_report(cfg: Config, origins: dict[str, str]) -> str:
    """Every setting that differs from its field default, or that config.py or the command line set,
    with where it came from: what train.py prints at start and writes to <run>/settings.txt."""
    explicit = ("config.py", "command line")
    rows = [(k, origins.get(k, "default"), _text(getattr(cfg, k))) for k in _DEFAULTS
            if getattr(cfg, k) != _DEFAULTS[k] or origins.get(k) in explicit]
    key_w, origin_w = (max((len(r[i]) for r in rows), default=0) for i in (0, 1))
    return (f"{len(rows)} settings differ from the Config defaults or were set in config.py or on the command "
            f"line (precedence: defaults < preset < config.py < command line):\n"
            + "\n".join(f"  {k:<{key_w}}  {o:<{origin_w}}  {v}" for k, o, v in rows))


def help_text(cfg: Config, origins: dict[str, str]) -> str:
    """Every setting, grouped as in the Config class: type, value under `cfg` (and its origin), comment."""
    out, heading = [], None
    for f in _FIELDS:
        if f.metadata["group"] != heading:
            heading = f.metadata["group"]
            out.append(f"\n{heading}:")
        origin = origins.get(f.name)
        value = (_text(getattr(cfg, f.name)) or "(empty)") + (f"   [{origin}]" if origin else "")
        out.append(f"  {f.name} ({_type_name(f.name)}) = {value}\n      {f.metadata['comment']}")
    return "\n".join(out)


def _text(value) -> str:
    """A value as it is written on the command line (tuples comma-separated, none, true/false)."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if value is None or isinstance(value, bool) else str(value)


def _check_choice(name, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: must be one of {', '.join(map(repr, choices))}")


# --------------------------------------------------------------------------- types of the settings

def _declared(f: dataclasses.Field) -> tuple[type, bool]:
    """A field's type without None, and whether None is allowed: `str | None` -> (str, True)."""
    args = typing.get_args(f.type)
    return (next(a for a in args if a is not type(None)), True) if type(None) in args else (f.type, False)


_TYPES = {f.name: _declared(f) for f in _FIELDS}
_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _typed(key: str, value, cli: bool = False):
    """`value` as setting `key`'s declared type, or a one-line ConfigError naming the key. Text for a
    setting that is not a str is parsed: true/false words, numbers, a tuple comma-separated; on the
    command line (`cli`) none, null or nothing is None where None is allowed."""
    if key not in _TYPES:
        close = difflib.get_close_matches(key, _TYPES, n=1)
        raise ConfigError(f"unknown setting '{key}'" + (f" (did you mean {close[0]}?)" if close else ""))
    tp, optional = _TYPES[key]
    text = isinstance(value, str) and (cli or tp is not str)
    if optional and (value is None or text and value.lower() in ("none", "null", "")):
        return None
    if typing.get_origin(tp) is not tuple:
        return _scalar(key, value, tp, value)
    items = [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
    kinds = typing.get_args(tp)
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{key}={value!r}: expected {_type_name(key)}")
    kinds = kinds[:1] * len(items) if kinds[-1] is Ellipsis else kinds
    if len(items) != len(kinds):
        raise ConfigError(f"{key}={value!r}: expected {len(kinds)} values")
    return tuple(_scalar(key, value, kind, item) for kind, item in zip(kinds, items))


def _scalar(key: str, whole, tp: type, value):
    """One bool, int, float or str of setting `key` (`whole` its value, for the message); an int is a float."""
    if isinstance(value, str) and tp is not str:
        try:
            value = _WORDS.get(value.lower(), value) if tp is bool else tp(value)  # int("8.5"): ValueError
        except ValueError:
            pass
    if type(value) is tp or tp is float and type(value) is int:
        return tp(value)
    raise ConfigError(f"{key}={whole!r}: expected " + ("true or false" if tp is bool else _type_name(key)))


def _type_name(key: str) -> str:
    tp, optional = _TYPES[key]
    name = f"comma-separated {typing.get_args(tp)[0].__name__}s" if typing.get_origin(tp) is tuple else tp.__name__
    return name + (" or none" if optional else "")
