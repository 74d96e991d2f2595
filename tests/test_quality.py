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
from checkpoints import find_checkpoint

FLAT = {"kind": "flat"}
SQUARE = {"kind": "square", "cx": 0.5, "cy": 0.5, "r": 0.3, "rotation": 0.0, "fill": 1}
CIRCLE = {"kind": "circle", "cx": 0.3, "cy": 0.3, "r": 0.15, "rotation": 0.0, "fill": 0}


# --------------------------------------------------------------------------- metrics

def test_psnr_closed_form_and_cap():
    a = np.zeros((8, 8, 3))
    assert Q.psnr(a, a + 0.1) == pytest.approx(20.0)
    assert Q.psnr(a, a + 0.01) == pytest.approx(40.0)
    assert Q.psnr(a, a) == Q.PSNR_CAP


def test_ssim_of_identical_and_of_noisier_images():
    image = np.random.default_rng(0).random((32, 32, 3))
    assert Q.ssim(image, image) == pytest.approx(1.0)
    noise = np.random.default_rng(1).normal(size=image.shape)
    assert 1 > Q.ssim(np.clip(image + 0.05 * noise, 0, 1), image) > Q.ssim(np.clip(image + 0.3 * noise, 0, 1), image)


def _line(x: int, size: int = 32) -> np.ndarray:
    lines = np.zeros((size, size), bool)
    lines[4:28, x] = True
    return lines


def test_edge_f_closed_forms():
    ref = _line(10)
    assert Q.edge_f(ref, ref, 2) == 1.0
    assert Q.edge_f(_line(11), ref, 2) == 1.0 and Q.edge_f(_line(13), ref, 2) == 0.0  # within, beyond tolerance
    both = ref | _line(25)  # every reference pixel found, half the lines are extra: precision 1/2, recall 1
    assert Q.edge_f(both, ref, 2) == pytest.approx(2 * 0.5 * 1 / 1.5)
    empty = np.zeros_like(ref)
    assert Q.edge_f(empty, empty, 2) == 1.0 and Q.edge_f(empty, ref, 2) == 0.0 and Q.edge_f(ref, empty, 2) == 0.0


def test_thinned_lines_do_not_depend_on_the_stroke_width():
    grey = np.ones((32, 32))
    grey[4:28, 9:12] = 0  # a 3 px wide stroke
    thin = Q.sketch_lines(grey)
    assert thin.any() and thin.sum() < 0.5 * (grey < 0.5).sum()
    assert Q.edge_f(thin, _line(10), 2) == 1.0  # the centre line (its ends shortened by a pixel)


def test_sliced_wasserstein_closed_forms():
    rng = np.random.default_rng(0)
    points, dirs = rng.normal(size=(500, 3)), Q.directions()
    assert Q.sliced_wasserstein(points, points[rng.permutation(500)], dirs) == pytest.approx(0.0, abs=1e-12)
    shift = np.array([3.0, -1.0, 2.0])  # a translation moves every 1-d projection by u.shift
    assert Q.sliced_wasserstein(points, points + shift, dirs) == pytest.approx(np.mean(np.abs(dirs @ shift)))
    assert np.allclose(np.linalg.norm(dirs, axis=1), 1) and np.array_equal(dirs, Q.directions())


def test_colour_transfer_moves_labs_mean_and_spread_to_the_exemplars():
    rng = np.random.default_rng(0)
    image = 0.3 + 0.3 * rng.random((16, 16, 3))       # in gamut before and after: no clipping
    exemplar = 0.4 + 0.2 * rng.random((16, 16, 3))
    moved = Q.rgb2lab(Q.colour_transfer(image, exemplar)).reshape(-1, 3)
    target = Q.rgb2lab(exemplar).reshape(-1, 3)
    assert np.allclose(moved.mean(0), target.mean(0), atol=0.05) and np.allclose(moved.std(0), target.std(0), atol=0.05)
    assert np.allclose(Q.colour_transfer(image, image), image, atol=1e-6)


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


def test_truth_scores_of_simple_pictures():
    shapes = [SQUARE]
    labels, pure = Q.regions(shapes, 64)
    truth = np.asarray(D.render({"palette": "paper", "texture": FLAT, "shapes": shapes}, 64)[0]) / 255
    perfect = {"truth_psnr": Q.PSNR_CAP, "fill_de": 0.0, "bg_de": 0.0, "shape_iou": 1.0}
    assert Q.truth_scores(truth, truth, labels, pure) == perfect
    # the same shapes in another palette: perfect shapes, colour errors = the palettes' Lab distances
    other = np.asarray(D.render({"palette": "night", "texture": FLAT, "shapes": shapes}, 64)[0]) / 255
    s = Q.truth_scores(other, truth, labels, pure)
    lab = lambda c: Q.rgb2lab(np.array(c, dtype=float)[None, None] / 255)[0, 0]  # noqa: E731
    assert s["shape_iou"] == 1.0
    assert s["bg_de"] == pytest.approx(np.linalg.norm(lab(D.PALETTES["night"][0]) - lab(D.PALETTES["paper"][0])))
    assert s["fill_de"] == pytest.approx(np.linalg.norm(lab(D.PALETTES["night"][2]) - lab(D.PALETTES["paper"][2])))
    grey = np.full_like(truth, 0.5)  # no shapes: only one region can win each pixel
    assert Q.truth_scores(grey, truth, labels, pure)["shape_iou"] < 0.7
    moved = np.asarray(D.render({"palette": "paper", "texture": FLAT,
                                 "shapes": [{**SQUARE, "cx": 0.3, "cy": 0.3}]}, 64)[0]) / 255
    assert Q.truth_scores(moved, truth, labels, pure)["shape_iou"] < 0.7


def test_cases_pair_every_sketch_with_its_own_and_other_styles():
    cases = Q.cases(5, 2)
    assert cases[:5] == [("own", i, i) for i in range(5)]
    swapped = cases[5:]
    assert len(swapped) == 10 and all(i != j for _, i, j in swapped)
    assert sorted(j for _, i, j in swapped if i == 4) == [0, 1]
    assert len(Q.cases(3, 10)) == 3 + 3 * 2  # never more swaps than other images


# --------------------------------------------------------------------------- the benchmark on known answers

@pytest.fixture(scope="module")
def held_out(demo_root):
    return Q.load_held_out(demo_root / "test" / "images", demo_root / "test" / "sketches", 128)


def _ground_truth_model(data):
    def draw(sketch_idx, style_idx):
        return {"truth": np.stack([data.truth(i, j) for i, j in zip(sketch_idx, style_idx)])}
    return draw


def test_baselines_score_their_known_values_and_the_truth_scores_perfectly(held_out):
    baselines = Q.baseline_method(held_out, np.full((128, 128, 3), 0.5))
    result = Q.evaluate([_ground_truth_model(held_out), baselines], held_out, swaps=3, batch_size=7, progress=False)
    perfect = {"truth_psnr": Q.PSNR_CAP, "fill_de": 0.0, "bg_de": 0.0, "shape_iou": 1.0}
    summary = result["summary"]
    assert {k: summary["truth"]["swapped"][k] for k in perfect} == perfect
    assert len(result["cases"]) == 8 * 4
    for case in result["cases"]:
        i = held_out.stems.index(case["sketch"])
        # a model that draws image i exactly scores image i's own edge score: the structure ceiling
        assert case["ignore exemplar"]["edge_f"] == Q.edge_f(Q.image_lines(held_out.pixels[i]), held_out.lines[i],
                                                             Q.TOLERANCE * 128)
        if case["kind"] == "own":
            for name in ("copy exemplar", "ignore exemplar", "colour transfer"):
                assert case[name]["psnr"] == Q.PSNR_CAP and case[name]["ssim"] == pytest.approx(1.0)
        else:
            assert case["copy exemplar"]["style_sw"] == 0.0 and case["copy exemplar"]["closer"] == 1.0
            assert case["ignore exemplar"]["closer"] == 0.0  # it is its own image: distance 0 to it
    swapped = summary["ignore exemplar"]["swapped"]
    assert swapped["fill_de"] > 10 and swapped["bg_de"] > 10 and swapped["truth_psnr"] < 30
    assert summary["copy exemplar"]["swapped"]["edge_f"] < swapped["edge_f"]  # another image's lines
    oracle = summary["colour transfer"]["swapped"]
    assert oracle["style_sw"] < swapped["style_sw"] and oracle["edge_f"] > 0.5 * swapped["edge_f"]
    assert summary["truth"]["swapped"]["edge_f"] > summary["copy exemplar"]["swapped"]["edge_f"]


def test_summary_table_lists_every_row_and_the_truth_columns_on_demo_data(held_out):
    result = Q.evaluate([Q.baseline_method(held_out, np.zeros((128, 128, 3)))], held_out, swaps=1, progress=False)
    table = Q.format_summary(result["summary"])
    assert table.count("\n") == 2 + len(Q.BASELINES) - 1 and "swapped fill_de" in table
    for name in Q.BASELINES:
        assert name in table


def test_a_folder_that_is_not_demo_data_has_no_truth_columns(demo_root, tmp_path):
    import shutil
    for part in ("images", "sketches"):
        shutil.copytree(demo_root / "test" / part, tmp_path / "mine" / part)
    data = Q.load_held_out(tmp_path / "mine" / "images", tmp_path / "mine" / "sketches", 64, n=3)
    assert data.scenes is None and len(data.stems) == 3 and data.pixels[0].shape == (64, 64, 3)
    result = Q.evaluate([Q.baseline_method(data, np.zeros((64, 64, 3)))], data, swaps=1, progress=False)
    assert "fill_de" not in result["summary"]["copy exemplar"]["swapped"]
    assert "fill_de" not in Q.format_summary(result["summary"])


# --------------------------------------------------------------------------- command line on a trained model

@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("quality")
    args = tiny_train_args(demo_root, folder, IM_SIZE_GAN=128, ITERATION_AE=2, ITERATION_GAN=2, TRIAL_NAME="run")
    assert train.main(args) == 0
    return folder / "runs" / "run"


def test_command_line_scores_the_runs_held_out_set(demo_root, run_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert Q.main(["--checkpoint", str(run_dir), "--swaps", "2", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| model " in printed and "| AE stage " in printed and "| colour transfer " in printed
    assert "KID/FID: skipped" in printed
    result = json.loads((out / "quality.json").read_text())
    assert result["size"] == 128 and result["held_out"] == 8 and result["swaps"] == 2 and result["iteration"] == 2
    assert result["images"] == str(demo_root / "test" / "images") and result["ground_truth"]
    assert len(result["cases"]) == 8 * 3
    assert set(result["summary"]) == {Q.MODEL, Q.AE, *Q.BASELINES}
    for kinds in result["summary"].values():
        assert 0 <= kinds["swapped"]["edge_f"] <= 1 and np.isfinite(kinds["own"]["ssim"])
    with Image.open(out / "matrix.png") as picture:
        assert picture.size == (5 * 128 + 6 * 2, 5 * 128 + 6 * 2)
    with Image.open(out / "own.png") as picture:
        assert picture.size == (4 * 128 + 5 * 2, 6 * 128 + 7 * 2)


def test_kid_and_fid_when_the_inception_weights_are_present(run_dir, tmp_path, monkeypatch, cheap_inception):
    monkeypatch.setattr(Q.weights, "available", lambda name: True)
    result = Q.run(run_dir, tmp_path / "q", swaps=1, n=4, device="cpu", progress=False)
    assert set(result["distribution"]) == {"fid", "kid", "kid_std", "n_a", "n_b"}
    assert result["distribution"]["n_a"] == 4 and np.isfinite(result["distribution"]["kid"])


def test_an_ae_checkpoint_is_scored_as_its_ae_alone(run_dir, tmp_path):
    ae_file = next((run_dir / "ae" / "checkpoints").glob("ckpt_*.pt"))
    result = Q.run(ae_file, tmp_path / "q", swaps=1, device="cpu", progress=False)
    assert set(result["summary"]) == {Q.AE, *Q.BASELINES} and result["size"] == 64


def test_bad_inputs_are_one_line_and_write_nothing(demo_root, run_dir, tmp_path, capsys):
    ckpt = load_checkpoint(find_checkpoint(run_dir))
    ckpt["state"]["arch"]["nfc"] = 16  # the networks are NFC=8
    save_checkpoint(ckpt, tmp_path / "other.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file").write_text("x")
    cases = {"do not load": ["--checkpoint", str(tmp_path / "other.pt")],
             "no image in": ["--checkpoint", str(run_dir), "--sketches", str(empty)],     # a folder without sketches
             "is a file": ["--checkpoint", str(run_dir), "--out", str(tmp_path / "file")]}
    for words, argv in cases.items():
        out = ["--out", str(tmp_path / "q")] if "--out" not in argv else []
        assert Q.main([*argv, *out, "--device", "cpu", "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: ") and words in err, err
        assert not (tmp_path / "q").exists()


def test_a_run_without_a_held_out_set_names_the_options(run_dir, tmp_path, capsys):
    ckpt = load_checkpoint(find_checkpoint(run_dir))
    ckpt["config"] = {**ckpt["config"], "TEST_IMAGE_DIR": None, "TEST_SKETCH_DIR": None}
    save_checkpoint(ckpt, tmp_path / "no_test.pt")
    assert Q.main(["--checkpoint", str(tmp_path / "no_test.pt"), "--out", str(tmp_path / "q"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--images" in err and "--sketches" in err


# --------------------------------------------------------------------------- training time -> quality

def test_quality_curve_scores_every_checkpoint_of_a_run(demo_root, run_dir, tmp_path, capsys):
    from evaluate import quality_curve
    found = quality_curve.stage_checkpoints(run_dir)
    assert [s for s, _, _ in found] == sorted(s for s, _, _ in found) and {s for s, _, _ in found} == {"ae", "gan"}
    out = tmp_path / "curve"
    assert quality_curve.main(["--run", str(run_dir), "--swaps", "1", "--out", str(out), "--device", "cpu"]) == 0
    points = json.loads((out / "curve.json").read_text())["points"]
    assert [(p["stage"], p["iteration"]) for p in points] == [(s, it) for s, it, _ in found]
    minutes = [p["minutes"] for p in points]
    assert minutes == sorted(minutes) and minutes[0] > 0
    gan = points[-1]  # the same numbers as the benchmark run on that checkpoint alone
    alone = Q.run(gan["checkpoint"], tmp_path / "alone", swaps=1, device="cpu", progress=False)
    assert gan["scores"] == alone["summary"][Q.MODEL]
    printed = capsys.readouterr().out
    assert printed.count("| AE ") + printed.count("| GAN ") == len(points) and "ignore exemplar" in printed


def test_training_time_is_read_from_the_logs_so_a_resume_counts_only_training(tmp_path):
    from evaluate import quality_curve
    for stage, records in {"ae": [(9, 60.0), (19, 60.0)], "gan": [(9, 30.0), (19, 30.0)]}.items():
        (tmp_path / stage).mkdir()
        lines = [json.dumps({"iter": it, "img_per_s": 1.0, "sec": sec}) for it, sec in records]
        (tmp_path / stage / "log.jsonl").write_text("\n".join(lines) + "\n")
    assert quality_curve.training_seconds(tmp_path, "ae", 10) == 60.0
    assert quality_curve.training_seconds(tmp_path, "ae", 20) == 120.0
    assert quality_curve.training_seconds(tmp_path, "gan", 20) == 180.0
    (tmp_path / "gan" / "log.jsonl").write_text(json.dumps({"iter": 9, "img_per_s": 1.0}) + "\n")
    with pytest.raises(quality_curve.CheckpointError, match="sec"):
        quality_curve.training_seconds(tmp_path, "gan", 10)


def test_quality_curve_of_a_folder_without_checkpoints_is_one_line(tmp_path, capsys):
    from evaluate import quality_curve
    (tmp_path / "config.json").write_text("{}")
    assert quality_curve.main(["--run", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: no checkpoint")
