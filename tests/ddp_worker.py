"""Run under torchrun by test_distributed.py: a few AE and GAN steps, then every rank checks that
its parameters equal every other rank's. argv: demo_root out_dir [KEY=value ...]"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from config import parse_overrides  # noqa: E402
from conftest import tiny_config  # noqa: E402
from datasets import pair_folders  # noqa: E402
from models import AE_NETWORKS, AutoEncoder  # noqa: E402
from stages import AEStage, GANStage, runtime_for  # noqa: E402
from training import NanGuard  # noqa: E402


def assert_identical(nets: dict, rank: int) -> int:
    """all_gather a flat copy of each network's parameters; every rank compares with rank 0's."""
    checked = 0
    for name, net in nets.items():
        flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        for other, values in enumerate(gathered):
            if not torch.equal(values, gathered[0]):
                raise AssertionError(f"rank {rank}: {name} differs between rank 0 and rank {other}")
        checked += flat.numel()
    return checked


def main():
    demo_root, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = tiny_config(demo_root, out, **parse_overrides(sys.argv[3:]))
    runtime = runtime_for(cfg)
    assert runtime.world_size == 2 and dist.is_initialized()
    pairs = pair_folders(cfg.IMAGE_DIR, cfg.SKETCH_DIRS)
    guard = NanGuard("stop", runtime.device)

    ae = AEStage(cfg, runtime, pairs, pairs)
    ae.restart_data(0)
    first = next(iter(ae.paired_batches))["index"]
    indices = [torch.empty_like(first) for _ in range(2)]
    dist.all_gather(indices, first)
    assert not set(indices[0].tolist()) & set(indices[1].tolist()), "ranks must see different images"
    ae.restart_data(0)
    for it in range(3):
        ae.step(it, guard)
    n = assert_identical(ae.networks(), runtime.rank)

    trained = AutoEncoder(cfg.NFC, cfg.IM_SIZE_AE)  # the AE stage's networks, as the GAN stage takes them
    for name in AE_NETWORKS:
        getattr(trained, name).load_state_dict(getattr(ae, name).state_dict())
    gan = GANStage(cfg, runtime, pairs, pairs, trained)
    gan.restart_data(0)
    for it in range(2):
        gan.step(it, guard)
    n += assert_identical({"generator": gan.generator, "discriminator": gan.discriminator,
                           "ema": gan.ema.net}, runtime.rank)
    if runtime.rank == 0:
        print(f"identical on 2 ranks: {n} parameters", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
