"""portraits.py: a .deb-shaped fixture of our own (never the real package), apt faked on PATH."""
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import portraits as P

CORE = "./usr/share/games/wesnoth/1.16/data/core/images/portraits"
TUTORIAL = "./usr/share/games/wesnoth/1.16/data/campaigns/tutorial/images/portraits"


def _png(size, colour, mode="RGBA") -> bytes:
    """A figure: an opaque disc of `colour` on a transparent field."""
    image = Image.new(mode, size, (0, 0, 0, 0) if mode == "RGBA" else 0)
    yy, xx = np.mgrid[:size[1], :size[0]]
    disc = (xx - size[0] / 2) ** 2 + (yy - size[1] / 2) ** 2 < (min(size) / 3) ** 2
    pixels = np.array(image)
    pixels[disc] = (*colour, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


FILES = {f"{CORE}/elves/archer.png": _png((40, 40), (20, 160, 20)),
         f"{CORE}/elves/shaman.png": _png((40, 40), (30, 140, 60)),
         f"{CORE}/humans/mage.png": _png((50, 40), (200, 30, 30)),   # wide: padded to a square
         f"{CORE}/humans/knight.png": _png((40, 60), (90, 90, 110)),  # tall
         f"{CORE}/undead/ghost.png": _png((40, 40), (220, 220, 255)),
         f"{CORE}/orcs/grunt.png": _png((40, 40), (120, 80, 20)),
         f"{TUTORIAL}/delfador.png": _png((40, 40), (60, 60, 160)),
         f"{CORE}/ARTISTS": b"Portrait Credits: somebody\n",
         "./usr/share/doc/wesnoth-1.16-data/copyright": b"GPL-2+\n",
         "./usr/share/games/wesnoth/1.16/data/core/images/units/elf.png": _png((40, 40), (1, 2, 3))}  # not a portrait


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}".encode() + b"`\n"
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def make_deb(path: Path, files: dict[str, bytes] = FILES) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buffer.getvalue()}))
    return path


@pytest.fixture
def deb(tmp_path) -> Path:
    return make_deb(tmp_path / "wesnoth-1.16-data_1%3a1.16.9-1_all.deb")


def test_a_deb_becomes_a_prepared_data_set(deb, tmp_path, capsys):
    out = tmp_path / "portraits"
    assert P.main(["--deb", str(deb), "--out", str(out), "--size", "64", "--test-ratio", "0.3"]) == 0
    source = json.loads((out / "source.json").read_text())
    assert source["portraits"] == 7 and source["version"] == "1:1.16.9-1" and source["license"] == P.LICENSE
    assert source["sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest() and not source["checked_against_apt"]
    assert (out / "ARTISTS").read_bytes() == FILES[f"{CORE}/ARTISTS"] and (out / "copyright").is_file()
    names = sorted(p.stem for p in (out / "train" / "images").glob("*.png")) + \
        sorted(p.stem for p in (out / "test" / "images").glob("*.png"))
    assert sorted(names) == ["elves__archer", "elves__shaman", "humans__knight", "humans__mage", "orcs__grunt",
                             "tutorial__delfador", "undead__ghost"]
    assert len(list((out / "test" / "images").glob("*.png"))) == 2  # round(0.3 * 7)
    for folder in ("xdog_thin", "xdog_medium", "xdog_bold"):
        assert len(list((out / "train" / "sketches" / folder).glob("*.png"))) == 5
    prepared = json.loads((out / "prepare.json").read_text())
    assert "DATA_NAME=portraits" in prepared["train_command"] and prepared["photos"].startswith(P.PACKAGE)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the temporary folder is gone


def test_portraits_are_flattened_on_white_and_padded_to_stand_on_the_bottom(deb, tmp_path):
    files = P.read_package(deb)
    wide = np.asarray(P.flatten(files["humans__mage.png"], 50))
    assert wide.shape == (50, 50, 3)
    assert (wide[:5] == 255).all()  # padding above the wide figure (it stands on the bottom edge)
    assert tuple(wide[30, 25]) == (200, 30, 30)  # the figure's colour, opaque
    assert (wide[45:, :3] == 255).all()  # a transparent corner is white paper
    tall = np.asarray(P.flatten(files["humans__knight.png"], 60))
    assert (tall[:, :8] == 255).all() and (tall[:, -8:] == 255).all()  # centred: padding on both sides


def test_the_same_package_gives_the_same_bytes_and_a_second_call_does_nothing(deb, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert P.main(["--deb", str(deb), "--out", str(out), "--size", "64"]) == 0
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    before = {f: (a / f).stat().st_mtime_ns for f in files}
    capsys.readouterr()
    assert P.main(["--deb", str(deb), "--out", str(a), "--size", "64"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert before == {f: (a / f).stat().st_mtime_ns for f in files}


def _fake_apt(folder: Path, show: str, download: str) -> None:
    """apt-cache and apt-get as shell scripts: `show` is apt-cache's script body, `download` apt-get's."""
    folder.mkdir(exist_ok=True)
    for name, body in (("apt-cache", show), ("apt-get", download)):
        path = folder / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0, err
    return err


def test_apt_download_checked_against_apts_hash(deb, tmp_path, monkeypatch):
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    bin_ = tmp_path / "bin"
    _fake_apt(bin_, f'echo "Package: {P.PACKAGE}"; echo "SHA256: {digest}"', f'cp "{deb}" .')
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "portraits"
    assert P.main(["--out", str(out), "--size", "64"]) == 0
    assert json.loads((out / "source.json").read_text())["checked_against_apt"] is True
    assert not list(out.rglob("*.deb"))  # the package is not kept


@pytest.mark.parametrize("show, download, words", [
    ('echo "Package: x"; echo "SHA256: 0000"', 'cp "{deb}" .', "SHA-256"),             # a damaged download
    ("echo 'N: Unable to locate package' >&2; exit 100", "exit 0", "apt-get update"),   # empty package lists
    ('echo "SHA256: 00"', "echo 'E: Failed to fetch: Temporary failure resolving' >&2; exit 100", "--deb FILE"),
])
def test_apt_failures_are_one_line_with_what_to_do(deb, tmp_path, monkeypatch, capsys, show, download, words):
    bin_ = tmp_path / "bin"
    _fake_apt(bin_, show, download.format(deb=deb))
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "portraits"
    assert P.main(["--out", str(out), "--size", "64"]) == 1
    assert words in _one_line_error(capsys)
    assert not (out / "source.json").exists() and not list(out.glob("*/images"))


def test_no_apt_and_bad_debs_are_one_line(deb, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert P.main(["--out", str(tmp_path / "a")]) == 1
    err = _one_line_error(capsys)
    assert "apt-get not found" in err and "--deb FILE" in err
    not_a_deb = tmp_path / "x.deb"
    not_a_deb.write_bytes(b"hello")
    assert P.main(["--deb", str(not_a_deb), "--out", str(tmp_path / "b")]) == 1
    assert "not a .deb" in _one_line_error(capsys)
    other = make_deb(tmp_path / "other.deb", {"./usr/share/doc/x/copyright": b"x"})
    assert P.main(["--deb", str(other), "--out", str(tmp_path / "c")]) == 1
    assert "no portraits" in _one_line_error(capsys)
    truncated = tmp_path / "cut.deb"
    truncated.write_bytes(deb.read_bytes()[:-200])
    assert P.main(["--deb", str(truncated), "--out", str(tmp_path / "d")]) == 1
    assert "damaged" in _one_line_error(capsys)


def test_package_member_names():
    assert P.wanted(f"{CORE}/drakes/burner.png") == "drakes__burner.png"
    assert P.wanted(f"{TUTORIAL}/konrad.png") == "tutorial__konrad.png"
    assert P.wanted(f"{CORE}/ARTISTS") == "ARTISTS"
    assert P.wanted("./usr/share/games/wesnoth/1.16/images/portraits-nope/a.png") is None
    assert P.wanted("./usr/share/games/wesnoth/1.16/data/core/images/units/a.png") is None
