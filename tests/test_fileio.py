"""fileio.py: atomic writes survive a kill, unsafe or damaged checkpoints are refused, rotation, JSON lines."""
import builtins
import errno
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import fileio
from fileio import (CHECKPOINT_FORMAT, CheckpointDir, CheckpointError, JsonlLog, OutputError, check_writable,
                    load_checkpoint, remove_stale_temporaries, save_checkpoint, save_grid)

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoint_round_trip(tmp_path):
    obj = {"kind": "ae", "iteration": 3, "w": torch.arange(5.0), "config": {"A": [1, 2], "B": None}}
    save_checkpoint(obj, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt", kind="ae")
    assert torch.equal(back["w"], obj["w"]) and back["config"] == obj["config"]
    with pytest.raises(CheckpointError, match="is a 'ae' checkpoint, expected 'gan'"):
        load_checkpoint(tmp_path / "c.pt", kind="gan")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"kind": "ae", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused: the file holds pickled Python objects"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"])
def test_corrupt_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rotation_keeps_newest_and_pointer(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep=2)
    for it in (10, 20, 30):
        ckpts.save({"kind": "ae", "iteration": it}, it)
    names = sorted(p.name for p in tmp_path.glob("ckpt_*.pt"))
    assert names == ["ckpt_00000020.pt", "ckpt_00000030.pt"]
    assert ckpts.last().name == "ckpt_00000030.pt"
    (tmp_path / "last.txt").unlink()  # a lost pointer falls back to the highest number
    assert ckpts.last().name == "ckpt_00000030.pt"


def test_killed_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    """A process SIGKILLed in the middle of writing a checkpoint: the old one still loads, nothing half-written."""
    ckpts = CheckpointDir(tmp_path, keep=3)
    ckpts.save({"kind": "ae", "iteration": 1, "w": torch.zeros(3)}, 1)
    # the child's checkpoint file blocks half-way through writing the 16 MB tensor, so the kill lands inside it
    script = textwrap.dedent(f"""
        import builtins, sys, time, torch
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        import fileio
        from test_fileio import _FullDisk

        class Blocking(_FullDisk):
            def write(self, data):
                if len(data) > 1_000_000:
                    self.f.write(memoryview(data)[:len(data) // 2])
                    self.f.flush()
                    print("blocked", self.f.name, flush=True)
                    time.sleep(600)
                return self.f.write(data)

        def blocking_open(file, mode="r", *args, **kwargs):
            f = builtins.open(file, mode, *args, **kwargs)
            return Blocking(f) if "w" in mode else f

        fileio.open = blocking_open
        checkpoint = {{"kind": "ae", "iteration": 2, "w": torch.randn(4_000_000)}}
        fileio.CheckpointDir({str(tmp_path)!r}, keep=3).save(checkpoint, 2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        word, partial = proc.stdout.readline().split()
        assert word == "blocked" and Path(partial).parent == tmp_path
        assert 8_000_000 <= Path(partial).stat().st_size < 16_000_000  # the write is under way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "ckpt_00000002.pt").exists()
    last = CheckpointDir(tmp_path).last()
    assert last.name == "ckpt_00000001.pt" and load_checkpoint(last, kind="ae")["iteration"] == 1
    assert remove_stale_temporaries(tmp_path) == 1 and not Path(partial).exists()  # the half file, and only it


def test_jsonl_truncate_after(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl")
    for it in range(5):
        log.write({"iter": it, "loss": it * 0.5})
    with open(log.path, "a") as f:
        f.write('{"iter": 9, "lo')  # a line cut by a crash
    log.truncate_after(2)
    assert [r["iter"] for r in log.read()] == [0, 1, 2]


def test_save_grid_writes_png(tmp_path):
    save_grid(torch.rand(6, 1, 8, 8) * 2 - 1, tmp_path / "g.png", nrow=3)
    img = Image.open(tmp_path / "g.png")
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (3 * 10 + 2, 2 * 10 + 2)
    assert not list(tmp_path.glob(".*tmp"))


# --------------------------------------------------------------------------- red-team cases (lost work)

def test_pickle_refusal_says_why_and_never_suggests_weights_only_false(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"kind": "ae", "payload": Evil()}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert "posix.system" in message and "can run any code" in message and "\n" not in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def _tensor_offset(path: Path) -> int:
    """Where the bytes of the largest tensor start inside a torch.save zip (stored, not compressed)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.file_size >= 2048 and info.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len


def test_a_checkpoint_with_damaged_tensor_bytes_is_refused_naming_the_file(tmp_path):
    obj = {"kind": "gan", "iteration": 7, "state": {"w": torch.randn(4096)}}
    save_checkpoint(obj, tmp_path / "good.pt")
    assert torch.equal(load_checkpoint(tmp_path / "good.pt")["state"]["w"], obj["state"]["w"])
    raw = bytearray((tmp_path / "good.pt").read_bytes())
    start = _tensor_offset(tmp_path / "good.pt") + 1000
    raw[start:start + 64] = bytes(64)  # 64 zeroed bytes inside the tensor data: still a valid zip and pickle
    (tmp_path / "damaged.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "damaged.pt")
    assert "damaged.pt: damaged" in str(e.value) and "checksum" in str(e.value)


def test_checkpoints_of_another_format_are_refused_in_one_line(tmp_path):
    save_checkpoint({"kind": "ae", "format": 1, "iteration": 3}, tmp_path / "ok.pt")  # the writer stamps its format
    assert load_checkpoint(tmp_path / "ok.pt", kind="ae")["format"] == CHECKPOINT_FORMAT
    # older layouts (no format number, or a smaller one) and newer ones: the format is named, not "damaged"
    for name, body, words in (("old.pt", {"kind": "ae", "iteration": 3}, "older version of this code"),
                              ("two.pt", {"kind": "ae", "format": 2}, "older version of this code"),
                              ("new.pt", {"kind": "ae", "format": CHECKPOINT_FORMAT + 1, "checksum": "sha256:new"},
                               "update the code to load it")):
        torch.save(body, tmp_path / name)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / name, kind="ae")
        assert str(e.value).startswith(f"{tmp_path / name}: checkpoint format ") and words in str(e.value)
        assert "\n" not in str(e.value)


def test_non_finite_weights_are_never_saved_nor_loaded(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep=1)
    good = ckpts.save({"kind": "ae", "iteration": 2, "w": torch.ones(3)}, 2)
    with pytest.raises(CheckpointError, match=r"iteration 4: the weights hold NaN/Inf \(w\); not saved.*ckpt_00000002"):
        ckpts.save({"kind": "ae", "iteration": 4, "w": torch.tensor([1.0, float("nan"), 0.0])}, 4)
    assert ckpts.last() == good and load_checkpoint(good)["iteration"] == 2  # not pruned by the refused save
    assert not (tmp_path / "ckpt_00000004.pt").exists()
    save_checkpoint({"kind": "gan", "w": torch.tensor([float("inf")])}, tmp_path / "diverged.pt")  # not by CheckpointDir
    with pytest.raises(CheckpointError, match="diverged.pt: holds NaN/Inf values"):
        load_checkpoint(tmp_path / "diverged.pt")


def test_pruning_and_resume_ignore_a_foreign_numbered_file(tmp_path):
    junk = tmp_path / "ckpt_99999999.pt"
    junk.write_text("not ours\n")
    ckpts = CheckpointDir(tmp_path, keep=2, kind="ae")
    for it in (10, 20, 30):
        ckpts.save({"kind": "ae", "iteration": it}, it)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_00000020.pt", "ckpt_00000030.pt",
                                                                   "ckpt_99999999.pt"]
    assert junk.read_text() == "not ours\n"  # neither counted nor deleted
    (tmp_path / "last.txt").unlink()
    assert ckpts.last().name == "ckpt_00000030.pt"  # the newest *valid* numbered checkpoint
    CheckpointDir(tmp_path).save({"kind": "gan", "iteration": 5}, 5)  # another stage's file is not counted either
    assert CheckpointDir(tmp_path, kind="ae").last().name == "ckpt_00000030.pt"


@pytest.mark.parametrize("pointer", ["/etc/passwd", "../outside/ckpt_00000001.pt", "ckpt_00000099.pt"])
def test_a_pointer_outside_the_folder_or_to_nothing_falls_back(tmp_path, pointer):
    (tmp_path / "outside").mkdir()
    save_checkpoint({"kind": "ae", "iteration": 1}, tmp_path / "outside" / "ckpt_00000001.pt")
    ckpts = CheckpointDir(tmp_path / "run", kind="ae")
    ckpts.save({"kind": "ae", "iteration": 20}, 20)
    (tmp_path / "run" / "last.txt").write_text(pointer + "\n")
    assert ckpts.last() == tmp_path / "run" / "ckpt_00000020.pt"


class _FullDisk:
    """A file whose writes fail with ENOSPC: a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_full_disk_while_saving_names_the_folder_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    ckpts = CheckpointDir(tmp_path, keep=1)
    good = ckpts.save({"kind": "ae", "iteration": 2, "w": torch.ones(1000)}, 2)
    monkeypatch.setattr(fileio, "open", lambda file, mode="r", *a, **k: _FullDisk(builtins.open(file, mode, *a, **k))
                        if "w" in mode else builtins.open(file, mode, *a, **k), raising=False)
    with pytest.raises(OutputError) as e:
        ckpts.save({"kind": "ae", "iteration": 4, "w": torch.ones(1000)}, 4)
    assert f"no space left on {tmp_path}" in str(e.value) and "ckpt_00000002.pt" in str(e.value)
    monkeypatch.undo()
    assert ckpts.last() == good and load_checkpoint(good)["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000002.pt", "last.txt"]  # no temporary left


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "ae" / "checkpoints").mkdir(parents=True)
    stale = tmp_path / "ae" / "checkpoints" / ".ckpt_00000002.pt.k3x_9abc.tmp"  # atomic_path's name pattern
    stale.write_bytes(b"half a checkpoint")
    keep = [tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / "ae" / "log.jsonl"]
    for path in keep:
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and all(p.exists() for p in keep)


def test_check_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file")
    check_writable(tmp_path / "new" / "deep" / "out.json")
    check_writable(tmp_path / "new" / "folder", folder=True)
    assert not (tmp_path / "new").exists()  # probes create nothing
    for path, folder, message in ((tmp_path, False, "is a folder"), (blocker, True, "is a file"),
                                  (blocker / "out.json", False, "is a file, not a folder"),
                                  (blocker / "sub", True, "is a file, not a folder")):
        with pytest.raises(OutputError, match=message):
            check_writable(path, folder)


def test_a_locked_folder_refuses_a_second_holder_until_released(tmp_path):
    """flock: a second open of the lock file is refused even in one process, as in another process."""
    run = tmp_path / "a" / "run"
    with fileio.locked_folder(run, "choose another TRIAL_NAME") as held:
        assert held == run and (run / fileio.LOCK_FILE).is_file()
        with pytest.raises(fileio.FolderInUse) as e:
            with fileio.locked_folder(run, "choose another TRIAL_NAME"):
                pass
        assert str(e.value) == f"{run} is in use by another process that has not ended: wait for it, or choose " \
                               f"another TRIAL_NAME"
    with fileio.locked_folder(run):  # released with the block
        pass
    script = f"import fcntl; fcntl.flock(open({str(run / fileio.LOCK_FILE)!r}), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    with fileio.locked_folder(run):  # and held against another process
        assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == 1
    assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == 0


def test_a_missing_checkpoint_names_where_its_kind_lives(tmp_path):
    from checkpoints import find_checkpoint
    with pytest.raises(CheckpointError, match=r"TOM run folder with checkpoints/.*<run>/checkpoints/ckpt_\*\.pt"):
        find_checkpoint(tmp_path / "nowhere", "tom")
    with pytest.raises(CheckpointError, match=r"<run>/gan/checkpoints/ckpt_\*\.pt"):
        find_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no checkpoint in this folder .*TOM run folder"):
        find_checkpoint(tmp_path, "tom")
