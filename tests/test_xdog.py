"""sketch_styletransfer/xdog.py: the XDoG operator, settings, sketch folders that pair by name, the CLI."""
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sketch_styletransfer import xdog as X

REPO = Path(__file__).resolve().parent.parent


def _square(size=64, inside=0.3, outside=0.9):
    img = np.full((size, size), outside)
    img[16:48, 16:48] = inside
    return img


def _photos(folder: Path, demo_root: Path, n: int = 3) -> list[str]:
    folder.mkdir(parents=True)
    for i in range(n):
        shutil.copy(demo_root / "train" / "images" / f"{i:05d}.png", folder / f"photo_{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    return [f"photo_{i}" for i in range(n)]


def test_outlines_only_and_binary_values():
    out = X.xdog(_square(), binary=True)
    assert set(np.unique(out)) == {0.0, 1.0}
    dark = out < 0.5
    boundary = np.zeros_like(dark)
    boundary[16:48, 16:48] = True
    near = ndimage.distance_transform_edt(~(boundary ^ ndimage.binary_erosion(boundary))) <= 3
    assert dark.sum() > 60 and not (dark & ~near).any()   # strokes along the edge, white elsewhere


@pytest.mark.parametrize("level", [0.0, 0.1, 0.5, 1.0])
def test_flat_areas_stay_white_at_any_grey_level(level):
    for setting in X.BUILTIN_SETTINGS.values():
        assert (X.xdog(np.full((32, 32), level), **asdict(setting)) == 1).all()


def test_soft_output_is_grey_in_0_1_with_the_binary_strokes():
    grey = _square(inside=0.75)  # a faint edge: its strokes get grey fringes
    soft, binary = X.xdog(grey, binary=False), X.xdog(grey, binary=True)
    assert soft.min() >= 0 and soft.max() <= 1 and ((soft > 0.05) & (soft < 0.95)).any()
    assert np.array_equal(soft < 1, binary < 1)


def test_width_and_sigma_thicken_strokes():
    ink = [(X.xdog(_square(), sigma=0.6, width=w) < 0.5).sum() for w in (1, 2, 3)]
    assert ink[0] < ink[1] < ink[2]
    assert (X.xdog(_square(), sigma=0.6) < 0.5).sum() < (X.xdog(_square(), sigma=1.2) < 0.5).sum()


def test_parse_setting():
    name, s = X.parse_setting("fine:sigma=0.5,phi=2,width=2")
    assert name == "fine" and (s.sigma, s.phi, s.width) == (0.5, 2.0, 2)
    assert s.p == X.BUILTIN_SETTINGS["medium"].p           # unnamed keys from medium
    assert X.parse_setting("bold:width=5")[1] == X.Setting(**{**asdict(X.BUILTIN_SETTINGS["bold"]), "width": 5})
    for bad in ("a b:sigma=1", "x:sigma", "x:foo=1", "x:sigma=abc", "x:width=0"):
        with pytest.raises(ValueError):
            X.parse_setting(bad)


def test_builtin_settings_trace_the_demo_outlines(demo_root):
    """Thin and bold draw every outline (recall) and nothing else, such as texture (precision)."""
    for name in ("thin", "bold"):
        precision, recall = [], []
        for i in range(16):
            with Image.open(demo_root / "train" / "images" / f"{i:05d}.png") as img:
                grey = np.asarray(img.convert("L"), dtype=np.float64) / 255
            with Image.open(demo_root / "train" / "sketches" / f"{i:05d}.png") as sk:
                exact = np.asarray(sk) < 128
            drawn = X.xdog(grey, **asdict(X.BUILTIN_SETTINGS[name])) < 0.5
            precision.append((ndimage.distance_transform_edt(~exact)[drawn] <= 5).mean())  # bold: ~3.5 px strokes
            recall.append((ndimage.distance_transform_edt(~drawn)[exact] <= 2).mean())
        assert np.mean(precision) > 0.95 and min(precision) > 0.8, (name, precision)
        assert np.mean(recall) > 0.97 and min(recall) > 0.85, (name, recall)


def test_folders_pair_by_name_skip_existing_and_count_unreadable(tmp_path, demo_root):
    stems = _photos(tmp_path / "in", demo_root)
    settings = {n: X.BUILTIN_SETTINGS[n] for n in ("thin", "bold")}
    out = tmp_path / "out"
    summary = X.make_sketch_folders(tmp_path / "in", out, settings, progress=False)
    assert (summary["images"], summary["written"], summary["kept"]) == (4, 6, 0)
    assert len(summary["unreadable"]) == 1 and "broken.jpg" in summary["unreadable"][0]
    assert summary["folders"] == {"thin": str(out / "xdog_thin"), "bold": str(out / "xdog_bold")}
    for folder in ("xdog_thin", "xdog_bold"):
        assert sorted(p.stem for p in (out / folder).iterdir()) == stems
        with Image.open(out / folder / "photo_0.png") as sk:
            assert sk.mode == "L" and sk.size == (128, 128) and set(np.unique(np.asarray(sk))) <= {0, 255}
    again = X.make_sketch_folders(tmp_path / "in", out, settings, progress=False)
    assert (again["written"], again["kept"]) == (0, 6)
    (out / "xdog_bold" / "photo_1.png").unlink()
    assert X.make_sketch_folders(tmp_path / "in", out, settings, progress=False)["written"] == 1
    assert X.make_sketch_folders(tmp_path / "in", out, settings, overwrite=True, progress=False)["written"] == 6


def test_cli_custom_soft_resized_with_workers(tmp_path, demo_root, capsys):
    stems = _photos(tmp_path / "in", demo_root)
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "in"), "--output", str(out), "--settings", "thin",
            "--setting", "fine:sigma=0.5,width=2", "--soft", "--size", "64", "--workers", "2"]
    assert X.main(argv) == 0
    captured = capsys.readouterr()
    assert "1 unreadable" in captured.err and f"SKETCH_DIRS={out / 'xdog_thin'},{out / 'xdog_fine'}" in captured.out
    for folder in ("xdog_thin", "xdog_fine"):
        assert sorted(p.stem for p in (out / folder).iterdir()) == stems
    with Image.open(out / "xdog_fine" / "photo_0.png") as sk:
        values = np.asarray(sk)
        assert sk.size == (64, 64) and ((values > 10) & (values < 245)).any()   # soft: grey levels
    assert X.main(["--input", str(tmp_path / "nowhere"), "--output", str(out)]) == 1
    with pytest.raises(SystemExit):
        X.main(["--input", str(tmp_path / "in"), "--output", str(out), "--settings", "thin,nope"])


def test_runs_as_a_script_from_its_own_folder(tmp_path, demo_root):
    _photos(tmp_path / "in", demo_root, n=1)
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--settings", "medium"]
    result = subprocess.run([sys.executable, "xdog.py", *argv], cwd=REPO / "sketch_styletransfer",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "xdog_medium" / "photo_0.png").is_file()
