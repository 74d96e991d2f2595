"""Run under torchrun by test_distributed.py: NAN_POLICY=skip with a NaN loss on rank 1 only. Both
ranks must skip that step and keep identical weights. Prints "agreed on 2 ranks" on success."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config as C  # noqa: E402
from training import NanGuard, adam, join_torchrun, optimizer_step  # noqa: E402


def main():
    runtime = join_torchrun(torch.device("cpu"))
    assert runtime.world_size == 2
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = adam(net.parameters(), 0.1, C.preset("demo").BETAS, runtime.device)
    guard = NanGuard("skip", runtime.device, distributed=runtime.distributed)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.ones(4, 3)
    for it in range(2):
        loss = net(x).pow(2).mean()
        if it == 0 and runtime.rank == 1:
            loss = loss * float("nan")
        optimizer_step(loss, [opt], runtime, guard, it, {"loss": loss})
        if it == 0:
            assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before)), f"rank {runtime.rank} stepped"
    assert guard.skipped == 1, (runtime.rank, guard.skipped)
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]) and not torch.equal(flat, torch.cat([b.reshape(-1) for b in before]))
    print(f"rank {runtime.rank}: agreed on 2 ranks")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
