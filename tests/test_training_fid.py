"""FID of a model: during GAN training (held-out set, EMA generator) and of a checkpoint (benchmark.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import benchmark as B
import train
from conftest import Pooled, tiny_config, tiny_train_args
from datasets import pair_folders
from training import Runtime

G = 64  # the tiny model's output size
pytestmark = pytest.mark.filterwarnings("ignore:FID statistics from only")  # tiny sets on purpose


@pytest.fixture
def cheap_inception(cheap_inception, monkeypatch, tmp_path):
    """conftest's cheap_inception, with the working directory (the default FID cache) in tmp_path."""
    monkeypatch.chdir(tmp_path)


def _train_args(demo_root, tmp_path, **overrides) -> list[str]:
    return tiny_train_args(demo_root, tmp_path, TRIAL_NAME="run", **overrides)


def test_training_fid_compares_with_the_unaugmented_held_out_images(demo_root, tmp_path):
    cfg = tiny_config(demo_root, tmp_path, FID_N_SAMPLES=100)
    model = B.InceptionFeatures(Pooled(), "pooled")
    held_out = pair_folders(cfg.TEST_IMAGE_DIR, [cfg.TEST_SKETCH_DIR])
    measure = B.training_fid(cfg, Runtime(device=torch.device("cpu")), held_out, model, cache_dir=tmp_path / "cache")

    copy_style = measure(lambda sketch, style: (None, style))  # a "generator" that returns its exemplar
    assert copy_style["fid_n"] == 8  # capped at the held-out set's size
    assert copy_style["fid"] == pytest.approx(0, abs=1e-6)
    assert copy_style["fid_mismatched"] == pytest.approx(0, abs=1e-6)  # the same images, shifted by one

    sketch_only = measure(lambda sketch, style: (None, sketch.expand(-1, 3, -1, -1)))
    assert sketch_only["fid"] > 1e-3
    assert sketch_only["fid"] == pytest.approx(sketch_only["fid_mismatched"])  # the style is unused
    assert list((tmp_path / "cache").iterdir()), "the real statistics are cached"


def test_training_fid_only_on_rank_0(demo_root, tmp_path):
    rank1 = Runtime(device=torch.device("cpu"), rank=1, world_size=2)
    measure = B.training_fid(tiny_config(demo_root, tmp_path), rank1, held_out=None)  # never loads weights
    assert measure(lambda s, x: pytest.fail("rank 1 generated")) == {}


def test_train_logs_fid_at_its_interval(demo_root, tmp_path, cheap_inception):
    args = _train_args(demo_root, tmp_path, ITERATION_GAN=4, FID_INTERVAL=2, FID_N_SAMPLES=6)
    assert train.main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "runs" / "run" / "gan" / "log.jsonl").read_text().splitlines()]
    fids = [r for r in records if "fid" in r]
    assert [r["iter"] for r in fids] == [1, 3]  # 0-based iterations after 2 and 4 steps
    for r in fids:
        assert r["fid_n"] == 6 and np.isfinite(r["fid"]) and r["fid"] >= 0 and np.isfinite(r["fid_mismatched"])
    assert list((tmp_path / "fid_stats").iterdir()), "real statistics cached in the default folder"


def test_missing_inception_weights_stop_before_any_run_folder(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("S2I_FID_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    assert train.main(_train_args(demo_root, tmp_path, FID_INTERVAL=2)) == 1
    err = capsys.readouterr().err
    assert "missing.pth" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "run").exists()


@pytest.fixture
def run_dir(demo_root, tmp_path, cheap_inception) -> Path:
    assert train.main(_train_args(demo_root, tmp_path, ITERATION_AE=2, ITERATION_GAN=2, FID_INTERVAL=0)) == 0
    return tmp_path / "runs" / "run"


@pytest.mark.parametrize("pairing", ["name", "shifted"])
def test_fid_of_a_checkpoint_saves_its_images_and_measures_them(demo_root, tmp_path, run_dir, pairing):
    test = demo_root / "test"
    out, save = tmp_path / "fid.json", tmp_path / "generated"
    argv = ["fid", "--real", str(test / "images"), "--checkpoint", str(run_dir), "--sketch", str(test / "sketches"),
            "--style", str(test / "images"), "--pairing", pairing, "--save-dir", str(save), "--device", "cpu",
            "--batch-size", "3", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert B.main(argv) == 0
    pngs = sorted(save.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(8)]
    assert all(Image.open(p).size == (G, G) for p in pngs)
    result = json.loads(out.read_text())
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert result["real"]["n"] == result["fake"]["n"] == 8
    # the real images were measured at the model's output size, without an explicit --size
    stats = B.folder_stats(test / "images", lambda: pytest.fail("cache miss"), "cpu", size=G,
                           cache_dir=tmp_path / "cache")
    assert stats.n == 8


def test_fid_of_a_checkpoint_needs_both_folders(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        B.main(["fid", "--real", str(tmp_path), "--checkpoint", str(tmp_path), "--sketch", str(tmp_path)])
    assert e.value.code == 2 and "--sketch and --style" in capsys.readouterr().err


def test_checkpoint_pairs_by_name_or_shifted(tmp_path):
    sketches, styles = tmp_path / "sketches", tmp_path / "styles"
    for folder, stems in ((sketches, "abcx"), (styles, "abc")):
        folder.mkdir()
        for stem in stems:
            Image.new("RGB", (8, 8)).save(folder / f"{stem}.png")
    names = lambda pairs: [(s.stem, x.stem) for s, x in pairs]  # noqa: E731
    assert names(B.checkpoint_pairs(sketches, styles, "name")) == [("a", "a"), ("b", "b"), ("c", "c")]
    assert names(B.checkpoint_pairs(sketches, styles, "shifted")) == [("a", "b"), ("b", "c"), ("c", "a"), ("x", "b")]
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "z.png")
    with pytest.raises(B.DataError, match="same name"):
        B.checkpoint_pairs(sketches, other, "name")
    assert names(B.checkpoint_pairs(sketches, other, "shifted")) == [(s, "z") for s in "abcx"]
