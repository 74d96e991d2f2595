"""Draw it in the browser: a local web page that turns a drawing into an image in an exemplar's style.

The page: a canvas, sketch or photo uploads (a photo becomes a sketch by XDoG or --tom), a gallery of
exemplars, style mixing of exemplars A and B per scale, a seed. Models up to LIVE_MAX_SIZE px regenerate
after every stroke. It listens on 127.0.0.1 unless --host says otherwise; every image it decodes is
bounded (MAX_UPLOAD_MB, MAX_PIXELS). `App` holds the callbacks as plain methods (tested without a
browser); `build_ui` wires them to gradio.
"""
from __future__ import annotations

import argparse
import errno
import functools
import os
import random
import re
import socket
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page: it calls no one

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from datasets import DataError, _to_mode, list_images, load_image, require_images
from errors import UserError, cli
from fileio import to_pil
from inference import SCALES, InferenceError, SketchToImage, fit_square, is_light_on_dark, newest_run
from sketch_styletransfer.sketch import XDOG_CHOICES, XDOG_DEFAULT, Sketcher, make_sketcher, tom_sketcher
from devices import resolve_device

ROOT = Path(__file__).resolve().parent
CANVAS = 512           # drawing canvas side in px (sketches are read from it at the model's AE size)
PEN, ERASER = 4, 12    # default pen and eraser radius on the canvas, px (the model saw 1-4 px strokes at 128 px)
LIVE_MAX_SIZE = 256    # models with outputs up to this size regenerate as the user draws
MAX_UPLOAD_MB = 10     # per uploaded file, enforced by the server before any decoding
MAX_PIXELS = 25_000_000  # per uploaded image, checked from its header before decoding
GALLERY_MAX = 24       # exemplars shown in the gallery (the first by file name)
THUMB = 96             # gallery thumbnail side, px
SEED_MAX = 2 ** 31 - 1
EMPTY_RANGE = 32       # a canvas whose grey levels span less than this holds no drawing
NO_MODEL = ("no trained demo model under {root}/: make one with `make demo` (minutes on a CPU: README, Results), "
            "or pass --checkpoint RUN_OR_FILE")


# --- Inputs ---

def open_upload(path, mode: str) -> Image.Image:
    """An uploaded file -> 8-bit PIL image in `mode`; InferenceError for a non-image or one over
    MAX_PIXELS (judged from its header, before decoding)."""
    if not path:
        raise InferenceError("no file arrived: upload it again")
    name = Path(path).name
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Image.DecompressionBombError:
        raise InferenceError(f"{name}: too large an image (over {MAX_PIXELS / 1e6:.0f} megapixels)") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        raise InferenceError(f"{name}: not an image this page can read (PNG, JPEG, WebP, BMP, ...)") from None
    if w * h > MAX_PIXELS:
        raise InferenceError(f"{name}: {w} x {h} pixels is too large (at most {MAX_PIXELS / 1e6:.0f} megapixels)")
    try:
        return load_image(path, mode)
    except DataError:
        raise InferenceError(f"{name}: a damaged or truncated image") from None


def bound_decoding() -> None:
    """Make PIL refuse, from its header, every image over MAX_PIXELS in this process: gradio decodes every
    event's images before any callback runs, and a 0.45 MB PNG may claim 12000 x 12000 pixels (2.3 GB)."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2  # PIL raises DecompressionBombError above twice this...
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # ...and only warns below


def as_image(value, mode: str) -> Image.Image | None:
    """A numpy array, PIL image or gradio ImageEditor value ({"composite": ...}) -> PIL in `mode` (or None)."""
    if isinstance(value, dict):
        value = value.get("composite")
    if value is None:
        return None
    h, w = value.shape[:2] if isinstance(value, np.ndarray) else value.size[::-1]
    if w * h > MAX_PIXELS:
        raise InferenceError(f"an image of {w} x {h} pixels is too large (at most {MAX_PIXELS / 1e6:.0f} megapixels)")
    if isinstance(value, np.ndarray):
        array = np.clip(value, 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise InferenceError(f"an image array of shape {value.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
        value = Image.fromarray(array)
    return _to_mode(value, mode)


def is_blank(drawing: Image.Image | None) -> bool:
    return drawing is None or int(np.ptp(np.asarray(drawing.convert("L")))) < EMPTY_RANGE


def editor_value(sketch: Image.Image) -> dict:
    """A sketch as the canvas's paper: dark strokes on white, padded to a square of CANVAS px."""
    gray = sketch.convert("L")
    if is_light_on_dark(gray):
        gray = ImageOps.invert(gray)
    paper = np.asarray(fit_square(gray, CANVAS, "pad").convert("RGB"))
    return {"background": paper, "layers": [], "composite": paper}


def exemplar(image: Image.Image, side: int) -> Image.Image:
    """An exemplar shrunk to at most `side` px on its long side."""
    image = image.convert("RGB")  # a copy, which thumbnail shrinks in place (and leaves alone when small)
    image.thumbnail((side, side), Image.BICUBIC)
    return image


# --- The app: model + callbacks ---

class App:
    """A loaded model and what the page does with it. One lock: one image at a time (the model's
    seeded noise is per call), and a model swap never happens mid-image."""

    def __init__(self, model: SketchToImage, styles_dir=None, tom=None, live: bool | None = None):
        self.lock = threading.Lock()
        self.styles_dir = Path(styles_dir) if styles_dir else None
        self.live_option = live
        self.sketchers: dict[str, Sketcher] = {name: make_sketcher(name) for name in XDOG_CHOICES}
        if tom is not None:
            self.sketchers["tom"] = tom_sketcher(tom, model.device)
        self.use(model)

    def load(self, path) -> SketchToImage:
        """Switch to another model on the same device; a wrong one raises CheckpointError and the current stays."""
        if not str(path or "").strip():
            raise InferenceError("give a run folder, a GAN checkpoint or an exported .safetensors file")
        model = SketchToImage.from_pretrained(str(path).strip(), self.model.device)
        with self.lock:
            self.use(model)
        return model

    def use(self, model: SketchToImage) -> None:
        self.model = model
        self.live = self.live_option if self.live_option is not None else model.image_size <= LIVE_MAX_SIZE
        self.exemplar_side = max(256, 2 * model.ae_size)
        files, self.gallery_note = self._gallery_files()
        self.gallery_files, self.gallery_items = [], []  # readable files only: index i is thumbnail i
        for path in files:
            try:
                self.gallery_items.append((exemplar(load_image(path, "RGB"), THUMB), path.stem))
            except DataError:
                continue
            self.gallery_files.append(path)

    def _gallery_files(self) -> tuple[list[Path], str]:
        if self.styles_dir is not None:
            return list(require_images(self.styles_dir, "--styles").values())[:GALLERY_MAX], ""
        held_out = self.model.config.get("TEST_IMAGE_DIR")
        for folder in ([Path(held_out), ROOT / held_out] if held_out else []):
            if folder.is_dir() and list_images(folder):
                return list(list_images(folder).values())[:GALLERY_MAX], ""
        where = f"its held-out folder {plain(held_out)} is not here" if held_out else "it names no held-out folder"
        return [], f"No exemplar gallery for this model ({where}): upload exemplars, or start with --styles DIR."

    def pick(self, index: int) -> Image.Image:
        if not 0 <= index < len(self.gallery_files):
            raise InferenceError(f"no exemplar number {index} in the gallery")
        path = self.gallery_files[index]
        try:
            return exemplar(load_image(path, "RGB"), self.exemplar_side)
        except DataError:
            raise InferenceError(f"{path.name}: this exemplar file cannot be read") from None

    def upload_exemplar(self, path) -> Image.Image:
        return exemplar(open_upload(path, "RGB"), self.exemplar_side)

    def upload_sketch(self, path) -> dict:
        return editor_value(open_upload(path, "L"))

    def photo_to_sketch(self, path, sketcher: str = f"xdog:{XDOG_DEFAULT}") -> dict:
        """A photo, centre-cropped to a square at the model's output size, through XDoG or TOM."""
        if sketcher not in self.sketchers:
            raise InferenceError(f"sketcher {sketcher!r}: choose one of {', '.join(self.sketchers)}")
        photo = fit_square(open_upload(path, "RGB"), self.model.image_size, "crop")
        with self.lock, torch.no_grad():
            return editor_value(self.sketchers[sketcher](photo))

    def generate(self, sketch, style_a, style_b=None, mix: float = 0.0, scales: Sequence[str] = SCALES,
                 seed=0, with_ae: bool = False) -> tuple[Image.Image, Image.Image | None]:
        """Sketch + exemplar A (+ B mixed in at `mix` on `scales`) -> (output, AE-stage output or None)."""
        drawing = as_image(sketch, "L")
        if is_blank(drawing):
            raise InferenceError("the canvas is empty: draw a sketch, or upload one")
        a, b = as_image(style_a, "RGB"), as_image(style_b, "RGB")
        if a is None:
            raise InferenceError("no exemplar A: pick one in the gallery, or upload one")
        seed = _seed(seed)
        mix = float(mix or 0.0)
        if not 0.0 <= mix <= 1.0:
            raise InferenceError(f"mix {mix}: must be between 0 (exemplar A) and 1 (exemplar B)")
        if unknown := [s for s in scales if s not in SCALES]:
            raise InferenceError(f"scales {unknown}: choose from {', '.join(SCALES)}")
        with self.lock, torch.no_grad():
            m = self.model
            vectors = m.style_vectors(m.prepare_style(a))
            if b is not None and mix > 0:  # each exemplar encoded alone: at mix 1, B's vectors exactly as if alone
                both = [torch.cat(pair) for pair in zip(vectors, m.style_vectors(m.prepare_style(b)))]
                vectors = m.mix_styles(both, {s: (1 - mix, mix) if s in scales else (1, 0) for s in SCALES})
            out, ae = m.generate(m.prepare_sketch(drawing), style_vectors=vectors, seed=seed, return_ae=True)
        return to_pil(out[0]), (to_pil(ae[0]) if with_ae else None)

    def describe(self) -> str:
        """The model line of the page (Markdown)."""
        m = self.model
        when = "regenerates as you draw" if self.live else "press Generate"
        total = m.config.get("ITERATION_GAN")
        trained = f"iteration {m.iteration}" + (f" of {total}" if isinstance(total, int) else "")
        if isinstance(total, int) and isinstance(m.iteration, int) and m.iteration < total:
            trained += ", unfinished"
        return (f"**Model** {plain(_short(m.source))}: **{trained}** ({m.preset}, {m.ae_size} px sketches -> "
                f"{m.image_size} px images on {m.device}); {when}.")


def plain(text) -> str:
    """`text` shown as it is in Markdown: the marks of HTML, emphasis, code, links, tables and formulas
    backslash-escaped, so that `<run>` is not dropped as a tag nor `ckpt_*.pt` read as emphasis."""
    return re.sub(r"([\\`*_\[\]<>&~|!$])", r"\\\1", str(text))


def _short(source) -> str:
    """A model's file for people: <run>/gan/checkpoints/ckpt_N.pt -> "<run> (ckpt_N.pt)"."""
    if source is None:
        return "?"
    path = Path(source)
    if path.parent.name == "checkpoints" and len(path.parts) >= 4:
        return f"{path.parents[2].name} ({path.name})"
    return path.name


def _seed(seed) -> int:
    try:
        value = int(seed)
        if value != float(seed):
            raise ValueError
    except (TypeError, ValueError):
        raise InferenceError(f"seed {seed!r}: give a whole number from 0 to {SEED_MAX}") from None
    if not 0 <= value <= SEED_MAX:
        raise InferenceError(f"seed {value}: give a whole number from 0 to {SEED_MAX}")
    return value


def load_model(checkpoint, device, runs="train_results") -> SketchToImage:
    """--checkpoint, or the newest demo run under `runs`; InferenceError when there is none."""
    if not checkpoint:
        checkpoint = newest_run(runs, "demo")
        if checkpoint is None:
            raise InferenceError(NO_MODEL.format(root=Path(runs)))
    return SketchToImage.from_pretrained(checkpoint, device)


# --- The page ---

def shielded(fn: Callable, n_outputs: int) -> Callable:
    """Wrap a callback returning (outputs, note) into one returning (*outputs, message line; None: unchanged).
    An exception becomes the message and leaves the outputs as they were (a traceback: in the log only)."""

    @functools.wraps(fn)  # keeps fn's signature: gradio passes gr.SelectData by annotation
    def run(*args, **kwargs):
        try:
            outputs, note = fn(*args, **kwargs)
        except UserError as e:
            return (*[gr.skip()] * n_outputs, f"⚠ {plain(e)}")
        except Exception as e:  # noqa: BLE001 - the page must keep working; the log keeps the details
            traceback.print_exc()
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return (*[gr.skip()] * n_outputs, f"⚠ internal error ({type(e).__name__}: {plain(first)}); "
                                              f"the server log has the details")
        return (*outputs, gr.skip() if note is None else note)
    return run


CSS = """
#output img, #ae-output img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
#message { min-height: 1.5em; }
"""


def build_ui(app: App) -> gr.Blocks:
    """The gradio Blocks of the page, wired to `app`."""
    first = [app.pick(i) for i in range(min(2, len(app.gallery_files)))]
    with gr.Blocks(title="Sketch to image", analytics_enabled=False) as page:
        gr.Markdown("## Sketch to image\nDraw on the paper with the pen (its width: the brush-size button), "
                    "or upload a sketch or a photo; pick an exemplar; the image follows your lines in its style.")
        info = gr.Markdown(app.describe(), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=5):
                sketch = gr.ImageEditor(
                    value=editor_value(Image.new("L", (CANVAS, CANVAS), 255)), type="numpy", image_mode="RGB",
                    sources=[], layers=False, transforms=[], canvas_size=(CANVAS, CANVAS), fixed_canvas=True,
                    label="Sketch", brush=gr.Brush(colors=["#000000"], default_color="#000000", color_mode="fixed",
                                                   default_size=PEN),
                    eraser=gr.Eraser(default_size=ERASER), elem_id="sketch")
                with gr.Row():
                    sketch_upload = gr.UploadButton("Upload a sketch", file_types=["image"], size="sm",
                                                    elem_id="sketch-upload")
                    photo_upload = gr.UploadButton("Photo -> sketch", file_types=["image"], size="sm",
                                                   elem_id="photo-upload")
                    sketcher = gr.Dropdown(list(app.sketchers), value=f"xdog:{XDOG_DEFAULT}",
                                           label="photo sketcher", elem_id="sketcher")
            with gr.Column(scale=4):
                with gr.Row():
                    style_a = gr.Image(first[0] if first else None, type="pil", label="Exemplar A",
                                       interactive=False, height=160, elem_id="style-a")
                    style_b = gr.Image(first[1] if len(first) > 1 else None, type="pil", label="Exemplar B",
                                       interactive=False, height=160, elem_id="style-b")
                slot = gr.Radio(["A", "B"], value="A", label="a gallery click sets exemplar", elem_id="slot")
                gallery = gr.Gallery(app.gallery_items, columns=3, height=260, allow_preview=False,
                                     label="Exemplars", elem_id="gallery")
                gallery_note = gr.Markdown(app.gallery_note, elem_id="gallery-note")
                style_upload = gr.UploadButton("Upload an exemplar", file_types=["image"], size="sm",
                                               elem_id="style-upload")
                mix = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="mix: 0 = exemplar A, 1 = exemplar B",
                                elem_id="mix")
                scales = gr.CheckboxGroup(list(SCALES), value=list(SCALES), label="mixed scales",
                                          elem_id="scales")
            with gr.Column(scale=4):
                output = gr.Image(type="pil", format="png", label="Output", interactive=False,
                                  buttons=["download"], height=280, elem_id="output")
                ae_output = gr.Image(type="pil", format="png", label="AE-stage output", interactive=False,
                                     visible=False, height=200, elem_id="ae-output")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="seed", elem_id="seed", min_width=80)
                    new_seed = gr.Button("New seed", size="sm", elem_id="new-seed")
                show_ae = gr.Checkbox(False, label="show the AE-stage output", elem_id="show-ae")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                message = gr.Markdown("", elem_id="message")
        with gr.Accordion("Model", open=False, elem_id="model-box"):
            model_path = gr.Textbox(label="run folder, GAN checkpoint or exported .safetensors file",
                                    elem_id="model-path")
            load = gr.Button("Load", size="sm", elem_id="load-model")

        # --- callbacks: each returns (outputs, note); `shielded` adds the message line ---------
        def make(editor, a, b, t, chosen, s, with_ae):
            start = time.perf_counter()
            out, ae = app.generate(editor, a, b, t, chosen, s, with_ae)
            return (out, ae), f"Done in {time.perf_counter() - start:.2f} s (seed {int(s)})."

        def make_live(editor, a, b, t, chosen, s, with_ae):
            if not app.live or is_blank(as_image(editor, "L")):
                return (gr.skip(), gr.skip()), None  # big model, or nothing drawn yet: wait quietly
            return make(editor, a, b, t, chosen, s, with_ae)

        def new_sketch(value, *rest):
            images, note = make_live(value, *rest)
            return (value, *images), note if note is not None else ""

        def upload_sketch(path, *rest):
            return new_sketch(app.upload_sketch(path), *rest)

        def photo_sketch(path, name, *rest):
            return new_sketch(app.photo_to_sketch(path, name), *rest)

        def pick(which, evt: gr.SelectData):
            image = app.pick(evt.index)
            return ((image, gr.skip()) if which == "A" else (gr.skip(), image)), ""

        def upload_style(path, which):
            image = app.upload_exemplar(path)
            return ((image, gr.skip()) if which == "A" else (gr.skip(), image)), ""

        def swap_model(path):
            model = app.load(path)
            return (app.describe(), app.gallery_items, app.gallery_note), f"Loaded {plain(_short(model.source))}."

        settings = [style_a, style_b, mix, scales, seed, show_ae]
        images = [output, ae_output, message]
        generate.click(shielded(make, 2), [sketch, *settings], images, concurrency_limit=1)
        live = dict(fn=shielded(make_live, 2), inputs=[sketch, *settings], outputs=images,
                    trigger_mode="always_last", show_progress="minimal", concurrency_limit=1)
        sketch.input(**live)  # one event per finished stroke
        for component in (style_a, style_b, scales, seed):
            component.change(**live)
        mix.release(**live)
        sketch_upload.upload(shielded(upload_sketch, 3), [sketch_upload, *settings], [sketch, *images])
        photo_upload.upload(shielded(photo_sketch, 3), [photo_upload, sketcher, *settings], [sketch, *images])
        gallery.select(shielded(pick, 2), slot, [style_a, style_b, message])
        style_upload.upload(shielded(upload_style, 2), [style_upload, slot], [style_a, style_b, message])
        new_seed.click(lambda: random.randint(0, SEED_MAX), None, seed)
        show_ae.change(lambda v: gr.update(visible=bool(v)), show_ae, ae_output)
        load.click(shielded(swap_model, 3), model_path, [info, gallery, gallery_note, message])
    return page


class AddressError(UserError):
    """The page cannot listen where --host and --port say."""


def port_number(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: give a port number from 1 to 65535")
    return int(text)


def check_address(host: str, port: int) -> None:
    """AddressError now, naming the option, unless the page can listen on host:port (gradio would
    say it only after the model has loaded, as a port it "cannot find")."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError):
        raise AddressError(f"--host {host}: not a name or address this machine can resolve") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as e:
            why = {errno.EADDRINUSE: f"--port {port}: in use by another program on {host}: choose another --port",
                   errno.EADDRNOTAVAIL: f"--host {host}: not an address of this machine (127.0.0.1: this "
                                        f"machine only; 0.0.0.0: every network interface)",
                   errno.EACCES: f"--port {port}: needs administrator rights here: choose one above 1023"}
            raise AddressError(why.get(e.errno, f"--host {host} --port {port}: cannot listen there "
                                                f"({e.strerror or e})")) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="A local web page: draw a sketch, pick an exemplar, get the image.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder, a GAN checkpoint or an exported .safetensors model (default: the newest demo run);
        exemplars from the model's held-out images or --styles.
Outputs: a page at http://HOST:PORT; the generated image downloads from the page as PNG.
Example:
    python app.py --checkpoint train_results/demo-20261202-120000 --port 7860""")
    p.add_argument("--checkpoint", help="run folder, GAN checkpoint or exported .safetensors file "
                                        "(default: the newest demo run under --runs)")
    p.add_argument("--runs", default="train_results", help="where to look for demo runs (default: train_results)")
    p.add_argument("--styles", help="folder of exemplars for the gallery (default: the model's held-out images)")
    p.add_argument("--tom", help="a TOM checkpoint or run: adds 'tom' to the photo sketchers (needs VGG16 weights)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, mps")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network interface)")
    p.add_argument("--port", type=port_number, default=7860, help="port to listen on, 1 to 65535 (default 7860)")
    live = p.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=None,
                      help=f"regenerate as the user draws (default: for outputs up to {LIVE_MAX_SIZE} px)")
    live.add_argument("--no-live", dest="live", action="store_false", help="generate only on the button")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_address(args.host, args.port)  # before the model loads: a second, not a minute
    bound_decoding()
    model = load_model(args.checkpoint, resolve_device(args.device), args.runs)
    app = App(model, args.styles, args.tom, args.live)
    print(f"model: {model.preset}, {model.ae_size} px sketches -> {model.image_size} px images "
          f"({model.source}, iteration {model.iteration}) on {model.device}")
    if app.gallery_note:
        print(app.gallery_note)
    build_ui(app).launch(server_name=args.host, server_port=args.port, max_file_size=f"{MAX_UPLOAD_MB}mb", css=CSS,
                         footer_links=[], show_error=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
