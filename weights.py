"""Pretrained weights in one place: ImageNet VGG16 and AlexNet, the LPIPS v0.1 linear layers, the FID Inception.

Each file comes from its spec's environment variable (checked by keys and shapes only), else torch.hub's
cache, else a download into that cache (both checked by sha256). Any failure is a WeightsError that says
what to do. Only the `build_*` functions return random weights.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from pytorch_fid import inception as pf
from torchvision.models import AlexNet_Weights, VGG16_Weights

from errors import UserError

LPIPS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth"
FID_INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                     "pt_inception-2015-12-05-6726825d.pth")
LPIPS_CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}


class WeightsError(UserError, RuntimeError):
    """Pretrained weights are absent, unreachable, corrupt or of the wrong layout; says what to do."""


@dataclass(frozen=True)
class Spec:
    what: str     # for messages
    file: str     # name in the hub cache
    url: str
    sha256: str   # the full digest, or the leading hex digits that torchvision/pytorch-fid put in file names
    env: str      # environment variable that points at a local copy instead


def _from_url(what: str, url: str, env: str) -> Spec:
    file = url.rsplit("/", 1)[-1]
    return Spec(what, file, url, torch.hub.HASH_REGEX.search(file).group(1), env)


SPECS = {
    "vgg16": _from_url("VGG16 ImageNet weights (torchvision VGG16_Weights.IMAGENET1K_V1)",
                       VGG16_Weights.IMAGENET1K_V1.url, "S2I_VGG16_WEIGHTS"),
    "alexnet": _from_url("AlexNet ImageNet weights (torchvision AlexNet_Weights.IMAGENET1K_V1)",
                         AlexNet_Weights.IMAGENET1K_V1.url, "S2I_ALEXNET_WEIGHTS"),
    "lpips_vgg": Spec("LPIPS v0.1 vgg linear layers", "lpips-v0.1-vgg-a78928a0.pth", LPIPS_URL.format(net="vgg"),
                      "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", "S2I_LPIPS_VGG_WEIGHTS"),
    "lpips_alex": Spec("LPIPS v0.1 alex linear layers", "lpips-v0.1-alex-df73285e.pth", LPIPS_URL.format(net="alex"),
                       "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", "S2I_LPIPS_ALEX_WEIGHTS"),
    "fid_inception": _from_url("FID Inception weights (pytorch-fid pt_inception-2015-12-05)",
                               FID_INCEPTION_URL, "S2I_FID_INCEPTION_WEIGHTS"),
}

# hashing VGG16's 528 MB costs a second: verify each file once per process (keyed by path, size and mtime)
_verified: set[tuple[str, int, int]] = set()


def cache_path(spec: Spec) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.file


def _instructions(spec: Spec) -> str:
    return (f"Put a copy of {spec.url} at {cache_path(spec)} (download it where there is internet access), "
            f"or set the environment variable {spec.env} to the path of a local copy.")


def _verify(spec: Spec, path: Path) -> None:
    """Raise WeightsError unless the file's sha256 starts with (or equals) the spec's."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if not digest.startswith(spec.sha256):
        raise WeightsError(
            f"{spec.what}: {path} is corrupt (sha256 {digest[:16]}..., expected {spec.sha256[:16]}...). "
            f"Delete it and it will be downloaded again from {spec.url}; or {_instructions(spec)}")
    _verified.add(key)


def locate(name: str, allow_download: bool = True) -> Path:
    """Path of weights file `name`: the override, else the (downloaded) hub cache file, verified."""
    spec = SPECS[name]
    override = os.environ.get(spec.env, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise WeightsError(f"{spec.what}: {spec.env}={override} is not a file. Point it at a copy of "
                               f"{spec.url}, or unset it to use {cache_path(spec)}.")
        return path
    path = cache_path(spec)
    if not path.is_file():
        if not allow_download:
            raise WeightsError(f"{spec.what}: {path} not found (downloading is off). {_instructions(spec)}")
        _download(spec, path)
    _verify(spec, path)
    return path


def available(name: str) -> bool:
    """Whether weights file `name` can be had without a download."""
    spec = SPECS[name]
    return bool(os.environ.get(spec.env, "").strip()) or cache_path(spec).is_file()


def _download(spec: Spec, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {spec.what} from {spec.url} to {path}")
    try:
        torch.hub.download_url_to_file(spec.url, str(path), progress=True)  # writes a temp file, then renames
    except Exception as e:  # offline, DNS, HTTP error, disk full...: all get the same instructions
        raise WeightsError(f"{spec.what}: cannot download {spec.url} to {path} "
                           f"({type(e).__name__}: {e}). {_instructions(spec)}") from e
    try:
        _verify(spec, path)
    except WeightsError:
        path.unlink(missing_ok=True)  # never leave a bad download where the next run would find it
        raise


def _read(name: str, allow_download: bool) -> tuple[dict, Path, Spec]:
    spec = SPECS[name]
    path = locate(name, allow_download)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's message runs over lines and advises weights_only=False: ours is one line
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = (f"it holds pickled Python objects ({found.group(1)}), and loading those can run code" if found
               else "empty, truncated, or not a PyTorch weights file")
        named = f"{spec.env}={path}" if os.environ.get(spec.env, "").strip() else str(path)
        raise WeightsError(f"{spec.what}: cannot read {named}: {why}. {_instructions(spec)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{spec.what}: {path} is not a state dict (a dict of tensors). {_instructions(spec)}")
    return dict(state), path, spec


def check_layout(state: dict, expected: dict[str, torch.Size], source: str) -> None:
    """Raise WeightsError naming `state`'s missing/unexpected keys and wrong shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
             for k in expected if k in state and state[k].shape != expected[k]]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", wrong)) if keys]
    if problems:
        raise WeightsError(f"{source} does not have the expected layout: " + "; ".join(problems))


def _load_into(net: nn.Module, state: dict, path: Path, spec: Spec) -> nn.Module:
    check_layout(state, {k: v.shape for k, v in net.state_dict().items()}, f"{spec.what}: {path}")
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def _features_only(state: dict) -> dict:
    """A full torchvision classifier state dict -> its `features.*` part (other keys stay for the layout check)."""
    if not any(k.startswith("features.") for k in state):
        return state
    return {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}


def build_vgg16_features() -> nn.Sequential:
    """torchvision's VGG16 `features` (31 modules) with RANDOM weights."""
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=False)


def build_alexnet_features() -> nn.Sequential:
    """torchvision's AlexNet `features` with RANDOM weights."""
    return torchvision.models.AlexNet().features


def build_fid_inception() -> nn.Module:
    """pytorch_fid.inception.fid_inception_v3() with RANDOM weights, minus its unconditional download."""
    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    return net


class FIDInceptionPool3(nn.Module):
    """(B, 3, 299, 299) in [-1, 1] -> (B, 2048) pool3 features: pytorch-fid's InceptionV3 blocks 0-3."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        i = inception  # the layers of pytorch_fid.inception.InceptionV3(output_blocks=[3]), in order
        self.blocks = nn.Sequential(
            i.Conv2d_1a_3x3, i.Conv2d_2a_3x3, i.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Conv2d_3b_1x1, i.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Mixed_5b, i.Mixed_5c, i.Mixed_5d, i.Mixed_6a, i.Mixed_6b, i.Mixed_6c, i.Mixed_6d, i.Mixed_6e,
            i.Mixed_7a, i.Mixed_7b, i.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)


def vgg16_features(allow_download: bool = True) -> nn.Sequential:
    """VGG16 `features` with ImageNet weights, eval mode, frozen."""
    state, path, spec = _read("vgg16", allow_download)
    return _load_into(build_vgg16_features(), _features_only(state), path, spec)


def alexnet_features(allow_download: bool = True) -> nn.Sequential:
    """AlexNet `features` with ImageNet weights, eval mode, frozen."""
    state, path, spec = _read("alexnet", allow_download)
    return _load_into(build_alexnet_features(), _features_only(state), path, spec)


def lpips_linear_layout(net: str) -> dict[str, torch.Size]:
    """Keys and shapes of the official LPIPS v0.1 linear weights of backbone `net`."""
    if net not in LPIPS_CHANNELS:
        raise ValueError(f"LPIPS backbone must be one of {sorted(LPIPS_CHANNELS)}, not {net!r}")
    return {f"lin{k}.model.1.weight": torch.Size([1, c, 1, 1]) for k, c in enumerate(LPIPS_CHANNELS[net])}


def lpips_linear_state_dict(net: str, allow_download: bool = True) -> dict:
    """The official LPIPS v0.1 linear layers of "vgg" or "alex" (keys `lin{k}.model.1.weight`)."""
    layout = lpips_linear_layout(net)
    state, path, spec = _read(f"lpips_{net}", allow_download)
    check_layout(state, layout, f"{spec.what}: {path}")
    return state


def fid_inception(allow_download: bool = True) -> FIDInceptionPool3:
    """pytorch-fid's FID Inception with its weights: (B, 3, 299, 299) in [-1, 1] -> (B, 2048), frozen."""
    state, path, spec = _read("fid_inception", allow_download)
    return FIDInceptionPool3(_load_into(build_fid_inception(), state, path, spec)).eval().requires_grad_(False)
