"""bench_speed.py: its settings grammar, the step-1 loss check, bf16 parity on the CPU, and an end-to-end
run at a tiny size (the timing itself is a benchmark, not a test)."""
import json

import pytest

import bench_speed as B
import config as C
from conftest import tiny_train_args


def test_settings_are_tokens():
    s = B.parse_setting("bf16,cl,threads=1,passive")
    assert s["bf16"] and s["cl"] and s["passive"] and s["threads"] == 1 and not s["fp32"] and s["name"] == "bf16,cl,threads=1,passive"
    assert B.parse_setting("fp32")["threads"] is None
    for bad in ("bf16,fast", "threads=0", "threads=x", "fp32,bf16"):
        with pytest.raises(ValueError):
            B.parse_setting(bad)


def test_loss_check_tolerances():
    assert B.loss_check({"a": 1.0, "b": 0.0}, {"a": 1.00001, "b": 0.0}, B.FP32_TOLERANCE)
    assert not B.loss_check({"a": 1.0}, {"a": 1.01}, B.FP32_TOLERANCE)
    assert B.loss_check({"a": 1.0}, {"a": 1.04}, B.BF16_TOLERANCE)
    assert not B.loss_check({"a": 1.0}, {"b": 1.0}, B.BF16_TOLERANCE)  # another set of losses


def _job(demo_root, tmp_path, stage: str, setting: str, steps: int = 3) -> dict:
    args = tiny_train_args(demo_root, tmp_path, NFC=8, IM_SIZE_GAN=128, IM_SIZE_D=128)[1:]
    return {"preset": "demo", "device": "cpu", "overrides": args, "steps": steps, "warmup": 1, "stage": stage,
            "setting": setting}


@pytest.mark.parametrize("stage", ["ae", "gan"])
def test_bf16_autocast_on_the_cpu_keeps_the_first_steps_losses(demo_root, tmp_path, stage):
    """The parity check behind BF16=true on CPUs with native bf16: step 1 from the same weights and batch."""
    fp32 = B.measure(_job(demo_root, tmp_path, stage, "fp32"))
    bf16 = B.measure(_job(demo_root, tmp_path, stage, "bf16"))
    assert set(fp32["step1"]) == set(bf16["step1"]) and len(fp32["step1"]) >= 5
    assert B.loss_check(fp32["step1"], bf16["step1"], B.BF16_TOLERANCE), (fp32["step1"], bf16["step1"])
    assert fp32["step1"] != bf16["step1"]  # bf16 really ran
    again = B.measure(_job(demo_root, tmp_path, stage, "fp32,ref"))
    assert B.loss_check(fp32["step1"], again["step1"], B.FP32_TOLERANCE)  # the reference's updates: same step 1


def test_benchmark_runs_end_to_end_and_writes_json(demo_root, tmp_path, capsys):
    out = tmp_path / "bench.json"
    overrides = tiny_train_args(demo_root, tmp_path, NFC=8)[1:]
    rc = B.main([*overrides, "--settings", "fp32", "bf16,threads=1", "--steps", "2", "--warmup", "1",
                 "--rounds", "1", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cpu_count"] >= 1 and "native_bf16_cpu" in result["machine"]
    assert set(result["results"]) == {"ae fp32", "gan fp32", "ae bf16,threads=1", "gan bf16,threads=1"}
    for name, row in result["results"].items():
        assert row["s_per_step"] > 0 and row["loss_check"] and len(row["rounds"]) == 1
        assert row["rounds"][0]["threads"] == (1 if "threads=1" in name else row["rounds"][0]["threads"])
    assert result["results"]["ae fp32"]["speedup"] == 1.0
    printed = capsys.readouterr().out
    assert "| ae bf16,threads=1 " in printed and "pass" in printed


def test_bad_settings_are_refused_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        B.main(["--settings", "bf16,turbo"])
    assert exit_info.value.code == 2 and "turbo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        B.main(["NFC=7"])
    assert "NFC" in capsys.readouterr().err
    assert C.preset("demo").NFC == 8
