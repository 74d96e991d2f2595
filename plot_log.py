"""Loss curves of a training run from its JSON-lines log (one panel per loss, FIDs in one), and what
a person watches while a stage trains (StageMonitor: these curves, TensorBoard if asked).

Inputs: a run folder of train.py or of TOM, a stage folder, or a log.jsonl.
Outputs: loss_curves.png beside each log.jsonl (or --out, for a single log); train.py draws the same
while it trains, this script redraws it on demand (e.g. for a run copied from another machine).

Examples:
    python plot_log.py train_results/demo-20250101-120000
    python plot_log.py train_results/demo-20250101-120000/gan/log.jsonl --out gan_curves.png
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid

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
    """The matplotlib Figure of `records`' curves, on a grid of up to 4 columns."""
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


# --------------------------------------------------------------------------- while a stage trains

CURVE_BUDGET = 0.02   # share of training time the loss-curve drawings may take


def require_tensorboard() -> type:
    """torch's SummaryWriter class, or a LogError (before any training) without the tensorboard package.
    Imported only here: tensorboard is optional and slow to import."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LogError("LOGGER=tensorboard needs the tensorboard package: pip install tensorboard "
                       "(or LOGGER=none)") from None
    return SummaryWriter


class StageMonitor:
    """Loss curves (always) and TensorBoard (LOGGER=tensorboard) of one stage folder."""

    def __init__(self, stage_dir, logger: str = "none", start: int = 0, enabled: bool = True,
                 budget: float = CURVE_BUDGET):
        self.stage_dir, self.enabled, self.budget = Path(stage_dir), enabled, budget
        self.next_draw = 0.0        # perf_counter time before which a log write does not redraw
        self.pending = False        # records logged since the last drawing
        self.writer = None
        if enabled and logger == "tensorboard":
            # purge_step: a resumed stage drops the events logged after its checkpoint
            self.writer = require_tensorboard()(str(self.stage_dir / "tensorboard"), purge_step=start or None)

    def log(self, record: dict) -> None:
        """A record just written to log.jsonl."""
        if not self.enabled:
            return
        self.pending = True
        if self.writer is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    group = "fid" if key in FID_KEYS else "train" if key in BOOKKEEPING else "loss"
                    self.writer.add_scalar(f"{group}/{key}", value, record["iter"])
            self.writer.flush()
        if time.perf_counter() >= self.next_draw:
            self.draw()

    def grid(self, images: torch.Tensor, nrow: int, it: int) -> None:
        """A sample grid (N, C, H, W) in [-1, 1] just saved as PNG."""
        if self.writer is not None:  # make_grid repeats a single channel to RGB
            grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
            self.writer.add_image("samples", grid.add(1).div(2).clamp(0, 1), it)
            self.writer.flush()

    def draw(self) -> None:
        """Redraw loss_curves.png from log.jsonl now; the next log-time drawing waits cost / budget."""
        t0 = time.perf_counter()
        records = read_log(self.stage_dir / "log.jsonl")
        if records:
            draw(records, self.stage_dir / CURVES_FILE, title=f"{self.stage_dir.parent.name}/{self.stage_dir.name}")
        self.pending = False
        now = time.perf_counter()
        self.next_draw = now + (now - t0) / self.budget

    def close(self) -> None:
        """End of the stage: the final curves, TensorBoard files closed."""
        if self.pending:
            self.draw()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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
