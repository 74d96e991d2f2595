"""fileio.py: atomic writes survive a kill, unsafe checkpoints are refused, rotation, JSON lines."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fileio import CheckpointDir, CheckpointError, JsonlLog, load_checkpoint, save_checkpoint, save_grid

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
    """A process SIGKILLed while writing a large checkpoint: the old one still loads, nothing half-written."""
    ckpts = CheckpointDir(tmp_path, keep=3)
    ckpts.save({"kind": "ae", "iteration": 1, "w": torch.zeros(3)}, 1)
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from fileio import CheckpointDir
        print("saving", flush=True)
        CheckpointDir({str(tmp_path)!r}, keep=3).save({{"kind": "ae", "iteration": 2, "w": torch.randn(60_000_000)}}, 2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    time.sleep(0.3)  # inside torch.save of ~240 MB
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = CheckpointDir(tmp_path).last()
    assert load_checkpoint(last, kind="ae")["iteration"] in (1, 2)  # never a broken file
    assert not (tmp_path / "ckpt_00000002.pt").exists() or load_checkpoint(tmp_path / "ckpt_00000002.pt")


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
    from PIL import Image
    img = Image.open(tmp_path / "g.png")
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (3 * 10 + 2, 2 * 10 + 2)
    assert not list(tmp_path.glob(".*tmp"))
