"""datasets.py: pairing, robust loading of every image mode, skips, augmentations, samplers."""
import ast
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets as D


def _png(path, size=(16, 16), colour=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


# --------------------------------------------------------------------------- pairing

def test_pairing_by_stem_across_extensions_and_case(tmp_path):
    for stem, ext in [("a", ".jpg"), ("b", ".PNG"), ("c", ".webp"), ("d", ".Jpeg"), ("e", ".bmp")]:
        _png(tmp_path / "img" / f"{stem}{ext}")
    for folder in ("s1", "s2"):
        for stem, ext in [("a", ".png"), ("b", ".JPG"), ("c", ".png"), ("d", ".BMP"), ("e", ".webp")]:
            _png(tmp_path / folder / f"{stem}{ext}", colour=255, mode="L")
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    pairs = D.pair_folders(tmp_path / "img", [tmp_path / "s1", tmp_path / "s2"])
    assert [p.stem for p in pairs.images] == ["a", "b", "c", "d", "e"]
    assert all(len(s) == 2 and s[0].stem == s[1].stem == i.stem for i, s in zip(pairs.images, pairs.sketches))
    assert pairs.missing == {}


def test_missing_sketches_are_left_out_and_reported(tmp_path):
    for i in range(8):
        _png(tmp_path / "img" / f"{i}.png")
        if i not in (2, 5):
            _png(tmp_path / "s1" / f"{i}.png", colour=255, mode="L")
        if i != 7:
            _png(tmp_path / "s2" / f"{i}.png", colour=255, mode="L")
    _png(tmp_path / "s1" / "extra.png", colour=255, mode="L")  # a sketch without its image: ignored
    pairs = D.pair_folders(tmp_path / "img", [tmp_path / "s1", tmp_path / "s2"])
    assert [p.stem for p in pairs.images] == ["0", "1", "3", "4", "6"]
    report = pairs.report()
    assert f"2 image(s) have no sketch in {tmp_path / 's1'}" in report and "2, 5" in report
    assert f"1 image(s) have no sketch in {tmp_path / 's2'}" in report


def test_no_pairs_and_missing_folders_are_clear_errors(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "skt" / "b.png", colour=255, mode="L")
    with pytest.raises(D.DataError, match="no image in .* has a sketch with the same file name"):
        D.pair_folders(tmp_path / "img", [tmp_path / "skt"])
    with pytest.raises(D.DataError, match="folder not found"):
        D.pair_folders(tmp_path / "nope", [tmp_path / "skt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="no images"):
        D.pair_folders(tmp_path / "empty", [tmp_path / "skt"])
    with pytest.raises(D.DataError, match="IMAGE_DIR"):
        D.pair_folders(None, [tmp_path / "skt"])
    with pytest.raises(D.DataError, match="SKETCH_DIRS"):
        D.pair_folders(tmp_path / "img", [])


# --------------------------------------------------------------------------- image modes

def test_every_image_mode_loads_as_expected(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "rgba.png")
    out = np.asarray(D.load_image(tmp_path / "rgba.png"))
    assert tuple(out[1, 1]) == (255, 255, 255) and tuple(out[0, 0]) == (0, 0, 255)  # composited on white

    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    assert np.asarray(D.load_image(tmp_path / "grey.png")).shape == (4, 4, 3)

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    assert tuple(np.asarray(D.load_image(tmp_path / "pal.png"))[0, 0]) == (10, 200, 30)

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = np.asarray(D.load_image(tmp_path / "cmyk.jpg"))[2, 2].astype(int)
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 100%, 100%, 0) is red

    arr16 = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    Image.fromarray(arr16).save(tmp_path / "deep.png")
    grey = np.asarray(D.load_image(tmp_path / "deep.png", "L"))
    assert abs(int(grey[0, 0]) - 127) <= 1  # scaled from 16 bits, not clipped to white

    Image.new("1", (4, 4), 1).save(tmp_path / "bits.png")
    assert np.asarray(D.load_image(tmp_path / "bits.png", "L"))[0, 0] == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (8, 4), (0, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert D.load_image(tmp_path / "rot.jpg").size == (4, 8)


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.png").write_text("hello, I am not a PNG")
    good = folder / "trunc.jpg"
    Image.fromarray((np.random.rand(64, 64, 3) * 255).astype(np.uint8)).save(good, quality=95)
    good.write_bytes(good.read_bytes()[:300])
    return ["zero", "text", "trunc"]


@pytest.mark.parametrize("name", ["zero", "text", "trunc"])
def test_unreadable_files_raise_data_error(tmp_path, name):
    _bad_files(tmp_path)
    path = next(tmp_path.glob(f"{name}.*"))
    with pytest.raises(D.DataError, match=name):
        D.load_image(path)


def test_decompression_bomb_is_refused(tmp_path):
    """A PNG whose header claims 20000 x 20000 pixels is refused before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(D.DataError, match="bomb"):
        D.load_image(tmp_path / "bomb.png")


def test_bad_files_are_skipped_and_counted(tmp_path, capsys):
    bad = _bad_files(tmp_path / "img")
    sk = tmp_path / "skt"
    for stem in bad:
        _png(sk / f"{stem}.png", colour=255, mode="L")
    for stem in ("ok1", "ok2"):
        _png(tmp_path / "img" / f"{stem}.png")
        _png(sk / f"{stem}.png", colour=255, mode="L")
    pairs = D.pair_folders(tmp_path / "img", [sk])
    data = D.PairedDataset(pairs, 16)
    items = [data[(i, 0)] for i in range(len(data))]
    assert all(it["image"].shape == (3, 17, 17) for it in items)
    skipped = sum(it["skipped"] for it in items)
    assert skipped == 1 + 2 + 3  # each bad file (sorted: text, trunc, zero...) replaced by the next good one
    err = capsys.readouterr().err
    assert err.count("warning: skipping") == 3  # each bad file reported once


# --------------------------------------------------------------------------- augmentations

def _stroke_batch(b=4, size=72):
    sketch = torch.ones(b, 1, size, size)
    sketch[:, :, size // 2, :] = -1  # one-pixel horizontal line
    sketch[:, :, :, size // 3] = -1  # one-pixel vertical line
    return sketch


def test_paired_crop_keeps_image_and_sketches_aligned():
    g = torch.Generator().manual_seed(0)
    b, size = 16, 64
    coords = torch.arange(70 * 70, dtype=torch.float32).view(1, 1, 70, 70).expand(b, 1, 70, 70)
    image = coords.expand(b, 3, 70, 70).clone()
    sketch1, sketch2 = coords.clone(), coords.clone() + 0.5
    out_img, out_s1, out_s2 = D.paired_crop_flip([image, sketch1, sketch2], size, g)
    assert out_img.shape == (b, 3, size, size)
    assert torch.equal(out_img[:, :1], out_s1) and torch.equal(out_s1 + 0.5, out_s2)
    offsets = {int(out_s1[i, 0, 0, :].min()) for i in range(b)}
    assert len(offsets) > 3  # offsets vary per item
    row = out_s1[:, 0, 0, :]
    flipped = row[:, 0] > row[:, -1]
    assert 0 < flipped.sum() < b  # some flipped, some not


def test_erasing_whitens_two_to_ten_percent_per_pass():
    g = torch.Generator().manual_seed(0)
    black = -torch.ones(400, 1, 64, 64)
    once = D.erase(black, g, passes=1)
    frac = (once > 0).float().mean(dim=(1, 2, 3))
    erased = frac[frac > 0]
    assert 0.7 < len(erased) / 400 < 0.9  # p = 0.8
    assert erased.min() >= 0.015 and erased.max() <= 0.11  # 2-10% of the area (rounding)
    assert (once[once > 0] == 1).all()  # white


def test_style_view_differs_from_x_and_keeps_range():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(8, 3, 83, 83) * 2 - 1
    view = D.style_view(src, 64, g)
    centre_crop = src[:, :, 9:73, 9:73]
    assert view.shape == (8, 3, 64, 64)
    assert view.min() >= -1 and view.max() <= 1
    assert (view - centre_crop).abs().mean() > 0.1
    corners = view[:, :, 0, 0]
    assert (corners == -1).any()  # rotation leaves black corners (reference: fill 0 = black)


def test_sketch_variants():
    g = torch.Generator().manual_seed(1)
    sketch = _stroke_batch(8)
    bold = -torch.nn.functional.max_pool2d(-sketch, 3, 1, 1)
    thick, erased, thick_erased = D.sketch_variants(sketch, bold, g)
    assert thick is bold and (erased >= sketch).all() and (thick_erased >= thick).all()
    assert (erased > sketch).any() and (thick_erased > thick).any()


@pytest.mark.parametrize("augment", [lambda x, g: D.style_view(x, 64, g), lambda x, g: D.erase(x, g),
                                     lambda x, g: D.paired_crop_flip([x], 64, g)[0]])
def test_augmentations_depend_on_their_generator_only(augment):
    src = torch.rand(16, 3, 83, 83) * 2 - 1
    torch.manual_seed(0)
    a = augment(src, torch.Generator().manual_seed(5))
    torch.manual_seed(1)  # the global generator plays no part
    b = augment(src, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(src, torch.Generator().manual_seed(6)))


# --------------------------------------------------------------------------- seeds

def test_mix_seed_closed_form_and_order_matters():
    m = 2 ** 63 - 1
    assert D.mix_seed(7) == 7 and D.mix_seed() == 0
    assert D.mix_seed(5, 11, 3) == ((5 * 1_000_003 + 11) * 1_000_003 + 3) % m
    assert D.mix_seed(2 ** 62, 2 ** 62) == (2 ** 62 * 1_000_003 + 2 ** 62) % m   # stays a valid 63-bit seed
    assert D.mix_seed(1, 2) != D.mix_seed(2, 1)
    assert torch.equal(D.iteration_generator(5, 11, 3).get_state(),
                       torch.Generator().manual_seed(D.mix_seed(5, 11, 3, 0)).get_state())


SEEDED_CALLS = {"iteration_generator", "_generator", "mix_seed", "infinite_batches", "InfiniteSampler", "Stream"}


def _literal_stream_ids(source: str) -> list[int]:
    """Line numbers where a seeded call gets an integer literal beyond its first argument (the seed):
    stream ids are named (datasets.RandomStream), never written as numbers."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            args = node.args[1:] if name in SEEDED_CALLS else []
            if any(isinstance(a, ast.Constant) and type(a.value) is int and a.value != 0 for a in args):
                lines.append(node.lineno)
    return lines


def test_random_streams_are_named_in_one_registry():
    assert _literal_stream_ids("g = iteration_generator(seed, 13, i)\nh = mix_seed(seed, RandomStream.GAN)") == [1]
    assert len({int(s) for s in D.RandomStream}) == len(D.RandomStream)
    root = Path(D.__file__).parent
    paths = [p for p in root.rglob("*.py") if p.relative_to(root).parts[0] not in (".venv", "data", "tests")]
    assert {"bench_speed.py", "stages.py", "sketch_styletransfer/train.py"} <= {
        p.relative_to(root).as_posix() for p in paths}
    for path in paths:
        assert not _literal_stream_ids(path.read_text(encoding="utf-8")), path


# --------------------------------------------------------------------------- samplers

def test_infinite_sampler_resumes_at_any_position():
    full = iter(D.InfiniteSampler(7, set_weights=(1, 1, 1), seed=4))
    stream = [next(full) for _ in range(40)]
    later = iter(D.InfiniteSampler(7, set_weights=(1, 1, 1), seed=4, start=23))
    assert [next(later) for _ in range(17)] == stream[23:]
    assert sorted(i for i, _ in stream[:7]) == list(range(7))  # each epoch is a permutation
    assert {k for _, k in stream} == {0, 1, 2}


def test_infinite_sampler_ranks_are_disjoint():
    ranks = [iter(D.InfiniteSampler(10, seed=0, rank=r, world_size=2)) for r in range(2)]
    firsts = [[next(it)[0] for _ in range(5)] for it in ranks]
    assert sorted(firsts[0] + firsts[1]) == list(range(10))


def test_self_supervised_subsets_rotate(tmp_path):
    for i in range(10):
        _png(tmp_path / "img" / f"{i}.png")
        _png(tmp_path / "skt" / f"{i}.png", colour=255, mode="L")
    pairs = D.pair_folders(tmp_path / "img", [tmp_path / "skt"])
    ss = D.SelfSupervisedDataset(pairs, 16, nbr_cls=4, seed=0)
    seen = [set(ss.members.tolist())]
    ss.next_subset()
    seen.append(set(ss.members.tolist()))
    assert len(ss) == 4 and not seen[0] & seen[1]  # windows of one shuffle are disjoint
    ss.next_subset()  # 10 // 4 = 2 windows per shuffle: the third subset starts a new shuffle
    item = ss[3]
    assert item["label"] == 3 and item["style_src"].shape == (3, 20, 20) and item["image"].shape == (3, 17, 17)
    fresh = D.SelfSupervisedDataset(pairs, 16, nbr_cls=4, seed=0)
    fresh.set_subset(2)
    assert torch.equal(fresh.members, ss.members)  # a subset is a function of (seed, number)
    with pytest.raises(D.DataError, match="NBR_CLS=11"):
        D.SelfSupervisedDataset(pairs, 16, nbr_cls=11)
