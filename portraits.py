"""A real data set in one command: the painted character portraits of Battle for Wesnoth.

Inputs: Debian's package wesnoth-1.16-data (GPL-2.0-or-later), fetched with `apt-get download` and
        checked against the SHA-256 apt lists, or a .deb you downloaded (--deb).
Outputs: in --out (default data/portraits): train/ and test/ as prepare_data.py makes them (images,
         three XDoG sketch sets), ARTISTS and copyright (the package's credits and licence), source.json.
Examples:
    python portraits.py
    python portraits.py --deb wesnoth-1.16-data_1.16.9-1_all.deb --out data/portraits

The package holds 241 painted half-length portraits (400-600 px, RGBA on transparent backgrounds;
their artists are credited in its portraits/ARTISTS). Only those are read out of it, in Python (a .deb
is an `ar` archive holding data.tar.xz); each is put on a flat white background and padded to a
square (centred, standing on the bottom edge) at --size px, then split and sketched by prepare_data.
The .deb is deleted afterwards. Deterministic: the same package gives the same bytes. Idempotent: a
complete --out is left as it is.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from PIL import Image

import prepare_data
from datasets import READ_ERRORS, list_images, resize
from errors import UserError, cli
from fileio import atomic_path, check_writable, save_png, write_json

PACKAGE = "wesnoth-1.16-data"
LICENSE = "GPL-2.0-or-later"
CREDIT = ("Battle for Wesnoth portraits by Kathrin Polikeit, Emilien Rotival, Philip Barber and the other artists "
          "named in ARTISTS; GPL-2.0-or-later, from Debian's package wesnoth-1.16-data")
PORTRAITS = "images/portraits/"    # below .../data/core/ and .../data/campaigns/<name>/ in the package
CREDIT_FILES = {"data/core/images/portraits/ARTISTS": "ARTISTS", f"doc/{PACKAGE}/copyright": "copyright"}
DEFAULT_OUT = "data/portraits"
DEFAULT_SIZE = 256
TEST_RATIO = 0.1
BACKGROUND = (255, 255, 255)


class FetchError(UserError):
    """apt cannot give the package, or the .deb is not the one expected."""


# --------------------------------------------------------------------------- the package

def apt_download(folder: Path) -> tuple[Path, str]:
    """Download PACKAGE's .deb into `folder` with apt; (file, the SHA-256 apt lists for it)."""
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        raise FetchError(f"apt-get not found: get {PACKAGE}'s .deb with your system's tools (or on a machine with "
                         f"apt: apt-get download {PACKAGE}) and pass it with --deb FILE")
    shown = subprocess.run(["apt-cache", "show", "--no-all-versions", PACKAGE], capture_output=True, text=True)
    fields = dict(line.split(": ", 1) for line in shown.stdout.splitlines() if ": " in line)
    if shown.returncode or "SHA256" not in fields:
        raise FetchError(f"apt knows no package {PACKAGE}: its package lists are empty or old; run "
                         f"`sudo apt-get update` first, or pass a downloaded .deb with --deb FILE")
    got = subprocess.run(["apt-get", "download", PACKAGE], cwd=folder, capture_output=True, text=True)
    debs = sorted(folder.glob("*.deb"))
    if got.returncode or len(debs) != 1:
        reason = (got.stderr.strip().splitlines() or ["no .deb written"])[-1]
        raise FetchError(f"apt-get download {PACKAGE} failed ({reason}): check the network and apt's sources, "
                         f"or pass a downloaded .deb with --deb FILE")
    return debs[0], fields["SHA256"].strip()


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def ar_members(path: Path) -> dict[str, tuple[int, int]]:
    """{member name: (offset, size)} of a Unix `ar` archive (the container of a .deb)."""
    members = {}
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise FetchError(f"{path}: not a .deb (no ar archive header)")
        while header := f.read(60):
            if len(header) < 60 or header[58:60] != b"`\n":
                raise FetchError(f"{path}: damaged .deb (bad ar member header)")
            name, size = header[:16].decode("ascii", "replace").strip().rstrip("/"), int(header[48:58])
            members[name] = (f.tell(), size)
            f.seek(size + size % 2, os.SEEK_CUR)  # members are 2-byte aligned
    return members


def wanted(member: str) -> str | None:
    """The name a package file gets in OUT, or None: portraits as <faction>__<name>.png, and the credits."""
    path = PurePosixPath(member.lstrip("./"))
    text = path.as_posix()
    for source, target in CREDIT_FILES.items():
        if text.endswith(source):
            return target
    if path.suffix != ".png" or PORTRAITS not in text + "/":
        return None
    below = PurePosixPath(text.split(PORTRAITS, 1)[1])
    campaign = path.parts[path.parts.index("campaigns") + 1] if "campaigns" in path.parts else None
    parts = ([campaign] if campaign else []) + list(below.with_suffix("").parts)
    return "__".join(parts) + ".png"


def read_package(deb: Path) -> dict[str, bytes]:
    """{OUT name: file bytes} of the portraits and credit files in the .deb's data archive."""
    members = ar_members(deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name not in ("data.tar.xz", "data.tar.gz", "data.tar"):
        raise FetchError(f"{deb}: no data.tar.xz in this .deb (members: {', '.join(members)})")
    offset, size = members[name]
    found = {}
    with open(deb, "rb") as f:
        f.seek(offset)
        try:
            with tarfile.open(fileobj=_Bounded(f, size), mode="r|*") as tar:
                for member in tar:
                    target = wanted(member.name)
                    if target and member.isfile():
                        found[target] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise FetchError(f"{deb}: damaged data archive ({e})") from None
    if not any(k.endswith(".png") for k in found):
        raise FetchError(f"{deb}: holds no portraits (is it {PACKAGE}?)")
    return found


class _Bounded:
    """A read-only view of `size` bytes of an open file from its current position (one ar member)."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


# --------------------------------------------------------------------------- pictures

def flatten(png: bytes, size: int) -> Image.Image:
    """A portrait on a flat background, padded to a square (centred, standing on the bottom edge), at `size` px."""
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    side = max(image.size)
    square = Image.new("RGBA", (side, side), BACKGROUND + (255,))
    square.alpha_composite(image, ((side - image.width) // 2, side - image.height))
    return resize(square.convert("RGB"), size)


def write_originals(files: dict[str, bytes], folder: Path, size: int) -> dict:
    """The portraits as RGB PNGs in `folder`; {"written": n, "unreadable": [names]}."""
    written, unreadable = 0, []
    for name, data in sorted(files.items()):
        if not name.endswith(".png"):
            continue
        try:
            picture = flatten(data, size)
        except READ_ERRORS:
            unreadable.append(name)
            continue
        save_png(picture, folder / name, fsync=False)
        written += 1
    return {"written": written, "unreadable": unreadable}


# --------------------------------------------------------------------------- command line

def fetch(out: Path, deb: Path | None, size: int, test_ratio: float) -> dict:
    """Fetch (or read `deb`), extract, flatten and prepare into `out`; returns source.json's content."""
    done = json.loads((out / "source.json").read_text()) if (out / "source.json").is_file() else None
    if done and done.get("size") == size and done.get("test_ratio") == test_ratio:
        print(f"{out} is complete ({done['portraits']} portraits, {PACKAGE} {done['version']}): nothing to do")
        return done
    check_writable(out, folder=True)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".portraits-", dir=out) as tmp:
        expected = None
        if deb is None:
            print(f"downloading {PACKAGE} with apt-get (146 MB) ...")
            deb, expected = apt_download(Path(tmp))
        digest = sha256(deb)
        if expected and digest != expected:
            raise FetchError(f"{deb.name}: SHA-256 {digest} is not the {expected} apt lists: a damaged download; "
                             f"run the command again")
        files = read_package(deb)
        originals = Path(tmp) / "originals"
        counts = write_originals(files, originals, size)
        args = prepare_data.parse_args([str(originals), str(out), "--test-ratio", str(test_ratio),
                                        "--preset", "portraits"])
        args.photos = f"{PACKAGE} {_version(deb)}"  # what prepare.json records as the source
        prepare_data.prepare(list_images(originals), args)
    for target in CREDIT_FILES.values():
        if target in files:
            with atomic_path(out / target) as tmp:
                tmp.write_bytes(files[target])
    source = {"package": PACKAGE, "version": _version(deb), "sha256": digest, "checked_against_apt": bool(expected),
              "license": LICENSE, "credit": CREDIT, "portraits": counts["written"],
              "unreadable": counts["unreadable"], "size": size, "test_ratio": test_ratio}
    write_json(out / "source.json", source)  # last: its presence means the folder is complete
    return source


def _version(deb: Path) -> str:
    """The version in a .deb's file name (apt writes the epoch's ':' as %3a), or 'unknown'."""
    parts = deb.name.replace("%3a", ":").split("_")
    return parts[1] if len(parts) == 3 else "unknown"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python portraits.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"where the data set goes (default {DEFAULT_OUT})")
    p.add_argument("--deb", type=Path, help=f"a downloaded {PACKAGE} .deb instead of apt-get download")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"square side of the pictures (default {DEFAULT_SIZE})")
    p.add_argument("--test-ratio", type=float, default=TEST_RATIO, help=f"share held out (default {TEST_RATIO})")
    args = p.parse_args(argv)
    if args.deb is not None and not args.deb.is_file():
        p.error(f"--deb {args.deb}: no such file")
    if args.size < 64:
        p.error("--size must be at least 64")
    return args


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = fetch(Path(args.out), args.deb, args.size, args.test_ratio)
    print(f"{source['portraits']} portraits in {args.out} ({source['license']}; credits in {args.out}/ARTISTS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
