"""Scripts that use a trained model (thin layers over inference.py) and the quality benchmark; each runs
from the repository root as a file or a module. Here: their shared helpers (seeded choice of input files,
picture tiles)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
from PIL import ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets import DataError, to_float, to_uint8_tensor  # noqa: E402
from fileio import to_pil  # noqa: E402
from inference import InferenceError, _inputs  # noqa: E402


def model_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every grid script shares: the trained model, seed, batch size, device."""
    p.add_argument("--checkpoint", required=True,
                   help="run folder of train.py, a GAN checkpoint file, or a .safetensors file from export.py")
    p.add_argument("--seed", type=int, default=0, help="picks the files and the noise")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")


def image_files(path, what: str) -> list[Path]:
    """A file -> [file]; a folder -> its images sorted by name. DataError if there are none."""
    return list(_inputs(Path(path), what).values())


def choose(files: list[Path], n: int, seed: int, load: Callable, what: str = "image") -> list[tuple[Path, object]]:
    """Up to n readable files (n <= 0: all; more than n: a sample drawn with `seed`) with what `load(file)`
    made of them, in file-name order. Unreadable files (DataError) are skipped with a warning and replaced."""
    files = sorted(files, key=lambda p: p.name)
    if 0 < n < len(files):
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        candidates = [files[i] for i in order]
    else:
        candidates, n = files, len(files)
    chosen = []
    for path in candidates:
        if len(chosen) == n:
            break
        try:
            chosen.append((path, load(path)))
        except DataError as e:
            print(f"warning: skipping {e}", file=sys.stderr)
    if not chosen:
        raise InferenceError(f"no readable {what} among {len(files)} file(s)")
    return sorted(chosen, key=lambda item: item[0].name)


def blank(size: int) -> torch.Tensor:
    """A white tile (1, 3, size, size) in [-1, 1]."""
    return torch.ones(1, 3, size, size)


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 1 or 3, H, W) -> (B, 3, H, W), on the CPU."""
    x = x.detach().float().cpu()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def label(tile: torch.Tensor, text: str, top: int = 0) -> torch.Tensor:
    """Write `text` (black on a white box) at the top-left of a (1, 3, H, W) tile, `top` px down."""
    img = to_pil(tile[0])
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    box = draw.textbbox((2, top + 1), text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(255, 255, 255))
    draw.text((2, top + 1), text, fill=(0, 0, 0), font=font)
    return to_float(to_uint8_tensor(img.convert("RGB")))[None]


def slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
    return "_".join(part for part in out.split("_") if part) or "x"
