"""Where the time of `make demo` goes on this machine: whole training iterations of the demo preset
under CPU settings (loader worker processes x torch threads), and the share of the data.

    python bench_demo.py                                 # AE and GAN stages, the default grid
    python bench_demo.py --iterations 40 --repeats 3 --settings 0x2 1x2 1x1 --out docs/bench_demo.json

A setting "WxT" runs DATALOADER_WORKERS=W loader processes and T torch threads. Each timed round
runs the stage's real loop body (loaders, augmentation, forward and backward passes, optimizer
steps) for --iterations iterations after a warm-up; rounds of all settings are interleaved and
repeated, so a noisy machine slows them alike; the median round is reported. "compute only"
cycles pre-decoded batches through the same step: loop minus compute is what the data costs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import config as C
from bench_speed import build_ae, install, preload
from benchmark import markdown_table
from datasets import pair_folders
from demo_data import ensure_demo_data
from errors import cli
from fileio import write_json
from train_step_1_ae import AEStage
from train_step_2_gan import GANStage
from training import NanGuard, setup_runtime

WARMUP = 3
DEFAULT_SETTINGS = ("1x2", "0x2", "1x1", "0x1")  # the demo preset's own first


def parse_setting(text: str) -> tuple[int, int]:
    workers, _, threads = text.partition("x")
    if not (workers.isdigit() and threads.isdigit() and int(threads) > 0):
        raise ValueError(f"setting {text!r}: expected WORKERSxTHREADS, e.g. 1x2")
    return int(workers), int(threads)


def build_stage(kind: str, workers: int, seed: int = 0):
    """The demo preset's stage as train.py builds it (a freshly initialised AE feeds the GAN stage)."""
    cfg = C.preset("demo", DATALOADER_WORKERS=workers, DEVICE="cpu", SEED=seed)
    runtime = setup_runtime(cfg)
    pairs = pair_folders(cfg.IMAGE_DIR, cfg.SKETCH_DIRS)
    grid = pair_folders(cfg.TEST_IMAGE_DIR, [cfg.TEST_SKETCH_DIR])
    if kind == "ae":
        return AEStage(cfg, runtime, pairs, grid)
    return GANStage(cfg, runtime, pairs, grid, build_ae(cfg))


def time_round(stage, iterations: int, start: int) -> float:
    """Seconds per iteration of `iterations` loop bodies after WARMUP untimed ones."""
    guard = NanGuard("stop", torch.device("cpu"))
    for it in range(start, start + WARMUP):
        stage.step(it, guard)
    t0 = time.perf_counter()
    for it in range(start + WARMUP, start + WARMUP + iterations):
        stage.step(it, guard)
    return (time.perf_counter() - t0) / iterations


def bench(kind: str, settings: list[str], iterations: int, repeats: int) -> dict:
    """{setting: median s/iteration} for the whole loop body, plus "compute only" at the first setting's threads."""
    rounds = {s: [] for s in settings}
    compute = []
    batches = None
    for r in range(repeats):
        for setting in settings:
            workers, threads = parse_setting(setting)
            torch.set_num_threads(threads)
            stage = build_stage(kind, workers)
            stage.restart_data(r * (WARMUP + iterations))
            rounds[setting].append(time_round(stage, iterations, 0))
            if setting == settings[0]:
                batches = batches or preload(stage, kind, 4)
                install(stage, batches)
                compute.append(time_round(stage, iterations, 0))
            del stage
            print(f"[{kind}] round {r + 1}/{repeats} {setting}: {rounds[setting][-1]:.3f} s/it", file=sys.stderr)
    result = {s: {"s_per_it": statistics.median(v), "rounds": v} for s, v in rounds.items()}
    result[f"compute only ({settings[0]})"] = {"s_per_it": statistics.median(compute), "rounds": compute}
    return result


def report(results: dict, settings: list[str]) -> str:
    rows = []
    for kind, by_setting in results.items():
        reference = by_setting[settings[0]]["s_per_it"]
        for name, r in by_setting.items():
            rows.append([kind.upper(), name, f"{r['s_per_it']:.3f}", f"{1 / r['s_per_it']:.2f}",
                         f"{reference / r['s_per_it']:.2f}x"])
    return markdown_table(["stage", "workers x threads", "s / iteration", "it / s", f"speed vs {settings[0]}"], rows)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Seconds per training iteration of the demo preset on the CPU, under "
                                            "loader-worker x torch-thread settings.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: the built-in demo data (made on first use).
Outputs: a table on stdout (seconds and iterations per second, ratio to the first setting) and a JSON file (--out).
Example:
    python bench_demo.py --settings 1x2 0x2 --out bench_demo.json""")
    p.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                   help="WORKERSxTHREADS items; the first is the reference of the ratios (default: %(default)s)")
    p.add_argument("--stages", default="ae,gan", help="comma-separated: ae, gan")
    p.add_argument("--iterations", type=int, default=30, help="timed iterations per round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per setting (the median is reported)")
    p.add_argument("--out", default="bench_demo.json", help="JSON output")
    args = p.parse_args(argv)
    try:
        for s in args.settings:
            parse_setting(s)
    except ValueError as e:
        p.error(str(e))
    ensure_demo_data()
    results = {kind: bench(kind, args.settings, args.iterations, args.repeats) for kind in args.stages.split(",")}
    text = report(results, args.settings)
    print(text)
    write_json(args.out, {"command": " ".join(["python bench_demo.py", *(argv or sys.argv[1:])]),
                          "iterations": args.iterations, "repeats": args.repeats, "warmup": WARMUP,
                          "torch": torch.__version__, "results": results, "table": text})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
