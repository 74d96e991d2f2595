"""config.py: presets, overrides and their errors, JSON round trip, no side effects at import."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import config as C

ROOT = Path(__file__).resolve().parents[1]


def test_default_is_demo_and_presets_apply():
    cfg = C.from_args([])
    assert cfg.DATA_NAME == "demo" == C.DEFAULT_PRESET
    assert cfg.IM_SIZE_AE <= 128 and cfg.NFC < 64 and cfg.W_REC_LPIPS == 0  # CPU-friendly, no downloads
    art = C.preset("art")
    assert (art.IM_SIZE_AE, art.IM_SIZE_GAN, art.NFC, art.BATCH_SIZE_AE, art.NBR_CLS) == (512, 1024, 64, 32, 500)
    assert art.ITERATION_AE == 100_000 and art.ITERATION_GAN == 200_000 and art.BETAS == (0.5, 0.999)
    shoe = C.preset("shoe")
    assert shoe.W_REC_LPIPS == 0 and shoe.W_REC_L1 == 1 and shoe.W_GREY == 1 and shoe.W_GAN_GREY == 10
    assert C.preset("face").DATA_NAME == "face"


def test_overrides_are_typed():
    cfg = C.from_args(["DATA_NAME=face", "BATCH_SIZE_AE=8", "SKETCH_DIRS=a, b", "BETAS=0.9,0.99",
                       "TRIAL_NAME=none", "RESUME=yes", "LR_AE=1e-4"])
    assert cfg.DATA_NAME == "face" and cfg.BATCH_SIZE_AE == 8
    assert cfg.SKETCH_DIRS == ("a", "b") and cfg.BETAS == (0.9, 0.99)
    assert cfg.TRIAL_NAME is None and cfg.RESUME is True and cfg.LR_AE == 1e-4
    assert cfg.IM_SIZE_AE == 512  # the face preset underneath


@pytest.mark.parametrize("args, message", [
    (["BATCH_SIZ=3"], "unknown setting 'BATCH_SIZ' (did you mean BATCH_SIZE_AE?)"),
    (["BATCH_SIZE_AE=8.5"], "BATCH_SIZE_AE='8.5': expected int"),
    (["RESUME=maybe"], "RESUME='maybe': expected true or false"),
    (["DATA_NAME=celeba"], "DATA_NAME='celeba': must be one of"),
    (["IM_SIZE_AE=100"], "IM_SIZE_AE=100: must be a power of two"),
    (["IM_SIZE_GAN=2048"], "IM_SIZE_GAN=2048: must be IM_SIZE_AE"),
    (["BETAS=0.5"], "expected 2 values"),
    (["NFC=12"], "NFC=12: must be a multiple of 8"),
    (["TRAIN_AE_ONLY=1", "TRAIN_GAN_ONLY=1"], "choose one"),
    (["BATCH_SIZE_AE"], "expected KEY=value"),
])
def test_bad_overrides_name_the_problem(args, message):
    with pytest.raises(C.ConfigError) as err:
        C.from_args(args)
    assert message in str(err.value)


def test_json_round_trip_and_type_check():
    cfg = C.from_args(["DATA_NAME=shoe", "SKETCH_DIRS=x,y"])
    again = C.Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    bad = cfg.to_dict() | {"NFC": "sixty-four"}
    with pytest.raises(C.ConfigError, match="NFC"):
        C.Config.from_dict(bad)
    with pytest.raises(C.ConfigError, match="unknown setting 'NOPE'"):
        C.Config.from_dict(cfg.to_dict() | {"NOPE": 1})


def test_every_field_has_a_comment():
    source = (ROOT / "config.py").read_text().splitlines()
    for name in C.Config.__dataclass_fields__:
        line = next(l for l in source if l.strip().startswith(f"{name}:"))
        assert "#" in line, f"field {name} has no one-line comment"


def test_import_has_no_side_effects(tmp_path):
    """Importing config (or the library modules) creates nothing and reads no clock-based names."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import config, datasets, models, losses, fileio, training"
    subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
    assert "datetime" not in (ROOT / "config.py").read_text()


def test_library_modules_do_not_read_config_globals():
    """Modules receive the config as an argument: none does `from config import <SETTING>`."""
    for path in ROOT.glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith("from config import"):
                names = {n.strip() for n in line.split("import", 1)[1].split(",")}
                assert names <= {"Config", "ConfigError"}, f"{path.name}: {line}"
