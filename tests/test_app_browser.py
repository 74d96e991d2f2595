"""app.py end to end in a real headless browser (Debian's chromium, driven by playwright).

The test starts `python app.py` on a free local port with a small model it builds in seconds
(tests/stroke_model.py), draws strokes on the canvas with mouse events, picks two different
exemplars in the gallery, and checks what the page shows: an output image for each, the two
different, each following the drawn strokes; then bad input in the page (a file that is not an
image, an empty canvas) gives a one-line message and the server keeps serving. It saves a
screenshot of the page.

The README's screenshot is this test against the demo model (the newest demo run under
train_results/, as `python app.py` with no --checkpoint takes it):

    make app-screenshot        # = S2I_APP_SCREENSHOT=docs/app.png pytest tests/test_app_browser.py

Without chromium (or playwright) the test is skipped with the reason; .ci/run installs chromium.
"""
import os
from pathlib import Path

import numpy as np
import pytest

import app as A
import browser as B
from fileio import save_checkpoint
from stroke_model import build_stroke_model

SCREENSHOT = os.environ.get("S2I_APP_SCREENSHOT")  # set: run against the demo model, save the picture there
# no browser: skipped with the reason; but asked for a screenshot, that is a failure
pytestmark = pytest.mark.skipif(not SCREENSHOT and B.missing_browser() is not None, reason=str(B.missing_browser()))
# One continuous stroke in paper coordinates (0..1): a square, then a diagonal under it. A drawing
# never drawn (a cross) is the control: the outputs' edges must follow the drawn one better.
DRAWN = [[(0.25, 0.15), (0.75, 0.15), (0.75, 0.6), (0.25, 0.6), (0.25, 0.15), (0.15, 0.75), (0.85, 0.9)]]
NOT_DRAWN = [[(0.5, 0.05), (0.5, 0.95)], [(0.05, 0.4), (0.95, 0.4)]]
FOLLOW_MARGIN = 0.1  # correlation with the drawn strokes must beat the control's by this much
DIFFER = 2.0         # mean absolute difference (grey levels) between the two exemplars' outputs


def _app_args(tmp_path: Path, demo_root: Path) -> list[str]:
    if SCREENSHOT:  # the demo model and its held-out gallery, exactly as `python app.py` starts
        return ["--device", "cpu"]
    model = build_stroke_model(tmp_path / "stroke.safetensors")
    return ["--checkpoint", str(model), "--styles", str(demo_root / "test" / "images"), "--device", "cpu"]


def test_draw_pick_two_exemplars_and_generate_in_a_browser(tmp_path, demo_root):
    if B.missing_browser():
        pytest.fail(f"S2I_APP_SCREENSHOT is set but {B.missing_browser()}")
    port = B.free_port()
    with B.running_app(_app_args(tmp_path, demo_root), tmp_path / "app.log", port), \
            B.browser_page(tmp_path / "profile") as page:
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
        page.wait_for_selector("#sketch canvas")
        page.wait_for_selector("#gallery button.thumbnail-item")
        paper = B.paper_box(page, A.CANVAS)

        dark, bright = B.darkest_and_brightest(page)
        B.pick_exemplar(page, dark)  # exemplar A; the canvas is still empty: nothing is generated
        B.draw(page, DRAWN, paper)  # the page regenerates after the stroke (a 64 or 128 px model is "live")
        first_src = B.wait_for_new_output(page, None)
        B.pick_exemplar(page, bright)
        second_src = B.wait_for_new_output(page, first_src)
        page.screenshot(path=SCREENSHOT or str(tmp_path / "app.png"), full_page=True)

        first, second = B.fetch_image(page, first_src), B.fetch_image(page, second_src)
        assert first.size == second.size and first.size[0] in (64, 128)  # the model's output size
        assert np.abs(np.asarray(first, float) - np.asarray(second, float)).mean() > DIFFER
        size = first.size[0]
        drawn, control = B.stroke_mask(DRAWN, size, 0.02), B.stroke_mask(NOT_DRAWN, size, 0.02)
        for image in (first, second):  # its edges lie along the drawn strokes, not along the control's
            follows, other = B.correlation(B.edges(image), drawn), B.correlation(B.edges(image), control)
            assert follows > other + FOLLOW_MARGIN, (follows, other)

        # bad input in the page: one line, no traceback, and the server keeps serving
        (tmp_path / "notes.png").write_text("not an image")  # an image's name, a text's content
        B.upload(page, "#style-upload", tmp_path / "notes.png")
        B.wait_for_message(page, "not an image")
        assert B.message(page) == "⚠ notes.png: not an image this page can read (PNG, JPEG, WebP, BMP, ...)"
        (tmp_path / "big.png").write_bytes(os.urandom((A.MAX_UPLOAD_MB + 1) * 2 ** 20))
        B.upload(page, "#style-upload", tmp_path / "big.png")
        page.get_by_text("exceed the maximum allowed size").first.wait_for()  # the page refuses it
        refused = page.request.post(f"http://127.0.0.1:{port}/gradio_api/upload",  # and so does the server
                                    multipart={"files": {"name": "big.png", "mimeType": "image/png",
                                                         "buffer": (tmp_path / "big.png").read_bytes()}})
        assert refused.status == 413, refused.status
        page.locator("#generate").click()
        B.wait_for_message(page, "Done in")
        page.locator("#sketch button[aria-label='Clear canvas']").click()
        page.locator("#generate").click()
        B.wait_for_message(page, "the canvas is empty")
        save_checkpoint({"kind": "ae", "format": 1, "state": {}}, tmp_path / "ae_stage.pt")
        page.locator("#model-box").get_by_text("Model").first.click()  # open the Model box
        page.locator("#model-path textarea, #model-path input").first.fill(str(tmp_path / "ae_stage.pt"))
        page.locator("#load-model").click()
        B.wait_for_message(page, "AE-stage checkpoint")
        assert "ae_stage.pt" in B.message(page) and "\n" not in B.message(page)
        assert "Traceback" not in page.locator("body").inner_text()
