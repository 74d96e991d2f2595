"""Files that survive crashes: atomic writes, safe checkpoint loading, PNG grids, JSON lines; text tables."""
from __future__ import annotations

import contextlib
import errno
import hashlib
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

from errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

CHECKPOINT_FORMAT = 4  # bump when the checkpoint dict's layout changes; 4: optimizers keyed as their networks
CHECKSUM_KEY = "checksum"  # "sha256:<hex>" of the rest of the checkpoint dict (state_checksum)
LOCK_FILE = ".lock"
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # atomic_path's temporary names: .<name>.<8 random>.tmp


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask sets it: read once, at import, before any thread starts
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file; mkstemp's temporaries are 0600


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, unsafe, damaged, or of the wrong kind."""


class OutputError(UserError):
    """An output cannot be written: no space left, no permission, a file where a folder should be."""


class FolderInUse(UserError):
    """Another running process holds the folder (locked_folder)."""


def _output_error(path: Path, e: OSError) -> OutputError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left on {path.parent} (writing {path.name})")
    return OutputError(f"cannot write {path}: {e.strerror or e}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds (an OSError
    becomes an OutputError). `fsync=False` leaves the flush to the caller (many small files that can be remade)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _output_error(path, e) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _output_error(path, e) from None
        raise


def check_writable(path, folder: bool = False) -> None:
    """Raise OutputError now, before the long work, if `path` (a file, or a folder) could not be written later.
    Creates nothing: it probes the nearest existing folder with a temporary file."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise OutputError(f"{path} is a folder: give a file name")
    if path.exists() and not path.is_dir() and folder:
        raise OutputError(f"{path} is a file: give a folder")
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise _output_error(path, e) from None


@contextlib.contextmanager
def locked_folder(folder, hint: str = "use another folder") -> Iterator[Path]:
    """Hold `folder` (made if missing) for the block with an exclusive flock on `folder`/.lock; another
    process gets FolderInUse (ending with `hint`). A killed process leaves no stale lock. No lock on Windows."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a")
    except OSError as e:
        raise _output_error(folder / LOCK_FILE, e) from None
    with handle:
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(f"{folder} is in use by another process that has not ended: wait for it, or "
                              f"{hint}") from None
        yield folder


def check_apart(outputs, inputs, nested: bool = False) -> None:
    """Raise OutputError unless no output is an input or lies in an input folder (`nested`: at any depth).
    An output among its inputs overwrites them, or is read back as one (an FID of ~0 against itself)."""
    sources = [(given, Path(given).resolve()) for given in inputs if given is not None]
    for out in (o for o in outputs if o is not None):
        target = Path(out).resolve()
        for given, source in sources:
            if target == source:
                what = "is the input folder" if source.is_dir() else "would overwrite the input"
                raise OutputError(f"{out} {what} {given}: choose another output")
        for given, source in sources:
            if source == target.parent or (nested and source in target.parents):
                raise OutputError(f"{out} would be written into the input folder {given}: choose another output")


def remove_stale_temporaries(folder) -> int:
    """Delete atomic_path's temporaries left by killed writes in `folder` and below; returns how many.
    Only when no other process writes there."""
    stale = [p for p in Path(folder).rglob(".*.tmp") if TEMPORARY.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def to_pil(img: torch.Tensor) -> Image.Image:
    """(C, H, W) in [-1, 1], C in {1, 3} -> 8-bit PIL image."""
    arr = img.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0].numpy(), mode="L")
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def save_png(img: torch.Tensor | Image.Image, path, fsync: bool = True) -> None:
    """Save (C, H, W) in [-1, 1] or a PIL image as PNG, atomically."""
    pil = img if isinstance(img, Image.Image) else to_pil(img)
    with atomic_path(path, fsync) as tmp:
        pil.save(tmp, format="PNG")


def save_grid(images: torch.Tensor, path, nrow: int) -> None:
    """Save (N, C, H, W) in [-1, 1] as one PNG grid, `nrow` images per row."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
    save_png(grid, path)


def format_table(rows: list[tuple[str, object]]) -> str:
    """Two aligned columns."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with aligned columns (also readable as plain text)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def state_checksum(obj) -> str:
    """"sha256:<hex>" over every tensor's dtype, shape and bytes and every key and plain value, in order."""
    h = hashlib.sha256()
    _hash_into(h, obj)
    return "sha256:" + h.hexdigest()


def _hash_into(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k, v in value.items():
            _hash_into(h, k)
            _hash_into(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _hash_into(h, v)
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def nonfinite_tensors(obj) -> list[str]:
    """Key paths ("state/networks/decoder/conv.weight") of float tensors holding NaN or Inf."""
    flags = []
    stack = [("", obj)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.numel():  # NaN and Inf show in the min or max (fast on CPU)
                flags.append((name, ~torch.isfinite(torch.stack(torch.aminmax(value.detach()))).all()))
        elif isinstance(value, dict):
            stack.extend((f"{name}/{k}" if name else str(k), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{name}/{i}", v) for i, v in enumerate(value))
    return sorted(name for name, flag in flags if bool(flag))  # reads flags computed on the device


class _RecordingWriter:
    """Keeps a failed write's OSError, which torch.save replaces by an opaque "unexpected pos" RuntimeError."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):  # flush, seek, tell...
        return getattr(self.f, name)


def save_checkpoint(obj: dict, path) -> None:
    """torch.save `obj` with format and checksum, atomically; a failed write is an OutputError."""
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY} | {"format": CHECKPOINT_FORMAT}
    body[CHECKSUM_KEY] = state_checksum(body)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(body, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def load_checkpoint(path, map_location="cpu", kind: str | None = None) -> dict:
    """Load with weights_only=True (no arbitrary code); check format, checksum, finite tensors and kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise CheckpointError(f"{path}: not a readable checkpoint (empty, truncated, or another kind of file)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: the file holds pickled Python objects{what}, not only tensors and plain "
            f"data, and loading those can run any code. Only checkpoints written by this project load.") from None
    except Exception as e:  # a truncated zip, a text file, ...: say which file and why
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'kind' entry)")
    # the format before the checksum: another layout may compute that differently
    layout = ckpt.get("format")
    if layout != CHECKPOINT_FORMAT:
        newer = isinstance(layout, int) and layout > CHECKPOINT_FORMAT
        raise CheckpointError(f"{path}: checkpoint format {layout!r}; this code reads {CHECKPOINT_FORMAT}: "
                              + ("update the code to load it" if newer else "written by an older version of this "
                                 "code (none was published): train it again"))
    if ckpt.pop(CHECKSUM_KEY, None) != state_checksum(ckpt):
        raise CheckpointError(f"{path}: damaged: its contents do not match the checksum stored in it (a disk "
                              f"or copy error); use another checkpoint")
    bad = nonfinite_tensors(ckpt)
    if bad:
        raise CheckpointError(f"{path}: holds NaN/Inf values ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
                              f": written after the run diverged; use an earlier checkpoint")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path}: is a '{ckpt['kind']}' checkpoint, expected '{kind}'")
    if "config" in ckpt and not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: its 'config' entry is a {type(ckpt['config']).__name__}, "
                              "not a dict of settings")
    return ckpt


def is_checkpoint(path, kind: str | None = None) -> bool:
    """Cheap test (mmap, no checksum) that a file is a checkpoint of this project, of `kind` if given."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(ckpt, dict) and "kind" in ckpt and (kind is None or ckpt["kind"] == kind)


class CheckpointDir:
    """A folder of numbered checkpoints with a `last` pointer; keeps the `keep` newest. Only files that load
    as checkpoints (of `kind`) count: a stray `ckpt_99999999.pt` is never picked, counted or deleted."""

    POINTER = "last.txt"
    PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")

    def __init__(self, folder, keep: int = 3, kind: str | None = None):
        self.folder, self.keep, self.kind = Path(folder), max(1, keep), kind

    def save(self, obj: dict, iteration: int) -> Path:
        """Write, move the pointer, prune: every moment is loadable. NaN/Inf weights: CheckpointError."""
        path = self.folder / f"ckpt_{iteration:08d}.pt"
        bad = nonfinite_tensors(obj)
        if bad:
            raise CheckpointError(f"iteration {iteration}: the weights hold NaN/Inf ({', '.join(bad[:3])}); not "
                                  f"saved, the last good checkpoint is kept: {self.last() or 'none yet'}")
        try:
            save_checkpoint(obj, path)
        except OutputError as e:
            raise OutputError(f"{e}: checkpoint not written; the last good one is kept: {self.last() or 'none yet'}") \
                from None
        write_text(self.folder / self.POINTER, path.name + "\n")
        older = [p for p in self._numbered() if self._number(p) < iteration]
        ours = [p for p in older if is_checkpoint(p, obj.get("kind", self.kind))]
        for old in ours[:max(0, len(ours) - (self.keep - 1))]:
            old.unlink(missing_ok=True)
        return path

    def last(self) -> Path | None:
        """The pointer's file if valid, else the highest-numbered valid checkpoint."""
        pointer = self.folder / self.POINTER
        if pointer.is_file():
            name = pointer.read_text(encoding="utf-8", errors="replace").strip()
            if self.PATTERN.match(name) and is_checkpoint(self.folder / name, self.kind):
                return self.folder / name
        return next((p for p in reversed(self._numbered()) if is_checkpoint(p, self.kind)), None)

    def all(self) -> list[tuple[int, Path]]:
        """(iteration, file) of every valid checkpoint, oldest first."""
        return [(self._number(p), p) for p in self._numbered() if is_checkpoint(p, self.kind)]

    def _number(self, path: Path) -> int:
        return int(self.PATTERN.match(path.name).group(1))

    def _numbered(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if self.PATTERN.match(p.name) and p.is_file()]
        return sorted(found, key=self._number)


def newest_checkpoint(folder, subfolders: tuple[str, ...] = ()) -> Path | None:
    """The newest checkpoint in the first of folder/<subfolder>..., then folder itself, that holds one."""
    for sub in (*subfolders, "."):
        found = CheckpointDir(Path(folder) / sub).last()
        if found is not None:
            return found
    return None


class JsonlLog:
    """Append-only JSON-lines log, flushed at every write."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as e:
            raise _output_error(self.path, e) from None

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
