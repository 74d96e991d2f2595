"""Fidelity to the reference code (odegeasslbc/Self-Supervised-Sketch-to-Image-Synthesis-PyTorch at
356d33e), item by item of the audit (issue 17). Each test pins either the reference's behaviour or
a documented difference (README, "Differences from the reference"). The reference is compared with
torchvision / PIL, which it used, or with a few lines restating its formula; its code is not copied.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import datasets as D
from conftest import tiny_config
from models import AutoEncoder
from train_step_1_ae import AEStage
from train_step_2_gan import AE_NETWORKS, GANStage
from training import NanGuard, setup_runtime

GUARD = NanGuard("stop", torch.device("cpu"))


def _ae_stage(demo_root, demo_pairs, tmp_path, **overrides):
    cfg = tiny_config(demo_root, tmp_path, **overrides)
    stage = AEStage(cfg, setup_runtime(cfg), demo_pairs, demo_pairs)
    stage.restart_data(0)
    return stage


def _gan_stage(demo_root, demo_pairs, tmp_path, **overrides):
    cfg = tiny_config(demo_root, tmp_path, **overrides)
    ae = AutoEncoder(cfg.NFC, cfg.IM_SIZE_AE)
    ae_state = {"arch": {"nfc": cfg.NFC, "im_size": cfg.IM_SIZE_AE},
                "networks": {name: getattr(ae, name).state_dict() for name in AE_NETWORKS}}
    stage = GANStage(cfg, setup_runtime(cfg), demo_pairs, demo_pairs, ae_state)
    stage.restart_data(0)
    return stage


def _spy(monkeypatch, module, name):
    """Wrap module.name so that each call's arguments are recorded (the call still happens)."""
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapper)
    return calls


# --------------------------------------------------------------------------- 5. flips

def test_paired_crop_without_flip_keeps_orientation():
    coords = torch.arange(70.0).expand(16, 1, 70, 70)  # column index, increasing to the right
    (out,) = D.paired_crop_flip([coords], 64, torch.Generator().manual_seed(0), flip=False)
    assert (out[:, 0, 0, 1:] > out[:, 0, 0, :-1]).all()


@pytest.mark.parametrize("paired_flip", [False, True])
def test_flip_only_in_step_a_unless_paired_flip(demo_root, demo_pairs, tmp_path, monkeypatch, paired_flip):
    """Item 5. The reference flips in the self-supervised step A only; AE step B and the GAN stage
    read its PairedMultiDataset, which does not flip. PAIRED_FLIP=true adds the flip there."""
    import train_step_1_ae
    import train_step_2_gan
    ae_calls = _spy(monkeypatch, train_step_1_ae, "paired_crop_flip")
    gan_calls = _spy(monkeypatch, train_step_2_gan, "paired_crop_flip")
    _ae_stage(demo_root, demo_pairs, tmp_path, PAIRED_FLIP=paired_flip).step(0, GUARD)
    _gan_stage(demo_root, demo_pairs, tmp_path, PAIRED_FLIP=paired_flip).step(0, GUARD)
    flips = [kwargs.get("flip", True) for _, kwargs in ae_calls + gan_calls]
    assert flips == [True, paired_flip, paired_flip]  # step A, step B, GAN


# --------------------------------------------------------------------------- 6. the style view x~

def test_style_view_is_torchvision_crop_rotation_flip():
    """Item 6. x~ = RandomCrop, RandomRotation(30) (nearest, fill 0: black corners), RandomHorizontalFlip
    of the 1.3x image, as in the reference: equal to torchvision on the same draws, up to rounding
    ties of the nearest-neighbour sampling."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    b, source, size = 16, 83, 64
    src = torch.randint(0, 256, (b, 3, source, source), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    top, left, angle, mirror = D.style_view_params(torch.Generator().manual_seed(1), b, source, size)
    ours = D.style_view(D.to_float(src), size, g).add(1).mul(127.5).round().to(torch.uint8)
    for i in range(b):
        crop = TF.crop(Image.fromarray(src[i].permute(1, 2, 0).numpy()), int(top[i]), int(left[i]), size, size)
        ref = TF.rotate(crop, float(angle[i]), InterpolationMode.NEAREST, fill=0)
        ref = torch.from_numpy(np.asarray(TF.hflip(ref) if mirror[i] else ref).copy()).permute(2, 0, 1)
        assert (ref == ours[i]).all(0).float().mean() > 0.995, i
    assert angle.abs().max() <= 30 and 0 < mirror.sum() < b


def test_style_view_leaves_about_ten_percent_black():
    """Item 6: the uncovered corners of a rotation up to 30 degrees, within the crop."""
    view = D.style_view(torch.ones(400, 1, 83, 83), 64, torch.Generator().manual_seed(0))
    assert 0.08 < (view == -1).float().mean() < 0.12


# --------------------------------------------------------------------------- 7. bold sketches

def test_bold_sketch_is_thickened_at_the_file_resolution(tmp_path):
    """Item 7. The reference applies MinFilter(3) to the sketch file, then resizes: with files at
    twice the training size the strokes grow by one file pixel (half a training pixel) per side."""
    from PIL import ImageFilter
    from torchvision import transforms as T
    size, file_size = 32, 70
    sketch = np.full((file_size, file_size), 255, np.uint8)
    sketch[file_size // 2, :] = 0
    sketch[:, file_size // 3] = 0
    Image.fromarray(sketch, "L").save(tmp_path / "s.png")
    Image.new("RGB", (file_size, file_size), (90, 20, 200)).save(tmp_path / "s.jpg")
    pairs = D.Pairs(images=[tmp_path / "s.jpg"], sketches=[(tmp_path / "s.png",)])
    item = D.PairedDataset(pairs, size, bold=True)[0]
    load = int(1.1 * size)
    reference = T.Resize((load, load))(Image.open(tmp_path / "s.png").filter(ImageFilter.MinFilter(3)))
    assert np.array_equal(item["sketch_bold"][0].numpy(), np.asarray(reference))
    ink = [(1 - D.to_float(item[k])).sum() for k in ("sketch", "sketch_bold")]
    after = (1 + torch.nn.functional.max_pool2d(-D.to_float(item["sketch"])[None], 3, 1, 1)).sum()  # bold after resizing
    assert ink[0] < ink[1] and abs(after - ink[1]) > 0.1 * ink[1]  # not the same thickening


# --------------------------------------------------------------------------- 8. resizing

def test_resize_is_torchvision_default_resize():
    """Item 8. The reference resizes with torchvision's Resize((s, s)): PIL bilinear, antialiased."""
    from torchvision import transforms as T
    rng = np.random.default_rng(0)
    for mode, shape in (("RGB", (50, 70, 3)), ("L", (90, 40))):
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
        for size in (32, 64, 97):
            assert np.array_equal(np.asarray(D.resize(img, size)), np.asarray(T.Resize((size, size))(img)))
