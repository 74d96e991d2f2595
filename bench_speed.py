"""Training speed: seconds per step of a preset's AE and GAN stages under execution settings, in
interleaved rounds, each measurement a fresh process; every ratio is against the first setting, measured
in the same run.

Inputs: a preset (and KEY=value settings on top of it), its training data; the settings to compare.
Outputs: a table on stdout; --out: JSON with the machine (CPU model, its bf16 flags), versions, every round.
Examples:
    python bench_speed.py                                           # demo preset: fp32 vs bf16 and more
    python bench_speed.py --preset portraits --settings fp32 bf16 bf16,cl bf16,compile --out bench.json
    python bench_speed.py --settings bf16 bf16,passive bf16,threads=1 --busy yes    # beside a busy process
    python bench_speed.py --device cuda --preset art --settings fp32,ref bf16,cl    # on a GPU

A setting is comma-separated tokens: fp32 | bf16 (autocast; fast only where native); cl (channels-last);
compile (torch.compile; the compiling first step is timed apart); threads=N (torch threads); passive
(OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning); ref (the reference's updates:
Adam's per-parameter loop, a host sync per loss per step); data (the whole loop body with its data
loading; default: pre-decoded batches, compute only). --busy yes|train runs a load beside the benchmark:
a busy process, or a second training.

Each (round, setting, stage) is a fresh process (OMP_WAIT_POLICY acts only when a process starts);
rounds interleave the settings; medians are reported. Step 1 of every setting starts from the same
weights and batch and makes no update, so its losses are the networks' numerics alone; they must match
the first setting's to 1e-4 relative between fp32 settings, within BF16_TOLERANCE once bf16 is
involved (exit code 1 otherwise). On CUDA also peak memory and MFU (one step's FLOPs, from torch's
FlopCounterMode, over the GPU's dense bf16 or TF32 peak).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import config as C
from datasets import pair_folders
from demo_data import ensure_demo_data
from errors import UserError, cli
from fileio import check_writable, markdown_table, write_json
from models import AutoEncoder
from stages import AEStage, GANStage, runtime_for
from training import NanGuard, adam, seed_everything
from devices import native_bf16

TOKENS = ("fp32", "bf16", "cl", "compile", "passive", "ref", "data")
FP32_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}   # |a - b| <= rtol * max(|a|, |b|) + atol
BF16_TOLERANCE = {"rtol": 5e-2, "atol": 5e-2}
PRELOAD = 4                                      # decoded batches cycled through the timed steps
BATCH_STREAMS = {"ae": ("ss_batches", "paired_batches"), "gan": ("batches",)}  # the stages' batch iterators
# dense peak TFLOP/s by GPU name (first substring match): (bf16, tf32)
PEAK_TFLOPS = (("H200", 989.0, 494.0), ("H100 PCIe", 756.0, 378.0), ("H100 NVL", 835.0, 418.0),
               ("H100", 989.0, 494.0), ("A100", 312.0, 156.0))


def parse_setting(text: str) -> dict:
    """"bf16,cl,threads=1" -> {"bf16": True, "cl": True, "threads": 1, ...}; ValueError naming a bad token."""
    setting = {t: False for t in TOKENS} | {"threads": None, "name": text}
    for token in filter(None, (t.strip() for t in text.split(","))):
        if token.startswith("threads=") and token[8:].isdigit() and int(token[8:]) > 0:
            setting["threads"] = int(token[8:])
        elif token in TOKENS:
            setting[token] = True
        else:
            raise ValueError(f"setting {text!r}: unknown token {token!r} (use {', '.join(TOKENS)}, threads=N)")
    if setting["fp32"] and setting["bf16"]:
        raise ValueError(f"setting {text!r}: fp32 or bf16, not both")
    return setting


def loss_check(first: dict, other: dict, tolerance: dict) -> bool:
    """Whether every loss of `other` is within `tolerance` of `first`'s (same names, all finite)."""
    return first.keys() == other.keys() and all(
        abs(a - other[k]) <= tolerance["rtol"] * max(abs(a), abs(other[k])) + tolerance["atol"]
        for k, a in first.items() if abs(a) != float("inf") and a == a)


# --------------------------------------------------------------------------- one measurement (child process)

def build_stage(kind: str, cfg: C.Config, setting: dict):
    """The stage as train.py builds it, with the setting's execution (forced on any device)."""
    runtime = dataclasses.replace(runtime_for(cfg), bf16=setting["bf16"], channels_last=setting["cl"],
                                  compile=setting["compile"])
    pairs = pair_folders(cfg.IMAGE_DIR, cfg.SKETCH_DIRS)
    seed_everything(cfg.SEED)
    ae = AutoEncoder(cfg.NFC, cfg.IM_SIZE_AE) if kind == "gan" else None
    seed_everything(cfg.SEED)  # the same initial weights in every setting
    stage = AEStage(cfg, runtime, pairs, pairs) if kind == "ae" else GANStage(cfg, runtime, pairs, pairs, ae)
    if setting["ref"]:  # the reference's Adam: one parameter at a time
        stage.opt = {k: adam(o.param_groups[0]["params"], cfg.LR_AE, cfg.BETAS, runtime.device, foreach=False)
                     for k, o in stage.opt.items()}
    return stage, runtime


def first_step(stage, guard: NanGuard) -> dict:
    """Step 1 without its updates: every loss of the step at the initial weights (an update earlier in the
    step would otherwise carry Adam's first, sign-like move of each weight into the later losses)."""
    for opt in stage.opt.values():
        opt.step = lambda *args, **kwargs: None  # shadows the method for this step only
    losses = stage.step(0, guard)
    for opt in stage.opt.values():
        del opt.step
    return losses


def measure(job: dict) -> dict:
    """Time `steps` steps of one stage under one setting after `warmup` steps (run in a child process)."""
    setting = parse_setting(job["setting"])
    if setting["threads"]:
        torch.set_num_threads(setting["threads"])
    # no subset switch and no FID inside a measurement
    cfg = C.preset(job["preset"], **{**C.parse_overrides(job["overrides"]), "DEVICE": job["device"],
                                     "FID_INTERVAL": 0, "SUBSET_PASSES": 10 ** 6})
    stage, runtime = build_stage(job["stage"], cfg, setting)
    stage.restart_data(0)
    if not setting["data"]:
        for attr in BATCH_STREAMS[job["stage"]]:  # decoded once, cycled: the steps time compute only
            setattr(stage, attr, itertools.cycle([next(getattr(stage, attr)) for _ in range(PRELOAD)]))
    guard = NanGuard("stop", runtime.device)
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else lambda: None
    seed_everything(cfg.SEED)
    t0 = time.perf_counter()
    step1 = {k: float(v) for k, v in first_step(stage, guard).items()}  # compiles, when compiling
    first_step_s = time.perf_counter() - t0
    for it in range(1, job["warmup"]):
        stage.step(it, guard)
    sync()
    t0 = time.perf_counter()
    for it in range(job["warmup"], job["warmup"] + job["steps"]):
        losses = stage.step(it, guard)
        if setting["ref"]:
            [float(v) for v in losses.values()]  # the reference logs every loss: a host sync each
    sync()
    seconds = (time.perf_counter() - t0) / job["steps"]
    guard.check(None)  # a NaN is an error, not a number
    result = {"s_per_step": seconds, "img_per_s": stage.items_per_step() / seconds, "first_step_s": first_step_s,
              "step1": step1, "threads": torch.get_num_threads()}
    if runtime.device.type == "cuda":
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
        if not setting["compile"]:
            with FlopCounterMode(display=False) as counter:
                stage.step(job["warmup"] + job["steps"], guard)
            result["flops_per_step"] = counter.get_total_flops()
    return result


# --------------------------------------------------------------------------- the benchmark (parent process)

def run_child(job: dict, setting: dict) -> dict:
    env = dict(os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if setting["passive"] else {}))
    if setting["threads"]:
        env["OMP_NUM_THREADS"] = str(setting["threads"])
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise UserError(f"setting {setting['name']}, {job['stage']} stage: the measurement failed: "
                        + (done.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_load(kind: str | None, job: dict) -> subprocess.Popen | None:
    """A busy process (`yes`) or a second training (the AE stage, endless) beside the benchmark."""
    if kind == "yes":
        return subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
    if kind == "train":
        endless = {**job, "stage": "ae", "setting": "bf16", "steps": 10 ** 9}
        return subprocess.Popen([sys.executable, __file__, "--child", json.dumps(endless)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return None


def bench(args) -> dict:
    settings = [parse_setting(s) for s in args.settings]
    job = {"preset": args.preset, "device": args.device, "overrides": args.overrides, "steps": args.steps,
           "warmup": args.warmup}
    rounds = {(s["name"], kind): [] for s in settings for kind in args.stages}
    load = start_load(args.busy, job)
    try:
        for r in range(args.rounds):
            for setting, kind in itertools.product(settings, args.stages):
                result = run_child({**job, "stage": kind, "setting": setting["name"]}, setting)
                rounds[setting["name"], kind].append(result)
                print(f"round {r + 1}/{args.rounds} {kind} {setting['name']}: {result['s_per_step']:.3f} s/step",
                      file=sys.stderr)
    finally:
        if load is not None:
            load.kill()
    return summarise(rounds, settings, args)


def summarise(rounds: dict, settings: list[dict], args) -> dict:
    first = settings[0]
    rows = {}
    for (name, kind), results in rounds.items():
        base = rounds[first["name"], kind]
        median = statistics.median(r["s_per_step"] for r in results)
        tolerance = BF16_TOLERANCE if parse_setting(name)["bf16"] or first["bf16"] else FP32_TOLERANCE
        row = {"s_per_step": median, "img_per_s": statistics.median(r["img_per_s"] for r in results),
               "speedup": statistics.median(b["s_per_step"] for b in base) / median,
               "first_step_s": statistics.median(r["first_step_s"] for r in results),
               "loss_check": loss_check(base[0]["step1"], results[0]["step1"], tolerance), "rounds": results}
        if "flops_per_step" in results[0]:
            peak = peak_tflops(parse_setting(name)["bf16"])
            row["peak_mem_bytes"] = max(r["peak_mem_bytes"] for r in results)
            row["mfu"] = results[0]["flops_per_step"] / median / 1e12 / peak if peak else None
        rows[f"{kind} {name}"] = row
    return {"machine": machine(), "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "preset": args.preset, "overrides": args.overrides, "busy": args.busy, "steps": args.steps,
            "rounds": args.rounds, "tolerances": {"fp32": FP32_TOLERANCE, "bf16": BF16_TOLERANCE}, "results": rows}


def peak_tflops(bf16: bool) -> float | None:
    name = torch.cuda.get_device_name()
    return next(((b if bf16 else t) for key, b, t in PEAK_TFLOPS if key.lower() in name.lower()), None)


def machine() -> dict:
    """CPU model and its bf16 flags (native_bf16 reads the same), core count, GPU if any."""
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "native_bf16_cpu": native_bf16(torch.device("cpu"))}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
        flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith(("flags", "Features"))), [])
        info["cpu_flags"] = sorted(f for f in flags if "bf16" in f or f.startswith(("avx512", "amx")))
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def report(result: dict) -> str:
    cuda = any("mfu" in r for r in result["results"].values())
    rows = []
    for name, r in result["results"].items():
        cells = [name, f"{r['s_per_step']:.3f}", f"{r['img_per_s']:.1f}", f"{r['speedup']:.2f}x",
                 f"{r['first_step_s']:.1f}", "pass" if r["loss_check"] else "FAIL"]
        if cuda:
            cells += [f"{r['peak_mem_bytes'] / 2 ** 30:.2f} GiB", "-" if r["mfu"] is None else f"{r['mfu']:.0%}"]
        rows.append(cells)
    header = ["stage setting", "s / step", "img / s", "speed vs first", "first step s", "step-1 losses"]
    return markdown_table(header + (["peak mem", "MFU"] if cuda else []), rows)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python bench_speed.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="KEY=value settings on top of the preset (e.g. NFC=16)")
    p.add_argument("--preset", default="demo", choices=sorted(C.PRESETS))
    p.add_argument("--settings", nargs="+", default=["fp32", "bf16", "bf16,cl", "bf16,threads=1"],
                   help="the first is the baseline of every ratio (default: %(default)s)")
    p.add_argument("--stages", default="ae,gan", type=lambda s: s.split(","), help="ae, gan or ae,gan")
    p.add_argument("--steps", type=int, default=15, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (step 1 included)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    p.add_argument("--busy", choices=("yes", "train"), help="a load beside the benchmark")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        [parse_setting(s) for s in args.settings]
        C.preset(args.preset, **C.parse_overrides(args.overrides))
    except ValueError as e:
        p.error(str(e))
    if not set(args.stages) <= {"ae", "gan"} or args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        p.error("--stages takes ae and/or gan; --steps, --warmup and --rounds must be >= 1")
    return args


@cli
def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "--child":
        print(json.dumps(measure(json.loads(argv[1]))))
        return 0
    args = parse_args(argv)
    if args.out:
        check_writable(args.out)
    cfg = C.preset(args.preset, **C.parse_overrides(args.overrides))
    if cfg.IMAGE_DIR == C.PRESETS["demo"]["IMAGE_DIR"]:
        ensure_demo_data()
    pair_folders(cfg.IMAGE_DIR, cfg.SKETCH_DIRS)  # a missing data set is one line here, not in every child
    result = bench(args)
    print(report(result))
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0 if all(r["loss_check"] for r in result["results"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
