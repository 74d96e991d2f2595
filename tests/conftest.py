"""Shared fixtures: a small copy of the built-in demo data, tiny training configs, a cheap FID extractor."""
from pathlib import Path

import pytest
import torch

import config as C
import weights
from datasets import pair_folders
from demo_data import make_demo_data


class Pooled(torch.nn.Module):
    """A cheap stand-in for the FID Inception: 2x2 average pool of the 299 input -> 12 features."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


@pytest.fixture
def cheap_inception(monkeypatch):
    """weights.fid_inception() -> Pooled (no weights file, fast 12-d Frechet distances)."""
    monkeypatch.setattr(weights, "fid_inception", lambda allow_download=True: Pooled())


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """32 training + 8 held-out demo images at 128 px with their exact line drawings."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, n_train=32, n_test=8, size=128, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def demo_pairs(demo_root):
    return pair_folders(demo_root / "train" / "images", [demo_root / "train" / "sketches"])


def tiny_config(demo_root: Path, tmp_path: Path, **overrides) -> C.Config:
    """The demo preset shrunk to seconds: 64 px AE, narrow widths, small batches, no workers."""
    values = dict(
        IMAGE_DIR=str(demo_root / "train" / "images"),
        SKETCH_DIRS=(str(demo_root / "train" / "sketches"),),
        TEST_IMAGE_DIR=str(demo_root / "test" / "images"),
        TEST_SKETCH_DIR=str(demo_root / "test" / "sketches"),
        NFC=8, IM_SIZE_AE=64, IM_SIZE_GAN=64, IM_SIZE_D=64, NBR_CLS=8, SUBSET_PASSES=1,
        BATCH_SIZE_AE=4, BATCH_SIZE_GAN=4, ITERATION_AE=4, ITERATION_GAN=3, GRID_N=4,
        LOG_INTERVAL=2, SAVE_IMAGE_INTERVAL=2, SAVE_MODEL_INTERVAL=2, DATALOADER_WORKERS=0,
        SAVE_FOLDER=str(tmp_path / "runs"), DEVICE="cpu", MI_HIDDEN=16,
        BF16=False)  # fp32 on every CI machine, native bf16 or not (bf16: tests/test_bench_speed.py)
    values.update(overrides)
    return C.preset("demo", **values)


def tiny_train_args(demo_root: Path, tmp_path: Path, **overrides) -> list[str]:
    """train.py's command line for tiny_config(...): DATA_NAME=demo and every KEY=value that differs."""
    cfg, demo = tiny_config(demo_root, tmp_path, **overrides), C.preset("demo")

    def text(value) -> str:
        if isinstance(value, bool) or value is None:
            return str(value).lower()
        return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)

    return ["DATA_NAME=demo", *(f"{k}={text(v)}" for k, v in cfg.to_dict().items() if v != getattr(demo, k))]
