"""Ablations on the demo data, scored by the ground-truth quality benchmark (evaluate/quality.py).

    python evaluate/ablation.py mi              # W_MI = 0 vs 0.1: does the MI term help shapes hold under a style swap?
    python evaluate/ablation.py sketch_sets     # 1 vs 3 vs 5 sketch sets per image, same budget
    python evaluate/ablation.py mi --iterations 1100 --out results/ablation KEY=value ...

Each variant trains the demo preset's AE stage (same seed and data order, KEY=value overrides on
top) and is scored on the held-out split: own and swapped styles, PSNR, fill and background
colour error, shape IoU (see evaluate/quality.py), on two kinds of held-out sketches: the exact
line drawings and XDoG "medium" sketches, a sketch style no variant trained on. The MI study also
reports a held-out CLUB estimate of I(content; style). Finished runs are reused (their folder
name is the variant's), so an interrupted study continues where it stopped. Prints a Markdown
table and writes <out>/<study>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import losses as L  # noqa: E402
import train  # noqa: E402
from benchmark import markdown_table  # noqa: E402
from config import preset  # noqa: E402
from datasets import pair_folders  # noqa: E402
from demo_data import ensure_demo_data  # noqa: E402
from errors import cli  # noqa: E402
from evaluate import quality as Q, slug  # noqa: E402
from fileio import newest_checkpoint, write_json  # noqa: E402
from sketch_styletransfer.xdog import BUILTIN_SETTINGS, Setting, make_sketch_folders  # noqa: E402

DATA = Path("data/demo")
HELD_OUT_STYLE = "xdog_medium"  # the unseen sketch style of the held-out evaluation
# two more XDoG sketch sets for the 5-set variant (neither is the held-out "medium" setting)
EXTRA_SETS = {"xdog_fine": Setting(sigma=0.5, width=2), "xdog_broad": Setting(sigma=1.5, width=1)}
_TRAIN = "data/demo/train/"
STUDIES = {
    "mi": {"W_MI=0": ["W_MI=0"], "W_MI=0.1": ["W_MI=0.1"]},
    "sketch_sets": {  # the exact line drawings last: the set step A reads and the others draw most often
        "1 set (exact)": [f"SKETCH_DIRS={_TRAIN}sketches"],
        "3 sets (thin, bold, exact)": [f"SKETCH_DIRS={_TRAIN}xdog_thin,{_TRAIN}xdog_bold,{_TRAIN}sketches"],
        "5 sets (+ fine, broad)": [f"SKETCH_DIRS={_TRAIN}xdog_thin,{_TRAIN}xdog_bold,{_TRAIN}xdog_fine,"
                                   f"{_TRAIN}xdog_broad,{_TRAIN}sketches"]},
}
COLUMNS = ("own", "swapped")


def prepare_sketch_sets() -> None:
    """The demo data, its two extra training sketch sets and the held-out XDoG "medium" sketches."""
    ensure_demo_data(DATA)
    for split, sets in (("train", EXTRA_SETS), ("test", {HELD_OUT_STYLE: BUILTIN_SETTINGS["medium"]})):
        # make_sketch_folders names its folders xdog_<name>
        missing = {name.removeprefix("xdog_"): s for name, s in sets.items() if not (DATA / split / name).is_dir()}
        if missing:
            make_sketch_folders(DATA / split / "images", DATA / split, missing)


def train_variant(out: Path, name: str, overrides: list[str], base: list[str]) -> Path:
    """Train (or reuse) one variant's AE stage; returns its run folder."""
    run = out / slug(name)
    if newest_checkpoint(run / "ae" / "checkpoints") is None:
        args = [*base, *overrides, f"SAVE_FOLDER={out}", f"TRIAL_NAME={run.name}", "TRAIN_AE_ONLY=true"]
        if run.exists():
            args.append("RESUME=true")
        if train.main(args) != 0:
            raise SystemExit(f"training {name} failed")
    return run


def score(run: Path, sketch_folder: str, out: Path) -> dict:
    """The quality benchmark's summary row of the AE on held-out sketches of one kind."""
    result = Q.run(run, out / "quality" / sketch_folder, DATA / "test" / "images", DATA / "test" / sketch_folder,
                   DATA / "train" / "images", swaps=4, device="cpu", progress=False)
    return result["summary"][Q.AE]


@torch.no_grad()
def heldout_mi(run: Path, n: int = 200, steps: int = 500, seed: int = 0) -> float:
    """CLUB estimate of I(content; style) on held-out features: q fitted on one half, read on the other."""
    model, _ = Q.load_model(run, "cpu")
    test = pair_folders(DATA / "test" / "images", [DATA / "test" / "sketches"])
    sketches = torch.cat([model.prepare_sketch(p[0]) for p in test.sketches[:n]])
    styles = torch.cat([model.prepare_style(p) for p in test.images[:n]])
    content = L.pooled_content(model.ae.content_encoder(sketches))
    style = torch.cat(model.style_vectors(styles), dim=1)
    torch.manual_seed(seed)
    half = content.shape[0] // 2
    club = L.CLUB(content.shape[1], style.shape[1], hidden=64)
    opt = torch.optim.Adam(club.parameters(), lr=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            club.learning_loss(content[:half], style[:half]).backward()
            opt.step()
    return club(content[half:], style[half:]).item()


def table(results: dict) -> str:
    header = ["variant", "sketches", *(f"{kind} {m}" for kind in COLUMNS for m in ("PSNR", "fill dE", "shape IoU"))]
    extra = any("heldout_mi" in r for r in results.values())
    header += ["held-out MI"] if extra else []
    rows = []
    for name, r in results.items():
        for sketches, summary in r["scores"].items():
            cells = [name, sketches]
            for kind in COLUMNS:
                s = summary[kind]
                cells += [f"{s['truth_psnr']:.2f}", f"{s['fill_de']:.1f}", f"{s['shape_iou']:.3f}"]
            rows.append(cells + ([f"{r['heldout_mi']:.2f}"] if extra else []))
    return markdown_table(header, rows)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Ablations on the demo data, scored by evaluate/quality.py.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""\
Inputs: the built-in demo data (made on first use, with the extra sketch sets a study needs); extra KEY=value
        settings go to train.py for every variant.
Outputs: one AE run per variant under <out>/<study>/, their quality scores, a table on stdout and
         <out>/<study>/<study>.json.
Example:
    python evaluate/ablation.py mi --iterations 1000""")
    parser.add_argument("study", choices=sorted(STUDIES), help="which question")
    parser.add_argument("--iterations", type=int, default=None, help="AE iterations (default: the demo preset's)")
    parser.add_argument("--out", default="results/ablation", help="folder for the runs, scores and JSON")
    args, overrides = parser.parse_known_args(argv)
    out = Path(args.out) / args.study
    base = ["DATA_NAME=demo", *overrides] + ([f"ITERATION_AE={args.iterations}"] if args.iterations else [])
    prepare_sketch_sets()
    results = {}
    for name, variant in STUDIES[args.study].items():
        run = train_variant(out, name, variant, base)
        results[name] = {"overrides": variant, "run": str(run),
                         "scores": {kind: score(run, kind, out / run.name) for kind in ("sketches", HELD_OUT_STYLE)}}
        if args.study == "mi":
            results[name]["heldout_mi"] = heldout_mi(run)
    text = table(results)
    print(text)
    write_json(out / f"{args.study}.json", {"command": " ".join(["python evaluate/ablation.py", *(argv or [])]),
                                            "iterations": args.iterations or preset("demo").ITERATION_AE,
                                            "results": results, "table": text})
    print(f"wrote {out / f'{args.study}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
