"""torchrun with 2 CPU processes (gloo): identical weights on every rank, train.py, resume."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, tiny_train_args
from fileio import CheckpointDir, load_checkpoint
from models import ResBlkG
from stages import runtime_for
from training import to_sync_batchnorm
from devices import DeviceError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _torchrun(*args, timeout=300):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_ranks_keep_identical_weights(demo_root, tmp_path):
    out = _torchrun(HERE / "ddp_worker.py", demo_root, tmp_path)
    assert "identical on 2 ranks" in out


def test_nan_skip_is_agreed_by_every_rank():
    """NAN_POLICY=skip under torchrun: a NaN loss on one rank skips the step on both (the averaged
    gradients are NaN everywhere); before, the other rank stepped and the weights diverged."""
    out = _torchrun(HERE / "nan_ddp_worker.py")
    assert out.count("agreed on 2 ranks") == 2


def test_sync_batchnorm_conversion_keeps_parametrization_and_keys():
    """SYNC_BN swaps every BatchNorm (spectral-normed ones included) for SyncBatchNorm with the same
    state-dict keys and the same eval outputs (the multi-GPU run itself needs CUDA)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(ResBlkG(8), torch.nn.BatchNorm2d(8)).eval()
    x = torch.randn(2, 8, 4, 4)
    keys, expected = set(net.state_dict()), net(x)
    converted = to_sync_batchnorm(net).eval()
    kinds = {type(m).__name__ for m in converted.modules() if "BatchNorm" in type(m).__name__}
    assert kinds == {"ParametrizedSyncBatchNorm", "SyncBatchNorm"}
    assert set(converted.state_dict()) == keys and torch.allclose(converted(x), expected)


def test_sync_batchnorm_on_cpu_is_a_clear_error(demo_root, tmp_path):
    with pytest.raises(DeviceError, match="SYNC_BN=true needs CUDA"):
        runtime_for(tiny_config(demo_root, tmp_path, SYNC_BN=True))


def test_train_py_under_torchrun_writes_once_and_resumes(demo_root, tmp_path):
    args = tiny_train_args(demo_root, tmp_path, TEST_IMAGE_DIR=None, TEST_SKETCH_DIR=None, ITERATION_AE=2,
                           ITERATION_GAN=2, TRIAL_NAME="ddp")
    out = _torchrun(ROOT / "train.py", *args)
    assert out.count("run folder:") == 1  # rank 0 prints and writes
    run = tmp_path / "runs" / "ddp"
    assert load_checkpoint(CheckpointDir(run / "gan" / "checkpoints").last())["iteration"] == 2
    _torchrun(ROOT / "train.py", f"SAVE_FOLDER={tmp_path / 'runs'}", "TRIAL_NAME=ddp", "RESUME=true",
              "ITERATION_GAN=3")  # (the AE stage is over once the GAN stage has started: train.check_resume)
    assert load_checkpoint(CheckpointDir(run / "ae" / "checkpoints").last())["iteration"] == 2
    assert load_checkpoint(CheckpointDir(run / "gan" / "checkpoints").last())["iteration"] == 3
