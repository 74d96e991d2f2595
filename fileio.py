"""Files that survive crashes: atomic writes, safe checkpoint loading, PNG grids, JSON lines."""
from __future__ import annotations

import contextlib
import json
import os
import pickle  # only for the exception type torch.load(weights_only=True) raises on a pickled object
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torchvision.utils import make_grid

CHECKPOINT_FORMAT = 1  # bump when the layout of the checkpoint dict changes


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, unsafe, or of the wrong kind."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    A process killed mid-write leaves the previous file intact (plus at worst a hidden
    `.name.*.tmp` file), never a half-written `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    """Write JSON atomically, pretty-printed."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def to_pil(img: torch.Tensor) -> Image.Image:
    """(C,H,W) tensor in [-1, 1] with C in {1, 3} -> 8-bit PIL image."""
    arr = img.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0].numpy(), mode="L")
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def save_png(img: torch.Tensor | Image.Image, path) -> None:
    """Save one image ((C,H,W) in [-1, 1] or PIL) as PNG, atomically."""
    pil = img if isinstance(img, Image.Image) else to_pil(img)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")


def save_grid(images: torch.Tensor, path, nrow: int) -> None:
    """Save a batch (N,C,H,W) in [-1, 1] as one PNG grid with `nrow` images per row."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
    save_png(grid, path)


# --------------------------------------------------------------------------- checkpoints

def save_checkpoint(obj: dict, path) -> None:
    """torch.save a dict of tensors and plain data, atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path, map_location="cpu", kind: str | None = None) -> dict:
    """Load a checkpoint with weights_only=True (no arbitrary code); check its kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise CheckpointError(f"{path}: not a readable checkpoint (empty, truncated, or another kind of file)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the file holds pickled Python objects, not only tensors and plain "
            f"data, so loading it could run code. Only checkpoints written by this project load. "
            f"({str(e).splitlines()[0]})") from None
    except Exception as e:  # a truncated zip, a text file, ...: say which file and why
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'kind' entry)")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path}: is a '{ckpt['kind']}' checkpoint, expected '{kind}'")
    return ckpt


class CheckpointDir:
    """A folder of numbered checkpoints with a `last` pointer; keeps the `keep` newest."""

    POINTER = "last.txt"
    PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")

    def __init__(self, folder, keep: int = 3):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def save(self, obj: dict, iteration: int) -> Path:
        """Write the checkpoint, then move the pointer, then prune: every moment is loadable."""
        path = self.folder / f"ckpt_{iteration:08d}.pt"
        save_checkpoint(obj, path)
        write_text(self.folder / self.POINTER, path.name + "\n")
        for old in self._numbered()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def last(self) -> Path | None:
        """Path of the newest checkpoint, following the pointer (or the highest number)."""
        pointer = self.folder / self.POINTER
        if pointer.is_file():
            target = self.folder / pointer.read_text(encoding="utf-8").strip()
            if target.is_file():
                return target
        numbered = self._numbered()
        return numbered[-1] if numbered else None

    def _numbered(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if self.PATTERN.match(p.name)]
        return sorted(found, key=lambda p: int(self.PATTERN.match(p.name).group(1)))


def newest_checkpoint(folder, subfolders: tuple[str, ...] = ()) -> Path | None:
    """The newest checkpoint in the first of folder/<subfolder>..., then folder itself, that holds one."""
    for sub in (*subfolders, "."):
        found = CheckpointDir(Path(folder) / sub).last()
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- logs

class JsonlLog:
    """Append-only JSON-lines log, one dict per line, flushed at every write."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def truncate_after(self, iteration: int) -> None:
        """Drop records past `iteration` (a resumed run will write them again)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a crash
                if json.loads(line).get("iter", -1) <= iteration:
                    kept.append(line)
        write_text(self.path, "".join(line + "\n" for line in kept))

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
