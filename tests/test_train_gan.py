"""The GAN stage and train.py: one step, frozen AE, EMA arithmetic, resume, end-to-end runs, errors."""
import json

import pytest
import torch

import train
from conftest import tiny_config, tiny_train_args
from fileio import CheckpointDir, JsonlLog, load_checkpoint, save_checkpoint
from checkpoints import load_trained
from stages import AEStage, GANStage, runtime_for
from training import EMA, NanGuard, run_stage


@pytest.fixture(scope="module")
def ae_file(demo_root, demo_pairs, tmp_path_factory):
    """The checkpoint of an AE stage trained for 2 iterations."""
    folder = tmp_path_factory.mktemp("ae")
    cfg = tiny_config(demo_root, folder)
    stage = AEStage(cfg, runtime_for(cfg), demo_pairs, demo_pairs)
    stage.restart_data(0)
    for it in range(2):
        stage.step(it, NanGuard("stop", torch.device("cpu")))
    save_checkpoint({"kind": "ae", "iteration": 2, "state": stage.state_dict(), "config": cfg.to_dict()},
                    folder / "ae.pt")
    return folder / "ae.pt"


def _gan(demo_root, demo_pairs, tmp_path, ae_file, **overrides):
    cfg = tiny_config(demo_root, tmp_path, **overrides)
    stage = GANStage(cfg, runtime_for(cfg), demo_pairs, demo_pairs, load_trained(ae_file, kind="ae").ae)
    stage.restart_data(0)
    return stage, cfg


def test_the_generator_is_the_configured_architecture_and_is_stored(demo_root, demo_pairs, tmp_path, ae_file):
    from models import RefineGeneratorFace
    stage, _ = _gan(demo_root, demo_pairs, tmp_path, ae_file, GENERATOR="face")  # the demo data, the face network
    assert type(stage.generator) is RefineGeneratorFace
    assert stage.arch()["generator"] == "face" and stage.state_dict()["arch"]["generator"] == "face"


def test_no_stage_file_imports_another():
    """Shared pieces (fixed_batch, build_lpips, the AE loader) live in datasets, losses and models."""
    import ast
    from pathlib import Path
    for path in Path(__file__).resolve().parents[1].glob("train_step_*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {n for n in names if n and n.startswith("train_step_")}, path.name


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_one_gan_step_trains_g_and_d_and_keeps_the_ae_frozen(demo_root, demo_pairs, tmp_path, ae_file):
    stage, _ = _gan(demo_root, demo_pairs, tmp_path, ae_file, W_GAN_GREY=10.0)
    ae_before, g_before, d_before = _snapshot(stage.ae), _snapshot(stage.generator), _snapshot(stage.discriminator)
    logs = stage.step(0, NanGuard("stop", torch.device("cpu")))
    assert {"d_loss", "g_adv", "g_rec", "g_grey", "d_real", "d_fake"} <= set(logs)
    assert all(torch.isfinite(v) for v in logs.values())
    assert all(torch.equal(v, stage.ae.state_dict()[k]) for k, v in ae_before.items())  # weights AND BN stats
    assert not stage.ae.training and not any(p.requires_grad for p in stage.ae.parameters())
    g_params = dict(stage.generator.named_parameters())
    moved_g = [k for k, p in g_params.items() if not torch.equal(p, g_before[k])]
    assert len(moved_g) > 0.9 * len(g_params)
    moved_d = [k for k, p in stage.discriminator.named_parameters() if not torch.equal(p, d_before[k])]
    assert len(moved_d) == len(list(stage.discriminator.parameters()))
    assert all(p.requires_grad for p in stage.discriminator.parameters())  # re-enabled after G's step


def test_ema_arithmetic():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(net, decay=0.9)
    old = [p.clone() for p in ema.net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(7.0)
    ema.update(net)
    for e, o, p in zip(ema.net.parameters(), old, net.parameters()):
        assert torch.allclose(e, 0.9 * o + 0.1 * p)
    assert torch.equal(ema.net[1].running_mean, net[1].running_mean)  # buffers are copied
    assert not ema.net.training and not any(p.requires_grad for p in ema.net.parameters())


def test_generate_uses_the_ema_generator(demo_root, demo_pairs, tmp_path, ae_file):
    stage, _ = _gan(demo_root, demo_pairs, tmp_path, ae_file)
    with torch.no_grad():
        for p in stage.generator.parameters():
            p.add_(1.0)  # the live generator drifts; the EMA one does not follow without update()
    sketch, image = stage.grid["sketch"], stage.grid["image"]
    torch.manual_seed(0)
    _, out = stage.generate(sketch, image)
    torch.manual_seed(0)
    with stage.rt.autocast():  # as generate runs it (bf16 where the device has it)
        ae_image, style = stage.ae(sketch, image)
        expected = stage.ema.net(ae_image, style).float()
    assert torch.allclose(out, expected, atol=1e-6)
    torch.manual_seed(1)
    rows, nrow = stage.sample_grid()
    assert rows.shape == (5 * nrow, 3, 64, 64)
    torch.manual_seed(1)  # the grid's last row: each sketch in the previous column's exemplar's style
    stage.generate(sketch, image)
    _, previous = stage.generate(sketch, torch.cat([image[-1:], image[:-1]]))
    assert torch.allclose(rows[4 * nrow:], previous, atol=1e-6)


def test_gan_resume_continues_exactly(demo_root, demo_pairs, tmp_path, ae_file):
    def train_to(folder, total, resume):
        stage, cfg = _gan(demo_root, demo_pairs, folder, ae_file, DETERMINISTIC=True, SAVE_MODEL_INTERVAL=2)
        return stage, run_stage(stage, train.loop_options(cfg, total), folder / "gan", runtime_for(cfg), resume=resume)
    straight, _ = train_to(tmp_path / "a", 4, False)
    train_to(tmp_path / "b", 2, False)
    resumed, result = train_to(tmp_path / "b", 4, True)
    assert result.iteration == 4
    for name in ("generator", "discriminator"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert all(torch.equal(a, b) for a, b in zip(straight.ema.net.parameters(), resumed.ema.net.parameters()))


# --------------------------------------------------------------------------- train.py

def _args(demo_root, tmp_path, *extra):
    sketches = str(demo_root / "train" / "sketches")
    return [*tiny_train_args(demo_root, tmp_path, SKETCH_DIRS=(sketches, sketches)), *extra]


def test_train_py_end_to_end(demo_root, tmp_path):
    assert train.main(_args(demo_root, tmp_path, "TRIAL_NAME=run")) == 0
    run = tmp_path / "runs" / "run"
    assert json.loads((run / "config.json").read_text())["TRIAL_NAME"] == "run"
    for stage, total in (("ae", 4), ("gan", 3)):
        last = CheckpointDir(run / stage / "checkpoints").last()
        assert load_checkpoint(last, kind=stage)["iteration"] == total
        assert sorted(p.name for p in (run / stage / "images").glob("*.png"))
        records = JsonlLog(run / stage / "log.jsonl").read()
        assert records and all("img_per_s" in r for r in records)
    gan = load_checkpoint(CheckpointDir(run / "gan" / "checkpoints").last())
    assert {"generator_ema", "style_encoder", "content_encoder", "decoder"} <= set(gan["state"]["networks"])


def test_train_py_refuses_to_overwrite_and_resumes(demo_root, tmp_path, capsys):
    args = _args(demo_root, tmp_path, "TRIAL_NAME=run", "TRAIN_AE_ONLY=true")
    assert train.main(args) == 0
    assert train.main(args) == 1
    assert "already exists: continue it with RESUME=true" in capsys.readouterr().err
    folder = f"SAVE_FOLDER={tmp_path / 'runs'}"
    assert train.main([folder, "TRIAL_NAME=run", "RESUME=true", "ITERATION_AE=6", "TRAIN_AE_ONLY=true"]) == 0
    last = CheckpointDir(tmp_path / "runs" / "run" / "ae" / "checkpoints").last()
    assert load_checkpoint(last)["iteration"] == 6


def test_gan_only_with_pretrained_ae_and_its_errors(demo_root, tmp_path, capsys):
    assert train.main(_args(demo_root, tmp_path, "TRIAL_NAME=ae", "TRAIN_AE_ONLY=true")) == 0
    ae_run = tmp_path / "runs" / "ae"
    ok = train.main(_args(demo_root, tmp_path, "TRIAL_NAME=gan", "TRAIN_GAN_ONLY=true", f"PRETRAINED_AE_PATH={ae_run}"))
    assert ok == 0 and CheckpointDir(tmp_path / "runs" / "gan" / "gan" / "checkpoints").last()

    cases = [
        (["TRIAL_NAME=e1", "TRAIN_GAN_ONLY=true", f"PRETRAINED_AE_PATH={tmp_path / 'missing.pt'}"], "PRETRAINED_AE_PATH: checkpoint not found"),
        (["TRIAL_NAME=e2", "TRAIN_GAN_ONLY=true"], "TRAIN_GAN_ONLY needs an AE"),
        (["TRIAL_NAME=e3", "TRAIN_GAN_ONLY=true", f"PRETRAINED_AE_PATH={ae_run}", "NFC=16"],
         "trained with NFC=8, IM_SIZE_AE=64; this run has NFC=16"),
        (["TRIAL_NAME=e4", "IMAGE_DIR=none"], "no image folder configured"),
        (["TRIAL_NAME=e5", f"IMAGE_DIR={tmp_path}"], "no images"),
    ]
    for extra, message in cases:
        assert train.main(_args(demo_root, tmp_path, *extra)) == 1, extra
        assert message in capsys.readouterr().err, message

    ckpt = load_checkpoint(CheckpointDir(ae_run / "ae" / "checkpoints").last())
    ckpt["config"]["DATA_NAME"] = "face"
    save_checkpoint(ckpt, tmp_path / "face_ae.pt")
    assert train.main(_args(demo_root, tmp_path, "TRIAL_NAME=e6", "TRAIN_GAN_ONLY=true",
                            f"PRETRAINED_AE_PATH={tmp_path / 'face_ae.pt'}")) == 1
    assert "belongs to preset 'face'" in capsys.readouterr().err
    assert not [p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith("e")]  # refused before writing

    resume = [f"SAVE_FOLDER={tmp_path / 'runs'}", "TRIAL_NAME=ae", "RESUME=true", "TRAIN_AE_ONLY=false",
              "TRAIN_GAN_ONLY=true"]
    assert train.main(resume) == 0  # the GAN stage of a run that trained its AE alone: its own AE
    assert CheckpointDir(ae_run / "gan" / "checkpoints").last()


def test_fid_interval_without_held_out_set_is_refused(demo_root, tmp_path, capsys):
    no_held_out = ("TEST_IMAGE_DIR=none", "TEST_SKETCH_DIR=none")
    assert train.main(_args(demo_root, tmp_path, "TRIAL_NAME=f", *no_held_out, "FID_INTERVAL=2")) == 1
    assert "FID_INTERVAL > 0 needs a held-out set" in capsys.readouterr().err
