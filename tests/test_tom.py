"""TOM (sketch_styletransfer/): sizes, per-image Grams, training, exact resume, sketch folders. CPU, random VGG."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from fileio import CHECKPOINT_FORMAT, LOCK_FILE, CheckpointDir, load_checkpoint, locked_folder
from sketch_styletransfer import evaluate as E
from sketch_styletransfer import tom_models as M
from sketch_styletransfer import train as T
from training import NanGuard, checkpoint

REPO = Path(__file__).resolve().parent.parent
TINY = ["--im_size", "32", "--batch_size", "2", "--nfc", "8", "--workers", "0", "--device", "cpu",
        "--log_interval", "1", "--image_interval", "2", "--save_interval", "2", "--grid_n", "2"]


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).features


def test_parameter_counts_match_the_reference(vgg):
    assert _count(M.TOMGenerator(infc=256, nfc=128)) == 4_729_347
    assert _count(M.StyleDiscriminator(nfc=384)) == 831_841
    assert _count(vgg) == 14_714_688


def test_vgg_features_after_each_pool_frozen_and_in_eval(vgg):
    features = M.VGGFeatures(vgg)
    outs = features(torch.zeros(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    assert len(features(torch.zeros(1, 3, 64, 64), levels=3)) == 3
    torch.nn.Sequential(features).train()
    assert not features.training and not any(p.requires_grad for p in features.parameters())


def test_network_shapes():
    g = M.TOMGenerator(nfc=8)
    out = g(torch.randn(2, 256, 4, 4))
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    grams = M.gram_input([torch.randn(2, 128, 8, 8), torch.randn(2, 256, 4, 4), torch.randn(2, 512, 2, 2)])
    assert grams.shape == (2, 384, 16, 16)
    assert M.StyleDiscriminator()(grams).shape == (2, 9)


def test_gram_is_per_image_and_normalised():
    a, b = torch.randn(1, 4, 3, 5), torch.randn(1, 4, 3, 5)
    both = M.gram(torch.cat([a, b]))
    assert torch.allclose(both, torch.cat([M.gram(a), M.gram(b)]))   # no mixing across the batch
    flat = a.reshape(4, 15)
    assert torch.allclose(both[0], flat @ flat.T / (4 * 3 * 5))


def test_adain_takes_the_style_statistics():
    content, style = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8) * 3 + 5
    out = M.adain(content, style)
    assert torch.allclose(out.mean((2, 3)), style.mean((2, 3)), atol=1e-4)
    assert torch.allclose(out.std((2, 3)), style.std((2, 3)), atol=1e-3)


def test_to_sketch_binary_and_soft():
    raw = torch.tensor([-1.0, 0.0, 0.3, 0.5, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert M.to_sketch(raw).flatten().tolist() == [0, 0, 0, 1, 1]                       # grey > 0.7 is paper
    assert torch.allclose(M.to_sketch(raw, None).flatten(), torch.tensor([0, 0.5, 0.65, 0.75, 1]))


def test_training_steps_lower_the_gram_loss(vgg):
    torch.manual_seed(0)
    trainer = T.TOMTrainer(vgg, {"nfc": 8, "lr": 1e-3, "gram_weight": 16000})  # Grams of a random VGG are small: weigh them up
    photos = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sketches = torch.ones(2, 3, 32, 32)
    sketches[:, :, 8:10, :] = -1
    sketches[:, :, :, 20:22] = -1

    def gram_now():
        with torch.no_grad():
            real = trainer.vgg(sketches, levels=4)[1:]
            fake = trainer.vgg(trainer.g(trainer.vgg(photos, levels=3)[2]), levels=4)[1:]
            return float(M.gram_loss(fake, real))

    before = gram_now()
    guard = NanGuard("stop", torch.device("cpu"))
    for it in range(4):
        losses = trainer.update(photos, sketches, it, guard)
    assert set(losses) == {"d_hinge", "g_adv", "mse", "gram"} and not any(v.requires_grad for v in losses.values())
    assert gram_now() < 0.8 * before


def test_resume_continues_the_count_and_matches_an_uninterrupted_run(vgg, demo_root, tmp_path, capsys):
    data = ["--path_a", str(demo_root / "train" / "images"), "--path_b", str(demo_root / "test" / "sketches")]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert T.main(data + TINY + ["--total_iter", "4", "--out", str(straight)], vgg_features=vgg) == 0
    assert T.main(data + TINY + ["--total_iter", "2", "--out", str(split)], vgg_features=vgg) == 0
    assert T.main(["--checkpoint", str(split), "--total_iter", "4"], vgg_features=vgg) == 0  # the rest from the run

    a = load_checkpoint(CheckpointDir(straight / "checkpoints").last(), kind="tom")
    b = load_checkpoint(CheckpointDir(split / "checkpoints").last(), kind="tom")
    assert a["iteration"] == b["iteration"] == 4 and a["format"] == CHECKPOINT_FORMAT
    for net in ("g", "d"):
        for key, value in a["state"]["networks"][net].items():
            assert torch.equal(value, b["state"]["networks"][net][key]), (net, key)
    assert all(int(s["step"]) == 4 for s in b["state"]["optimizers"]["g"]["state"].values())
    assert b["config"]["im_size"] == 32 and b["config"]["path_a"] == str(Path(data[1]).resolve())

    log = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [0, 1, 2, 3] and {"d_hinge", "g_adv", "mse", "gram"} <= set(log[0])
    assert sorted(p.name for p in (straight / "images").iterdir()) == ["iter_00000000.png", "iter_00000002.png",
                                                                       "iter_00000003.png"]
    with Image.open(straight / "images" / "iter_00000000.png") as grid:   # photos, grey and binary sketches
        assert grid.size == (2 + 2 * 34, 2 + 3 * 34)

    capsys.readouterr()
    assert T.main(data + TINY + ["--out", str(split)], vgg_features=vgg) == 1   # never overwrite a run silently
    assert "already holds a run" in capsys.readouterr().err


def _checkpoint(run: Path, vgg, iteration: int = 2) -> Path:
    torch.manual_seed(iteration)
    trainer = T.TOMTrainer(vgg, {"path_a": "photos", "path_b": "sketches", "im_size": 32, "nfc": 8})
    return CheckpointDir(run / "checkpoints").save(checkpoint(trainer, iteration, trainer.args), iteration)


def _poison_gram_at(monkeypatch, iteration: int):
    """TOM's Gram loss is NaN at `iteration` (it is computed once per iteration)."""
    real, calls = M.gram_loss, []

    def gram_loss(fake, real_features):
        calls.append(None)
        return real(fake, real_features) * (float("nan") if len(calls) == iteration + 1 else 1.0)
    monkeypatch.setattr(T, "gram_loss", gram_loss)


def test_a_nan_loss_stops_the_run_in_one_line_naming_the_last_good_checkpoint(vgg, demo_root, tmp_path, capsys,
                                                                               monkeypatch):
    data = ["--path_a", str(demo_root / "train" / "images"), "--path_b", str(demo_root / "test" / "sketches")]
    _poison_gram_at(monkeypatch, 2)
    capsys.readouterr()
    assert T.main(data + TINY + ["--total_iter", "4", "--out", str(tmp_path / "run")], vgg_features=vgg) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "loss 'gram' became NaN/Inf at iteration 2. Last good checkpoint: " in errors[0]
    assert errors[0].endswith("ckpt_00000002.pt. Lower the learning rate, or skip such steps with --nan_policy skip.")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt_*.pt")] == ["ckpt_00000002.pt"]


def test_a_run_folder_in_use_is_one_line_before_writing(vgg, demo_root, tmp_path, capsys):
    """Two TOM runs on one --out at once (or two --checkpoint resumes of one run): the second stops."""
    data = ["--path_a", str(demo_root / "train" / "images"), "--path_b", str(demo_root / "test" / "sketches")]
    out = tmp_path / "run"
    with locked_folder(out):  # the first run, before it has written anything
        assert T.main(data + TINY + ["--total_iter", "2", "--out", str(out)], vgg_features=vgg) == 1
        assert f"error: {out} is in use by another process" in capsys.readouterr().err
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    assert T.main(data + TINY + ["--total_iter", "2", "--out", str(out)], vgg_features=vgg) == 0
    with locked_folder(out):
        assert T.main(["--checkpoint", str(out), "--total_iter", "4"], vgg_features=vgg) == 1
        assert "choose another --out" in capsys.readouterr().err


def test_a_stop_signal_saves_and_exits_with_its_code(vgg, demo_root, tmp_path, capsys, monkeypatch):
    """SIGTERM (or Ctrl-C) finishes the step, saves and exits 143 (130): not 0 and "done" as a finished run."""
    data = ["--path_a", str(demo_root / "train" / "images"), "--path_b", str(demo_root / "test" / "sketches")]
    real, calls = M.gram_loss, []

    def gram_loss(fake, real_features):
        calls.append(None)
        if len(calls) == 2:  # during iteration 1
            os.kill(os.getpid(), signal.SIGTERM)
        return real(fake, real_features)
    monkeypatch.setattr(T, "gram_loss", gram_loss)
    out = tmp_path / "run"
    assert T.main(data + TINY + ["--total_iter", "100", "--out", str(out)], vgg_features=vgg) == 143
    printed = capsys.readouterr()
    assert "resume with:" in printed.err and "done:" not in printed.out
    assert load_checkpoint(CheckpointDir(out / "checkpoints").last(), kind="tom")["iteration"] == 2


def test_nan_policy_skip_skips_the_bad_update_and_goes_on(vgg, demo_root, tmp_path, capsys, monkeypatch):
    data = ["--path_a", str(demo_root / "train" / "images"), "--path_b", str(demo_root / "test" / "sketches")]
    _poison_gram_at(monkeypatch, 2)
    out = tmp_path / "run"
    assert T.main(data + TINY + ["--total_iter", "4", "--out", str(out), "--nan_policy", "skip"], vgg_features=vgg) == 0
    assert "iteration 2: non-finite gram; step skipped" in capsys.readouterr().err
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r.get("skipped_steps", 0) for r in log] == [0, 0, 1, 1]
    ckpt = load_checkpoint(CheckpointDir(out / "checkpoints").last(), kind="tom")
    assert ckpt["iteration"] == 4 and ckpt["config"]["nan_policy"] == "skip"
    assert all(int(s["step"]) == 3 for s in ckpt["state"]["optimizers"]["g"]["state"].values())  # G skipped once


def test_evaluate_writes_paired_sketches_per_checkpoint_and_threshold(vgg, demo_root, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    stems = ["a", "b", "c"]
    for i, stem in enumerate(stems):
        shutil.copy(demo_root / "test" / "images" / f"{i:05d}.png", photos / f"{stem}.png")
    (photos / "broken.png").write_bytes(b"truncated")
    first = _checkpoint(tmp_path / "run1", vgg)
    _checkpoint(tmp_path / "run2", vgg)   # same file name in another run: folders named after the runs
    out = tmp_path / "sketches"
    argv = ["--path_content", str(photos), "--path_result", str(out), "--checkpoint", str(first),
            str(tmp_path / "run2"), "--threshold", "0.7", "none", "--batch_size", "2", "--workers", "0", "--device", "cpu"]
    assert E.main(argv, vgg_features=vgg) == 0
    names = ["run1_ckpt_00000002_t0.7", "run1_ckpt_00000002_soft", "run2_ckpt_00000002_t0.7", "run2_ckpt_00000002_soft"]
    printed = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert "SKETCH_DIRS=" + ",".join(str(out / n) for n in names) in printed.out and "broken" in printed.err
    for name in names:
        assert sorted(p.stem for p in (out / name).iterdir()) == stems
        with Image.open(out / name / "a.png") as sk:
            assert sk.mode == "L" and sk.size == (32, 32)
            if name.endswith("_t0.7"):
                assert set(np.unique(np.asarray(sk))) <= {0, 255}

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert E.main(argv, vgg_features=vgg) == 0
    assert "wrote 0 sketches, kept 12" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    (out / names[0] / "b.png").unlink()
    assert E.main(argv, vgg_features=vgg) == 0 and "wrote 1 sketches" in capsys.readouterr().out
    assert E.main(argv + ["--overwrite", "--size", "48"], vgg_features=vgg) == 0
    with Image.open(out / names[1] / "c.png") as sk:
        assert sk.size == (48, 48)


def test_scripts_run_from_their_own_folder():
    result = subprocess.run([sys.executable, "evaluate.py", "--help"], cwd=REPO / "sketch_styletransfer",
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--path_content" in result.stdout, result.stderr


def test_tom_under_torchrun_keeps_ranks_identical_and_writes_once(demo_root, tmp_path):
    from test_distributed import _torchrun
    out = tmp_path / "run"
    printed = _torchrun(REPO / "tests" / "tom_ddp_worker.py", demo_root / "train" / "images",
                        demo_root / "test" / "sketches", out)
    assert "identical on 2 ranks" in printed and printed.count("run folder:") == 1
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [0, 1, 2, 3]  # one log, written by rank 0 only
    assert load_checkpoint(CheckpointDir(out / "checkpoints").last())["iteration"] == 4
    assert sorted(p.name for p in (out / "images").iterdir()) == ["iter_00000000.png", "iter_00000002.png",
                                                                  "iter_00000003.png"]
