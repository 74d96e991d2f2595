"""inference.py and the evaluate/ scripts on a tiny checkpoint trained for a few steps on CPU."""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps

import inference
import train
from conftest import tiny_config, tiny_train_args
from evaluate import generate_image_matrix, generate_mix, style_transfer
from fileio import CheckpointDir, CheckpointError, load_checkpoint
from inference import SketchToImage
from checkpoints import load_trained
from stages import GANStage, runtime_for


ROOT = Path(__file__).resolve().parents[1]
AE, G, NFC = 64, 128, 8  # the tiny model: 64 px AE, 128 px output
PAD = 2  # save_grid's padding


def _grid_size(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) of a save_grid picture of G-px tiles."""
    return cols * G + (cols + 1) * PAD, rows * G + (rows + 1) * PAD


@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory) -> Path:
    """A run folder with AE and GAN checkpoints, two iterations each."""
    folder = tmp_path_factory.mktemp("inference")
    args = tiny_train_args(demo_root, folder, IM_SIZE_GAN=G, ITERATION_AE=2, ITERATION_GAN=2, EMA_DECAY=0.5,
                           TRIAL_NAME="run")
    assert train.main(args) == 0
    return folder / "runs" / "run"


@pytest.fixture(scope="module")
def model(run_dir) -> SketchToImage:
    return SketchToImage.from_pretrained(run_dir, device="cpu")


@pytest.fixture(scope="module")
def test_dirs(demo_root):
    return demo_root / "test" / "sketches", demo_root / "test" / "images"


def _pngs(folder: Path) -> dict[str, str]:
    """{relative path: sha1} of every PNG under folder."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))}


def _size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


# --------------------------------------------------------------------------- the API

def test_loads_the_ema_generator_in_eval_mode(run_dir, model):
    assert (model.preset, model.nfc, model.ae_size, model.image_size) == ("demo", NFC, AE, G)
    ckpt = load_checkpoint(CheckpointDir(run_dir / "gan" / "checkpoints").last(), kind="gan")
    ema = ckpt["state"]["networks"]["generator_ema"]
    assert all(torch.equal(v, ema[k]) for k, v in model.generator.state_dict().items())
    live = ckpt["state"]["networks"]["generator"]
    assert any(not torch.equal(live[k], ema[k]) for k in ema)  # EMA_DECAY=0.5: the two differ
    nets = (model.ae, model.generator)
    assert not any(m.training for net in nets for m in net.modules())
    file = SketchToImage.from_pretrained(model.source, device="cpu")  # a checkpoint file works too
    assert file.source == model.source


def test_generate_shapes_seeds_and_batch_independence(model, test_dirs):
    sketch_dir, image_dir = test_dirs
    names = sorted(p.name for p in sketch_dir.iterdir())[:3]
    sketches = torch.cat([model.prepare_sketch(sketch_dir / n) for n in names])
    styles = torch.cat([model.prepare_style(image_dir / n) for n in names])
    assert sketches.shape == (3, 1, AE, AE) and styles.shape == (3, 3, AE, AE)
    assert sketches.min() >= -1 and sketches.max() <= 1
    vectors = model.style_vectors(styles)
    assert [tuple(v.shape) for v in vectors] == [(3, 2 * NFC), (3, 4 * NFC), (3, 8 * NFC)]

    out = model.generate(sketches, styles, seed=0)
    assert out.shape == (3, 3, G, G) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, model.generate(sketches, styles, seed=0))
    assert torch.equal(out, model.generate(sketches, style_vectors=vectors, seed=0))
    assert not torch.equal(out, model.generate(sketches, styles, seed=1))  # the seed sets the noise
    single = model.generate(sketches[1:2], styles[1:2], seed=0)  # same image alone as in a batch
    assert torch.allclose(single, out[1:2], atol=1e-5)
    assert torch.allclose(model.generate_batched(sketches, styles, seed=0, batch_size=2), out, atol=1e-5)
    assert model.generate(sketches, styles[:1], seed=0).shape == (3, 3, G, G)  # one style for all
    assert isinstance(model.translate(sketch_dir / names[0], image_dir / names[0]), Image.Image)


def test_inputs_of_another_size_reach_the_ae_as_in_the_gan_stage(run_dir, model, test_dirs, demo_root, demo_pairs,
                                                                 tmp_path):
    """The GAN stage feeds the AE G-px crops; inference given G-px inputs must resize them the same way."""
    cfg = tiny_config(demo_root, tmp_path, IM_SIZE_GAN=G)
    stage = GANStage(cfg, runtime_for(cfg), demo_pairs, demo_pairs, load_trained(run_dir).ae)
    assert type(stage.ae) is type(model.ae)
    sketch_dir, image_dir = test_dirs
    name = sorted(p.name for p in sketch_dir.iterdir())[0]
    sketch, style = model.prepare_sketch(sketch_dir / name, size=G), model.prepare_style(image_dir / name, size=G)
    _, ae_image = model.generate(sketch, style, seed=0, return_ae=True)
    assert ae_image.shape == (1, 3, AE, AE) and torch.equal(ae_image, stage.generate(sketch, style)[0])


def test_inverted_sketch_gives_the_same_image(model, test_dirs, tmp_path):
    sketch_dir, image_dir = test_dirs
    name = sorted(p.name for p in sketch_dir.iterdir())[0]
    normal = Image.open(sketch_dir / name).convert("L")
    inverted = ImageOps.invert(normal)  # white strokes on black
    assert not inference.is_light_on_dark(normal) and inference.is_light_on_dark(inverted)
    a, b = model.prepare_sketch(normal), model.prepare_sketch(inverted)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.prepare_sketch(inverted, invert="never"))
    style = model.prepare_style(image_dir / name)
    assert torch.equal(model.generate(a, style, seed=3), model.generate(b, style, seed=3))

    inverted.save(tmp_path / "inv.png")
    normal.save(tmp_path / "norm.png")
    for stem in ("inv", "norm"):
        assert inference.main(["--checkpoint", str(model.source), "--sketch", str(tmp_path / f"{stem}.png"),
                               "--style", str(image_dir / name), "--out", str(tmp_path / "out"), "--quiet",
                               "--device", "cpu"]) == 0
    style_stem = Path(name).stem
    assert ((tmp_path / "out" / f"inv__{style_stem}.png").read_bytes()
            == (tmp_path / "out" / f"norm__{style_stem}.png").read_bytes())


def test_any_mode_and_size(model, test_dirs, tmp_path):
    sketch_dir, image_dir = test_dirs
    name = sorted(p.name for p in sketch_dir.iterdir())[0]
    sketch = Image.open(sketch_dir / name).convert("L")
    photo = Image.open(image_dir / name).convert("RGB")
    rgba = Image.new("RGBA", sketch.size, (0, 0, 0, 0))  # black strokes on a transparent background
    rgba.putalpha(ImageOps.invert(sketch))
    odd = photo.resize((97, 61))
    sixteen = Image.fromarray(np.asarray(sketch, dtype=np.uint16) * 257)  # 16-bit grey
    cases = {"rgba.png": rgba, "grey.png": photo.convert("L"), "palette.png": photo.convert("P"), "odd.jpg": odd,
             "sixteen.png": sixteen, "cmyk.jpg": photo.convert("CMYK")}
    for file, img in cases.items():
        img.save(tmp_path / file)
        assert model.prepare_sketch(tmp_path / file).shape == (1, 1, AE, AE), file
        assert model.prepare_style(tmp_path / file).shape == (1, 3, AE, AE), file
        assert model.prepare_sketch(img).shape == (1, 1, AE, AE), file  # PIL images too
    # transparent background = white paper: not inverted, same as the plain sketch
    assert torch.equal(model.prepare_sketch(tmp_path / "rgba.png"), model.prepare_sketch(sketch))
    assert torch.equal(model.prepare_sketch(tmp_path / "sixteen.png"), model.prepare_sketch(sketch))
    for fit in inference.FITS:
        assert model.prepare_sketch(odd, fit=fit).shape == (1, 1, AE, AE)
        assert model.prepare_style(odd, fit=fit, size=G).shape == (1, 3, G, G)
    out = tmp_path / "out"
    assert inference.main(["--checkpoint", str(model.source), "--sketch", str(tmp_path), "--style",
                           str(tmp_path / "odd.jpg"), "--out", str(out), "--quiet"]) == 0
    written = sorted(out.glob("*.png"))
    assert len(written) == len(cases) and all(_size(p) == (G, G) for p in written)


# --------------------------------------------------------------------------- the command line

def _cli(model, *args) -> int:
    return inference.main(["--checkpoint", str(model.source), "--device", "cpu", "--quiet", *map(str, args)])


def test_cli_single_pair(model, test_dirs, tmp_path, capsys):
    sketch_dir, image_dir = test_dirs
    sketch, style = sorted(sketch_dir.iterdir())[0], sorted(image_dir.iterdir())[1]
    assert _cli(model, "--sketch", sketch, "--style", style, "--out", tmp_path / "out") == 0
    files = list((tmp_path / "out").iterdir())
    assert [p.name for p in files] == [f"{sketch.stem}__{style.stem}.png"]
    with Image.open(files[0]) as img:
        assert img.size == (G, G) and img.mode == "RGB"
    assert f"wrote 1 image(s) to {tmp_path / 'out'}" in capsys.readouterr().out


def test_cli_folders_paired_cross_and_unreadable(model, test_dirs, tmp_path, capsys):
    sketch_dir, image_dir = test_dirs
    names = sorted(p.name for p in sketch_dir.iterdir())
    sketches, styles = tmp_path / "sketches", tmp_path / "styles"
    sketches.mkdir()
    styles.mkdir()
    for n in names[:3]:
        shutil.copy(sketch_dir / n, sketches / n)
    for n in names[1:3]:
        shutil.copy(image_dir / n, styles / n)
    shutil.copy(image_dir / names[5], styles / "extra.png")
    (sketches / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    assert _cli(model, "--sketch", sketches, "--style", styles, "--out", tmp_path / "paired") == 0
    out = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "paired").iterdir()) == sorted(names[1:3])
    assert "paired 2 by file name; 2 sketch(es) without a style image of the same name, 1 style image(s)" in out.out

    assert _cli(model, "--sketch", sketches, "--style", styles, "--out", tmp_path / "cross", "--cross",
                "--batch-size", "4") == 0
    out = capsys.readouterr()
    written = sorted((tmp_path / "cross").iterdir())
    assert len(written) == 3 * 3 and all(_size(p) == (G, G) for p in written)  # 3 readable sketches x 3 styles
    assert "skipped 3 output(s): 1 unreadable input file(s)" in out.err and "broken.png" in out.err
    assert "wrote 9 image(s)" in out.out


@pytest.mark.parametrize("case", ["ae_file", "ae_run", "random_file", "missing", "empty_dir", "no_pairs"])
def test_user_mistakes_are_one_error_line(run_dir, model, test_dirs, tmp_path, capsys, case):
    sketch_dir, image_dir = test_dirs
    ckpt, sketch, style, message = model.source, sketch_dir, image_dir, None
    if case == "ae_file":
        ckpt = CheckpointDir(run_dir / "ae" / "checkpoints").last()
        message = "is an AE-stage checkpoint ('ae')"
        with pytest.raises(CheckpointError, match="needs a GAN-stage checkpoint"):
            SketchToImage.from_pretrained(ckpt)
    elif case == "ae_run":
        shutil.copytree(run_dir / "ae", tmp_path / "ae_only" / "ae")
        ckpt, message = tmp_path / "ae_only", "has an AE-stage checkpoint but no GAN-stage one"
    elif case == "random_file":
        ckpt = tmp_path / "random.pt"
        ckpt.write_bytes(np.random.default_rng(0).bytes(1000))
        message = "not a readable checkpoint"
    elif case == "missing":
        ckpt, message = tmp_path / "nothing.pt", "checkpoint not found"
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        sketch, message = tmp_path / "empty", "no images"
    elif case == "no_pairs":
        (tmp_path / "other").mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / "other" / "unrelated.png")
        style, message = tmp_path / "other", "use --cross"
    code = inference.main(["--checkpoint", str(ckpt), "--sketch", str(sketch), "--style", str(style),
                           "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


# --------------------------------------------------------------------------- evaluate/

def _edges(photo: Image.Image) -> Image.Image:
    """A stand-in sketcher: dark edges on white."""
    return ImageOps.invert(photo.convert("L").filter(ImageFilter.FIND_EDGES))


def test_style_transfer_writes_grids_and_is_deterministic(model, test_dirs, tmp_path):
    _, image_dir = test_dirs
    photos = sorted(image_dir.iterdir())
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        grids = style_transfer.style_transfer(model, photos, photos, _edges, out, n=2, n_styles=3, seed=5)
        assert len(grids) == 2 and all(_size(g) == _grid_size(2, 3 + 2) for g in grids)
        assert len(list((out / "images").iterdir())) == 2 * 3
        assert all(_size(p) == (G, G) for p in (out / "images").iterdir())
        assert len(list((out / "sketches").iterdir())) == 2
        runs.append(_pngs(out))
    assert runs[0] == runs[1]
    other = style_transfer.style_transfer(model, photos, photos, _edges, tmp_path / "c", n=2, n_styles=3, seed=6)
    assert _pngs(tmp_path / "c") != runs[0] and len(other) == 2


def test_style_transfer_command_with_xdog(model, test_dirs, tmp_path, capsys):
    pytest.importorskip("sketch_styletransfer.xdog")
    _, image_dir = test_dirs
    base = ["--checkpoint", str(model.source), "--photos", str(image_dir), "--styles", str(image_dir),
            "--n", "1", "--n-styles", "2", "--device", "cpu"]
    assert style_transfer.main([*base, "--sketcher", "xdog:thin", "--out", str(tmp_path / "x")]) == 0
    assert "wrote 1 grid(s)" in capsys.readouterr().out
    assert len(_pngs(tmp_path / "x")) == 1 + 1 + 2  # grid, sketch, two images
    sketch = next((tmp_path / "x" / "sketches").iterdir())
    with Image.open(sketch) as img:
        assert img.size == (G, G) and set(np.unique(np.asarray(img))) <= {0, 255}  # binary, at the model's size
    custom = style_transfer.main([*base, "--sketcher", "xdog:thin:sigma=0.8,width=2", "--out", str(tmp_path / "y")])
    assert custom == 0
    for bad, message in (("xdog:nonsense", "unknown setting"), ("xdog:thin:sigma=x", "is not a number"),
                         ("pencil", "expected xdog[:setting] or tom:CHECKPOINT"), ("tom:", "needs the TOM checkpoint"),
                         (f"tom:{model.source}", "is a 'gan' checkpoint, expected 'tom'")):
        assert style_transfer.main([*base, "--sketcher", bad, "--out", str(tmp_path / "z")]) == 1, bad
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (bad, err)


def test_tom_sketcher(model, test_dirs, tmp_path):
    pytest.importorskip("sketch_styletransfer.tom_models")
    import weights
    from fileio import save_checkpoint
    from sketch_styletransfer.sketch import tom_sketcher
    from sketch_styletransfer.tom_models import TOMGenerator
    _, image_dir = test_dirs
    ckpt = {"kind": "tom", "iteration": 0, "config": {"nfc": 8, "im_size": 64},
            "state": {"networks": {"g": TOMGenerator(nfc=8).state_dict()}}}
    save_checkpoint(ckpt, tmp_path / "tom.pt")
    sketcher = tom_sketcher(tmp_path / "tom.pt", "cpu", vgg_features=weights.build_vgg16_features())
    photo = Image.open(sorted(image_dir.iterdir())[0])
    drawing = sketcher(photo)
    assert drawing.mode == "L" and drawing.size == (64, 64) and set(np.unique(np.asarray(drawing))) <= {0, 255}
    photos = sorted(image_dir.iterdir())
    grids = style_transfer.style_transfer(model, photos, photos, sketcher, tmp_path / "out", n=1, n_styles=2)
    assert len(grids) == 1 and _size(grids[0]) == _grid_size(2, 2 + 2)


def test_generate_mix(model, test_dirs, tmp_path, capsys):
    sketch_dir, image_dir = test_dirs
    styles = [str(p) for p in sorted(image_dir.iterdir())[:4]]
    base = ["--checkpoint", str(model.source), "--sketch", str(sketch_dir), "--n-sketches", "2", "--device", "cpu"]
    for name in ("a", "b"):
        assert generate_mix.main([*base, "--styles", *styles[:2], "--out", str(tmp_path / name), "--seed", "1"]) == 0
    n_recipes = len(generate_mix.builtin_recipes(2))
    assert n_recipes == 6
    assert _size(tmp_path / "a" / "mix_grid.png") == _grid_size(1 + n_recipes, 1 + 2)
    assert len(list((tmp_path / "a" / "images").iterdir())) == 2 * n_recipes
    assert _pngs(tmp_path / "a") == _pngs(tmp_path / "b")
    assert f"wrote {tmp_path / 'a' / 'mix_grid.png'}" in capsys.readouterr().out

    recipes = ["coarse=A,mid=B,fine=C+D", "collage", "mean=A+D", "C"]
    args = [*base, "--styles", *styles, "--out", str(tmp_path / "c")]
    assert generate_mix.main([*args, *(x for r in recipes for x in ("--recipe", r))]) == 0
    assert _size(tmp_path / "c" / "mix_grid.png") == _grid_size(1 + len(recipes), 1 + 2)
    assert generate_mix.main([*args, "--recipe", "coarse=E"]) == 1
    assert "--recipe 'coarse=E'" in capsys.readouterr().err
    assert len(generate_mix.builtin_recipes(4)) == 12


def test_mix_recipes_pick_vectors_per_scale(model, test_dirs):
    _, image_dir = test_dirs
    styles = torch.cat([model.prepare_style(p) for p in sorted(image_dir.iterdir())[:4]])
    vectors = model.style_vectors(styles)
    mixed = model.mix_styles(vectors, generate_mix.parse_recipe("coarse=A,mid=B,fine=C+D", 4).weights(4))
    assert torch.equal(mixed.coarse[0], vectors.coarse[0])  # from A
    assert torch.equal(mixed.mid[0], vectors.mid[1])  # from B
    assert torch.allclose(mixed.fine[0], (vectors.fine[2] + vectors.fine[3]) / 2)  # the mean of C and D


def test_image_matrix_as_a_script_and_deterministic(model, test_dirs, tmp_path):
    sketch_dir, image_dir = test_dirs
    args = ["--checkpoint", str(model.source), "--sketches", str(sketch_dir), "--styles", str(image_dir),
            "--n-sketches", "3", "--n-styles", "2", "--seed", "4", "--device", "cpu"]
    done = subprocess.run([sys.executable, "evaluate/generate_image_matrix.py", *args, "--out",
                           str(tmp_path / "a.png")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'a.png'}: 3 sketch(es) x 2 style(s)" in done.stdout
    assert generate_image_matrix.main([*args, "--out", str(tmp_path / "b.png")]) == 0
    assert _size(tmp_path / "a.png") == _grid_size(1 + 3, 1 + 2)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_scripts_run_as_modules():
    done = subprocess.run([sys.executable, "-m", "evaluate.style_transfer", "--help"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "--sketcher" in done.stdout
