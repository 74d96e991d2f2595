"""Make TOM sketches of a photo folder, named like the photos, so they pair with them for training.

One folder per (checkpoint, threshold); ten checkpoints (a run keeps its last ten) give the paper's ten
sketches per photo. Existing sketches are kept unless --overwrite: an interrupted call just resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # run as a script: the repository's top-level modules must be importable
    sys.path.insert(0, ROOT)

import torch.nn as nn

from checkpoints import find_checkpoint
from datasets import require_images
from errors import cli
from fileio import check_apart, check_writable
from sketch_styletransfer.sketch import make_sketches, parse_threshold
from sketch_styletransfer.tom_models import check_size
from devices import resolve_device


@cli
def main(argv: list[str] | None = None, vgg_features: nn.Module | None = None) -> int:
    """Tests pass `vgg_features` (a random VGG16) to skip the download."""
    p = argparse.ArgumentParser(description="Make TOM sketches of a photo folder, one sub-folder per "
                                            "(checkpoint, threshold), files named like the photos.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a folder of photos (with its sub-folders); TOM checkpoints (or run folders) of train.py.
Outputs: <path_result>/<checkpoint>_t<threshold>/<name>.png per photo; the SKETCH_DIRS= line to train with.
Example:
    python sketch_styletransfer/evaluate.py --path_content data/photos --path_result data/sketches \\
        --checkpoint train_results/tom-<time> --threshold 0.6 0.7 0.8""")
    p.add_argument("--path_content", required=True,
                   help="folder of photos, and its sub-folders (a/b.jpg is sketched as a__b.png)")
    p.add_argument("--path_result", required=True, help="where the sketch folders go")
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="one or more TOM checkpoints (a run folder stands for its newest checkpoint)")
    p.add_argument("--threshold", nargs="+", default=["0.7"],
                   help="one or more grey levels in (0, 1) above which a pixel is paper (default 0.7), or 'none' "
                        "for grey sketches")
    p.add_argument("--size", type=int, default=None, help="output side (default: the checkpoint's training size)")
    p.add_argument("--batch_size", type=int, default=8, help="photos per batch (default 8)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=2, help="image loading processes (default 2)")
    p.add_argument("--overwrite", action="store_true", help="remake sketches that already exist")
    args = p.parse_args(argv)
    try:
        thresholds = list(dict.fromkeys(parse_threshold(t) for t in args.threshold))
        if args.size is not None:
            check_size(args.size)
    except ValueError as e:
        p.error(str(e))
    if args.batch_size < 1:
        p.error("--batch_size must be positive")
    device = resolve_device(args.device)
    check_apart([args.path_result], [args.path_content], nested=True)  # the photos are read with sub-folders
    for checkpoint in args.checkpoint:  # refuse bad inputs before loading the VGG weights
        find_checkpoint(checkpoint, "tom")
    require_images(args.path_content, nested=True)
    check_writable(args.path_result, folder=True)
    summary = make_sketches(vgg_features, args.checkpoint, args.path_content, args.path_result, thresholds,
                            args.size, args.batch_size, device, args.overwrite, max(0, args.workers))
    print(f"wrote {summary['written']} sketches, kept {summary['kept']} existing")
    if summary["unreadable"]:
        print(f"{len(summary['unreadable'])} unreadable photo(s) skipped: {', '.join(summary['unreadable'])}",
              file=sys.stderr)
    print("sketch folders:\n" + "\n".join(f"  {f}" for f in summary["folders"]))
    print("SKETCH_DIRS=" + ",".join(summary["folders"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
