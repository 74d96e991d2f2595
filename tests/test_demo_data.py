"""demo_data.py: deterministic procedural images, exact line drawings, style/content separation, ensure_demo_data."""
import json

import numpy as np
import pytest
from PIL import Image

import demo_data as D
from skimage.color import rgb2lab

FLAT = {"kind": "flat"}
SQUARE = {"kind": "rectangle", "cx": 0.5, "cy": 0.5, "r": 0.3, "rotation": 0.0, "fill": 1, "aspect": 1.0}
CIRCLE = {"kind": "circle", "cx": 0.5, "cy": 0.5, "r": 0.1, "rotation": 0.0, "fill": 0}


def _pngs(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _ink(sketch: Image.Image) -> np.ndarray:
    return 1 - np.asarray(sketch, dtype=np.float64) / 255


def test_same_seed_gives_byte_identical_files(tmp_path):
    for name in ("a", "b"):
        D.make_demo_data(tmp_path / name, n_train=4, n_test=2, progress=False)
    a, b = _pngs(tmp_path / "a"), _pngs(tmp_path / "b")
    assert len(a) == 12 and a == b
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    D.make_demo_data(tmp_path / "c", n_train=4, n_test=2, seed=1, progress=False)
    assert _pngs(tmp_path / "c").keys() == a.keys() and _pngs(tmp_path / "c") != a


def test_layout_modes_and_manifest_labels(demo_root):
    manifest = json.loads((demo_root / "manifest.json").read_text())
    for split, n in (("train", 32), ("test", 8)):
        names = [f"{i:05d}.png" for i in range(n)]
        assert sorted(p.name for p in (demo_root / split / "images").iterdir()) == names
        assert sorted(p.name for p in (demo_root / split / "sketches").iterdir()) == names
        assert sorted(manifest["images"][split]) == [name[:5] for name in names]
    with Image.open(demo_root / "train" / "images" / "00000.png") as img, \
            Image.open(demo_root / "train" / "sketches" / "00000.png") as sketch:
        assert (img.mode, img.size, sketch.mode, sketch.size) == ("RGB", (128, 128), "L", (128, 128))
    labels = [entry for split in manifest["images"].values() for entry in split.values()]
    assert all(e["palette"] in D.PALETTES and e["texture"]["kind"] in D.TEXTURES for e in labels)
    assert all(1 <= len(e["shapes"]) <= 3 and all(s["kind"] in D.SHAPES for s in e["shapes"]) for e in labels)
    assert len({e["palette"] for e in labels}) >= 6  # 40 images spread over the palettes
    # the held-out split comes from another random stream
    assert manifest["images"]["train"]["00000"] != manifest["images"]["test"]["00000"]


def test_manifest_entry_re_renders_the_saved_files(demo_root):
    manifest = json.loads((demo_root / "manifest.json").read_text())
    for stem in ("00000", "00007"):
        image, sketch = D.render(manifest["images"]["train"][stem], manifest["size"])
        with Image.open(demo_root / "train" / "images" / f"{stem}.png") as saved:
            assert np.array_equal(np.asarray(image), np.asarray(saved))
        with Image.open(demo_root / "train" / "sketches" / f"{stem}.png") as saved:
            assert np.array_equal(np.asarray(sketch), np.asarray(saved))


def test_palettes_contrast_in_luma():
    for name, (bg, *fills) in D.PALETTES.items():
        lumas = [D.luma(c) for c in fills]
        assert min(abs(D.luma(bg) - v) for v in lumas) >= 0.25, name
        assert min(abs(a - b) for i, a in enumerate(lumas) for b in lumas[i + 1:]) >= 0.12, name
        assert lumas == sorted(lumas), name  # darkest shade first: round shapes are always the darkest


def test_backgrounds_name_their_palette():
    """Every background differs from every other by a visible colour distance (CIE76 > 20), so an
    exemplar names its palette even when it shows only some of the fills."""
    backgrounds = rgb2lab(np.array([bg for bg, *_ in D.PALETTES.values()], dtype=np.float64) / 255)
    distances = np.linalg.norm(backgrounds[:, None] - backgrounds[None], axis=-1)
    assert distances[~np.eye(len(D.PALETTES), dtype=bool)].min() > 20


def test_a_shapes_fill_follows_from_its_kind(demo_root):
    manifest = json.loads((demo_root / "manifest.json").read_text())
    scenes = [scene for split in manifest["images"].values() for scene in split.values()]
    for scene in scenes:
        fills = [shape["fill"] for shape in scene["shapes"]]
        assert fills == [D.FILL_OF_KIND[shape["kind"]] for shape in scene["shapes"]]
        assert len(set(fills)) == len(fills)  # one shape per class: overlapping shapes differ in colour
    assert {shape["kind"] for scene in scenes for shape in scene["shapes"]} >= set(D.SHAPES) - {"cross"}


def test_restyle_is_the_ground_truth_of_a_style_swap():
    scene, style = D.scene_for(0, "test", 0), D.scene_for(0, "test", 1)
    assert scene["palette"] != style["palette"]
    (_, sketch), (_, swapped_sketch) = D.render(scene), D.render(D.restyle(scene, style))
    assert np.array_equal(np.asarray(sketch), np.asarray(swapped_sketch))  # the same drawing
    assert D.restyle(scene, scene) == scene and D.restyle(scene, style)["shapes"] == scene["shapes"]
    flat = D.render(D.restyle(scene, {"palette": style["palette"], "texture": FLAT}))[0]
    labels = D.label_map(scene["shapes"], 128)
    bg, *fills = D.PALETTES[style["palette"]]
    colours = np.asarray(flat)
    assert np.array_equal(np.median(colours[labels == 0], axis=0), bg)
    for i, shape in enumerate(scene["shapes"], start=1):
        assert np.array_equal(np.median(colours[labels == i], axis=0), fills[shape["fill"]])


def test_sketch_depends_on_the_shapes_only():
    scene = D.scene_for(0, "train", 5)
    restyled = {**scene, "palette": "night" if scene["palette"] != "night" else "paper",
                "texture": {"kind": "stripes", "angle": 30.0, "period": 12.0, "amplitude": 0.03, "phase": 0.0}}
    (img_a, sketch_a), (img_b, sketch_b) = D.render(scene), D.render(restyled)
    assert np.array_equal(np.asarray(sketch_a), np.asarray(sketch_b))
    assert not np.array_equal(np.asarray(img_a), np.asarray(img_b))


def test_hidden_outlines_are_not_drawn():
    _, covered = D.render({"palette": "paper", "texture": FLAT, "shapes": [CIRCLE, SQUARE]})
    _, alone = D.render({"palette": "paper", "texture": FLAT, "shapes": [SQUARE]})
    _, on_top = D.render({"palette": "paper", "texture": FLAT, "shapes": [SQUARE, CIRCLE]})
    assert np.array_equal(np.asarray(covered), np.asarray(alone))
    assert _ink(on_top)[44:84, 44:84].sum() > 100 * _ink(alone)[44:84, 44:84].sum() + 20


def test_strokes_are_two_pixels_and_the_image_has_no_outlines():
    image, sketch = D.render({"palette": "paper", "texture": FLAT, "shapes": [SQUARE]})
    ink_across_left_edge = _ink(sketch)[50:78, 20:50].sum(axis=1)   # rows crossing the square's left side
    assert np.allclose(ink_across_left_edge, 2.0, atol=0.1)
    for angle in (20.0, 45.0):  # mean width = ink / perimeter, a little thinner on diagonals
        _, turned = D.render({"palette": "paper", "texture": FLAT, "shapes": [{**SQUARE, "rotation": angle}]})
        assert 1.7 < _ink(turned).sum() / (8 * SQUARE["r"] * 128) < 2.1
    bg, fill = D.PALETTES["paper"][0], D.PALETTES["paper"][2]
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    lo, hi = sorted((D.luma(bg) * 255, D.luma(fill) * 255))
    assert grey.min() >= lo - 1.5 and grey.max() <= hi + 1.5  # edge pixels blend the two colours, nothing darker


def test_every_shape_kind_renders_and_shows():
    for kind in D.SHAPES:
        shape = D._random_shape(np.random.default_rng(0), (0.2, 0.3), kind)
        image, sketch = D.render({"palette": "sky", "texture": FLAT, "shapes": [shape]})
        assert _ink(sketch).sum() > 50, kind
        assert D.visible_fractions([shape], 128) == [1.0]


def test_ensure_demo_data_is_idempotent_and_repairs(tmp_path, capsys):
    root = tmp_path / "demo"
    done = D.ensure_demo_data(root, n_train=4, n_test=2, progress=False)
    assert done["made_images"] and done["xdog_written"] == 12
    for split, n in (("train", 4), ("test", 2)):
        for folder in ("images", "sketches", "xdog_thin", "xdog_bold"):
            assert len(list((root / split / folder).glob("*.png"))) == n
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    capsys.readouterr()
    again = D.ensure_demo_data(root, progress=False)  # other default counts: the complete set is kept
    assert not again["made_images"] and again["xdog_written"] == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == stamps
    assert capsys.readouterr().out.strip().count("\n") == 0  # one line
    (root / "train" / "xdog_bold" / "00001.png").unlink()
    assert D.ensure_demo_data(root, progress=False) == {"root": str(root), "made_images": False, "xdog_written": 1}
    (root / "test" / "images" / "00000.png").unlink()
    repaired = D.ensure_demo_data(root, progress=False)  # remade with the set's own counts, not the defaults
    assert repaired["made_images"] and repaired["xdog_written"] == 12
    assert len(list((root / "train" / "images").glob("*.png"))) == 4


def test_cli_refuses_other_parameters_and_overwrite_removes_stale_files(tmp_path, capsys):
    root = tmp_path / "demo"
    assert D.main(["--root", str(root), "--n-train", "3", "--n-test", "1"]) == 0
    assert D.main(["--root", str(root), "--n-train", "2", "--n-test", "1"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert D.main(["--root", str(root), "--n-train", "2", "--n-test", "1", "--seed", "3", "--overwrite"]) == 0
    for folder in ("images", "sketches", "xdog_thin", "xdog_bold"):
        assert sorted(p.name for p in (root / "train" / folder).iterdir()) == ["00000.png", "00001.png"]
    assert json.loads((root / "manifest.json").read_text())["seed"] == 3


@pytest.mark.parametrize("size", [64, 96])
def test_other_sizes(size):
    image, sketch = D.render(D.scene_for(0, "test", 1), size)
    assert image.size == sketch.size == (size, size)
