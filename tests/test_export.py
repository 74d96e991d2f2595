"""export.py and SketchToImage.from_pretrained: the slim safetensors model format."""
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import export
import inference
import train
from conftest import tiny_train_args
from evaluate import generate_mix
from fileio import CheckpointDir, CheckpointError, load_checkpoint, save_checkpoint
from inference import SketchToImage
from checkpoints import EXPORT_FORMAT, exported_checksum, is_exported, load_tom


@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory) -> Path:
    """A run folder with AE and GAN checkpoints (two iterations each; 64 px AE, 128 px output)."""
    folder = tmp_path_factory.mktemp("export")
    args = tiny_train_args(demo_root, folder, IM_SIZE_GAN=128, ITERATION_AE=2, ITERATION_GAN=2, EMA_DECAY=0.5,
                           TRIAL_NAME="run")
    assert train.main(args) == 0
    return folder / "runs" / "run"


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model.safetensors"
    assert export.main([str(run_dir), "--out", str(out)]) == 0
    return out


def _save(tensors: dict, path: Path, meta: dict) -> None:
    """A hand-made exported file with a checksum that matches: what it tests lies past the checksum check."""
    save_file(tensors, path, metadata={**meta, "checksum": exported_checksum(tensors, meta)})


def _inputs(model, demo_root):
    names = sorted(p.name for p in (demo_root / "test" / "sketches").iterdir())[:3]
    sketches = torch.cat([model.prepare_sketch(demo_root / "test" / "sketches" / n) for n in names])
    styles = torch.cat([model.prepare_style(demo_root / "test" / "images" / n) for n in names])
    return sketches, styles


def test_the_exported_model_draws_exactly_what_the_checkpoint_draws(run_dir, exported, demo_root):
    original = SketchToImage.from_pretrained(run_dir, device="cpu")
    slim = SketchToImage.from_pretrained(exported, device="cpu")
    assert is_exported(exported) and not is_exported(original.source)
    assert (slim.arch, slim.iteration) == (original.arch, original.iteration)
    assert slim.config == json.loads(json.dumps(original.config))  # as JSON: tuples read back as lists
    assert slim.config["TEST_IMAGE_DIR"] == str(demo_root / "test" / "images")  # the app's default gallery
    sketches, styles = _inputs(original, demo_root)
    for seed in (0, 7):
        out, ae = original.generate(sketches, styles, seed=seed, return_ae=True)
        out2, ae2 = slim.generate(sketches, styles, seed=seed, return_ae=True)
        assert torch.equal(out, out2) and torch.equal(ae, ae2)
    ema = load_checkpoint(original.source)["state"]["networks"]["generator_ema"]
    assert all(torch.equal(v, ema[k]) for k, v in slim.generator.state_dict().items())  # the EMA weights


def test_the_file_is_tensors_and_json_and_a_fraction_of_the_checkpoint(run_dir, exported, capsys):
    checkpoint = CheckpointDir(run_dir / "gan" / "checkpoints").last()
    assert exported.stat().st_size < 0.5 * checkpoint.stat().st_size  # no D, no optimizers, no live G
    with safe_open(str(exported), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["format"] == EXPORT_FORMAT and meta["format_version"] == "1"
    assert json.loads(meta["arch"]) == {"preset": "demo", "generator": "art", "nfc": 8, "im_size_ae": 64,
                                        "im_size_gan": 128, "im_size_d": 64}
    assert json.loads(meta["config"])["DATA_NAME"] == "demo" and meta["iteration"] == "2"
    assert {k.partition(".")[0] for k in keys} == {"style_encoder", "content_encoder", "decoder", "generator"}
    assert not exported.read_bytes().startswith(b"PK")  # not a torch/pickle zip archive


def test_the_file_has_the_mode_of_any_new_file(exported, tmp_path):
    """Issue 25 item 18: not mkstemp's private 0600, but what the umask gives every new file."""
    mask = os.umask(0)
    os.umask(mask)
    (tmp_path / "plain").write_text("x")
    assert stat.S_IMODE(exported.stat().st_mode) == 0o666 & ~mask == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_every_script_takes_the_exported_file(exported, demo_root, tmp_path):
    sketch = demo_root / "test" / "sketches" / sorted(p.name for p in (demo_root / "test" / "sketches").iterdir())[0]
    style = demo_root / "test" / "images" / sketch.name
    assert inference.main(["--checkpoint", str(exported), "--sketch", str(sketch), "--style", str(style),
                           "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    other = sorted((demo_root / "test" / "images").iterdir())[1]
    assert generate_mix.main(["--checkpoint", str(exported), "--sketch", str(sketch), "--styles", str(style),
                              str(other), "--out", str(tmp_path / "mix"), "--device", "cpu"]) == 0
    assert (tmp_path / "mix" / "mix_grid.png").is_file()
    again = tmp_path / "again.safetensors"  # an exported file exports again, unchanged
    assert export.main([str(exported), "--out", str(again)]) == 0
    a, b = SketchToImage.from_pretrained(exported, "cpu"), SketchToImage.from_pretrained(again, "cpu")
    assert all(torch.equal(v, b.generator.state_dict()[k]) for k, v in a.generator.state_dict().items())


def test_export_refuses_in_one_line(run_dir, exported, tmp_path, capsys):
    def one_line(argv, *expected):
        assert export.main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
        for text in expected:
            assert text in err
    one_line([str(run_dir), "--out", str(exported)], "exists", "--overwrite")
    one_line([str(run_dir), "--out", str(tmp_path / "model.pt")], "*.safetensors")
    one_line([str(run_dir / "ae" / "checkpoints" / "ckpt_00000002.pt"), "--out", str(tmp_path / "x.safetensors")],
             "AE-stage checkpoint")
    one_line([str(tmp_path / "missing"), "--out", str(tmp_path / "y.safetensors")], "not found")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
    before = SketchToImage.from_pretrained(exported, "cpu").generator.state_dict()
    assert export.main([str(run_dir), "--out", str(exported), "--overwrite"]) == 0
    after = SketchToImage.from_pretrained(exported, "cpu").generator.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_a_full_disk_is_one_line_and_leaves_no_file(run_dir, tmp_path, monkeypatch, capsys):
    """Issue 25 item 28: not safetensors' SafetensorError traceback, but "no space left on <folder>"."""
    import builtins

    import checkpoints
    from test_fileio import _FullDisk

    def full(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return _FullDisk(f) if "w" in mode else f
    monkeypatch.setattr(checkpoints, "open", full, raising=False)
    assert export.main([str(run_dir), "--out", str(tmp_path / "m.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no space left on {tmp_path} (writing m.safetensors)") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_bad_safetensors_files_are_one_line(exported, tmp_path):
    with safe_open(str(exported), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cases = {}
    save_file({"w": torch.zeros(3)}, tmp_path / "foreign.safetensors")
    cases["foreign.safetensors"] = "not a model written by export.py"
    save_file(tensors, tmp_path / "future.safetensors", metadata={**meta, "format_version": "9"})
    cases["future.safetensors"] = "format version '9'"
    _save({k: v for k, v in tensors.items() if not k.startswith("decoder.")}, tmp_path / "partial.safetensors", meta)
    cases["partial.safetensors"] = "without decoder"
    _save(tensors, tmp_path / "other_arch.safetensors", {**meta, "arch": json.dumps(
        {**json.loads(meta["arch"]), "nfc": 16})})
    cases["other_arch.safetensors"] = "do not load"
    (tmp_path / "text.safetensors").write_text("hello")
    cases["text.safetensors"] = "not a readable safetensors file"
    (tmp_path / "cut.safetensors").write_bytes(exported.read_bytes()[:1000])
    cases["cut.safetensors"] = "not a readable safetensors file"
    for name, expected in cases.items():
        with pytest.raises(CheckpointError) as e:
            SketchToImage.from_pretrained(tmp_path / name, device="cpu")
        assert expected in str(e.value) and name in str(e.value) and "\n" not in str(e.value), name


def test_a_model_without_preset_or_with_a_config_that_is_not_a_dict_is_one_line(run_dir, exported, tmp_path, capsys):
    """Issue 25 item 28: every consumer (from_pretrained: inference, app, export, benchmark, evaluate; TOM's
    reader) says which file, in one line, instead of a KeyError or AttributeError traceback."""
    with safe_open(str(exported), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    arch = json.loads(meta["arch"])
    del arch["preset"]
    _save(tensors, tmp_path / "no_preset.safetensors", {**meta, "arch": json.dumps(arch)})
    _save(tensors, tmp_path / "list_config.safetensors", {**meta, "config": "[1, 2]"})
    ckpt = load_checkpoint(CheckpointDir(run_dir / "gan" / "checkpoints").last())
    del ckpt["state"]["arch"]["preset"]
    save_checkpoint(ckpt, tmp_path / "no_preset.pt")
    save_checkpoint({**ckpt, "config": "DATA_NAME=demo"}, tmp_path / "text_config.pt")
    save_checkpoint({"kind": "tom", "config": ["nfc", 8], "state": {}}, tmp_path / "tom.pt")
    cases = {"no_preset.safetensors": "names no preset", "list_config.safetensors": "config is a list",
             "no_preset.pt": "names no preset", "text_config.pt": "'config' entry is a str"}
    for name, expected in cases.items():
        with pytest.raises(CheckpointError) as e:
            SketchToImage.from_pretrained(tmp_path / name, device="cpu")
        assert expected in str(e.value) and name in str(e.value) and "\n" not in str(e.value), name
        assert export.main([str(tmp_path / name), "--out", str(tmp_path / "x.safetensors")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err
    with pytest.raises(CheckpointError, match="'config' entry is a list, not a dict of settings"):
        load_tom(tmp_path / "tom.pt")


def test_exports_have_the_checkpoints_guarantees(run_dir, exported, tmp_path):
    """Issue 25 item 23: NaN/Inf refused at save and at load, a checksum in the metadata checked at load
    (zeroed bytes are "damaged"), and a file without one refused with the advice to export it again."""
    model = SketchToImage.from_pretrained(exported, device="cpu")
    next(model.generator.parameters()).data[0] = float("nan")  # as a diverged run's weights
    with pytest.raises(CheckpointError, match="not written: the weights hold NaN/Inf"):
        model.save_pretrained(tmp_path / "nan_saved.safetensors")
    assert not (tmp_path / "nan_saved.safetensors").exists()
    with safe_open(str(exported), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert meta["checksum"] == exported_checksum(tensors, meta) and meta["checksum"].startswith("sha256:")
    _save({k: v.clone().fill_(float("inf")) if k.startswith("generator.") and v.is_floating_point() else v
           for k, v in tensors.items()}, tmp_path / "inf.safetensors", meta)
    save_file(tensors, tmp_path / "unsigned.safetensors", metadata={k: v for k, v in meta.items() if k != "checksum"})
    raw = bytearray(exported.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], "little")
    raw[data_start + 1024:data_start + 1088] = bytes(64)  # zeroed bytes amid the weights
    (tmp_path / "zeroed.safetensors").write_bytes(bytes(raw))
    cases = {"inf.safetensors": "holds NaN/Inf values", "unsigned.safetensors": "export it again with export.py",
             "zeroed.safetensors": "damaged"}
    for name, expected in cases.items():
        with pytest.raises(CheckpointError) as e:
            SketchToImage.from_pretrained(tmp_path / name, device="cpu")
        assert expected in str(e.value) and name in str(e.value) and "\n" not in str(e.value), name


def test_a_model_card_is_written_beside_the_file(exported, demo_root, tmp_path):
    """Issue 25: <name>.md: data and sketch folders, sizes, iterations, preset and generator, the data's
    licence (a source.json or prepare.json above IMAGE_DIR, else "unknown"), and how to use it."""
    card = exported.with_suffix(".md").read_text(encoding="utf-8")
    for text in ("# model", "preset: demo, refine generator: art, NFC 8", "read at 64 px, images made at 128 px",
                 "AE stage 2, GAN stage 2 of 2", f"training images: {demo_root / 'train' / 'images'}",
                 f"sketch folders: {demo_root / 'train' / 'sketches'}", "data licence: unknown",
                 "python inference.py --checkpoint model.safetensors", "python app.py --checkpoint model.safetensors"):
        assert text in card, text
    images = tmp_path / "mine" / "train" / "images"
    images.mkdir(parents=True)
    (tmp_path / "mine" / "prepare.json").write_text(json.dumps({"split": {}}))  # records no licence: go on up
    (tmp_path / "source.json").write_text(json.dumps({"license": "CC BY 4.0"}))
    assert export.data_licence(images) == f"CC BY 4.0 (as {tmp_path / 'source.json'} records)"
    assert export.data_licence(None) == "unknown"
