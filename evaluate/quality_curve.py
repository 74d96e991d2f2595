"""Training time -> quality: score every kept checkpoint of a run with the quality benchmark.

    python evaluate/quality_curve.py --run train_results/<run> --out results/curve

For each checkpoint of the run's AE and GAN stages (train with KEEP_CHECKPOINTS large enough to
keep them all) it runs evaluate/quality.py on the run's held-out set and adds up the training time
before it from the stages' logs (each record's `sec`: wall time of its iterations), so a resumed
run counts only the time it trained. An AE checkpoint is scored as its AE alone. Prints a Markdown
table (minutes, stage, iteration, scores) and writes <out>/curve.json with every checkpoint's summary.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from errors import cli  # noqa: E402
from evaluate import quality as Q  # noqa: E402
from checkpoints import stage_checkpoints  # noqa: E402
from fileio import CheckpointError, JsonlLog, check_writable, markdown_table, write_json  # noqa: E402

STAGES = ("ae", "gan")


def training_seconds(run: Path, stage: str, iteration: int) -> float:
    """Seconds the run trained before `stage` reached `iteration`: the earlier stages whole, then this
    stage's log records up to it. CheckpointError for a log from before records carried `sec`."""
    total = 0.0
    for name in STAGES[:STAGES.index(stage) + 1]:
        records = JsonlLog(run / name / "log.jsonl").read() if (run / name / "log.jsonl").is_file() else []
        if any("img_per_s" in r and "sec" not in r for r in records):
            raise CheckpointError(f"{run / name / 'log.jsonl'}: written before logs recorded their time (sec)")
        total += sum(r.get("sec", 0.0) for r in records if name != stage or r["iter"] < iteration)
    return total


def curve(run, out, swaps: int, n: int, device: str) -> list[dict]:
    """One entry per checkpoint: stage, iteration, minutes of training before it, the benchmark summary."""
    run, out = Path(run), Path(out)
    points = []
    for stage, it, path in stage_checkpoints(run):
        minutes = training_seconds(run, stage, it) / 60
        result = Q.run(path, out / f"{stage}_{it:08d}", swaps=swaps, n=n, device=device, progress=False)
        points.append({"stage": stage, "iteration": it, "checkpoint": str(path), "minutes": round(minutes, 2),
                       "summary": result["summary"], "scores": result["summary"][Q.AE if stage == "ae" else Q.MODEL]})
        print(f"scored {path}", file=sys.stderr)
    return points


def table(points: list[dict]) -> str:
    """Minutes, stage, iteration and the benchmark's columns; the last checkpoint's baselines below."""
    last = points[-1]["summary"]
    cols = Q.columns(last)
    rows = [[f"{p['minutes']:.1f}", p["stage"].upper(), p["iteration"], *Q.cells(p["scores"], cols)] for p in points]
    rows += [["-", name, "-", *Q.cells(last[name], cols)] for name in ("ignore exemplar", "colour transfer")]
    return markdown_table(["minutes", "stage", "iteration", *(f"{k} {m}" for k, m in cols)], rows)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Score every kept checkpoint of a run with evaluate/quality.py: training time -> quality.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: a train.py run folder with a held-out set (KEEP_CHECKPOINTS large enough to keep every checkpoint).
Outputs: the table on stdout; <out>/curve.json; <out>/<stage>_<iteration>/ with each checkpoint's scores.
Example:
    python train.py ITERATION_AE=3000 ITERATION_GAN=1000 SAVE_MODEL_INTERVAL=500 KEEP_CHECKPOINTS=20 TRIAL_NAME=long
    python evaluate/quality_curve.py --run train_results/long --out results/curve""")
    p.add_argument("--run", required=True, help="a train.py run folder")
    p.add_argument("--swaps", type=int, default=4, help="other exemplars per sketch (default 4)")
    p.add_argument("--n", type=int, default=0, help="held-out images to use (default 0: all)")
    p.add_argument("--out", default="results/curve", help="folder for curve.json and the per-checkpoint scores")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    check_writable(args.out, folder=True)
    points = curve(args.run, args.out, args.swaps, args.n, args.device)
    text = table(points)
    print(text)
    write_json(Path(args.out) / "curve.json", {"run": str(args.run), "points": points, "table": text})
    print(f"wrote {Path(args.out) / 'curve.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
