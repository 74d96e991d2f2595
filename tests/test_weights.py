"""weights.py: local overrides, hash-checked hub cache, clear errors, never random weights in silence."""
import shutil
import sysconfig
import urllib.error
from pathlib import Path

import pytest
import torch

import weights
from weights import WeightsError

PACKAGE_LPIPS = Path(sysconfig.get_paths()["purelib"]) / "lpips" / "weights" / "v0.1"  # official files


@pytest.fixture(autouse=True)
def hub(tmp_path, monkeypatch) -> Path:
    """A private torch hub cache and no overrides: the real cache and environment stay untouched."""
    root = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(root))
    for spec in weights.SPECS.values():
        monkeypatch.delenv(spec.env, raising=False)
    monkeypatch.setattr(weights, "_verified", set())
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Every download attempt fails as it does offline; the attempts are recorded."""
    calls = []

    def fail(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    return calls


def _equal_states(net: torch.nn.Module, state: dict) -> bool:
    mine = net.state_dict()
    return mine.keys() == state.keys() and all(torch.equal(mine[k], state[k]) for k in state)


def test_vgg16_override_loads_exactly_the_saved_weights(tmp_path, monkeypatch, no_network):
    state = weights.build_vgg16_features().state_dict()
    torch.save(state, tmp_path / "vgg.pth")
    monkeypatch.setenv("S2I_VGG16_WEIGHTS", str(tmp_path / "vgg.pth"))
    net = weights.vgg16_features()
    assert len(net) == 31 and sum(p.numel() for p in net.parameters()) == 14_714_688
    assert _equal_states(net, state)  # the saved weights, not a fresh random init
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert no_network == []


def test_full_classifier_layout_is_accepted(tmp_path, monkeypatch):
    features = weights.build_alexnet_features().state_dict()
    full = {**{f"features.{k}": v for k, v in features.items()}, "classifier.1.weight": torch.zeros(2, 2)}
    torch.save(full, tmp_path / "alexnet.pth")
    monkeypatch.setenv("S2I_ALEXNET_WEIGHTS", str(tmp_path / "alexnet.pth"))
    assert _equal_states(weights.alexnet_features(), features)


def test_wrong_layout_names_the_keys(tmp_path, monkeypatch):
    state = weights.build_alexnet_features().state_dict()
    state["extra.weight"] = state.pop("0.weight")
    state["3.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    monkeypatch.setenv("S2I_ALEXNET_WEIGHTS", str(tmp_path / "bad.pth"))
    with pytest.raises(WeightsError) as e:
        weights.alexnet_features()
    msg = str(e.value)
    assert "missing keys (1): 0.weight" in msg and "unexpected keys (1): extra.weight" in msg
    assert "3.bias (7,) (expected (192,))" in msg and str(tmp_path / "bad.pth") in msg


def test_override_that_is_not_a_state_dict_or_holds_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("S2I_LPIPS_VGG_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="S2I_LPIPS_VGG_WEIGHTS=.*is not a file"):
        weights.lpips_linear_state_dict("vgg")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    monkeypatch.setenv("S2I_LPIPS_VGG_WEIGHTS", str(tmp_path / "list.pth"))
    with pytest.raises(WeightsError, match="not a state dict"):
        weights.lpips_linear_state_dict("vgg")
    torch.save({"lin0.model.1.weight": Path("x")}, tmp_path / "pickled.pth")  # unpickling it would build an object
    monkeypatch.setenv("S2I_LPIPS_VGG_WEIGHTS", str(tmp_path / "pickled.pth"))
    with pytest.raises(WeightsError, match="cannot read"):
        weights.lpips_linear_state_dict("vgg")


LOADERS = {"vgg16": weights.vgg16_features, "alexnet": weights.alexnet_features,
           "lpips_vgg": lambda: weights.lpips_linear_state_dict("vgg"),
           "lpips_alex": lambda: weights.lpips_linear_state_dict("alex"), "fid_inception": weights.fid_inception}


@pytest.mark.parametrize("name", sorted(weights.SPECS))
def test_an_override_that_is_not_a_weights_file_is_one_line_naming_it(name, tmp_path, monkeypatch):
    """Issue 25 item 11: torch's six lines (and its advice to set weights_only=False) become one line
    naming the variable and the file, for every S2I_* variable."""
    assert set(LOADERS) == set(weights.SPECS)
    (tmp_path / "notes.txt").write_text("not weights")
    torch.save({"w": Path("x")}, tmp_path / "pickled.pth")  # unpickling it would build an object
    env = weights.SPECS[name].env
    for file, why in (("notes.txt", "not a PyTorch weights file"), ("pickled.pth", "pickled Python objects")):
        monkeypatch.setenv(env, str(tmp_path / file))
        with pytest.raises(WeightsError) as e:
            LOADERS[name]()
        message = str(e.value)
        assert "\n" not in message and f"{env}={tmp_path / file}" in message and why in message
        assert "weights_only" not in message


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_official_lpips_files_pass_the_hash_check_in_the_cache(hub, net, no_network):
    spec = weights.SPECS[f"lpips_{net}"]
    (hub / "checkpoints").mkdir(parents=True)
    shutil.copy(PACKAGE_LPIPS / f"{net}.pth", hub / "checkpoints" / spec.file)
    state = weights.lpips_linear_state_dict(net)
    official = torch.load(PACKAGE_LPIPS / f"{net}.pth", map_location="cpu", weights_only=True)
    assert state.keys() == official.keys() and all(torch.equal(state[k], official[k]) for k in state)
    assert no_network == []


def test_corrupt_cache_file_is_reported_not_loaded(hub):
    spec = weights.SPECS["fid_inception"]
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / spec.file).write_bytes(b"truncated download")
    with pytest.raises(WeightsError) as e:
        weights.fid_inception()
    msg = str(e.value)
    assert "corrupt" in msg and "Delete it" in msg and spec.url in msg and spec.env in msg


def test_absent_file_and_no_network_gives_instructions(hub, no_network):
    spec = weights.SPECS["vgg16"]
    with pytest.raises(WeightsError) as e:
        weights.vgg16_features()
    msg = str(e.value)
    target = hub / "checkpoints" / spec.file
    assert spec.url in msg and str(target) in msg and "S2I_VGG16_WEIGHTS" in msg and "URLError" in msg
    assert no_network == [(spec.url, str(target))] and not target.exists()


def test_no_download_when_downloading_is_off(no_network):
    with pytest.raises(WeightsError, match="downloading is off"):
        weights.lpips_linear_state_dict("alex", allow_download=False)
    assert no_network == []


def test_download_is_verified_and_a_bad_one_removed(hub, monkeypatch):
    spec = weights.SPECS["lpips_alex"]
    target = hub / "checkpoints" / spec.file
    source = {"file": PACKAGE_LPIPS / "alex.pth"}
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, **kw: shutil.copy(source["file"], dst))
    assert set(weights.lpips_linear_state_dict("alex")) == set(weights.lpips_linear_layout("alex"))
    assert target.is_file()
    target.unlink()
    source["file"] = PACKAGE_LPIPS / "vgg.pth"  # the server hands out the wrong file
    with pytest.raises(WeightsError, match="corrupt"):
        weights.lpips_linear_state_dict("alex")
    assert not target.exists()


def test_fid_inception_override_gives_pool3_features_of_the_saved_weights(tmp_path, monkeypatch):
    state = weights.build_fid_inception().state_dict()
    torch.save(state, tmp_path / "inception.pth")
    monkeypatch.setenv("S2I_FID_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))
    net = weights.fid_inception()
    loaded = list(net.state_dict().values())
    expected = [v for k, v in state.items() if not k.startswith("fc.")]  # pool3 needs no classifier
    assert len(loaded) == len(expected) and all(torch.equal(a, b) for a, b in zip(loaded, expected))
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 299, 299)).shape == (1, 2048)
