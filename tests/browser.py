"""Drive app.py in a real headless browser: Debian's chromium through playwright (never a downloaded
browser). Used by tests/test_app_browser.py; small functions, each one thing a user does."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("S2I_CHROMIUM", "/usr/bin/chromium")
# a fresh profile is passed as user_data_dir; these keep a browser on a closed network from stalling
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT = 600  # s: importing torch and gradio on a busy 2-core machine
STEP_TIMEOUT = 240_000  # ms: one page action, including a generation on that machine


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -r requirements-dev.txt)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(args: list[str], log: Path, port: int):
    """`python app.py ARGS --port PORT` in the background until its page answers; stopped after."""
    env = {**os.environ, "GRADIO_TEMP_DIR": str(log.parent / "gradio"), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *args, "--port", str(port)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer within {START_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def browser_page(profile: Path, width: int = 1400, height: int = 1000):
    """A page in headless chromium with a fresh profile folder."""
    from playwright.sync_api import sync_playwright  # here: optional (missing_browser says whether it is there)
    shutil.rmtree(profile, ignore_errors=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(STEP_TIMEOUT)
            yield page
        finally:
            context.close()


def paper_box(page, canvas_px: int) -> dict:
    """Where the canvas's paper (canvas_px square) is on the screen: {x, y, width, height} in page
    pixels. The editor draws it centred in its drawing area at the zoom its toolbar shows ("56%");
    white paper on a white area has no edge to find in a screenshot."""
    box = page.locator("#sketch canvas").first.bounding_box()
    zoom = re.search(r"(\d+)%", page.locator("#sketch").inner_text())
    assert zoom, "the sketch editor shows no zoom level"
    side = canvas_px * int(zoom.group(1)) / 100
    return {"x": box["x"] + (box["width"] - side) / 2, "y": box["y"] + (box["height"] - side) / 2,
            "width": side, "height": side}


def draw(page, strokes: list[list[tuple[float, float]]], paper: dict) -> None:
    """Draw polylines given in paper coordinates (0..1) with mouse events, one stroke each."""
    for line in strokes:
        points = [(paper["x"] + u * paper["width"], paper["y"] + v * paper["height"]) for u, v in line]
        page.mouse.move(*points[0])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(x, y, steps=8)
        page.mouse.up()


def stroke_mask(strokes, size: int, width_fraction: float) -> np.ndarray:
    """The strokes rendered as ink (0..255) at size x size, softened: what an output should follow."""
    big = 512
    img = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(img)
    for line in strokes:
        d.line([(u * big, v * big) for u, v in line], fill=255, width=max(1, round(width_fraction * big)),
               joint="curve")
    return np.asarray(img.resize((size, size), Image.BILINEAR).filter(ImageFilter.GaussianBlur(1)), np.float64)


def edges(image: Image.Image) -> np.ndarray:
    """Edge strength: gradient magnitude of the grey image smoothed by a 1 px Gaussian."""
    g = np.asarray(image.convert("L").filter(ImageFilter.GaussianBlur(1)), np.float64)
    gy, gx = np.gradient(g)
    return np.hypot(gx, gy)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def message(page) -> str:
    return page.locator("#message").inner_text().strip()


def wait_for_message(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#message').innerText.includes(t)", arg=text)


def output_src(page) -> str | None:
    img = page.locator("#output img")
    return img.first.get_attribute("src") if img.count() else None


def wait_for_new_output(page, previous: str | None) -> str:
    """Wait until the output image's source differs from `previous`; return it."""
    page.wait_for_function(
        "prev => { const i = document.querySelector('#output img'); return i && i.src && i.src !== prev; }",
        arg=previous)
    return output_src(page)


def fetch_image(page, src: str) -> Image.Image:
    """The image the page shows, as the browser fetched it."""
    response = page.request.get(src)
    assert response.ok, f"{src}: HTTP {response.status}"
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def pick_exemplar(page, index: int) -> None:
    page.locator("#gallery button.thumbnail-item").nth(index).click()


def darkest_and_brightest(page) -> tuple[int, int]:
    """Gallery positions of the darkest and the brightest thumbnail: two clearly different exemplars
    whatever the data."""
    thumbs = page.locator("#gallery button.thumbnail-item img")
    light = [np.asarray(fetch_image(page, thumbs.nth(i).get_attribute("src")).convert("L")).mean()
             for i in range(thumbs.count())]
    return int(np.argmin(light)), int(np.argmax(light))


def upload(page, button: str, path: Path) -> None:
    """Click an upload button and give the file chooser `path`."""
    with page.expect_file_chooser() as chooser:
        page.locator(button).click()
    chooser.value.set_files(str(path))
