"""bench_demo.py: its settings grammar and its table (the timing itself is a benchmark, not a test)."""
import pytest

import bench_demo


def test_settings_are_workers_by_threads():
    assert bench_demo.parse_setting("1x2") == (1, 2)
    assert bench_demo.parse_setting("0x1") == (0, 1)
    for bad in ("2", "1x0", "ax2", "1x2x3", ""):
        with pytest.raises(ValueError, match="WORKERSxTHREADS"):
            bench_demo.parse_setting(bad)


def test_report_gives_each_setting_its_ratio_to_the_first():
    results = {"ae": {"1x2": {"s_per_it": 0.5}, "0x2": {"s_per_it": 0.25}, "compute only (1x2)": {"s_per_it": 0.2}}}
    table = bench_demo.report(results, ["1x2", "0x2"])
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert "| 1.00x" in lines[2] and "| 2.00x" in lines[3] and "| 2.50x" in lines[4]
    assert "4.00" in lines[3]  # iterations per second


def test_bad_settings_are_refused_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_demo.main(["--settings", "1x"])
    assert exit_info.value.code == 2 and "WORKERSxTHREADS" in capsys.readouterr().err
