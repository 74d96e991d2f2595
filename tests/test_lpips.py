"""lpips/: parity with the PyPI `lpips` package, gradients, batch independence, the folder command."""
import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import weights
from datasets import load_image, resize, to_float, to_uint8_tensor
from lpips import LPIPS
from lpips.metric import main, sampled_pairs
from weights import WeightsError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_LPIPS = Path(sysconfig.get_paths()["purelib"]) / "lpips" / "weights" / "v0.1"
BUILD = {"vgg": weights.build_vgg16_features, "alex": weights.build_alexnet_features}

# Runs the PyPI package: isolated (-I) and outside the repo, so `import lpips` is not ours.
REFERENCE = textwrap.dedent("""
    import sys, torch, lpips
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    out = {"x": x, "y": y, "module": lpips.__file__}
    for net in ("vgg", "alex"):
        m = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)  # random trunk, official lins
        state = m.state_dict()
        # net.slice<k>.<index>.<param> -> <index>.<param>: the torchvision `features` layout
        out[net + "_backbone"] = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("net.")}
        out[net + "_lin"] = {k: v for k, v in state.items() if k.startswith("lin") and not k.startswith("lins.")}
        with torch.no_grad():
            out[net + "_d"] = m(x, y).flatten()
    torch.save(out, sys.argv[1])
""")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("pypi_lpips")
    subprocess.run([sys.executable, "-I", "-W", "ignore", "-c", REFERENCE, str(folder / "ref.pt")],
                   cwd=folder, check=True, capture_output=True, timeout=300)
    return torch.load(folder / "ref.pt", weights_only=True)


def official_lin(net: str) -> dict:
    return torch.load(PACKAGE_LPIPS / f"{net}.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    torch.manual_seed(1)
    return LPIPS("alex", BUILD["alex"](), official_lin("alex"))


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_parity_with_the_pypi_package(reference, net):
    assert "site-packages" in reference["module"]  # the subprocess really ran the PyPI package
    backbone = BUILD[net]()
    backbone.load_state_dict(reference[f"{net}_backbone"])
    ours = LPIPS(net, backbone, reference[f"{net}_lin"])
    with torch.no_grad():
        d = ours(reference["x"], reference["y"])
    assert d.shape == (3,)
    torch.testing.assert_close(d, reference[f"{net}_d"], atol=1e-5, rtol=0)
    assert (d > 0).all()


def test_identical_inputs_give_zero(alex):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert alex(x, x).abs().max() < 1e-7


def test_gradient_reaches_the_input_and_parameters_are_frozen(alex):
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_()
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    alex(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in alex.parameters())


def test_batch_independence(alex):
    x, y = torch.rand(4, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        together = alex(x, y)
        alone = torch.cat([alex(x[i:i + 1], y[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)


def test_wrong_linear_weights_are_refused():
    lin = official_lin("alex")
    with pytest.raises(WeightsError, match="lin4.model.1.weight"):
        LPIPS("alex", BUILD["alex"](), {k: v for k, v in lin.items() if not k.startswith("lin4")})
    with pytest.raises(ValueError, match="squeeze"):
        LPIPS("squeeze", BUILD["alex"](), lin)


# --------------------------------------------------------------------------- folder command

def _png(path: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (24, 24, 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(arr).save(path)


@pytest.fixture
def alex_weights(tmp_path, monkeypatch) -> LPIPS:
    """Weights found through weights.py as the command loads them: a random trunk, the official lins."""
    torch.manual_seed(2)
    backbone = BUILD["alex"]()
    torch.save(backbone.state_dict(), tmp_path / "alexnet.pth")
    monkeypatch.setenv("S2I_ALEXNET_WEIGHTS", str(tmp_path / "alexnet.pth"))
    monkeypatch.setenv("S2I_LPIPS_ALEX_WEIGHTS", str(PACKAGE_LPIPS / "alex.pth"))
    return LPIPS("alex")


def _expected(model: LPIPS, pairs, size: int) -> list[float]:
    load = lambda p: to_float(to_uint8_tensor(resize(load_image(p), size)))[None]  # noqa: E731
    with torch.no_grad():
        return [model(load(a), load(b)).item() for a, b in pairs]


def test_two_folders_pair_by_name_and_skip_unreadable(tmp_path, alex_weights):
    d0, d1 = tmp_path / "a", tmp_path / "b"
    d0.mkdir(), d1.mkdir()
    for i, stem in enumerate(["p", "q", "r", "only0"]):
        _png(d0 / f"{stem}.png", i)
    for i, stem in enumerate(["p", "q", "only1"]):
        _png(d1 / f"{stem}.jpg" if stem == "q" else d1 / f"{stem}.png", 10 + i)
    (d1 / "r.png").write_bytes(b"not an image")
    out = tmp_path / "res.json"
    assert main(["--dir0", str(d0), "--dir1", str(d1), "--net", "alex", "--size", "64",
                 "--batch-size", "2", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["mode"] == "paired" and res["n_pairs"] == 2 and res["skipped_pairs"] == 1
    assert res["unreadable_files"] == [str(d1 / "r.png")]
    assert res["unmatched_dir0"] == ["only0"] and res["unmatched_dir1"] == ["only1"]
    expected = _expected(alex_weights, [(d0 / "p.png", d1 / "p.png"), (d0 / "q.png", d1 / "q.jpg")], 64)
    assert res["mean"] == pytest.approx(sum(expected) / 2, abs=1e-6)


def test_one_folder_diversity_counts_pairs_and_skips(tmp_path, alex_weights):
    for i in range(4):
        _png(tmp_path / f"{i}.png", i)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "results" / "res.json"  # not in --dir0 itself: outputs never go into input folders
    assert main(["--dir0", str(tmp_path), "--net", "alex", "--size", "64", "--device", "cpu",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["mode"] == "diversity" and res["pairs_considered"] == 10
    assert res["n_pairs"] == 6 and res["skipped_pairs"] == 4 and len(res["unreadable_files"]) == 1
    good = sorted(tmp_path.glob("[0-9].png"))
    expected = _expected(alex_weights, [(a, b) for i, a in enumerate(good) for b in good[i + 1:]], 64)
    assert res["mean"] == pytest.approx(sum(expected) / 6, abs=1e-6)
    assert main(["--dir0", str(tmp_path), "--net", "alex", "--size", "64", "--max-pairs", "3",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["pairs_considered"] == 3


def test_pair_sampling_is_seeded_distinct_and_bounded():
    paths = [Path(f"{i}.png") for i in range(100)]  # 4950 pairs: the rejection sampler
    a, b = sampled_pairs(paths, 50, seed=3), sampled_pairs(paths, 50, seed=3)
    assert a == b and len(set(a)) == 50 and all(x != y for x, y in a)
    assert a != sampled_pairs(paths, 50, seed=4)
    assert len(sampled_pairs(paths[:5], 50, seed=0)) == 10


def test_missing_folder_is_an_error_not_a_crash(tmp_path, capsys):
    assert main(["--dir0", str(tmp_path / "nope")]) == 1
    assert "folder not found" in capsys.readouterr().err


def test_python_dash_m_lpips_is_our_command():
    run = subprocess.run([sys.executable, "-m", "lpips", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "--dir0" in run.stdout and "--max-pairs" in run.stdout
