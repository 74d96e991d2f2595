"""Seeing training: loss-curve PNGs (while training and `plot_log.py RUN`), TensorBoard, documented log keys."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import plot_log
import train
from conftest import tiny_train_args
from plot_log import StageMonitor

ROOT = Path(__file__).resolve().parents[1]


def _write_log(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(n: int, fid: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        out.append({"iter": 10 * i + 9, "d_loss": 2.0 - 0.1 * i, "g_rec": 1.0 / (i + 1), "img_per_s": 5.0,
                    "skipped_files": 0})
        if fid and i % 2:
            out.append({"iter": 10 * i + 9, "fid": 100.0 - i, "fid_mismatched": 110.0 - i, "fid_n": 50})
    return out


def _mean_colour(png: Path) -> np.ndarray:
    with Image.open(png) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64)


def test_panels_one_per_loss_and_one_for_fid():
    groups = plot_log.panels(_records(4, fid=True))
    assert list(groups) == ["d_loss", "g_rec", "FID (held-out)"]      # bookkeeping keys are not drawn
    assert set(groups["FID (held-out)"]) == {"fid", "fid_mismatched"}
    xs, ys = groups["g_rec"]["g_rec"]
    assert xs == [9, 19, 29, 39] and ys == [1.0, 0.5, pytest.approx(1 / 3), 0.25]


@pytest.mark.parametrize("n_panels", [1, 3, 5, 8])
def test_every_panel_is_a_group_and_no_cell_is_left_empty(n_panels):
    """Issue 25 item 17: the cells of the grid that hold no group are hidden, the last one included."""
    records = [{"iter": i, **{f"loss{k}": float(i + k) for k in range(n_panels)}} for i in range(3)]
    visible = [ax for ax in plot_log.figure(records).axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == [f"loss{k}" for k in range(n_panels)]


def test_plot_log_draws_every_stage_of_a_run_and_says_what_is_wrong(tmp_path, capsys):
    run = tmp_path / "run"
    _write_log(run / "ae" / "log.jsonl", _records(5))
    log = _write_log(run / "gan" / "log.jsonl", _records(6, fid=True))
    with open(log, "a") as f:
        f.write('{"iter": 99, "d_lo')                                   # a line cut by a crash is left out
    assert plot_log.main([str(run)]) == 0
    printed = capsys.readouterr().out
    for stage, n, panels in (("ae", 5, 2), ("gan", 9, 3)):     # gan: d_loss, g_rec and FID
        png = run / stage / "loss_curves.png"
        assert f"{png} ({n} records)" in printed
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width == round(3.2 * 80 * panels)   # the panels side by side
        assert _mean_colour(png).std() > 10                            # something is drawn, not a blank page
    assert plot_log.main([str(log), "--out", str(tmp_path / "g.png")]) == 0 and (tmp_path / "g.png").is_file()
    assert plot_log.main([str(tmp_path / "nowhere")]) == 1
    assert plot_log.main([str(run), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "error: no such file or folder" in err and "--out takes one log" in err and "Traceback" not in err


def test_curves_are_redrawn_at_log_writes_within_their_time_budget(tmp_path):
    stage = tmp_path / "run" / "ae"
    log = stage / "log.jsonl"
    png = stage / plot_log.CURVES_FILE
    every_time = StageMonitor(stage, budget=float("inf"))   # no time limit: every log write redraws
    records = _records(3)
    for i, record in enumerate(records):
        _write_log(log, records[:i + 1])
        before = png.stat().st_ino if png.exists() else None
        every_time.log(record)
        assert png.stat().st_ino != before                     # a new file (written atomically)
    rarely = StageMonitor(stage, budget=1e-9)            # after one drawing, the next waits "forever"
    png.unlink()
    rarely.log(records[-1])
    assert png.exists()
    first = png.stat().st_ino
    _write_log(log, records + _records(5)[3:])
    rarely.log({"iter": 49})
    assert png.stat().st_ino == first                     # not redrawn: over budget
    rarely.close()
    assert png.stat().st_ino != first                     # the end of the stage always draws
    StageMonitor(tmp_path / "rank1", enabled=False).log(records[0])
    assert not (tmp_path / "rank1").exists()


def test_nothing_of_tensorboard_is_imported_when_it_is_off(tmp_path):
    _write_log(tmp_path / "ae" / "log.jsonl", _records(2))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import torch, train; from plot_log import StageMonitor; "
            "m = StageMonitor(sys.argv[2], 'none'); m.log({'iter': 19, 'd_loss': 1.0}); m.close(); "
            "print(sorted(k for k in sys.modules if 'tensorboard' in k))")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path / "ae")], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]" and (tmp_path / "ae" / "loss_curves.png").is_file()


@pytest.fixture
def fid_in_tmp(cheap_inception, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the FID statistics cache (fid_stats/) goes here


def test_a_run_logs_every_documented_key_draws_curves_and_feeds_tensorboard(demo_root, tmp_path, fid_in_tmp):
    pytest.importorskip("tensorboard", reason="LOGGER=tensorboard needs the optional tensorboard package "
                                              "(requirements-dev.txt installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # optional: after the skip
    args = tiny_train_args(demo_root, tmp_path, TRIAL_NAME="tb", LOGGER="tensorboard", W_GREY=1.0, W_GAN_GREY=1.0,
                           W_MI=0.1, ITERATION_GAN=4, FID_INTERVAL=2, FID_N_SAMPLES=6)
    assert train.main(args) == 0
    run = tmp_path / "runs" / "tb"
    logged = set()
    for stage in ("ae", "gan"):
        records = plot_log.read_log(run / stage / "log.jsonl")
        logged |= {k for r in records for k in r}
        assert (run / stage / "loss_curves.png").is_file()
        events = EventAccumulator(str(run / stage / "tensorboard"), size_guidance={"images": 0}).Reload()
        tags = events.Tags()
        loss_keys = {k for r in records for k in r if k not in plot_log.BOOKKEEPING and not k.startswith("fid")}
        assert {f"loss/{k}" for k in loss_keys} <= set(tags["scalars"]), tags["scalars"]
        assert [e.step for e in events.Scalars("train/img_per_s")] == [r["iter"] for r in records if "img_per_s" in r]
        assert tags["images"] == ["samples"] and len(events.Images("samples")) == len(list((run / stage / "images").iterdir()))
    assert {"fid", "fid_mismatched", "fid_n", "grey", "mi", "club_nll", "g_grey"} <= logged
    assert logged <= documented_log_keys(), logged - documented_log_keys()


def documented_log_keys() -> set[str]:
    """The keys listed in docs/training.md's log.jsonl table."""
    doc = (ROOT / "docs" / "training.md").read_text()
    section = doc.split("## Every key of log.jsonl", 1)[1].split("\n#", 1)[0]
    return {key for row in section.splitlines() if row.startswith("| `") for key in re.findall(r"`(\w+)`", row.split("|")[1])}


def test_tensorboard_logger_without_the_package_is_a_one_line_error(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # as if tensorboard were not installed
    assert train.main(tiny_train_args(demo_root, tmp_path, LOGGER="tensorboard", TRIAL_NAME="x")) == 1
    assert "LOGGER=tensorboard needs the tensorboard package" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "x").exists()
