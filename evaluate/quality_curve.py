"""Training time -> quality: score every kept checkpoint of a run with the ground-truth benchmark.

    python evaluate/quality_curve.py --run train_results/<demo run> --out results/curve

For each checkpoint of the run's AE and GAN stages (train with KEEP_CHECKPOINTS large enough to
keep them all) it runs evaluate/quality.py and reads the wall time since the run started: the
checkpoint file's modification time minus that of the run's config.json (written when the run
starts), so it holds for a run that was not resumed. An AE checkpoint is scored as its AE alone.
Prints a Markdown table (time, stage, iteration, swapped-style scores) and writes <out>/curve.json
with every checkpoint's summary.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import markdown_table  # noqa: E402
from errors import cli  # noqa: E402
from evaluate import quality as Q  # noqa: E402
from fileio import CheckpointDir, CheckpointError, write_json  # noqa: E402

STAGES = ("ae", "gan")


def checkpoints(run: Path) -> list[tuple[str, int, Path]]:
    """(stage, iteration, file) of every loadable checkpoint of the run, AE stage first."""
    found = []
    for stage in STAGES:
        folder = run / stage / "checkpoints"
        if folder.is_dir():
            found += [(stage, it, path) for it, path in CheckpointDir(folder, kind=stage).all()]
    if not found:
        raise CheckpointError(f"no checkpoint in {run}/ae/checkpoints or {run}/gan/checkpoints")
    return found


def curve(run, data_root: str, out, swaps: int, n: int, device: str) -> list[dict]:
    """One entry per checkpoint: stage, iteration, minutes since the run started, the benchmark summary."""
    run, out = Path(run), Path(out)
    start = (run / "config.json").stat().st_mtime
    points = []
    for stage, it, path in checkpoints(run):
        result = Q.run(path, data_root, out / f"{stage}_{it:08d}", swaps=swaps, n=n, device=device, progress=False)
        row = Q.AE if stage == "ae" else Q.MODEL
        points.append({"stage": stage, "iteration": it, "checkpoint": str(path),
                       "minutes": round((path.stat().st_mtime - start) / 60, 2), "summary": result["summary"],
                       "scores": result["summary"][row]})
        print(f"scored {path}", file=sys.stderr)
    return points


def table(points: list[dict], baseline: dict) -> str:
    header = ["minutes", "stage", "iteration", "swapped PSNR", "swapped fill dE", "swapped bg dE", "swapped IoU",
              "own PSNR", "own fill dE"]
    line = lambda name, it, minutes, s: [minutes, name, it, f"{s['swapped']['psnr']:.2f}",  # noqa: E731
                                         f"{s['swapped']['fill_de']:.1f}", f"{s['swapped']['bg_de']:.1f}",
                                         f"{s['swapped']['shape_iou']:.3f}", f"{s['own']['psnr']:.2f}",
                                         f"{s['own']['fill_de']:.1f}"]
    rows = [line(p["stage"].upper(), p["iteration"], f"{p['minutes']:.1f}", p["scores"]) for p in points]
    rows.append(["-", "ignore exemplar", "-", f"{baseline['psnr']:.2f}", f"{baseline['fill_de']:.1f}",
                 f"{baseline['bg_de']:.1f}", f"{baseline['shape_iou']:.3f}", "-", "-"])
    return markdown_table(header, rows)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Score every kept checkpoint of a demo run with evaluate/quality.py: training time -> quality.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder on the demo data (not resumed; KEEP_CHECKPOINTS large enough to keep every checkpoint).
Outputs: the table on stdout; <out>/curve.json; <out>/<stage>_<iteration>/quality.json and quality.png per checkpoint.
Example:
    python train.py ITERATION_AE=3000 ITERATION_GAN=1000 SAVE_MODEL_INTERVAL=500 KEEP_CHECKPOINTS=20 TRIAL_NAME=long
    python evaluate/quality_curve.py --run train_results/long --out results/curve""")
    p.add_argument("--run", required=True, help="a train.py run folder")
    p.add_argument("--data", default="data/demo", help="the demo data set (its test split is used)")
    p.add_argument("--swaps", type=int, default=4, help="other exemplars per sketch (default 4)")
    p.add_argument("--n", type=int, default=0, help="held-out images to use (default 0: all)")
    p.add_argument("--out", default="results/curve", help="folder for curve.json and the per-checkpoint scores")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    points = curve(args.run, args.data, args.out, args.swaps, args.n, args.device)
    baseline = points[-1]["summary"]["ignore exemplar"]["swapped"]
    text = table(points, baseline)
    print(text)
    write_json(Path(args.out) / "curve.json", {"run": str(args.run), "points": points, "table": text})
    print(f"wrote {Path(args.out) / 'curve.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
