"""The CPU thread count chosen from the cores other processes leave free at start."""
import torch

import devices


def test_busy_cores_is_the_non_idle_share_of_every_core():
    before = [100, 0, 50, 800, 50, 0, 0, 0, 0, 0]
    after = [150, 0, 50, 850, 50, 0, 0, 0, 0, 0]  # 50 busy + 50 idle jiffies
    assert devices.busy_cores(before, after, cores=2) == 1.0
    assert devices.busy_cores(before, before, cores=2) == 0.0  # no time passed: nothing known, nothing busy


def _fake_proc(monkeypatch, busy_share: float, cores: int = 2):
    samples = iter([[0] * 8, [int(100 * busy_share), 0, 0, 100 - int(100 * busy_share), 0, 0, 0, 0]])
    monkeypatch.setattr(devices, "_cpu_jiffies", lambda: next(samples))
    monkeypatch.setattr(devices.os, "cpu_count", lambda: cores)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_one_busy_core_of_two_leaves_one_thread(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _fake_proc(monkeypatch, busy_share=0.5)  # one of two cores busy
        line = devices.fit_threads_to_free_cores(interval=0)
        assert torch.get_num_threads() == 1 and "1 of 2 cores busy" in line and "OMP_NUM_THREADS" in line
    finally:
        torch.set_num_threads(threads)


def test_an_idle_machine_or_the_users_choice_keeps_the_threads(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _fake_proc(monkeypatch, busy_share=0.2)  # a fifth of a core's work: noise, not a busy process
        assert devices.fit_threads_to_free_cores(interval=0) is None and torch.get_num_threads() == 2
        _fake_proc(monkeypatch, busy_share=1.0)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert devices.fit_threads_to_free_cores(interval=0) is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
