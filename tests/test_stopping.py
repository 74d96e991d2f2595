"""Stopping well: SIGINT/SIGTERM finish the step, save, exit 0 and print the resume command."""
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_train_args
from fileio import CheckpointDir, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_prints_resume_command(demo_root, tmp_path, sig):
    args = tiny_train_args(demo_root, tmp_path, TEST_IMAGE_DIR=None, TEST_SKETCH_DIR=None, ITERATION_AE=100000,
                           LOG_INTERVAL=1, SAVE_MODEL_INTERVAL=100000, SAVE_IMAGE_INTERVAL=100000,
                           TRAIN_AE_ONLY=True, TRIAL_NAME="stop")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "runs" / "stop" / "ae" / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2):  # a few steps done
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "finishing this step, saving a checkpoint" in err
    last = CheckpointDir(tmp_path / "runs" / "stop" / "ae" / "checkpoints").last()
    stopped_at = load_checkpoint(last, kind="ae")["iteration"]
    assert stopped_at >= 2

    command = err.split("resume with:")[1].strip().splitlines()[0]
    resume = shlex.split(command)[2:] + ["ITERATION_AE=" + str(stopped_at + 2)]  # after "python train.py"
    done = subprocess.run([sys.executable, "train.py", *resume], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {last}" in done.stdout + done.stderr
    assert load_checkpoint(CheckpointDir(last.parent).last())["iteration"] == stopped_at + 2
