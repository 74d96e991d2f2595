"""Loss curves of a training run, drawn from its JSON-lines log: one panel per loss, FID when measured.

Inputs: a run folder of train.py (each stage folder in it that holds a log.jsonl: ae/, gan/) or
of TOM (sketch_styletransfer/train.py: log.jsonl at its top), a stage folder, or a log.jsonl.
Outputs: loss_curves.png beside each log.jsonl (or the --out file, for a single log). train.py
draws the same picture in each stage folder while it trains (monitor.py); this script redraws
it on demand, e.g. for a run copied from another machine.

Examples:
    python plot_log.py train_results/demo-20250101-120000
    python plot_log.py train_results/demo-20250101-120000/gan/log.jsonl --out gan_curves.png

Every key of a record is a panel except the bookkeeping keys (BOOKKEEPING: the iteration, the
speed, the subset, the learning rate, skip counters); FID values (records from the held-out FID
during the GAN stage) share one panel. README "Logs" documents every key.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from errors import UserError, cli
from fileio import atomic_path, check_apart

CURVES_FILE = "loss_curves.png"
BOOKKEEPING = ("iter", "img_per_s", "sec", "subset", "lr_style", "skipped_files", "skipped_steps", "skipped", "fid_n")
FID_KEYS = ("fid", "fid_mismatched")


class LogError(UserError):
    """Nothing to draw: no log.jsonl where the user pointed, or a log without a record."""


def read_log(path) -> list[dict]:
    """The records of a JSON-lines log; a line cut by a crash (the last one) is left out."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict) and "iter" in r]


def panels(records: list[dict]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{panel title: {curve name: (iterations, values)}}: one panel per loss, one for the FIDs."""
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for record in records:
        for key, value in record.items():
            if key in BOOKKEEPING or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            title = "FID (held-out)" if key in FID_KEYS else key
            xs, ys = out.setdefault(title, {}).setdefault(key, ([], []))
            xs.append(int(record["iter"]))
            ys.append(float(value))
    return out


def figure(records: list[dict], title: str = ""):
    """The matplotlib Figure of `records`' curves: one visible panel per group, on a grid of up to 4 columns."""
    import matplotlib  # only when drawing: slow to import, and training imports this module
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    groups = panels(records)
    if not groups:
        raise LogError(f"no numeric values to draw{f' in {title}' if title else ''}")
    cols = min(4, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.3 * rows + 0.4), dpi=80)
    fig.subplots_adjust(left=0.08 / cols ** 0.5, right=0.98, top=1 - 0.45 / (2.3 * rows + 0.4), bottom=0.32 / rows,
                        wspace=0.35, hspace=0.55)
    axes = fig.subplots(rows, cols, squeeze=False).flat
    for (name, curves), ax in zip(groups.items(), axes):  # groups first: zip would take (and lose) one more cell
        for key, (xs, ys) in curves.items():
            ax.plot(xs, ys, lw=1, marker="." if len(xs) < 30 else None, label=key)
        if len(curves) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes):  # the empty cells of the last row
        ax.set_visible(False)
    if title:
        fig.suptitle(f"{title} (x: iteration)", fontsize=10)
    return fig


def draw(records: list[dict], out, title: str = "") -> Path:
    """Draw the curves of `records` into the PNG `out` (written atomically); returns its path."""
    fig, out = figure(records, title), Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def find_logs(target) -> list[Path]:
    """log.jsonl files under a run folder (its stages, or its top for TOM), a stage folder, or the file."""
    target = Path(target)
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise LogError(f"no such file or folder: {target}")
    logs = [target / "log.jsonl"] if (target / "log.jsonl").is_file() else sorted(target.glob("*/log.jsonl"))
    if not logs:
        raise LogError(f"no log.jsonl in {target} or its stage folders (ae/, gan/)")
    return logs


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python plot_log.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder, stage folder or log.jsonl")
    p.add_argument("--out", help=f"PNG to write (one log only; default: {CURVES_FILE} beside the log)")
    args = p.parse_args(argv)
    logs = find_logs(args.run)
    if args.out and len(logs) > 1:
        raise LogError(f"--out takes one log; {args.run} holds {len(logs)}: {', '.join(map(str, logs))}")
    check_apart([args.out], logs)
    for log in logs:
        records = read_log(log)
        if not records:
            raise LogError(f"{log} holds no record yet")
        name = f"{log.parent.parent.name}/{log.parent.name}" if log.parent.name in ("ae", "gan") else log.parent.name
        out = draw(records, args.out or log.with_name(CURVES_FILE), title=name)
        print(f"{out} ({len(records)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
