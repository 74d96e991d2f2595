"""app.py's callbacks without a browser: arrays and files in, images and one-line messages out."""
import html
import json
import re
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio.components.image import ImageData
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData
from PIL import Image, ImageDraw

import app as A
from evaluate.generate_mix import parse_recipe
from fileio import CheckpointError, save_checkpoint
from inference import InferenceError, SketchToImage, newest_run
from stroke_model import build_stroke_model

SIZE = 64  # the stroke model: 64 px sketches -> 64 px images


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return build_stroke_model(tmp_path_factory.mktemp("app") / "stroke.safetensors")


@pytest.fixture(scope="module")
def styles(tmp_path_factory) -> Path:
    """Four exemplars of different colours and modes, and one unreadable file."""
    folder = tmp_path_factory.mktemp("styles")
    g = np.random.default_rng(0)
    for i, colour in enumerate([(200, 40, 40), (40, 160, 60), (30, 60, 200), (230, 220, 90)]):
        noise = g.integers(-25, 25, (90, 120, 3))
        Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(folder / f"s{i}.png")
    (folder / "s9_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.fixture(scope="module")
def app(model_file, styles) -> A.App:
    return A.App(SketchToImage.from_pretrained(model_file, device="cpu"), styles_dir=styles)


def drawing(size=A.CANVAS, kind=0) -> np.ndarray:
    """A canvas-sized RGB array: dark strokes on white, like the page's sketch composite."""
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    s = size
    if kind == 0:
        d.ellipse((0.2 * s, 0.2 * s, 0.6 * s, 0.6 * s), outline=0, width=8)
        d.line((0.1 * s, 0.85 * s, 0.9 * s, 0.7 * s), fill=0, width=8)
    else:
        d.rectangle((0.45 * s, 0.15 * s, 0.85 * s, 0.5 * s), outline=0, width=8)
    return np.asarray(img)


def _header_bomb(path: Path, side: int = 20000) -> None:
    """A valid PNG header claiming side x side pixels, with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- generating

def test_generate_gives_the_models_image_from_any_canvas_form(app):
    a = app.pick(0)
    out, ae = app.generate({"composite": drawing(), "layers": [], "background": None}, a, with_ae=True)
    assert out.size == (SIZE, SIZE) and out.mode == "RGB" and ae.size == (SIZE, SIZE)
    same = [app.generate(drawing(), a)[0], app.generate(Image.fromarray(drawing()), a)[0],
            app.generate(np.dstack([drawing(), np.full((A.CANVAS, A.CANVAS), 255, np.uint8)]), a)[0]]
    assert all(np.array_equal(np.asarray(out), np.asarray(x)) for x in same)  # dict, array, PIL, RGBA
    assert app.generate(drawing(), a, with_ae=False)[1] is None
    # the same as inference.py's path: the model on the same sketch and exemplar
    m = app.model
    direct = m.generate(m.prepare_sketch(Image.fromarray(drawing())), m.prepare_style(a), seed=0)
    assert np.array_equal(np.asarray(out), np.asarray(A.to_pil(direct[0])))


def test_outputs_follow_the_drawing_and_the_exemplar(app):
    a, b = app.pick(0), app.pick(2)
    first, second = app.generate(drawing(kind=0), a)[0], app.generate(drawing(kind=0), b)[0]
    other = app.generate(drawing(kind=1), a)[0]
    assert np.abs(np.asarray(first, float) - np.asarray(second, float)).mean() > 3  # another exemplar
    assert np.abs(np.asarray(first, float) - np.asarray(other, float)).mean() > 3   # another drawing


def test_mixing_at_0_and_1_equals_the_single_exemplars(app):
    a, b, sketch = app.pick(0), app.pick(1), drawing()
    only_a, only_b = app.generate(sketch, a)[0], app.generate(sketch, b)[0]
    same = np.array_equal
    assert same(np.asarray(app.generate(sketch, a, b, mix=0.0)[0]), np.asarray(only_a))
    assert same(np.asarray(app.generate(sketch, a, b, mix=1.0)[0]), np.asarray(only_b))
    half = np.asarray(app.generate(sketch, a, b, mix=0.5)[0])
    assert not same(half, np.asarray(only_a)) and not same(half, np.asarray(only_b))
    assert same(np.asarray(app.generate(sketch, a, None, mix=1.0)[0]), np.asarray(only_a))  # no B: A


def test_mixing_per_scale_is_generate_mix_recipe(app):
    """mix=1 on the coarse scale only = evaluate/generate_mix.py's recipe coarse=B,mid=A,fine=A."""
    a, b, sketch = app.pick(0), app.pick(3), drawing()
    m = app.model
    styles = [m.prepare_style(a), m.prepare_style(b)]
    each = [m.style_vectors(x) for x in styles]  # one at a time, as the app does (bitwise the same)
    per_scale = [torch.cat(v) for v in zip(*each)]
    vectors = m.mix_styles(per_scale, parse_recipe("coarse=B,mid=A,fine=A", 2).weights(2))
    expected = A.to_pil(m.generate(m.prepare_sketch(Image.fromarray(sketch)), style_vectors=vectors, seed=0)[0])
    got = app.generate(sketch, a, b, mix=1.0, scales=["coarse"])[0]
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_the_seed_sets_the_noise(app):
    a, sketch = app.pick(0), drawing()
    assert np.array_equal(np.asarray(app.generate(sketch, a, seed=5)[0]), np.asarray(app.generate(sketch, a, seed=5)[0]))
    assert not np.array_equal(np.asarray(app.generate(sketch, a, seed=5)[0]),
                              np.asarray(app.generate(sketch, a, seed=6)[0]))


# --------------------------------------------------------------------------- sketches and exemplars

def test_gallery_leaves_out_unreadable_files_and_indices_match(app, styles):
    assert [p.name for p in app.gallery_files] == ["s0.png", "s1.png", "s2.png", "s3.png"]
    assert [name for _, name in app.gallery_items] == ["s0", "s1", "s2", "s3"]
    assert all(max(t.size) <= A.THUMB for t, _ in app.gallery_items)
    red = np.asarray(app.pick(0)).reshape(-1, 3).mean(0)
    assert red[0] > 150 and red[1] < 80  # exemplar 0 is the red one
    with pytest.raises(InferenceError, match="no exemplar number 7"):
        app.pick(7)


def test_the_gallery_defaults_to_the_models_held_out_images(model_file, styles, tmp_path):
    model = SketchToImage.from_pretrained(model_file, device="cpu")
    model.config = {"TEST_IMAGE_DIR": str(styles)}
    assert len(A.App(model).gallery_files) == 4
    model.config = {"TEST_IMAGE_DIR": str(tmp_path / "gone")}
    lonely = A.App(model)
    assert lonely.gallery_files == [] and "upload exemplars, or start with --styles DIR" in lonely.gallery_note


def test_uploaded_sketches_become_dark_on_white_paper(app, tmp_path):
    white_on_black = Image.fromarray(255 - drawing()[:, :300, 0])  # light strokes on black, not square
    white_on_black.save(tmp_path / "inverted.png")
    value = app.upload_sketch(tmp_path / "inverted.png")
    paper = value["background"]
    assert paper.shape == (A.CANVAS, A.CANVAS, 3) and np.array_equal(paper, value["composite"])
    assert np.median(paper) == 255 and paper.min() == 0  # white paper, black strokes, padded with white


def test_a_photo_becomes_a_sketch_to_draw_over(app, tmp_path):
    photo = Image.new("RGB", (300, 200), (90, 120, 200))
    ImageDraw.Draw(photo).ellipse((100, 50, 200, 150), fill=(230, 200, 40))
    photo.save(tmp_path / "photo.jpg")
    for name in A.XDOG_CHOICES:
        paper = app.photo_to_sketch(tmp_path / "photo.jpg", name)["background"]
        ink = paper.mean(-1) < 128
        assert paper.shape == (A.CANVAS, A.CANVAS, 3) and 0.005 < ink.mean() < 0.2  # an outline, not a blot
    with pytest.raises(InferenceError, match="sketcher 'tom'"):
        app.photo_to_sketch(tmp_path / "photo.jpg", "tom")  # no --tom given


def test_exemplars_of_any_mode_and_size(app, tmp_path):
    g = np.random.default_rng(1)
    rgb = g.integers(0, 255, (40, 70, 3), dtype=np.uint8)
    files = {"rgba.png": Image.fromarray(np.dstack([rgb, np.full((40, 70), 128, np.uint8)])),
             "grey.png": Image.fromarray(rgb[:, :, 0]), "palette.png": Image.fromarray(rgb).convert("P"),
             "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
             "deep16.png": Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257),
             "one_pixel.png": Image.new("RGB", (1, 1), (10, 200, 30)),
             "wide.png": Image.fromarray(g.integers(0, 255, (100, 3000, 3), dtype=np.uint8))}
    for name, img in files.items():
        img.save(tmp_path / name)
        exemplar = app.upload_exemplar(tmp_path / name)
        assert exemplar.mode == "RGB" and max(exemplar.size) <= app.exemplar_side
        assert app.generate(drawing(), exemplar)[0].size == (SIZE, SIZE)


# --------------------------------------------------------------------------- bad input

def test_bad_uploads_are_one_line_messages(app, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    good = tmp_path / "good.png"
    Image.fromarray(drawing()).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:300])
    _header_bomb(tmp_path / "bomb.png")  # 400 megapixels: PIL itself refuses to open it
    _header_bomb(tmp_path / "big.png", side=6000)  # 36 megapixels: over MAX_PIXELS
    cases = {"notes.txt": "notes.txt: not an image", "empty.png": "empty.png: not an image",
             "cut.png": "cut.png: a damaged or truncated image", "bomb.png": "bomb.png: too large an image",
             "big.png": "big.png: 6000 x 6000 pixels is too large"}
    for name, expected in cases.items():
        for upload in (app.upload_sketch, app.upload_exemplar, app.photo_to_sketch):
            with pytest.raises(InferenceError) as e:
                upload(tmp_path / name)
            assert expected in str(e.value) and "\n" not in str(e.value) and str(tmp_path) not in str(e.value)
    with pytest.raises(InferenceError, match="no file arrived"):
        app.upload_exemplar(None)


def test_every_image_input_of_every_event_is_bounded(app, tmp_path, monkeypatch):
    """Issue 25 item 27: the canvas and the exemplars, not only the upload buttons, stay within MAX_PIXELS:
    in the callbacks, and in gradio's decoding of a request, judged from the header before decoding."""
    a, side = app.pick(0), A.CANVAS + 1
    big = np.full((side, side, 3), 255, np.uint8)
    monkeypatch.setattr(A, "MAX_PIXELS", A.CANVAS * A.CANVAS)
    for kwargs in (dict(sketch=big), dict(sketch={"composite": big}), dict(style_a=Image.fromarray(big)),
                   dict(style_b=big, mix=0.5)):
        with pytest.raises(InferenceError, match=f"{side} x {side} pixels is too large"):
            app.generate(**{"sketch": drawing(), "style_a": a, **kwargs})
    monkeypatch.undo()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    A.bound_decoding()
    _header_bomb(tmp_path / "at_limit.png", side=5000)  # 25 megapixels: allowed
    Image.open(tmp_path / "at_limit.png").close()
    _header_bomb(tmp_path / "bomb.png", side=6000)  # 36 megapixels in a few bytes
    page = A.build_ui(app)
    inputs = {b.elem_id: b for b in page.blocks.values() if getattr(b, "elem_id", None) in ("sketch", "style-a")}
    bomb = FileData(path=str(tmp_path / "bomb.png"), orig_name="bomb.png")
    with pytest.raises(Image.DecompressionBombError):
        inputs["sketch"].preprocess(EditorData(background=bomb, layers=[], composite=bomb))
    with pytest.raises(Image.DecompressionBombError):
        inputs["style-a"].preprocess(ImageData(path=bomb.path, orig_name="bomb.png"))


def test_bad_settings_are_one_line_messages(app):
    a = app.pick(0)
    cases = [(dict(sketch=None, style_a=a), "the canvas is empty"),
             (dict(sketch=np.full((A.CANVAS, A.CANVAS, 3), 250, np.uint8), style_a=a), "the canvas is empty"),
             (dict(sketch={"composite": None}, style_a=a), "the canvas is empty"),
             (dict(sketch=drawing(), style_a=None), "no exemplar A"),
             (dict(sketch=drawing(), style_a=a, seed=1.5), "seed 1.5"),
             (dict(sketch=drawing(), style_a=a, seed=None), "seed None"),
             (dict(sketch=drawing(), style_a=a, seed=-1), "seed -1"),
             (dict(sketch=drawing(), style_a=a, style_b=a, mix=2), "mix 2.0"),
             (dict(sketch=drawing(), style_a=a, scales=["tiny"]), "scales ['tiny']"),
             (dict(sketch=np.zeros((4, 4, 2), np.uint8), style_a=a), "shape (4, 4, 2)")]
    for kwargs, expected in cases:
        with pytest.raises(InferenceError, match=re.escape(expected)):
            app.generate(**kwargs)


def test_shielded_callbacks_answer_with_a_message_line(capsys):
    def user_mistake():
        raise InferenceError("the canvas is empty: draw a sketch, or upload one")

    def bug():
        raise ZeroDivisionError("division by zero\nmore lines")

    out = A.shielded(user_mistake, 2)()
    assert out[:2] == (A.gr.skip(), A.gr.skip()) and out[2] == "⚠ the canvas is empty: draw a sketch, or upload one"
    out = A.shielded(bug, 1)()
    assert out[1] == "⚠ internal error (ZeroDivisionError: division by zero); the server log has the details"
    assert "Traceback" in capsys.readouterr().err  # the details go to the server's log, not the page
    assert A.shielded(lambda: ((1, 2), "done"), 2)() == (1, 2, "done")
    assert A.shielded(lambda: ((1,), None), 1)() == (1, A.gr.skip())


@pytest.mark.parametrize("kind", ["ae", "tom", "text", "foreign_safetensors"])
def test_a_checkpoint_of_the_wrong_kind_is_one_line(kind, app, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind in ("ae", "tom"):
        save_checkpoint({"kind": kind, "format": 1, "state": {}}, path)
    elif kind == "text":
        path.write_text("hello")
    else:
        from safetensors.torch import save_file
        path = tmp_path / "other.safetensors"
        save_file({"w": torch.zeros(2)}, path, metadata={"format": "pt"})
    for load in (lambda p: A.load_model(p, "cpu"), app.load):  # at start, and in the page's Model box
        with pytest.raises(CheckpointError) as e:
            load(path)
        assert "\n" not in str(e.value) and path.name in str(e.value)
    assert app.model.image_size == SIZE and len(app.gallery_files) == 4  # the page's model stays


def test_the_page_switches_models(app, model_file, tmp_path):
    before = app.model
    (tmp_path / "copy.safetensors").write_bytes(model_file.read_bytes())
    assert app.load(tmp_path / "copy.safetensors").source == tmp_path / "copy.safetensors"
    assert app.model is not before and app.model.device == before.device
    assert "copy.safetensors" in app.describe() and len(app.gallery_files) == 4
    with pytest.raises(InferenceError, match="give a run folder"):
        app.load("  ")


# --------------------------------------------------------------------------- the default model

def _fake_run(root: Path, name: str, data_name: str, stage: str = "gan", when: float = 0.0, iteration: int = 100,
              total: int | None = None) -> Path:
    run = root / name
    (run / stage / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"DATA_NAME": data_name, "ITERATION_GAN": total}))
    ckpt = run / stage / "checkpoints" / f"ckpt_{iteration:08d}.pt"
    save_checkpoint({"kind": stage, "iteration": iteration}, ckpt)  # only files that load as checkpoints count
    os.utime(ckpt, (when, when))
    return run


def test_the_newest_demo_run_is_the_default(tmp_path, capsys):
    runs = tmp_path / "train_results"
    runs.mkdir()
    assert newest_run(runs) is None
    assert A.main(["--runs", str(runs)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make demo" in err and "--checkpoint" in err
    _fake_run(runs, "demo-old", "demo", when=1_000)
    newest = _fake_run(runs, "demo-new", "demo", when=2_000)
    _fake_run(runs, "demo-ae-only", "demo", stage="ae", when=3_000)
    _fake_run(runs, "art-newer", "art", when=4_000)
    (runs / "broken").mkdir()
    (runs / "broken" / "config.json").write_text("{not json")
    assert newest_run(runs) == newest
    assert A.main(["--runs", str(runs)]) == 1  # the newest demo run is picked, and its fake checkpoint refused
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "demo-new" in err


def test_a_finished_demo_run_comes_before_a_newer_test_run(tmp_path):
    """Issue 25 item 14: `make app` takes the newest run whose GAN stage reached ITERATION_GAN; only when no
    run is finished, the newest unfinished one."""
    runs = tmp_path / "train_results"
    runs.mkdir()
    stopped = _fake_run(runs, "demo-stopped", "demo", when=1_000, iteration=40, total=6000)
    assert newest_run(runs) == stopped
    finished = _fake_run(runs, "demo-finished", "demo", when=2_000, iteration=6000, total=6000)
    _fake_run(runs, "demo-test", "demo", when=3_000, iteration=6, total=6000)
    _fake_run(runs, "demo-test-stopped", "demo", when=4_000, iteration=2, total=None)  # no total: not finished
    assert newest_run(runs) == finished


def test_the_page_shows_the_iteration_and_an_unfinished_model(model_file):
    model = SketchToImage.from_pretrained(model_file, device="cpu")
    model.iteration, model.config = 6, {"ITERATION_GAN": 6000}
    assert "**iteration 6 of 6000, unfinished**" in A.App(model).describe()
    model.iteration = 6000
    assert "**iteration 6000 of 6000**" in A.App(model).describe()


def test_a_message_with_markup_characters_shows_in_full_in_the_page():
    """Issue 25 item 14: `<run>` is not an HTML tag to drop, `ckpt_*.pt` no emphasis: the line reads as raised."""
    from markdown_it import MarkdownIt  # CommonMark with HTML, as the page's Markdown component renders it
    text = "x: no checkpoint (give <run>/gan/checkpoints/ckpt_*.pt, a_*b*_c, `q` & [l](u) | $x$ or ~s~)"

    def shown(markdown: str) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", MarkdownIt("commonmark", {"html": True}).render(markdown))).strip()
    assert shown(A.shielded(lambda: (_ for _ in ()).throw(InferenceError(text)), 1)()[1]) == f"⚠ {text}"
    assert shown(A.plain(text)) == text


def test_a_bad_port_or_host_is_one_line_naming_the_option_before_the_model_loads(tmp_path, capsys):
    """Issue 25 item 10: a port out of range, a port in use, an address not here; in our words."""
    for port in ("99999", "0", "http"):
        with pytest.raises(SystemExit) as e:
            A.main(["--port", port])
        assert e.value.code == 2 and f"--port: '{port}': give a port number from 1 to 65535" in capsys.readouterr().err
    empty = tmp_path / "no_runs"  # no model here: an address error must come first
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [(["--port", str(port)], f"--port {port}: in use by another program on 127.0.0.1"),
                 (["--host", "192.0.2.1"], "--host 192.0.2.1: not an address of this machine")]
        for argv, expected in cases:
            assert A.main(["--runs", str(empty), *argv]) == 1
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"error: {expected}") and "\n" not in err, err
            assert "GRADIO_SERVER_PORT" not in err and "empty port" not in err


def test_the_page_builds_with_every_control(app):
    page = A.build_ui(app)
    ids = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    assert {"sketch", "sketch-upload", "photo-upload", "style-a", "style-b", "gallery", "style-upload", "mix",
            "scales", "output", "ae-output", "seed", "generate", "message", "model-path"} <= ids
    editor = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "sketch")
    assert editor.brush.colors == ["#000000"] and editor.eraser is not False  # pen, eraser
    assert app.live  # a 64 px model regenerates as the user draws
