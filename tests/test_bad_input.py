"""The bad-input matrix: every user-facing reader over the same folder of odd and broken files.

Readable files in any mode load; unreadable ones are a counted skip (loader, sketch makers,
inference) or a one-line error naming the file (the benchmark: an FID over fewer files than
asked would be a different number); users' mistakes are one `error:` line, never a traceback;
no half-written output is left behind.
"""
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
from training import check_arch
from datasets import DataError, PairedDataset, load_image, pair_folders
from fileio import CheckpointError, load_checkpoint, save_checkpoint
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
    assert sorted(Path(e.split(":")[0]).name for e in data.skips.seen) == sorted(
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
    trainer = tom_train.TOMTrainer(vgg, nfc=8)
    args = {**tom_train.DEFAULTS, "path_a": "photos", "path_b": "sketches", "im_size": 32, "nfc": 8}
    from fileio import CheckpointDir
    ckpt = CheckpointDir(tmp_path / "tom" / "checkpoints").save(tom_train.checkpoint_dict(trainer, 2, args), 2)
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
    ckpt = load_checkpoint(inference.resolve_checkpoint(run_dir))
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
    assert B.main(argv) == 2
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
    assert B.main(argv) == 2
    _one_error_line(capsys.readouterr().err, str(folders[which]))


# --------------------------------------------------------------------------- every command line

def test_every_command_refuses_a_missing_folder_in_one_line_before_loading_weights(folders, tmp_path, capsys,
                                                                                    monkeypatch):
    import bench_speed
    monkeypatch.setattr(weights, "locate", lambda *a, **k: pytest.fail("weights needed before the inputs were checked"))
    missing, out = str(folders["missing"]), str(tmp_path / "out")
    commands = [
        (bench_speed.main, ["--data", missing, "--device", "cpu"], 2),
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
    assert B.main(argv) == 2
    _one_error_line(capsys.readouterr().err, "notes.md: not an image folder or .npz statistics file")


def test_an_unwritable_save_folder_is_one_line(demo_root, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder's parent should be")
    assert train.main(tiny_train_args(demo_root, tmp_path, SAVE_FOLDER=str(blocker / "runs"))) == 1
    _one_error_line(capsys.readouterr().err, "cannot write the run folder")
