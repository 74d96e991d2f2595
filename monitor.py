"""What a person watches while a stage trains: its loss-curve PNG, and TensorBoard if asked.

`StageMonitor` is fed each record the loop writes to log.jsonl and each sample grid it saves:
- <stage>/loss_curves.png (plot_log.draw) is redrawn at a log write whenever the drawing time
  stays within CURVE_BUDGET of the time since the last drawing (a drawing costs about 0.3-1 s on
  a CPU, so at most 2 % of the training time), and always when the stage ends;
- LOGGER=tensorboard: every logged number as a scalar and every sample grid as an image, through
  torch's SummaryWriter, in <stage>/tensorboard (`tensorboard --logdir <run folder>`). With
  LOGGER=none neither TensorBoard nor torch.utils.tensorboard is imported.
Only rank 0 monitors (enabled=False elsewhere).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torchvision.utils import make_grid

import plot_log
from config import ConfigError

CURVE_BUDGET = 0.02   # share of training time the loss-curve drawings may take


def require_tensorboard() -> type:
    """torch's SummaryWriter class, or a one-line ConfigError (before any training) when LOGGER=tensorboard
    cannot work. Imported only here: tensorboard is optional and slow to import."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except ImportError:
        raise ConfigError("LOGGER=tensorboard needs the tensorboard package: pip install tensorboard "
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
            summary_writer = require_tensorboard()
            # purge_step: a resumed stage drops the events logged after its checkpoint
            self.writer = summary_writer(str(self.stage_dir / "tensorboard"), purge_step=start or None)

    def log(self, record: dict) -> None:
        """A record just written to log.jsonl."""
        if not self.enabled:
            return
        self.pending = True
        if self.writer is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    group = "fid" if key in plot_log.FID_KEYS else "train" if key in plot_log.BOOKKEEPING else "loss"
                    self.writer.add_scalar(f"{group}/{key}", value, record["iter"])
            self.writer.flush()
        if time.perf_counter() >= self.next_draw:
            self.draw()

    def grid(self, images: torch.Tensor, nrow: int, it: int) -> None:
        """A sample grid (N, C, H, W) in [-1, 1] just saved as PNG."""
        if self.writer is not None:
            if images.shape[1] == 1:
                images = images.expand(-1, 3, -1, -1)
            grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
            self.writer.add_image("samples", grid.add(1).div(2).clamp(0, 1), it)
            self.writer.flush()

    def draw(self) -> None:
        """Redraw loss_curves.png from log.jsonl now; the next log-time drawing waits cost / budget."""
        t0 = time.perf_counter()
        records = plot_log.read_log(self.stage_dir / "log.jsonl")
        if records:
            plot_log.draw(records, self.stage_dir / plot_log.CURVES_FILE,
                          title=f"{self.stage_dir.parent.name}/{self.stage_dir.name}")
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
