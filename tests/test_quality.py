"""evaluate/quality.py: colour science and metrics against closed forms, the benchmark against models
whose scores are known (the ground truth, a copy of the exemplar), and its command line."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import demo_data as D
import train
from conftest import tiny_train_args
from evaluate import quality as Q
from fileio import load_checkpoint, save_checkpoint
from models import find_checkpoint

FLAT = {"kind": "flat"}
SQUARE = {"kind": "square", "cx": 0.5, "cy": 0.5, "r": 0.3, "rotation": 0.0, "fill": 1}
CIRCLE = {"kind": "circle", "cx": 0.3, "cy": 0.3, "r": 0.15, "rotation": 0.0, "fill": 0}


# --------------------------------------------------------------------------- metrics

def test_lab_of_known_colours():
    # CIE L*a*b* (D65) of sRGB white, black, pure red and mid grey, as published (e.g. Lindbloom)
    known = {(1, 1, 1): (100, 0, 0), (0, 0, 0): (0, 0, 0), (1, 0, 0): (53.2408, 80.0925, 67.2032),
             (0.5, 0.5, 0.5): (53.3889, 0, 0)}
    for rgb, lab in known.items():
        assert np.allclose(Q.srgb_to_lab(np.array(rgb, dtype=float)), lab, atol=2e-3), rgb
    batch = np.random.default_rng(0).random((4, 5, 3))
    assert Q.srgb_to_lab(batch).shape == (4, 5, 3)
    assert np.allclose(Q.srgb_to_lab(batch)[2, 3], Q.srgb_to_lab(batch[2, 3]))


def test_psnr_closed_form_and_cap():
    a = np.zeros((8, 8, 3))
    assert Q.psnr(a, a + 0.1) == pytest.approx(20.0)
    assert Q.psnr(a, a + 0.01) == pytest.approx(40.0)
    assert Q.psnr(a, a) == Q.PSNR_CAP


def test_regions_are_the_renderers_pure_pixels():
    scene = {"palette": "paper", "texture": FLAT, "shapes": [SQUARE, CIRCLE]}
    labels, pure = Q.regions(scene["shapes"], 128)
    image = np.asarray(D.render(scene)[0])
    bg, *fills = D.PALETTES["paper"]
    assert set(np.unique(labels)) == {0, 1, 2}
    for k, colour in enumerate([bg, fills[SQUARE["fill"]], fills[CIRCLE["fill"]]]):
        assert np.all(image[pure & (labels == k)] == colour)  # pure pixels hold exactly their region's colour
    assert 0.02 < (~pure).mean() < 0.1  # only the pixels along the outlines are mixed
    blended = ~np.all(image[~pure][:, None] == np.array([bg, *fills])[None], axis=-1).any(axis=1)
    assert blended.mean() > 0.5  # and most of those are blends, not palette colours


def test_colour_errors_and_shape_iou_of_simple_pictures():
    shapes = [SQUARE]
    labels, pure = Q.regions(shapes, 64)
    truth = np.asarray(D.render({"palette": "paper", "texture": FLAT, "shapes": shapes}, 64)[0]) / 255
    assert Q.score(truth, truth, labels, pure) == {"psnr": Q.PSNR_CAP, "fill_de": 0.0, "bg_de": 0.0, "shape_iou": 1.0}
    # the same shapes in another palette: perfect shapes, colour errors = the palettes' Lab distances
    other = np.asarray(D.render({"palette": "night", "texture": FLAT, "shapes": shapes}, 64)[0]) / 255
    s = Q.score(other, truth, labels, pure)
    lab = lambda c: Q.srgb_to_lab(np.array(c) / 255)  # noqa: E731
    assert s["shape_iou"] == 1.0
    assert s["bg_de"] == pytest.approx(np.linalg.norm(lab(D.PALETTES["night"][0]) - lab(D.PALETTES["paper"][0])))
    assert s["fill_de"] == pytest.approx(np.linalg.norm(lab(D.PALETTES["night"][2]) - lab(D.PALETTES["paper"][2])))
    # a flat picture has no shapes: both regions get the same colour and only one can win each pixel
    grey = np.full_like(truth, 0.5)
    assert Q.score(grey, truth, labels, pure)["shape_iou"] < 0.7
    # the square moved: the regions no longer match
    moved = np.asarray(D.render({"palette": "paper", "texture": FLAT,
                                 "shapes": [{**SQUARE, "cx": 0.3, "cy": 0.3}]}, 64)[0]) / 255
    assert Q.score(moved, truth, labels, pure)["shape_iou"] < 0.7


def test_cases_pair_every_sketch_with_its_own_and_other_styles():
    cases = Q.cases(5, 2)
    assert cases[:5] == [("own", i, i) for i in range(5)]
    swapped = cases[5:]
    assert len(swapped) == 10 and all(i != j for _, i, j in swapped)
    assert sorted(j for _, i, j in swapped if i == 4) == [0, 1]
    assert len(Q.cases(3, 10)) == 3 + 3 * 2  # never more swaps than other images


# --------------------------------------------------------------------------- the benchmark on known models

@pytest.fixture(scope="module")
def held_out(demo_root):
    return Q.load_split(demo_root, "test")


def _ground_truth_model(data, size):
    def draw(sketch_idx, style_idx):
        return {"truth": np.stack([Q.ground_truth(data, i, j, size) for i, j in zip(sketch_idx, style_idx)])}
    return draw


def _copy_exemplar_model(data):
    def draw(sketch_idx, style_idx):
        return {"copy": np.stack([np.asarray(Image.open(data.images[j]).convert("RGB")) / 255 for j in style_idx])}
    return draw


def test_the_ground_truth_scores_perfectly_and_a_copy_equals_the_exemplar_baseline(held_out):
    size = 128  # the files' own size: the copy model reads them as they are
    baselines = Q.baseline_method(held_out, size, np.full((size, size, 3), 0.5))
    result = Q.evaluate([_ground_truth_model(held_out, size), _copy_exemplar_model(held_out), baselines], held_out,
                        size, swaps=3, batch_size=7, progress=False)
    perfect = {"psnr": Q.PSNR_CAP, "fill_de": 0.0, "bg_de": 0.0, "shape_iou": 1.0}
    assert result["summary"]["truth"] == {"own": perfect, "swapped": perfect}
    assert len(result["cases"]) == 8 * 4
    for case in result["cases"]:
        assert case["copy"] == case["copy exemplar"]
        assert case["ignore exemplar"]["shape_iou"] == 1.0  # the right shapes, by construction
        if case["kind"] == "own":
            assert case["ignore exemplar"] == perfect
    swapped = result["summary"]["ignore exemplar"]["swapped"]
    assert swapped["fill_de"] > 10 and swapped["bg_de"] > 10 and swapped["psnr"] < 30
    assert result["summary"]["copy exemplar"]["swapped"]["shape_iou"] < 0.8  # another image's shapes


def test_summary_table_lists_every_row(held_out):
    size = 64
    result = Q.evaluate([Q.baseline_method(held_out, size, np.zeros((size, size, 3)))], held_out, size, swaps=1,
                        progress=False)
    table = Q.format_summary(result["summary"])
    assert table.count("\n") == 2 + 3 - 1
    for name in Q.BASELINES:
        assert name in table


# --------------------------------------------------------------------------- command line on a trained model

@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("quality")
    args = tiny_train_args(demo_root, folder, IM_SIZE_GAN=128, ITERATION_AE=2, ITERATION_GAN=2, TRIAL_NAME="run")
    assert train.main(args) == 0
    return folder / "runs" / "run"


def test_command_line_writes_the_table_json_and_picture(demo_root, run_dir, tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["--checkpoint", str(run_dir), "--data", str(demo_root), "--swaps", "2", "--out", str(out),
            "--device", "cpu", "--quiet"]
    assert Q.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| model " in printed and "| AE stage " in printed and "| ignore exemplar " in printed
    result = json.loads((out / "quality.json").read_text())
    assert result["size"] == 128 and result["images"] == 8 and result["swaps"] == 2 and result["iteration"] == 2
    assert len(result["cases"]) == 8 * 3
    assert set(result["summary"]) == {Q.MODEL, Q.AE, *Q.BASELINES}
    for kinds in result["summary"].values():
        assert 0 <= kinds["swapped"]["shape_iou"] <= 1 and np.isfinite(kinds["own"]["psnr"])
    with Image.open(out / "quality.png") as picture:
        n = min(Q.PICTURE_N, len({s["palette"] for s in Q.load_split(demo_root).scenes}))
        assert picture.size == ((1 + 2 * n) * 128 + (2 + 2 * n) * 2, (1 + n) * 128 + (2 + n) * 2)


def test_an_ae_checkpoint_is_scored_as_its_ae_alone(demo_root, run_dir, tmp_path):
    ae_file = next((run_dir / "ae" / "checkpoints").glob("ckpt_*.pt"))
    result = Q.run(ae_file, demo_root, tmp_path / "q", swaps=1, device="cpu", progress=False)
    assert set(result["summary"]) == {Q.AE, *Q.BASELINES} and result["size"] == 64


def test_a_checkpoint_of_another_size_is_one_line(demo_root, run_dir, tmp_path, capsys):
    ckpt = load_checkpoint(find_checkpoint(run_dir))
    ckpt["state"]["arch"]["nfc"] = 16  # the networks are NFC=8
    save_checkpoint(ckpt, tmp_path / "other.pt")
    argv = ["--checkpoint", str(tmp_path / "other.pt"), "--data", str(demo_root), "--out", str(tmp_path / "q"),
            "--device", "cpu", "--quiet"]
    assert Q.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "other.pt" in err and "do not load" in err
    assert not (tmp_path / "q").exists()


def test_a_folder_that_is_not_a_demo_set_is_one_line(run_dir, tmp_path, capsys):
    assert Q.main(["--checkpoint", str(run_dir), "--data", str(tmp_path), "--device", "cpu", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "demo_data.py" in err


# --------------------------------------------------------------------------- ablations on top of it

def test_ablation_variants_train_once_then_are_reused(tmp_path, monkeypatch):
    from evaluate import ablation
    calls = []

    def fake_main(args):  # "trains": leaves an AE checkpoint where train.py would
        calls.append(args)
        run = Path(next(a for a in args if a.startswith("SAVE_FOLDER=")).split("=", 1)[1])
        name = next(a for a in args if a.startswith("TRIAL_NAME=")).split("=", 1)[1]
        (run / name / "ae" / "checkpoints").mkdir(parents=True)
        save_checkpoint({"kind": "ae", "iteration": 1}, run / name / "ae" / "checkpoints" / "ckpt_00000001.pt")
        return 0

    monkeypatch.setattr(ablation.train, "main", fake_main)
    first = ablation.train_variant(tmp_path, "W_MI=0.1", ["W_MI=0.1"], ["DATA_NAME=demo"])
    again = ablation.train_variant(tmp_path, "W_MI=0.1", ["W_MI=0.1"], ["DATA_NAME=demo"])
    assert first == again == tmp_path / "W_MI_0_1" and len(calls) == 1
    assert {"DATA_NAME=demo", "W_MI=0.1", "TRAIN_AE_ONLY=true"} <= set(calls[0])


def test_ablation_studies_name_real_settings_and_folders():
    import config as C
    from evaluate import ablation
    for study, variants in ablation.STUDIES.items():
        for overrides in variants.values():
            cfg = C.preset("demo", **C.parse_overrides(overrides))  # a typo would raise ConfigError
            assert all(str(d).startswith("data/demo/train/") for d in cfg.SKETCH_DIRS), study
    names = {Path(d).name for v in ablation.STUDIES["sketch_sets"].values()
             for d in C.parse_overrides(v)["SKETCH_DIRS"]}
    assert names == {"sketches", "xdog_thin", "xdog_bold", *ablation.EXTRA_SETS}
    assert ablation.HELD_OUT_STYLE not in names  # the held-out sketch style is never trained on


# --------------------------------------------------------------------------- training time -> quality

def test_quality_curve_scores_every_checkpoint_of_a_run(demo_root, run_dir, tmp_path, capsys):
    from evaluate import quality_curve
    found = quality_curve.checkpoints(run_dir)
    assert [s for s, _, _ in found] == sorted(s for s, _, _ in found) and {s for s, _, _ in found} == {"ae", "gan"}
    out = tmp_path / "curve"
    argv = ["--run", str(run_dir), "--data", str(demo_root), "--swaps", "1", "--out", str(out), "--device", "cpu"]
    assert quality_curve.main(argv) == 0
    points = json.loads((out / "curve.json").read_text())["points"]
    assert [(p["stage"], p["iteration"]) for p in points] == [(s, it) for s, it, _ in found]
    assert all(p["minutes"] >= 0 for p in points)
    gan = points[-1]  # the same numbers as the benchmark run on that checkpoint alone
    alone = Q.run(gan["checkpoint"], demo_root, tmp_path / "alone", swaps=1, device="cpu", progress=False)
    assert gan["scores"] == alone["summary"][Q.MODEL]
    printed = capsys.readouterr().out
    assert printed.count("| AE ") + printed.count("| GAN ") == len(points) and "ignore exemplar" in printed


def test_quality_curve_of_a_folder_without_checkpoints_is_one_line(tmp_path, capsys):
    from evaluate import quality_curve
    (tmp_path / "config.json").write_text("{}")
    assert quality_curve.main(["--run", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: no checkpoint")


def test_ablation_makes_the_sketch_folders_its_studies_read(demo_root, tmp_path, monkeypatch):
    import shutil
    from evaluate import ablation
    root = tmp_path / "demo"
    shutil.copytree(demo_root, root)
    monkeypatch.setattr(ablation, "DATA", root)
    ablation.prepare_sketch_sets()
    for name in ablation.EXTRA_SETS:
        assert len(list((root / "train" / name).glob("*.png"))) == 32, name
    assert len(list((root / "test" / ablation.HELD_OUT_STYLE).glob("*.png"))) == 8
    assert not list(root.glob("*/xdog_xdog_*"))  # the folder names the studies use, not doubled prefixes
