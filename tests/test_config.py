"""config.py: presets, overrides and their errors, JSON round trip, no side effects at import."""
import ast
import dataclasses
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import config as C
from conftest import tiny_train_args

ROOT = Path(__file__).resolve().parents[1]



def _from_args(args):
    return C.from_command_line(args)[0]


def test_default_is_demo_and_presets_apply():
    cfg = _from_args([])
    assert cfg.DATA_NAME == "demo" == C.DEFAULT_PRESET
    assert cfg.IM_SIZE_AE <= 128 and cfg.NFC < 64 and cfg.W_REC_LPIPS == 0  # CPU-friendly, no downloads
    art = C.preset("art")
    assert (art.IM_SIZE_AE, art.IM_SIZE_GAN, art.NFC, art.BATCH_SIZE_AE, art.NBR_CLS) == (512, 1024, 64, 32, 500)
    assert art.ITERATION_AE == 100_000 and art.ITERATION_GAN == 200_000 and art.BETAS == (0.5, 0.999)
    shoe = C.preset("shoe")
    assert shoe.W_REC_LPIPS == 0 and shoe.W_REC_L1_A == 1 and shoe.W_GREY == 1 and shoe.W_GAN_GREY == 10
    assert C.preset("face").DATA_NAME == "face"


def test_overrides_are_typed():
    cfg = _from_args(["DATA_NAME=face", "BATCH_SIZE_AE=8", "SKETCH_DIRS=a, b", "BETAS=0.9,0.99",
                       "TRIAL_NAME=none", "RESUME=no", "LR_AE=1e-4"])
    assert cfg.DATA_NAME == "face" and cfg.BATCH_SIZE_AE == 8
    assert cfg.SKETCH_DIRS == ("a", "b") and cfg.BETAS == (0.9, 0.99)
    assert cfg.TRIAL_NAME is None and cfg.RESUME is False and cfg.LR_AE == 1e-4
    assert cfg.IM_SIZE_AE == 512  # the face preset underneath
    assert C.parse_overrides(["RESUME=yes"]) == {"RESUME": True}
    with pytest.raises(C.ConfigError, match="RESUME=true needs TRIAL_NAME of an existing run"):
        _from_args(["RESUME=yes"])  # the command line of a resume starts from the run's config.json


@pytest.mark.parametrize("args, message", [
    (["BATCH_SIZ=3"], "unknown setting 'BATCH_SIZ' (did you mean BATCH_SIZE_AE?)"),
    (["BATCH_SIZE_AE=8.5"], "BATCH_SIZE_AE='8.5': expected int"),
    (["RESUME=maybe"], "RESUME='maybe': expected true or false"),
    (["DATA_NAME=celeba"], "DATA_NAME='celeba': must be one of"),
    (["GENERATOR=demo"], "GENERATOR='demo': must be one of 'art', 'face', 'shoe'"),
    (["IM_SIZE_AE=100"], "IM_SIZE_AE=100: must be a power of two"),
    (["IM_SIZE_GAN=2048"], "IM_SIZE_GAN=2048: must be IM_SIZE_AE"),
    (["BETAS=0.5"], "expected 2 values"),
    (["NFC=12"], "NFC=12: must be a multiple of 8"),
    (["TRAIN_AE_ONLY=1", "TRAIN_GAN_ONLY=1"], "choose one"),
    (["BATCH_SIZE_AE"], "expected KEY=value"),
    # the natural offline settings of face and art: no GAN term left (it crashed at the first GAN step)
    (["DATA_NAME=face", "W_REC_LPIPS=0", "W_GAN_LPIPS=0"], "the GAN stage has no reconstruction term"),
    (["DATA_NAME=art", "W_REC_LPIPS=0", "W_GAN_LPIPS=0"], "set one > 0 (without LPIPS the shoe preset has "
                                                          "W_GAN_MSE=10 W_GAN_L1=10)"),
    (["W_REC_MSE=0", "W_REC_L1_A=0"], "the AE step A has no reconstruction term"),
    (["W_REC_MSE=0"], "the AE step B has no reconstruction term (W_REC_MSE, W_REC_L1_B, W_REC_LPIPS"),
    (["DATA_NAME=art", "IM_SIZE_AE=64", "IM_SIZE_GAN=128", "IM_SIZE_D=256"],
     "IM_SIZE_D=256: must be at most IM_SIZE_GAN (128)"),  # an explicit value is never changed
    (["TRIAL_NAME=/tmp/elsewhere"], "TRIAL_NAME=/tmp/elsewhere: must be a folder name under SAVE_FOLDER"),
    (["TRIAL_NAME=../x"], "TRIAL_NAME=../x: must be a folder name under SAVE_FOLDER (relative, without '..')"),
    (["TRIAL_NAME=a/../../x"], "without '..'"),
])
def test_bad_overrides_name_the_problem(args, message):
    with pytest.raises(C.ConfigError) as err:
        _from_args(args)
    assert message in str(err.value)


@pytest.mark.parametrize("arg, value", [
    ("RESUME=on", True), ("RESUME=OFF", False), ("RESUME=1", True), ("RESUME=0", False), ("RESUME=no", False),
    ("TRIAL_NAME=null", None), ("TRIAL_NAME=", None), ("TRIAL_NAME=run", "run"), ("ITERATION_AE=1_000", 1000),
    ("LR_AE=1e-3", 1e-3), ("SKETCH_SET_WEIGHTS=1, 2,", (1.0, 2.0)), ("SKETCH_SET_WEIGHTS=", ())])
def test_command_line_text_is_parsed_by_the_declared_type(arg, value):
    key = arg.partition("=")[0]
    parsed = C.parse_overrides([arg])[key]
    assert parsed == value and type(parsed) is type(value)


def test_python_and_json_values_are_type_checked():
    cfg = C.preset("art", BETAS=[0.9, 0.99], LR_AE=1, SKETCH_DIRS=["a"], RESUME=False)  # a JSON list is a tuple
    assert cfg.BETAS == (0.9, 0.99) and type(cfg.LR_AE) is float and cfg.SKETCH_DIRS == ("a",)
    for key, value, message in [
            ("NFC", 8.0, "NFC=8.0: expected int"), ("RESUME", 1, "RESUME=1: expected true or false"),
            ("SAVE_FOLDER", 3, "SAVE_FOLDER=3: expected str"), ("NFC", None, "NFC=None: expected int"),
            ("BETAS", [0.9], "expected 2 values"), ("SKETCH_DIRS", [1], "expected comma-separated strs")]:
        with pytest.raises(C.ConfigError) as err:
            C.preset("art", **{key: value})
        assert message in str(err.value) and "\n" not in str(err.value), key


def test_a_stage_that_does_not_run_needs_no_reconstruction_term():
    assert _from_args(["DATA_NAME=face", "W_GAN_LPIPS=0", "TRAIN_AE_ONLY=true"]).W_GAN_LPIPS == 0
    assert _from_args(["W_REC_MSE=0", "W_REC_L1_A=0", "TRAIN_GAN_ONLY=true"]).W_REC_MSE == 0
    assert _from_args(["TRIAL_NAME=group/run"]).TRIAL_NAME == "group/run"  # a sub-folder stays inside


def test_im_size_d_follows_a_smaller_im_size_gan_unless_set():
    cfg, origins = C.resolve(C.parse_overrides(["DATA_NAME=art", "IM_SIZE_AE=64", "IM_SIZE_GAN=128"]))
    assert cfg.IM_SIZE_D == 128 and origins["IM_SIZE_D"] == "follows IM_SIZE_GAN"
    assert "IM_SIZE_D    follows IM_SIZE_GAN  128" in C.settings_report(cfg, origins)
    assert _from_args(["DATA_NAME=art", "IM_SIZE_AE=512", "IM_SIZE_GAN=1024"]).IM_SIZE_D == 512  # never above
    assert _from_args(["DATA_NAME=art", "IM_SIZE_AE=64", "IM_SIZE_GAN=128", "IM_SIZE_D=64"]).IM_SIZE_D == 64
    assert C.preset("art", IM_SIZE_AE=128, IM_SIZE_GAN=256).IM_SIZE_D == 256


def test_json_round_trip_and_type_check():
    cfg = _from_args(["DATA_NAME=shoe", "SKETCH_DIRS=x,y"])
    again = C.Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    bad = cfg.to_dict() | {"NFC": "sixty-four"}
    with pytest.raises(C.ConfigError, match="NFC"):
        C.Config.from_dict(bad)
    with pytest.raises(C.ConfigError, match="unknown setting 'NOPE'"):
        C.Config.from_dict(cfg.to_dict() | {"NOPE": 1})


def test_every_preset_names_its_generator_and_an_older_config_is_refused(tmp_path):
    from models import GENERATORS
    assert set(C.GENERATOR_NAMES) == set(GENERATORS)  # config.py names them without importing the networks
    for name, values in C.PRESETS.items():
        assert values["GENERATOR"] in GENERATORS and C.preset(name).GENERATOR == values["GENERATOR"], name
    assert C.preset("demo", GENERATOR="face").GENERATOR == "face"  # any preset with any generator
    old = C.preset("face").to_dict()
    del old["GENERATOR"]  # a run's config.json written before the setting existed
    with pytest.raises(C.ConfigError, match="written by an older version of this code: start a new run"):
        C.Config.from_dict(old)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(json.dumps(old))
    with pytest.raises(C.ConfigError) as err:  # on resume: one line naming the file
        _from_args([f"SAVE_FOLDER={tmp_path}", "TRIAL_NAME=r", "RESUME=true"])
    assert str(err.value).startswith(f"{tmp_path / 'r' / 'config.json'}: settings without GENERATOR")


def test_every_field_has_a_comment_and_a_group():
    for field in dataclasses.fields(C.Config):
        assert field.metadata["comment"].strip() and field.metadata["group"], f"field {field.name}: no comment or group"


def test_import_has_no_side_effects(tmp_path):
    """Importing config (or the library modules) creates nothing and reads no clock-based names."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import config, datasets, models, losses, fileio, training"
    subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
    assert "datetime" not in (ROOT / "config.py").read_text()


def _config_globals_imported(source: str) -> list[str]:
    """The names that `from config import ...` lines of `source` import, at any depth (in functions too),
    other than config.py's classes and functions: settings or other globals (or `*`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "config" and not node.level:
            found += [a.name for a in node.names if not inspect.isclass(getattr(C, a.name, None))
                      and not inspect.isfunction(getattr(C, a.name, None))]
    return found


def test_library_modules_do_not_read_config_globals():
    """Modules receive the config as an argument: none does `from config import <SETTING>`, even in a function."""
    assert _config_globals_imported("def f():\n    from config import BATCH_SIZE_AE, Config\n") == ["BATCH_SIZE_AE"]
    assert _config_globals_imported("from config import *\nfrom config import preset, ConfigError\n") == ["*"]
    paths = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in (".venv", "data", "train_results")]
    names = {p.relative_to(ROOT).as_posix() for p in paths}
    assert {"train.py", "evaluate/quality.py", "sketch_styletransfer/train.py", "tests/ddp_worker.py"} <= names
    for path in paths:
        assert not _config_globals_imported(path.read_text(encoding="utf-8")), path


# --------------------------------------------------------------------------- the EDIT HERE block

def test_block_goes_on_top_of_the_preset_and_the_command_line_on_top_of_the_block(monkeypatch):
    monkeypatch.setattr(C, "_USER_BLOCK", {"DATA_NAME": "shoe", "BATCH_SIZE_AE": 8, "ITERATION_AE": 50,
                                           "SKETCH_DIRS": "a,b"})  # text is parsed as on the command line
    cfg, origins = C.resolve(C.parse_overrides(["ITERATION_AE=7", "NFC=32"]))
    assert (cfg.DATA_NAME, cfg.BATCH_SIZE_AE, cfg.ITERATION_AE, cfg.NFC, cfg.SKETCH_DIRS) == ("shoe", 8, 7, 32, ("a", "b"))
    assert cfg.W_GREY == 1.0 and cfg.IM_SIZE_AE == 512          # the shoe preset underneath
    assert origins["BATCH_SIZE_AE"] == "config.py" and origins["ITERATION_AE"] == "command line"
    assert origins["W_GREY"] == "preset shoe" and origins["DATA_NAME"] == "config.py"
    assert C.resolve(C.parse_overrides(["DATA_NAME=face"]))[0].DATA_NAME == "face"   # the command line wins
    report = C.settings_report(cfg, origins)
    line = next(l for l in report.splitlines() if l.split()[0] == "BATCH_SIZE_AE")
    assert line.split() == ["BATCH_SIZE_AE", "config.py", "8"]
    assert "IM_SIZE_AE" not in report                          # equal to the field default, set by nobody


def test_the_shipped_block_sets_nothing_and_a_bad_block_is_one_line():
    assert C._USER_BLOCK == {} and _from_args([]).DATA_NAME == C.DEFAULT_PRESET
    for block, message in [({"BATCH_SIZE": 8}, "config.py (EDIT HERE block): unknown setting 'BATCH_SIZE' "
                                                "(did you mean BATCH_SIZE_AE?)"),
                           ({"BATCH_SIZE_AE": "eight"}, "config.py (EDIT HERE block): BATCH_SIZE_AE='eight'")]:
        saved, C._USER_BLOCK = C._USER_BLOCK, block
        try:
            with pytest.raises(C.ConfigError) as err:
                _from_args([])
        finally:
            C._USER_BLOCK = saved
        assert str(err.value).startswith(message)


def test_precedence_rule_is_written_in_config_py_and_the_readme():
    rule = "defaults < preset < config.py < command line"
    assert rule in C.settings_report(*C.resolve({}))
    assert "EDIT HERE" in (ROOT / "config.py").read_text()[:3000]        # the block is at the top
    readme = (ROOT / "README.md").read_text()
    assert "Config defaults < preset < config.py EDIT HERE block < command line" in readme


def _repo_copy(dst: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".git", "data", "train_results", "__pycache__", "fid_stats", "tests",
                                    "docs", "results")
    return Path(shutil.copytree(ROOT, dst, ignore=ignore))


def test_an_edit_of_a_copy_of_config_py_reaches_the_run(demo_root, tmp_path):
    """A user edits config.py the original way and runs `python train.py`: the edit is what trains."""
    repo = _repo_copy(tmp_path / "repo")
    config_py = repo / "config.py"
    text = config_py.read_text()
    edits = {"# BATCH_SIZE_AE = 32": "BATCH_SIZE_AE = 6",
             "# ITERATION_AE = 100_000": "ITERATION_AE = 50",          # the command line overrides this one
             "# IMAGE_DIR = \"data/art/train/images\"":             # a lower-case helper name is allowed
                 f"root = {str(demo_root)!r}\nIMAGE_DIR = root + '/train/images'"}
    for old, new in edits.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config_py.write_text(text)
    args = [a for a in tiny_train_args(demo_root, tmp_path, TRAIN_AE_ONLY=True, ITERATION_AE=2, TRIAL_NAME="edit")
            if not a.startswith(("BATCH_SIZE_AE=", "IMAGE_DIR="))]
    done = subprocess.run([sys.executable, "train.py", *args], cwd=repo, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "edit"
    saved = json.loads((run / "config.json").read_text())
    assert saved["BATCH_SIZE_AE"] == 6 and saved["ITERATION_AE"] == 2
    assert saved["IMAGE_DIR"] == str(demo_root / "train" / "images")
    settings = (run / "settings.txt").read_text()
    assert settings.strip() in done.stdout                       # printed at start, written to the run
    rows = {line.split()[0]: line.split()[1:] for line in settings.splitlines()[1:]}
    assert rows["BATCH_SIZE_AE"] == ["config.py", "6"] and rows["ITERATION_AE"] == ["command", "line", "2"]
    assert rows["IMAGE_DIR"][0] == "config.py" and rows["MI_HIDDEN"] == ["command", "line", "16"]
    assert rows["EMA_DECAY"] == ["preset", "demo", "0.99"]


def test_a_syntax_error_in_the_block_is_one_line_naming_config_py_and_the_line(tmp_path):
    """config.py is imported with the libraries, before main: train.py's start-up hook (errors.quiet_start)."""
    repo = _repo_copy(tmp_path / "repo")
    config_py = repo / "config.py"
    lines = config_py.read_text().splitlines()
    number = lines.index("# BATCH_SIZE_AE = 32") + 1
    lines[number - 1] = "BATCH_SIZE_AE = = 6"
    config_py.write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "train.py"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and done.stderr.splitlines() == [
        f"error: {config_py}, line {number}: invalid syntax: BATCH_SIZE_AE = = 6"], done.stderr[-3000:]
