"""Run under torchrun by test_tom.py: TOM steps on 2 ranks keep identical weights, then the command
line trains a run that rank 0 alone writes. argv: photos sketches out_dir"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ddp_worker import assert_identical  # noqa: E402
from sketch_styletransfer import train as T  # noqa: E402
from test_tom import TINY  # noqa: E402
from training import NanGuard, join_torchrun, seed_everything  # noqa: E402


def main():
    photos, sketches, out = sys.argv[1:4]
    rt = join_torchrun(torch.device("cpu"))
    assert rt.world_size == 2 and dist.is_initialized()
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).features
    seed_everything(0)
    trainer = T.TOMTrainer(vgg, {"nfc": 8}, runtime=rt)
    streams = [T.Stream(folder, 32, 2, 0, k, 0, 0, rt) for k, folder in enumerate((photos, sketches))]
    first = streams[0].batch(0)
    gathered = [torch.empty_like(first) for _ in range(2)]
    dist.all_gather(gathered, first)
    assert not torch.equal(gathered[0], gathered[1]), "ranks must read different photos"
    guard = NanGuard("stop", rt.device)
    for it in range(3):
        trainer.update(*(s.batch(it) for s in streams), it, guard)
    n = assert_identical({"g": trainer.g, "d": trainer.d}, rt.rank)
    argv = ["--path_a", photos, "--path_b", sketches, "--out", out, *TINY, "--total_iter", "4"]
    assert T.main(argv, vgg_features=vgg) == 0
    if rt.rank == 0:
        print(f"identical on 2 ranks: {n} parameters", flush=True)


if __name__ == "__main__":
    main()
