"""Your data in three commands: prepare_data.py (nested photos -> split, sketches, the train.py command),
TOM on nested photo folders, and follow-up commands with absolute paths."""
import errno
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

import config as C
import prepare_data as P
import train
from datasets import flat_name, list_images, pair_folders
from fileio import CheckpointDir
from sketch_styletransfer import evaluate as E
from sketch_styletransfer import train as T

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).features


def _photo_tree(root: Path, demo_root: Path) -> list[str]:
    """12 photos in nested folders (jpg and png, two files named 01), a broken file, hidden files."""
    sources = sorted((demo_root / "train" / "images").iterdir())
    names = []
    for i in range(12):
        folder = root / ("cats" if i < 5 else "dogs" if i < 10 else "dogs/puppies")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i % 5:02d}.{'jpg' if i % 2 else 'png'}"
        with Image.open(sources[i]) as img:
            img.convert("RGB").save(path)
        names.append(flat_name(path.relative_to(root)))
    (root / "cats" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "x.png").write_bytes(b"hidden")
    (root / "cats" / "._01.jpg").write_bytes(b"macOS metadata")
    return sorted(names)


def test_split_is_by_name_only_exact_and_stable_when_photos_are_added():
    names = [f"img_{i:04d}" for i in range(200)]
    split = P.split_names(names, 0.1)
    assert len(split["test"]) == 20 and sorted(split["train"] + split["test"]) == names
    assert P.split_names(list(reversed(names)), 0.1) == split                      # order does not matter
    more = P.split_names(names + [f"new_{i}" for i in range(20)], 0.1)
    assert set(more["train"]) >= set(split["train"]) - set(more["test"])           # nobody moves train -> test...
    assert len(set(split["train"]) & set(more["test"])) == 0
    assert P.split_names(names, 0)["test"] == [] and len(P.split_names(["a", "b"], 0.01)["test"]) == 1


def test_nested_photos_to_folders_that_train_with_the_printed_command(demo_root, tmp_path, capsys):
    names = _photo_tree(tmp_path / "photos", demo_root)
    assert {"cats__01", "dogs__01", "dogs__puppies__00"} <= set(names)
    out = tmp_path / "data"
    argv = [str(tmp_path / "photos"), str(out), "--test-ratio", "0.25", "--xdog", "thin,bold", "--size", "64"]
    assert P.main(argv) == 0
    printed = capsys.readouterr()
    assert "1 unreadable file(s) skipped" in printed.err and "broken.jpg" in printed.err
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["unreadable"] == ["cats__broken"]
    assert len(manifest["split"]["test"]) == 3                                   # round(0.25 * 13)
    train_names = sorted(p.stem for p in (out / "train" / "images").iterdir())
    test_names = sorted(p.stem for p in (out / "test" / "images").iterdir())
    assert sorted(train_names + test_names) == names and len(test_names) == 3
    for part, stems in (("train", train_names), ("test", test_names)):
        for sketch_set in ("xdog_thin", "xdog_bold"):
            assert sorted(p.stem for p in (out / part / "sketches" / sketch_set).iterdir()) == stems
        with Image.open(out / part / "images" / f"{stems[0]}.png") as img:
            assert img.size == (64, 64)

    command = printed.out.split("train with:\n")[1].strip()
    assert command == manifest["train_command"]
    words = shlex.split(command)
    assert words[:2] == [sys.executable, str(ROOT / "train.py")]
    values = dict(w.split("=", 1) for w in words[2:])
    assert values["DATA_NAME"] == ("shoe" if torch.cuda.is_available() else "portraits")   # the CPU recipe here
    assert values["NBR_CLS"] == str(len(train_names)) and "note:" not in printed.out  # fewer photos than classes
    for key in ("IMAGE_DIR", "TEST_IMAGE_DIR", "TEST_SKETCH_DIR", *values["SKETCH_DIRS"].split(",")):
        path = values.get(key, key)
        assert os.path.isabs(path) and Path(path).is_dir(), path
    cfg, _ = C.from_command_line(words[2:])                                         # the command is valid...
    assert len(pair_folders(cfg.IMAGE_DIR, cfg.SKETCH_DIRS)) == len(train_names)   # ...and pairs every photo
    assert len(pair_folders(cfg.TEST_IMAGE_DIR, [cfg.TEST_SKETCH_DIR])) == 3

    inodes = {p: p.stat().st_ino for p in out.rglob("*.png")}
    assert P.main(argv) == 0                                                      # again: same split, all kept
    assert "(0 copied, 12 kept)" in capsys.readouterr().out
    assert {p: p.stat().st_ino for p in out.rglob("*.png")} == inodes
    assert P.main(argv[:2] + ["--test-ratio", "0.5", "--xdog", "thin,bold"]) == 1    # another split: refused
    assert "holds" in capsys.readouterr().err and len(list((out / "test" / "images").iterdir())) == 3
    assert P.main(argv + ["--overwrite"]) == 0
    assert "(12 copied, 0 kept)" in capsys.readouterr().out
    assert all(p.stat().st_ino != inodes[p] for p in (out / "train" / "images").iterdir())


def test_no_held_out_set_copies_as_is_and_turns_fid_off(demo_root, tmp_path, capsys):
    _photo_tree(tmp_path / "photos", demo_root)
    out = tmp_path / "photos" / "prepared"                     # OUT inside PHOTOS: not read back as photos
    assert P.main([str(tmp_path / "photos"), str(out), "--test-ratio", "0", "--xdog", "medium"]) == 0
    command = capsys.readouterr().out.split("train with:\n")[1].strip()
    assert "TEST_IMAGE_DIR=none TEST_SKETCH_DIR=none" in command  # not the preset's own held-out folders
    assert not (out / "test").exists() and len(list((out / "train" / "images").iterdir())) == 12
    assert (out / "train" / "images" / "cats__00.png").read_bytes() == \
        (tmp_path / "photos" / "cats" / "00.png").read_bytes()      # no --size: copied byte for byte
    assert P.main([str(tmp_path / "photos"), str(out), "--test-ratio", "0", "--xdog", "medium"]) == 0
    assert "(0 copied, 12 kept)" in capsys.readouterr().out


def test_a_full_disk_or_a_kill_leaves_nothing_a_rerun_would_keep(demo_root, tmp_path, capsys, monkeypatch):
    """Issue 25 item 25: copies are atomic (a full disk is one line and leaves no truncated photo to be
    "kept"), and a re-run removes the temporaries that a kill -9 left in OUT."""
    _photo_tree(tmp_path / "photos", demo_root)
    out, real_copy = tmp_path / "out", shutil.copyfile

    def full_disk(source, target):
        if Path(source).name == "03.jpg":
            Path(target).write_bytes(Path(source).read_bytes()[:100])  # half a photo, then no space left
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(source, target)
    monkeypatch.setattr(P.shutil, "copyfile", full_disk)
    argv = [str(tmp_path / "photos"), str(out), "--test-ratio", "0", "--xdog", "thin"]
    assert P.main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: no space left on {out / 'train' / 'images'}")
    files = [p.name for p in (out / "train" / "images").iterdir()]
    assert "cats__03.jpg" not in files and not [f for f in files if f.endswith(".tmp")]
    monkeypatch.undo()
    sketches = out / "train" / "sketches" / "xdog_thin"
    sketches.mkdir(parents=True)
    killed = [sketches / ".cats__01.png.k1ll3d9x.tmp", out / "train" / "images" / ".dogs__02.png.k1ll3d9x.tmp"]
    for path in killed:
        path.write_bytes(b"half")  # what kill -9 during a write leaves
    assert P.main(argv) == 0
    assert "removed 2 temporary file(s)" in capsys.readouterr().out
    assert not any(path.exists() for path in killed)
    photo = tmp_path / "photos" / "cats" / "03.jpg"
    assert (out / "train" / "images" / "cats__03.jpg").read_bytes() == photo.read_bytes()
    assert sorted(p.stem for p in sketches.iterdir()) == sorted(p.stem for p in (out / "train" / "images").iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--test-ratio", "1"], "--test-ratio must be in [0, 1)"),
    (["--xdog", "thin,fat"], "--xdog: choose from"),
    (["--tom", "nowhere.pt"], "checkpoint not found: nowhere.pt"),
])
def test_bad_arguments_are_one_line(demo_root, tmp_path, capsys, argv, message):
    _photo_tree(tmp_path / "photos", demo_root)
    try:
        code = P.main([str(tmp_path / "photos"), str(tmp_path / "out"), *argv])
    except SystemExit as e:
        code = e.code
    assert code in (1, 2)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()                     # nothing written for a refused call


def test_empty_tree_and_a_nested_image_dir_say_what_to_do(tmp_path, capsys):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    assert P.main([str(tmp_path / "photos"), str(tmp_path / "out")]) == 1
    assert "or its sub-folders" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "sub" / "a.png")
    assert train.main([f"IMAGE_DIR={tmp_path / 'photos'}", f"SKETCH_DIRS={tmp_path}", "TEST_IMAGE_DIR=",
                       "TEST_SKETCH_DIR="]) == 1
    assert "python prepare_data.py" in capsys.readouterr().err          # the hint for a tree given as IMAGE_DIR


def _tom_checkpoint(run: Path, vgg) -> Path:
    torch.manual_seed(0)
    from training import checkpoint
    trainer = T.TOMTrainer(vgg, {"path_a": "photos", "path_b": "sketches", "im_size": 32, "nfc": 8})
    return CheckpointDir(run / "checkpoints").save(checkpoint(trainer, 2, trainer.args), 2)


def test_tom_sketches_of_nested_photos_pair_by_flat_name(demo_root, tmp_path, vgg, capsys):
    names = _photo_tree(tmp_path / "photos", demo_root)
    checkpoint = _tom_checkpoint(tmp_path / "tom", vgg)
    out = tmp_path / "data"
    argv = [str(tmp_path / "photos"), str(out), "--tom", str(tmp_path / "tom"), "--threshold", "0.6", "0.8",
            "--device", "cpu", "--test-ratio", "0.2"]
    assert P.main(argv, vgg_features=vgg) == 0
    command = capsys.readouterr().out.split("train with:\n")[1].strip()
    values = dict(w.split("=", 1) for w in shlex.split(command)[2:])
    sets = values["SKETCH_DIRS"].split(",")
    assert [Path(s).name for s in sets] == [f"{checkpoint.stem}_t0.6", f"{checkpoint.stem}_t0.8"]
    cfg, _ = C.from_command_line(shlex.split(command)[2:])
    assert len(pair_folders(cfg.IMAGE_DIR, cfg.SKETCH_DIRS)) + len(pair_folders(cfg.TEST_IMAGE_DIR,
                                                                                [cfg.TEST_SKETCH_DIR])) == len(names)


@pytest.mark.filterwarnings("error:Using a target size")  # a broken photo must not broadcast batches
def test_tom_trains_on_nested_folders_and_prints_commands_that_work_anywhere(demo_root, tmp_path, vgg, capsys,
                                                                              monkeypatch):
    names = _photo_tree(tmp_path / "photos", demo_root)
    sketches = tmp_path / "sketch_tree" / "a" / "b"
    sketches.mkdir(parents=True)
    for i, path in enumerate(sorted((demo_root / "test" / "sketches").iterdir())[:4]):
        shutil.copy(path, sketches / path.name)
    monkeypatch.chdir(tmp_path)                                # relative paths given, absolute paths printed
    tiny = ["--im_size", "32", "--batch_size", "2", "--nfc", "8", "--workers", "0", "--device", "cpu",
            "--total_iter", "2", "--save_interval", "2", "--image_interval", "2", "--grid_n", "2"]
    assert T.main(["--path_a", "photos", "--path_b", "sketch_tree", "--out", "tom", *tiny], vgg_features=vgg) == 0
    follow_up = shlex.split(capsys.readouterr().out.split("make sketches of the photos with")[1].splitlines()[1])
    assert follow_up[:2] == [sys.executable, str(ROOT / "sketch_styletransfer" / "evaluate.py")]
    options = dict(zip(follow_up[2::2], follow_up[3::2]))
    assert options["--path_content"] == str(tmp_path / "photos") and os.path.isabs(options["--path_result"])
    assert options["--checkpoint"] == str(tmp_path / "tom" / "checkpoints") + "/ckpt_*.pt"

    checkpoint = str(next((tmp_path / "tom" / "checkpoints").glob("ckpt_*.pt")))  # what the shell's glob gives
    monkeypatch.chdir(ROOT / "sketch_styletransfer")          # another folder
    assert E.main(["--path_content", options["--path_content"], "--path_result", options["--path_result"],
                   "--checkpoint", checkpoint, "--workers", "0", "--device", "cpu"], vgg_features=vgg) == 0
    printed = capsys.readouterr()
    line = next(l for l in printed.out.splitlines() if l.startswith("SKETCH_DIRS="))
    folder = Path(line.split("=", 1)[1])
    assert folder.is_absolute() and sorted(list_images(folder)) == names        # cats/01.jpg -> cats__01.png
    assert "broken" in printed.err


def test_your_own_sketch_folders_are_split_with_the_photos(demo_root, tmp_path, capsys):
    """The original data's layout: one RGB folder and K sketch folders, files paired by name."""
    rgb = demo_root / "train" / "images"
    second = tmp_path / "sk2" / "sketch"
    shutil.copytree(demo_root / "train" / "sketches", second)
    (second / "00003.png").unlink()                                   # one photo lacks this sketch
    out = tmp_path / "data"
    argv = [str(rgb), str(out), "--sketch-dirs", str(demo_root / "train" / "sketches"), str(second)]
    assert P.main(argv) == 0
    words = shlex.split(capsys.readouterr().out.split("train with:\n")[1].strip())
    cfg, _ = C.from_command_line(words[2:])
    assert [Path(d).name for d in cfg.SKETCH_DIRS] == ["sketches", "sketch"]
    train_pairs = pair_folders(cfg.IMAGE_DIR, cfg.SKETCH_DIRS)
    test_pairs = pair_folders(cfg.TEST_IMAGE_DIR, [cfg.TEST_SKETCH_DIR])
    assert len(train_pairs) + len(test_pairs) + len(train_pairs.missing.get(cfg.SKETCH_DIRS[1], [])) == 32
    held_out = {p.stem for p in test_pairs.images}
    assert held_out and not held_out & {p.stem for p in train_pairs.images}
    for image, sketches in zip(train_pairs.images, train_pairs.sketches):
        assert sketches[0].read_bytes() == (demo_root / "train" / "sketches" / f"{image.stem}.png").read_bytes()
    with pytest.raises(SystemExit):
        P.main(argv + ["--tom", "x.pt"])


@pytest.mark.parametrize("weights_present", [False, True])
def test_a_gpu_preset_printed_on_a_cpu_says_so_and_measures_fid_only_with_the_weights(
        demo_root, tmp_path, capsys, monkeypatch, weights_present):
    _photo_tree(tmp_path / "photos", demo_root)
    monkeypatch.setattr(P.weights, "available", lambda name: weights_present)
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    assert P.main([str(tmp_path / "photos"), str(tmp_path / "out"), "--xdog", "thin", "--preset", "shoe"]) == 0
    printed = capsys.readouterr().out
    command = printed.split("train with:\n")[1].splitlines()[0]
    assert ("FID_INTERVAL=0" in command) is not weights_present and "DATA_NAME=shoe" in command
    assert "note: this is a 512/1024 px recipe for GPUs" in printed
