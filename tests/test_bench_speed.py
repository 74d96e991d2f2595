"""bench_speed.py and reference_execution.py: an end-to-end run at a tiny size, the reference-style
datasets and update loops, the loss check."""
import json
import random

import pytest
import torch
import torch.nn as nn

import bench_speed as B
import config as C
import reference_execution as R
from datasets import pair_folders
from demo_data import make_demo_data
from training import EMA, NanGuard, Runtime, adam, optimizer_step


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """16 demo-data pairs at 80 px (images and their exact line drawings), in DIR/train/."""
    return make_demo_data(tmp_path_factory.mktemp("bench_data"), 16, 0, 80, seed=1, progress=False) / "train"


def test_benchmark_runs_end_to_end_and_writes_json(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    rc = B.main(["--stages", "ae,gan", "--size-ae", "64", "--size-gan", "64", "--nfc", "8",
                 "--batch-ae", "4", "--batch-gan", "4", "--steps", "2", "--warmup", "1", "--workers", "0",
                 "--loader-batches", "1", "--device", "cpu", "--data", str(data_dir), "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert {"machine", "versions", "settings", "stages", "loader", "command"} <= set(res)
    assert res["machine"]["cpu_count"] >= 1 and res["versions"]["torch"] == torch.__version__
    assert res["settings"]["lpips"] is False and res["settings"]["data"]["n_pairs"] == 16
    assert res["all_loss_checks_passed"] is True
    for kind, images_per_step in (("ae", 8), ("gan", 4)):  # the AE's two steps each see a batch
        st = res["stages"][kind]
        assert set(st["modes"]) == {"reference", "fast"}
        for mode in st["modes"].values():
            assert mode["img_per_s"] > 0 and mode["images_per_step"] == images_per_step
            assert mode["peak_mem_bytes"] is None and mode["mfu"] is None  # CPU: n/a
        assert st["modes"]["reference"]["optimizer"] == "Adam(foreach=False, fused=False)"
        assert st["modes"]["fast"]["optimizer"] == "Adam(foreach=True, fused=None)"
        assert st["ratio_fast_over_reference"] > 0 and st["flops_per_step"] > 0
        check = st["loss_check"]
        assert check["passed"] and check["tolerance"] == B.TOL_FP32  # CPU: both fp32
        assert all(v["pass"] for v in check["losses"].values()) and len(check["losses"]) >= 5
        ld = res["loader"][kind]
        assert ld["reference_style_pil"]["img_per_s"] > 0 and ld["ours_total_serial"]["img_per_s"] > 0
        assert ld["ratio_ours_over_reference"] > 0


def test_reference_self_supervised_dataset_returns_the_reference_tensors(data_dir):
    pairs = pair_folders(data_dir / "images", [data_dir / "sketches"])
    ds = R.reference_dataset("ae", pairs, 64)
    torch.manual_seed(0)
    random.seed(0)
    erased_any = False
    for i in range(6):
        img_rd, img, skt, bold, erased, erased_bold, idx = ds[i]
        assert idx == i
        assert img_rd.shape == img.shape == (3, 64, 64)
        assert skt.shape == bold.shape == erased.shape == erased_bold.shape == (1, 64, 64)
        for t in (img_rd, img, skt, bold, erased, erased_bold):
            assert t.dtype == torch.float32 and t.min() >= -1 and t.max() <= 1
        assert (bold <= skt + 1e-6).all() and bold.mean() < skt.mean()  # strokes thicker (darker)
        assert (erased >= skt - 1e-6).all() and (erased_bold >= bold - 1e-6).all()  # erasing paints white
        erased_any |= bool((erased > skt).any() or (erased_bold > bold).any())
    assert erased_any


def test_reference_paired_multi_dataset_shapes(data_dir):
    pairs = pair_folders(data_dir / "images", [data_dir / "sketches"])
    img, s1, s2, s3 = R.reference_dataset("gan", pairs, 64)[0]
    assert img.shape == (3, 64, 64) and s1.shape == s2.shape == s3.shape == (1, 64, 64)
    assert img.min() >= -1 and img.max() <= 1


def test_loss_check_flags_a_mismatch():
    ok = B.check_losses({"a": 1.0, "b": 0.0}, {"a": 1.00001, "b": 0.0}, B.TOL_FP32)
    assert ok["passed"]
    bad = B.check_losses({"a": 1.0, "b": 0.0}, {"a": 1.01, "b": 0.0}, B.TOL_FP32)
    assert not bad["passed"] and not bad["losses"]["a"]["pass"] and bad["losses"]["b"]["pass"]
    assert B.check_losses({"a": 1.0}, {"a": 1.04}, B.TOL_BF16)["passed"]
    assert not B.check_losses({"a": 1.0}, {"a": float("nan")}, B.TOL_BF16)["passed"]


def test_reference_loops_update_as_ours_one_parameter_at_a_time():
    """Runtime.reference_loops: per-parameter Adam, zero_grad filling zeros, per-parameter EMA;
    the numbers are ours (the modes differ in execution only)."""
    cfg = C.preset("demo")
    ours = Runtime(torch.device("cpu"))
    reference = R.runtime(ours)
    assert reference.reference_loops and not reference.bf16 and not ours.reference_loops
    nets = {}
    for name, rt in (("ours", ours), ("reference", reference)):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        frozen = nn.Linear(4, 1)  # reached by the first loss only: later its gradient stays as zero_grad left it
        opt, other = adam(net.parameters(), 1e-2, cfg, rt), adam(frozen.parameters(), 1e-2, cfg, rt)
        ema = EMA(net, 0.9, foreach=not rt.reference_loops)
        assert opt.defaults["foreach"] is (False if rt.reference_loops else True)
        for it in range(3):
            x = torch.randn(16, 4, generator=torch.Generator().manual_seed(it))
            loss = net(x).pow(2).mean() + (frozen(x).mean() if it == 0 else 0)
            optimizer_step(loss, [opt, other], rt, NanGuard("stop", rt.device), it, {"loss": loss})
            ema.update(net)
        nets[name] = (net, ema.net, frozen)
        assert (frozen.weight.grad is None) is (not rt.reference_loops)  # zero_grad: None (ours) vs zeros
    for a, b in zip(nets["ours"][0].parameters(), nets["reference"][0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(nets["ours"][1].parameters(), nets["reference"][1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
