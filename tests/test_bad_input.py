"""The bad-input matrix: every user-facing reader over the same folder of odd and broken files.

Readable files in any mode load; unreadable ones are a counted skip (loader, sketch makers,
inference) or a one-line error naming the file (the benchmark: an FID over fewer files than
asked would be a different number); users' mistakes are one `error:` line, never a traceback;
no half-written output is left behind.
"""
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import benchmark as B
import inference
import train
import weights
from conftest import tiny_config, tiny_train_args
from training import Runtime, check_arch
from datasets import DataError, PairedDataset, load_image, pair_folders
from fileio import LOCK_FILE, CheckpointDir, CheckpointError, JsonlLog, load_checkpoint, locked_folder, save_checkpoint
from lpips.metric import main as lpips_main
from checkpoints import find_checkpoint
from sketch_styletransfer import evaluate as tom_evaluate
from sketch_styletransfer import train as tom_train
from sketch_styletransfer import xdog

pytestmark = pytest.mark.filterwarnings("ignore:FID statistics from only")  # tiny sets on purpose
GOOD = ["cmyk", "rgba", "deep16", "palette", "grey", "one_pixel", "large", "with space", "ünïcødé", "UPPER",
        "only_image"]
BAD = ["truncated", "zero_bytes", "text", "bomb"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _header_bomb(path: Path, side: int = 20000) -> None:
    """A valid PNG header claiming side x side RGB pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))


def _gradient(w: int, h: int) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    return np.stack([x, y, 255 - x], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """images/ with every kind of file; sketches/ pairing with all but `only_image`, plus `only_sketch`."""
    root = tmp_path_factory.mktemp("bad input")
    images, sketches, empty = root / "images", root / "sketches", root / "empty"
    for d in (images, sketches, empty):
        d.mkdir()
    rgb = Image.fromarray(_gradient(40, 30))
    rgb.convert("CMYK").save(images / "cmyk.jpg")
    rgba = rgb.convert("RGBA")
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # fully transparent: must become white
    rgba.save(images / "rgba.png")
    deep = np.zeros((30, 40), np.uint16)
    deep[:, 20:] = 65535
    Image.fromarray(deep).save(images / "deep16.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(images / "palette.png")
    rgb.convert("L").save(images / "grey.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(images / "one_pixel.png")
    Image.fromarray(_gradient(3000, 2400)).save(images / "large.jpg", quality=90)
    for name in ("with space.png", "ünïcødé.png", "UPPER.PNG", "only_image.png"):
        rgb.save(images / name)
    rgb.save(images / "truncated.jpg")
    data = (images / "truncated.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "zero_bytes.png").write_bytes(b"")
    (images / "text.png").write_text("this is not an image\n")
    _header_bomb(images / "bomb.png")

    lines = np.full((32, 32), 255, np.uint8)
    lines[8, :] = lines[:, 20] = 0
    for stem in [s for s in GOOD + BAD if s != "only_image"] + ["only_sketch"]:
        Image.fromarray(lines).save(sketches / f"{stem}.png")
    return {"images": images, "sketches": sketches, "empty": empty, "missing": root / "missing"}


def _one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), lines[0]


def _no_temporary_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- the data loader

def test_every_readable_mode_loads_as_8_bit(folders):
    images = folders["images"]
    for stem in GOOD:
        path = next(images.glob(f"{stem}.*"))
        assert load_image(path, "RGB").mode == "RGB" and load_image(path, "L").mode == "L"
    assert load_image(images / "rgba.png").getpixel((0, 0)) == (255, 255, 255)
    deep = load_image(images / "deep16.png", "L")
    assert deep.getpixel((0, 0)) == 0 and deep.getpixel((39, 0)) == 255
    with Image.open(images / "cmyk.jpg") as cmyk:
        assert np.array_equal(np.asarray(load_image(images / "cmyk.jpg")), np.asarray(cmyk.convert("RGB")))
    r, g, b = load_image(images / "grey.png").split()
    assert r.tobytes() == g.tobytes() == b.tobytes()
    assert load_image(images / "one_pixel.png").size == (1, 1)
    assert load_image(images / "large.jpg").size == (3000, 2400)


@pytest.mark.parametrize("name", ["truncated.jpg", "zero_bytes.png", "text.png", "bomb.png"])
def test_unreadable_files_are_one_line_data_errors(folders, name):
    with pytest.raises(DataError) as e:
        load_image(folders["images"] / name)
    assert name in str(e.value) and "\n" not in str(e.value)
    if name == "bomb.png":
        assert "DecompressionBomb" in str(e.value)


def test_pairing_and_the_dataset_count_what_they_leave_out(folders, capsys):
    pairs = pair_folders(folders["images"], [folders["sketches"]])
    assert sorted(p.stem for p in pairs.images) == sorted(s for s in GOOD + BAD if s != "only_image")
    assert "1 image(s) have no sketch" in pairs.report() and "only_image" in pairs.report()
    data = PairedDataset(pairs, 32, style_view=True)
    for i in range(len(data)):
        item = data[i]
        assert item["image"].shape == (3, 35, 35) and item["sketch"].shape == (1, 35, 35)
        assert item["style_src"].shape == (3, 41, 41)
    assert sorted(Path(e.split(":")[0]).name for e in data.skips) == sorted(
        ["truncated.jpg", "zero_bytes.png", "text.png", "bomb.png"])
    assert capsys.readouterr().err.count("warning: skipping") == 4  # once per file, not per item


@pytest.mark.parametrize("which", ["empty", "missing"])
def test_training_on_an_empty_or_missing_folder_is_one_line(folders, tmp_path, capsys, which):
    args = [f"IMAGE_DIR={folders[which]}", f"SKETCH_DIRS={folders['sketches']}", "TEST_IMAGE_DIR=", "TEST_SKETCH_DIR=",
            f"SAVE_FOLDER={tmp_path}", "DEVICE=cpu"]
    assert train.main(args) == 1
    _one_error_line(capsys.readouterr().err, str(folders[which]))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("arg,needle", [("BATCH_SIZE_AE=eight", "BATCH_SIZE_AE"), ("NFC=12", "NFC=12"),
                                        ("BATCHSIZE_AE=8", "did you mean BATCH_SIZE_AE"),
                                        ("TRAIN_AE_ONLY=maybe", "TRAIN_AE_ONLY"),
                                        ("TEST_SKETCH_DIR=", "TEST_IMAGE_DIR and TEST_SKETCH_DIR")])
def test_a_config_value_of_the_wrong_type_is_one_line(capsys, arg, needle):
    assert train.main([arg]) == 1
    _one_error_line(capsys.readouterr().err, needle)


# --------------------------------------------------------------------------- sketch makers

def test_xdog_skips_and_counts_unreadable_images(folders, tmp_path, capsys):
    out = tmp_path / "xdog"
    assert xdog.main(["--input", str(folders["images"]), "--output", str(out), "--settings", "medium"]) == 0
    err = capsys.readouterr().err
    assert "4 unreadable image(s) skipped" in err and all(n in err for n in ("truncated.jpg", "bomb.png"))
    assert sorted(p.name for p in (out / "xdog_medium").iterdir()) == sorted(f"{s}.png" for s in GOOD)
    with Image.open(out / "xdog_medium" / "large.png") as sk:
        assert sk.size == (3000, 2400) and sk.mode == "L"
    _no_temporary_files(out)


@pytest.mark.parametrize("which", ["empty", "missing"])
def test_xdog_on_an_empty_or_missing_folder_is_one_line(folders, tmp_path, capsys, which):
    assert xdog.main(["--input", str(folders[which]), "--output", str(tmp_path / "x")]) == 1
    _one_error_line(capsys.readouterr().err, str(folders[which]))


def test_tom_skips_and_counts_unreadable_photos(folders, tmp_path, capsys):
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).features
    trainer = tom_train.TOMTrainer(vgg, {"path_a": "photos", "path_b": "sketches", "im_size": 32, "nfc": 8})
    from fileio import CheckpointDir
    from training import checkpoint
    ckpt = CheckpointDir(tmp_path / "tom" / "checkpoints").save(checkpoint(trainer, 2, trainer.args), 2)
    out = tmp_path / "tom_sketches"
    argv = ["--path_content", str(folders["images"]), "--path_result", str(out), "--checkpoint", str(ckpt),
            "--batch_size", "4", "--workers", "0", "--device", "cpu"]
    assert tom_evaluate.main(argv, vgg_features=vgg) == 0
    err = capsys.readouterr().err
    assert all(n in err for n in ("truncated", "zero_bytes", "text", "bomb"))
    (folder,) = out.iterdir()
    assert sorted(p.stem for p in folder.iterdir()) == sorted(GOOD)
    _no_temporary_files(out)


# --------------------------------------------------------------------------- inference

@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad_input_run")
    assert train.main(tiny_train_args(demo_root, folder, ITERATION_AE=2, ITERATION_GAN=2, TRIAL_NAME="run")) == 0
    return folder / "runs" / "run"


def test_inference_skips_and_counts_unreadable_inputs(folders, run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(run_dir), "--sketch", str(folders["images"]), "--style", str(folders["images"]),
            "--out", str(out), "--device", "cpu", "--quiet", "--batch-size", "4"]
    assert inference.main(argv) == 0  # every photo as its own sketch: odd modes as sketches too
    printed = capsys.readouterr()
    assert "skipped 4 output(s): 4 unreadable input file(s)" in printed.err and "Traceback" not in printed.err
    assert sorted(p.stem for p in out.iterdir()) == sorted(GOOD)
    assert all(Image.open(p).size == (64, 64) for p in out.iterdir())
    _no_temporary_files(out)


@pytest.mark.parametrize("which", ["empty", "missing"])
def test_inference_on_an_empty_or_missing_folder_is_one_line(folders, run_dir, tmp_path, capsys, which):
    argv = ["--checkpoint", str(run_dir), "--sketch", str(folders[which]), "--style", str(folders["images"]),
            "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    assert inference.main(argv) == 1
    _one_error_line(capsys.readouterr().err, str(folders[which]))
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_size_is_one_line(folders, run_dir, tmp_path, capsys):
    ckpt = load_checkpoint(find_checkpoint(run_dir))
    ckpt["state"]["arch"]["nfc"] = 16  # the networks are NFC=8: a shape mismatch
    save_checkpoint(ckpt, tmp_path / "other.pt")
    argv = ["--checkpoint", str(tmp_path / "other.pt"), "--sketch", str(folders["sketches"]),
            "--style", str(folders["images"]), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert inference.main(argv) == 1
    _one_error_line(capsys.readouterr().err, "other.pt", "do not load")


def test_resuming_with_another_size_or_preset_is_one_line(run_dir, capsys):
    common = [f"SAVE_FOLDER={run_dir.parent}", "TRIAL_NAME=run", "RESUME=true", "ITERATION_AE=3"]
    saved = (run_dir / "config.json").read_bytes()
    assert train.main([*common, "NFC=16"]) == 1
    _one_error_line(capsys.readouterr().err, "NFC=8", "NFC=16")
    assert train.main([*common, "DATA_NAME=shoe"]) == 1
    _one_error_line(capsys.readouterr().err, "DATA_NAME=demo")
    assert (run_dir / "config.json").read_bytes() == saved  # a refused resume changes nothing


def test_a_refused_resume_leaves_the_run_as_it_was(demo_root, tmp_path, capsys):
    """Every refusal is one line before anything is written: config.json keeps the run's values (it held
    the refused one, and the plain resume then failed too; NBR_CLS and IMAGE_DIR were a shape dump)."""
    assert train.main(tiny_train_args(demo_root, tmp_path, ITERATION_AE=2, ITERATION_GAN=2, TRIAL_NAME="r")) == 0
    run, two = tmp_path / "runs" / "r", tmp_path / "two"
    for kind in ("images", "sketches"):
        (two / kind).mkdir(parents=True)
        for image in sorted((demo_root / "train" / kind).iterdir())[:2]:
            shutil.copy(image, two / kind)
    saved = {p: p.read_bytes() for p in (run / "config.json", run / "settings.txt")}
    common = [f"SAVE_FOLDER={tmp_path / 'runs'}", "TRIAL_NAME=r", "RESUME=true"]
    for extra, needle in [
            (["NBR_CLS=4"], "was trained with 8 classes per subset; this run has 4 (NBR_CLS=4, 32 training pairs)"),
            ([f"IMAGE_DIR={two / 'images'}", f"SKETCH_DIRS={two / 'sketches'}"], "this run has 2 (NBR_CLS=8, 2 "),
            (["W_MI=0.1"], "was trained with mi_estimator=False; this run has mi_estimator=True"),
            (["GENERATOR=face"], "was trained with generator=art; this run has generator=face"),
            # item 21: the GAN stage's checkpoints hold the AE of iteration 2, and would put it back
            (["ITERATION_AE=4"], "its GAN stage started from the AE of iteration 2, so ITERATION_AE=4 cannot"),
            (["ITERATION_AE=4", "TRAIN_AE_ONLY=true"], "keep ITERATION_AE=2")]:
        assert train.main([*common, *extra]) == 1, extra
        _one_error_line(capsys.readouterr().err, needle)
        assert all(p.read_bytes() == content for p, content in saved.items()), extra
    assert train.main(common) == 0  # the plain resume still works
    assert train.main([*common, "ITERATION_GAN=3", "GENERATOR=art"]) == 0


def test_a_run_folder_in_use_by_another_process_is_one_line(demo_root, tmp_path, capsys):
    """Two train.py with one TRIAL_NAME at once, or two RESUME=true of one run: the second stops before
    writing (both ended "done", the first one's checkpoints overwritten). The lock is an flock, which a
    second open refuses in one process as in another (test_fileio)."""
    run = tmp_path / "runs" / "r"
    args = tiny_train_args(demo_root, tmp_path, TRAIN_AE_ONLY=True, ITERATION_AE=2, TRIAL_NAME="r")
    resume = [f"SAVE_FOLDER={tmp_path / 'runs'}", "TRIAL_NAME=r", "RESUME=true", "ITERATION_AE=3"]
    with locked_folder(run):  # the first train.py, which has not saved yet
        assert train.main(args) == 1
        _one_error_line(capsys.readouterr().err, f"{run} is in use by another process", "choose another TRIAL_NAME")
        assert [p.name for p in run.iterdir()] == [LOCK_FILE]
    assert train.main(args) == 0  # the lock ends with the run that held it
    saved = (run / "config.json").read_bytes()
    with locked_folder(run):
        assert train.main(resume) == 1
        _one_error_line(capsys.readouterr().err, "is in use by another process")
        assert (run / "config.json").read_bytes() == saved
    assert train.main(resume) == 0


def test_a_checkpoint_of_other_sizes_does_not_resume(tmp_path):
    with pytest.raises(CheckpointError) as e:
        check_arch({"preset": "demo", "nfc": 8, "im_size": 64}, {"preset": "demo", "nfc": 16, "im_size": 64},
                   tmp_path / "ckpt.pt")
    assert "ckpt.pt was trained with nfc=8; this run has nfc=16" in str(e.value) and "\n" not in str(e.value)


def test_a_gan_stage_on_an_ae_of_another_size_is_one_line(demo_root, run_dir, tmp_path, capsys):
    cfg = tiny_config(demo_root, tmp_path)
    args = ["TRAIN_GAN_ONLY=true", f"PRETRAINED_AE_PATH={run_dir}", "NFC=16", "DEVICE=cpu", "DATALOADER_WORKERS=0",
            f"IMAGE_DIR={cfg.IMAGE_DIR}", f"SKETCH_DIRS={cfg.SKETCH_DIRS[0]}", f"TEST_IMAGE_DIR={cfg.TEST_IMAGE_DIR}",
            f"TEST_SKETCH_DIR={cfg.TEST_SKETCH_DIR}", "IM_SIZE_AE=64", f"SAVE_FOLDER={tmp_path}"]
    assert train.main(args) == 1
    _one_error_line(capsys.readouterr().err, "NFC=8", "NFC=16")


# --------------------------------------------------------------------------- the benchmark


def test_benchmark_stops_on_an_unreadable_file_with_its_name(folders, tmp_path, capsys, cheap_inception):
    out = tmp_path / "stats.npz"
    argv = ["stats", "--folder", str(folders["images"]), "--out", str(out), "--device", "cpu", "--no-cache"]
    assert B.main(argv) == 1
    _one_error_line(capsys.readouterr().err, "cannot read image")
    assert not out.exists()
    _no_temporary_files(tmp_path)


def test_benchmark_reads_every_mode(folders, tmp_path, cheap_inception):
    good = tmp_path / "good"
    good.mkdir()
    for path in folders["images"].iterdir():
        if path.stem in GOOD:
            shutil.copy(path, good / path.name)
    out = tmp_path / "stats.npz"
    assert B.main(["stats", "--folder", str(good), "--out", str(out), "--device", "cpu", "--no-cache",
                   "--batch-size", "4"]) == 0
    assert B.load_stats(out).n == len(GOOD)


@pytest.mark.parametrize("which", ["empty", "missing"])
def test_benchmark_on_an_empty_or_missing_folder_is_one_line(folders, tmp_path, capsys, which):
    argv = ["stats", "--folder", str(folders[which]), "--out", str(tmp_path / "s.npz"), "--device", "cpu"]
    assert B.main(argv) == 1
    _one_error_line(capsys.readouterr().err, str(folders[which]))


# --------------------------------------------------------------------------- every command line

def test_every_command_refuses_a_missing_folder_in_one_line_before_loading_weights(folders, tmp_path, capsys,
                                                                                    monkeypatch):
    import bench_speed
    monkeypatch.setattr(weights, "locate", lambda *a, **k: pytest.fail("weights needed before the inputs were checked"))
    missing, out = str(folders["missing"]), str(tmp_path / "out")
    commands = [
        (bench_speed.main, [f"IMAGE_DIR={missing}", "--device", "cpu"], 1),
        (tom_train.main, ["--path_a", missing, "--path_b", str(folders["sketches"]), "--device", "cpu"], 1),
        (tom_train.main, ["--path_a", str(folders["images"]), "--path_b", str(folders["empty"]), "--device", "cpu"], 1),
        (tom_evaluate.main, ["--path_content", missing, "--path_result", out, "--checkpoint", str(tmp_path)], 1),
        (tom_evaluate.main, ["--path_content", str(folders["images"]), "--path_result", out, "--checkpoint",
                             str(tmp_path / "nope.pt")], 1),
    ]
    for main, argv, code in commands:
        assert main(argv) == code, argv
        _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_asking_for_cuda_without_it_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.main(["DEVICE=cuda"]) == 1
    _one_error_line(capsys.readouterr().err, "CUDA is not available")


def test_benchmark_refuses_a_file_that_is_not_statistics_before_extracting(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(weights, "fid_inception", lambda allow_download=True: pytest.fail("extraction started"))
    (tmp_path / "notes.md").write_text("# not statistics\n")
    argv = ["fid", "--real", str(folders["images"]), "--fake", str(tmp_path / "notes.md"), "--device", "cpu"]
    assert B.main(argv) == 1
    _one_error_line(capsys.readouterr().err, "notes.md: not an image folder or .npz statistics file")


def test_an_unwritable_save_folder_is_one_line(demo_root, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder's parent should be")
    assert train.main(tiny_train_args(demo_root, tmp_path, SAVE_FOLDER=str(blocker / "runs"))) == 1
    _one_error_line(capsys.readouterr().err, "cannot write the run folder")


# --------------------------------------------------------------------------- red team (issue 18): silent wrong answers

def _folder(path: Path, names: list[str], mode: str = "RGB") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(_gradient(40, 30)).convert(mode).save(path / name)
    return path


def test_two_images_with_one_name_are_refused_everywhere(demo_root, run_dir, tmp_path, capsys):
    images = _folder(tmp_path / "images", ["a.jpg", "a.png", "b.png"])
    sketches = _folder(tmp_path / "sketches", ["a.png", "b.png"], "L")
    with pytest.raises(DataError, match=r"1 name\(s\) used by more than one image \(a.jpg, a.png\)"):
        pair_folders(images, [sketches])
    args = tiny_train_args(demo_root, tmp_path, IMAGE_DIR=str(images), SKETCH_DIRS=(str(sketches),))
    assert train.main(args) == 1
    _one_error_line(capsys.readouterr().err, "a.jpg, a.png")
    assert not (tmp_path / "runs").exists()
    assert xdog.main(["--input", str(images), "--output", str(tmp_path / "x")]) == 1
    _one_error_line(capsys.readouterr().err, "a.jpg, a.png")
    argv = ["--checkpoint", str(run_dir), "--sketch", str(sketches), "--style", str(images), "--out",
            str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    assert inference.main(argv) == 1
    _one_error_line(capsys.readouterr().err, "a.jpg, a.png")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


def _stats_file(path: Path, mu, sigma) -> str:
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    return str(path)


@pytest.mark.parametrize("case,message", [("nan_mu", "NaN or Inf"), ("negative_sigma", "negative eigenvalues"),
                                          ("asymmetric_sigma", "not symmetric")])
def test_statistics_that_cannot_be_a_gaussian_are_refused(tmp_path, capsys, case, message):
    sigma = {"nan_mu": np.eye(4), "negative_sigma": -np.eye(4), "asymmetric_sigma": np.triu(np.ones((4, 4)))}[case]
    mu = [np.nan, 0, 0, 0] if case == "nan_mu" else np.zeros(4)
    good = _stats_file(tmp_path / "good.npz", np.zeros(4), np.eye(4))
    bad = _stats_file(tmp_path / "bad.npz", mu, sigma)
    assert B.main(["fid", "--real", good, "--fake", bad, "--device", "cpu", "--out", str(tmp_path / "r.json")]) == 1
    _one_error_line(capsys.readouterr().err, "bad.npz", message)
    assert not (tmp_path / "r.json").exists()
    singular = np.diag([1.0, 1.0, 0.0, 0.0])  # a covariance of few samples: singular, still valid
    _stats_file(tmp_path / "singular.npz", np.zeros(4), singular)
    assert B.main(["fid", "--real", good, "--fake", str(tmp_path / "singular.npz"), "--device", "cpu"]) == 0


@pytest.mark.parametrize("setting,message", [("x:sigma=nan", "finite"), ("x:p=nan", "finite"),
                                             ("x:sigma=inf", "finite"), ("x:eps=-inf", "finite"),
                                             ("x:sigma=500", "at most")])
def test_xdog_settings_must_be_finite_and_sane(folders, tmp_path, capsys, setting, message):
    with pytest.raises(SystemExit) as e:
        xdog.main(["--input", str(folders["images"]), "--output", str(tmp_path / "x"), "--setting", setting])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="finite"):
        xdog.xdog(np.ones((8, 8)), sigma=float("nan"))


def test_a_damaged_or_diverged_checkpoint_generates_nothing(folders, run_dir, tmp_path, capsys):
    from test_fileio import _tensor_offset
    gan = find_checkpoint(run_dir)
    raw = bytearray(gan.read_bytes())
    start = _tensor_offset(gan) + 1024
    raw[start:start + 64] = bytes(64)
    (tmp_path / "damaged.pt").write_bytes(bytes(raw))
    ckpt = load_checkpoint(gan)
    next(iter(ckpt["state"]["networks"]["generator_ema"].values())).fill_(float("nan"))
    save_checkpoint(ckpt, tmp_path / "diverged.pt")  # NaN weights, as an unguarded run would have saved them
    for name, message in (("damaged.pt", "damaged"), ("diverged.pt", "NaN/Inf")):
        argv = ["--checkpoint", str(tmp_path / name), "--sketch", str(folders["sketches"]), "--style",
                str(folders["images"]), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
        assert inference.main(argv) == 1
        _one_error_line(capsys.readouterr().err, name, message)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- red team: lost work

def test_inference_never_overwrites_an_input(demo_root, run_dir, tmp_path, capsys):
    sketches, styles = tmp_path / "sketches", tmp_path / "styles"
    for src, dst in ((demo_root / "test" / "sketches", sketches), (demo_root / "test" / "images", styles)):
        dst.mkdir()
        for path in sorted(src.iterdir())[:2]:
            shutil.copy(path, dst / path.name)
    before = {p.name: p.read_bytes() for p in sketches.iterdir()}
    argv = ["--checkpoint", str(run_dir), "--sketch", str(sketches), "--style", str(styles), "--out", str(sketches),
            "--device", "cpu", "--quiet"]
    assert inference.main(argv) == 1
    _one_error_line(capsys.readouterr().err, "would overwrite the input")
    assert {p.name: p.read_bytes() for p in sketches.iterdir()} == before


def test_outputs_never_lie_inside_inputs_in_any_command(demo_root, run_dir, tmp_path, capsys, monkeypatch):
    """Issue 25 item 26: benchmark's --save-dir in --real (an FID of ~0), a matrix --out naming a --styles
    image, generate_mix's --out holding an input style, and every other command: one line, nothing written."""
    from evaluate import generate_image_matrix, generate_mix
    from plot_log import main as plot_log_main
    monkeypatch.setattr(weights, "fid_inception", lambda allow_download=True: pytest.fail("measurement started"))
    real, sketches, mix = tmp_path / "real", tmp_path / "sketches", tmp_path / "mix"
    shutil.copytree(demo_root / "test" / "images", real)
    shutil.copytree(demo_root / "test" / "sketches", sketches)
    first = sorted(real.iterdir())[0]
    (mix / "images").mkdir(parents=True)
    style = shutil.copy(first, mix / "images" / f"{first.stem}__A.png")  # what --recipe A writes for `first`
    (tmp_path / "gan").mkdir()
    log = tmp_path / "gan" / "log.jsonl"
    log.write_text('{"iter": 1, "g_loss": 1.0}\n')
    model = ["--checkpoint", str(run_dir), "--device", "cpu"]
    before = {p: p.read_bytes() for p in [*real.iterdir(), *sketches.iterdir(), style, log]}
    cases = [
        (B.main, ["fid", "--real", str(real), "--checkpoint", str(run_dir), "--sketch", str(sketches), "--style",
                  str(real), "--save-dir", str(real), "--device", "cpu"], f"{real} is the input folder {real}"),
        (B.main, ["stats", "--folder", str(real), "--out", str(real / "s.npz"), "--device", "cpu"], "into the input"),
        (generate_image_matrix.main, [*model, "--sketches", str(sketches), "--styles", str(real), "--out", str(first)],
         f"{first} would overwrite the input"),
        (generate_mix.main, [*model, "--sketch", str(sketches / first.name), "--styles", str(style), str(first),
                             "--recipe", "A", "--out", str(mix)], f"would overwrite the input {style}"),
        (inference.main, [*model, "--sketch", str(sketches), "--style", str(real), "--out", str(real)],
         "would overwrite the input"),
        (lpips_main, ["--dir0", str(real), "--out", str(real / "lpips.json")], "into the input folder"),
        (tom_evaluate.main, ["--path_content", str(tmp_path), "--path_result", str(real / "tom"), "--checkpoint",
                             str(run_dir)], "into the input folder"),
        (xdog.main, ["--input", str(real), "--output", str(real)], "is the input folder"),
        (plot_log_main, [str(log), "--out", str(log)], "would overwrite the input"),
    ]
    for main, argv, message in cases:
        assert main(argv) == 1, argv
        _one_error_line(capsys.readouterr().err, message)
    assert {p: p.read_bytes() for p in before} == before
    assert set(real.iterdir()) | set(sketches.iterdir()) | {style, log} == set(before)  # nothing new either
    assert not (mix / "mix_grid.png").exists() and not (tmp_path / "gan" / "loss_curves.png").exists()


def test_cross_output_names_are_unambiguous(demo_root, run_dir, tmp_path, capsys):
    source = sorted((demo_root / "test" / "images").iterdir())[0]
    sketches, styles = tmp_path / "sketches", tmp_path / "styles"
    for folder, stems in ((sketches, ["a__b", "a"]), (styles, ["c", "b__c"])):
        folder.mkdir()
        for stem in stems:
            shutil.copy(source, folder / f"{stem}.png")
    argv = ["--checkpoint", str(run_dir), "--sketch", str(sketches), "--style", str(styles), "--out",
            str(tmp_path / "out"), "--cross", "--device", "cpu", "--quiet"]
    assert inference.main(argv) == 0
    assert "wrote 4 image(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["a%5F%5Fb__c.png", "a%5F%5Fb__b%5F%5Fc.png", "a__c.png", "a__b%5F%5Fc.png"])
    same = tmp_path / "out" / "x.png"
    with pytest.raises(inference.InferenceError, match="two outputs would be written to"):
        inference.check_outputs([inference.Job(source, source, same), inference.Job(source, source, same)])


def test_a_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(demo_root, tmp_path, monkeypatch,
                                                                                 capsys):
    import builtins
    import fileio
    from test_fileio import _FullDisk

    def full_after_first_checkpoint(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return _FullDisk(f) if "w" in mode and Path(file).name.startswith(".ckpt_00000004") else f
    monkeypatch.setattr(fileio, "open", full_after_first_checkpoint, raising=False)
    args = tiny_train_args(demo_root, tmp_path, TRAIN_AE_ONLY=True, ITERATION_AE=4, TRIAL_NAME="full")
    assert train.main(args) == 1
    checkpoints = tmp_path / "runs" / "full" / "ae" / "checkpoints"
    _one_error_line(capsys.readouterr().err, f"no space left on {checkpoints}", "the last good one is kept",
                    "ckpt_00000002.pt")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["ckpt_00000002.pt", "last.txt"]  # no temporary left
    assert load_checkpoint(CheckpointDir(checkpoints).last(), kind="ae")["iteration"] == 2


def test_resume_after_a_kill_before_the_first_checkpoint(demo_root, tmp_path, capsys):
    """kill -9 before a stage's first checkpoint leaves log records and a temporary file: the resumed
    run starts the log afresh (no duplicated records) and removes the temporary."""
    args = tiny_train_args(demo_root, tmp_path, TRAIN_AE_ONLY=True, ITERATION_AE=3, LOG_INTERVAL=1,
                           SAVE_MODEL_INTERVAL=100, TRIAL_NAME="killed")
    assert train.main(args) == 0
    run = tmp_path / "runs" / "killed"
    shutil.rmtree(run / "ae" / "checkpoints")  # as if killed before the (only) checkpoint was written
    (run / "ae" / "checkpoints").mkdir()
    stale = run / "ae" / "checkpoints" / ".ckpt_00000003.pt.ab_cd123.tmp"
    stale.write_bytes(b"PK half a checkpoint")
    assert train.main([f"SAVE_FOLDER={tmp_path / 'runs'}", "TRIAL_NAME=killed", "RESUME=true"]) == 0
    assert [r["iter"] for r in JsonlLog(run / "ae" / "log.jsonl").read()] == [0, 1, 2]
    assert not stale.exists() and "removed 1 temporary file(s)" in capsys.readouterr().out


def test_default_run_names_are_unique_within_one_second(demo_root, tmp_path, monkeypatch):
    monkeypatch.setattr(train.time, "strftime", lambda fmt: "20250101-120000")
    cfg = tiny_config(demo_root, tmp_path)
    folders = []
    for _ in range(3):
        with train.prepare_run_dir(cfg, Runtime(torch.device("cpu"))) as folder:
            folders.append(folder)
    assert [f.name for f in folders] == ["demo-20250101-120000", "demo-20250101-120000-2", "demo-20250101-120000-3"]
    assert all(json.loads((f / "config.json").read_text())["TRIAL_NAME"] == f.name for f in folders)


# --------------------------------------------------------------------------- red team: one line, not a traceback

@pytest.mark.parametrize("arg,needle", [("LR_AE=-1", "LR_AE=-1.0: must be positive"),
                                        ("LR_AE=nan", "LR_AE=nan: must be a finite number"),
                                        ("BETAS=2,0.5", "BETAS=2.0,0.5: each must be in [0, 1)"),
                                        ("LR_GAN=-1", "LR_GAN=-1.0: must be positive"),
                                        ("W_ADV=inf", "W_ADV=inf: must be a finite number"),
                                        ("W_REC_L1_A=-1", "loss weight must be >= 0"),
                                        ("EMA_DECAY=nan", "EMA_DECAY=nan"),
                                        ("IM_SIZE_D=128", "IM_SIZE_D=128: must be at most IM_SIZE_GAN (64)"),
                                        ("NAN_SKIP_LIMIT=0", "NAN_SKIP_LIMIT=0: must be positive"),
                                        ("DEVICE=foo", "device 'foo': not a device name")])
def test_a_bad_setting_is_one_line_before_any_folder_exists(demo_root, tmp_path, capsys, arg, needle):
    assert train.main([*tiny_train_args(demo_root, tmp_path, TRIAL_NAME="r"), arg]) == 1
    _one_error_line(capsys.readouterr().err, needle)
    assert not (tmp_path / "runs").exists()
    assert train.main([*tiny_train_args(demo_root, tmp_path, TRIAL_NAME="r", TRAIN_AE_ONLY=True,
                                        ITERATION_AE=0)]) == 0  # the corrected retry with the same name runs


@pytest.mark.parametrize("extra,needle", [(["W_GAN_MSE=0", "W_GAN_L1=0"], "the GAN stage has no reconstruction term"),
                                          (["W_REC_MSE=0"], "the AE step B has no reconstruction term"),
                                          (["TRIAL_NAME={tmp}/elsewhere"], "must be a folder name under SAVE_FOLDER"),
                                          (["TRIAL_NAME=../outside"], "must be a folder name under SAVE_FOLDER")])
def test_settings_that_fail_later_or_write_elsewhere_are_one_line_first(demo_root, tmp_path, capsys, extra, needle):
    """A GAN stage with no reconstruction term crashed after the whole AE stage; a TRIAL_NAME outside
    SAVE_FOLDER wrote there."""
    assert train.main([*tiny_train_args(demo_root, tmp_path), *(a.format(tmp=tmp_path) for a in extra)]) == 1
    _one_error_line(capsys.readouterr().err, needle)
    assert list(tmp_path.iterdir()) == []  # neither runs/ nor ../outside nor elsewhere


def test_a_bad_device_is_one_line_in_every_command(folders, run_dir, tmp_path, capsys):
    dummy = tmp_path / "dummy.pt"
    dummy.write_bytes(b"")
    out = str(tmp_path / "out")
    commands = [
        (tom_train.main, ["--path_a", str(folders["images"]), "--path_b", str(folders["sketches"]), "--device", "foo"]),
        (tom_evaluate.main, ["--path_content", str(folders["images"]), "--path_result", out, "--checkpoint",
                             str(dummy), "--device", "foo"]),
        (inference.main, ["--checkpoint", str(run_dir), "--sketch", str(folders["sketches"]), "--style",
                          str(folders["images"]), "--out", out, "--device", "foo"]),
    ]
    for main, argv in commands:
        assert main(argv) == 1, argv
        _one_error_line(capsys.readouterr().err, "'foo': not a device name")
    for main, argv in ((B.main, ["stats", "--folder", str(folders["images"]), "--out", out, "--device", "foo"]),
                       (lpips_main, ["--dir0", str(folders["images"]), "--device", "foo"])):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and "'foo': not a device name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_file_name_that_is_not_utf8_is_reported_not_a_crash(demo_root, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(demo_root / "train" / "images", images)
    first = sorted(images.iterdir())[0]
    shutil.copy(first, os.fsdecode(os.fsencode(str(images)) + b"/\xff.png"))  # not UTF-8, without a sketch
    args = tiny_train_args(demo_root, tmp_path, IMAGE_DIR=str(images), TRAIN_AE_ONLY=True, ITERATION_AE=0)
    assert train.main(args) == 0  # capsys's streams are strict UTF-8, as with PYTHONIOENCODING=utf-8:strict
    out = capsys.readouterr().out
    assert "1 image(s) have no sketch" in out and "left out: \\udcff" in out  # the byte 0xff, escaped


def test_prepare_data_and_the_fid_cache_take_file_names_that_are_not_utf8(demo_root, tmp_path, capsys,
                                                                          cheap_inception):
    """Issue 25 item 28: the split's SHA-1 and the FID cache key hash such a name as its own bytes."""
    import prepare_data
    photos = tmp_path / "photos"
    shutil.copytree(demo_root / "test" / "images", photos)
    odd = os.fsdecode(os.fsencode(str(photos)) + b"/\xff.png")  # not UTF-8: \udcff once decoded
    shutil.copy(sorted(photos.iterdir())[0], odd)
    assert prepare_data.main([str(photos), str(tmp_path / "out"), "--xdog", "thin"]) == 0
    assert "9 copied, 0 kept" in capsys.readouterr().out
    prepared = [p.name for p in (tmp_path / "out").rglob("*.png")]
    assert prepared.count("\udcff.png") == 2  # the photo and its sketch
    assert B.main(["stats", "--folder", str(photos), "--out", str(tmp_path / "s.npz"), "--device", "cpu",
                   "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_inputs_are_checked_before_the_run_folder_and_a_retry_reuses_it(demo_root, folders, tmp_path, capsys):
    base = dict(TRIAL_NAME="r")
    args = tiny_train_args(demo_root, tmp_path, TRAIN_GAN_ONLY=True, PRETRAINED_AE_PATH=str(tmp_path / "nope"), **base)
    assert train.main(args) == 1
    _one_error_line(capsys.readouterr().err, "PRETRAINED_AE_PATH", "nope")
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for i in range(4):
        shutil.copy(folders["images"] / "text.png", unreadable / f"{i}.png")
    assert train.main(tiny_train_args(demo_root, tmp_path, IMAGE_DIR=str(unreadable), SKETCH_DIRS=(str(unreadable),),
                                      **base)) == 1
    _one_error_line(capsys.readouterr().err, "none of the 4 image/sketch pairs", "can be read")
    assert not (tmp_path / "runs").exists()

    run = tmp_path / "runs" / "r"  # an earlier attempt that stopped before any checkpoint
    (run / "ae").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "ae" / "log.jsonl").write_text('{"iter": 7, "stale": 1}\n')
    assert train.main(tiny_train_args(demo_root, tmp_path, TRAIN_AE_ONLY=True, ITERATION_AE=2, **base)) == 0
    assert all("stale" not in r for r in JsonlLog(run / "ae" / "log.jsonl").read())
    assert train.main(tiny_train_args(demo_root, tmp_path, TRAIN_AE_ONLY=True, ITERATION_AE=2, **base)) == 1
    _one_error_line(capsys.readouterr().err, "already exists")  # now it holds a checkpoint: never reused


def test_a_damaged_config_json_on_resume_is_one_line(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text('{"NFC": 8, "IM_SIZE')
    assert train.main([f"SAVE_FOLDER={tmp_path}", "TRIAL_NAME=r", "RESUME=true"]) == 1
    _one_error_line(capsys.readouterr().err, "config.json is damaged")


@pytest.mark.parametrize("case", ["one_image", "batch_zero", "size_negative", "out_under_a_file", "out_is_a_folder",
                                  "stats_out_under_a_file", "save_dir_under_a_file"])
def test_benchmark_mistakes_are_one_line_before_measuring(folders, run_dir, tmp_path, capsys, monkeypatch, case):
    monkeypatch.setattr(weights, "fid_inception", lambda allow_download=True: pytest.fail("measurement started"))
    blocker = tmp_path / "file"
    blocker.write_text("a file")
    one = _folder(tmp_path / "one", ["a.png"])
    good = str(folders["sketches"])
    fid = ["fid", "--real", good, "--fake", good, "--device", "cpu", "--no-cache"]
    argv, message = {
        "one_image": (["fid", "--real", str(one), "--fake", str(one), "--device", "cpu"], "at least 2 images"),
        "batch_zero": ([*fid, "--batch-size", "0"], "--batch-size 0: must be at least 1"),
        "size_negative": ([*fid, "--size", "-5"], "--size -5: must be at least 1"),
        "out_under_a_file": ([*fid, "--out", str(blocker / "r.json")], "is a file, not a folder"),
        "out_is_a_folder": ([*fid, "--out", str(tmp_path)], "is a folder"),
        "stats_out_under_a_file": (["stats", "--folder", good, "--out", str(blocker / "s.npz"), "--device", "cpu"],
                                   "is a file, not a folder"),
        "save_dir_under_a_file": (["fid", "--real", good, "--checkpoint", str(run_dir), "--sketch", good, "--style",
                                   good, "--save-dir", str(blocker / "png"), "--device", "cpu"], "is a file"),
    }[case]
    if case in ("batch_zero", "size_negative"):
        with pytest.raises(SystemExit) as e:
            B.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
    else:
        assert B.main(argv) == 1
        _one_error_line(capsys.readouterr().err, message)


def test_benchmark_checkpoint_fid_without_inception_weights_generates_nothing(folders, run_dir, tmp_path, capsys,
                                                                                monkeypatch):
    """Issue 25 item 13: the missing Inception is found before any image is generated and saved."""
    def missing(allow_download=True):
        raise weights.WeightsError("FID Inception weights: not found (downloading is off)")
    monkeypatch.setattr(weights, "fid_inception", missing)
    good, save_dir = str(folders["sketches"]), tmp_path / "generated"
    argv = ["fid", "--real", good, "--checkpoint", str(run_dir), "--sketch", good, "--style", good,
            "--save-dir", str(save_dir), "--device", "cpu", "--no-cache"]
    assert B.main(argv) == 1
    _one_error_line(capsys.readouterr().err, "FID Inception weights")
    assert not save_dir.exists() or not list(save_dir.iterdir())


@pytest.mark.parametrize("extra,message", [(["--size", "0"], "--size 0: LPIPS-alex needs at least 31 px"),
                                           (["--size", "8", "--net", "vgg"], "LPIPS-vgg needs at least 16 px"),
                                           (["--batch-size", "0"], "--batch-size 0: must be at least 1")])
def test_lpips_argument_mistakes_are_one_line(folders, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        lpips_main(["--dir0", str(folders["sketches"]), *extra])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_lpips_refuses_an_unwritable_out_before_computing(folders, tmp_path, capsys, monkeypatch, where):
    import lpips
    monkeypatch.setattr(lpips, "LPIPS", lambda *a, **k: pytest.fail("measurement started"))
    blocker = tmp_path / "file"
    blocker.write_text("a file")
    out = blocker / "r.json" if where == "under_a_file" else tmp_path
    assert lpips_main(["--dir0", str(folders["sketches"]), "--out", str(out)]) == 1
    _one_error_line(capsys.readouterr().err, "is a f")


def test_sketch_makers_refuse_an_output_that_is_a_file(folders, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file")
    for output in (blocker, blocker / "sub"):
        assert xdog.main(["--input", str(folders["images"]), "--output", str(output)]) == 1
        _one_error_line(capsys.readouterr().err, "is a file")
        argv = ["--path_content", str(folders["images"]), "--path_result", str(output), "--checkpoint", str(blocker),
                "--device", "cpu"]
        assert tom_evaluate.main(argv, vgg_features=torch.nn.Sequential()) == 1
        _one_error_line(capsys.readouterr().err, "is a file")
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize("arg", ["--lr=nan", "--lr=-1", "--mse_weight=inf", "--gram_weight=-1"])
def test_tom_numbers_must_be_finite(folders, capsys, arg):
    with pytest.raises(SystemExit) as e:
        tom_train.main(["--path_a", str(folders["images"]), "--path_b", str(folders["sketches"]), arg])
    assert e.value.code == 2 and "must be a finite number" in capsys.readouterr().err
