"""Stage 1: the self-supervised autoencoder (style encoder, content encoder, decoder).

Each iteration makes two optimizer steps (reference):
  A. self-supervised, on a rotating subset of NBR_CLS images (each its own class): instance
     classification, style consistency, content consistency, reconstruction from x~'s style;
  B. plain autoencoder on all pairs (one of the K sketch sets per batch), + grey-level and
     content/style mutual-information terms when their weights are set (the latter minimised
     by the content encoder only, as in the paper).
Every NBR_CLS * SUBSET_PASSES // BATCH_SIZE_AE iterations the subset moves on, the classifier
head and its optimizer are re-initialised and the style encoder and decoder lr drops.

Run through train.py; `python train_step_1_ae.py KEY=value ...` trains this stage alone.
"""
from __future__ import annotations

import sys

from errors import quiet_start

if __name__ == "__main__":  # as train.py: Ctrl-C while the libraries load, a syntax error in config.py
    sys.excepthook = quiet_start

import torch

import losses as L
from config import Config
from datasets import (Pairs, PairedDataset, RandomStream, SelfSupervisedDataset, fixed_batch, iteration_generator,
                      mix_seed, only_last_set, paired_crop_flip, sketch_set_weights, sketch_variants, style_view,
                      to_float)
from models import ContentEncoder, Decoder, InstanceClassifier, StyleEncoder
from fileio import CHECKPOINT_FORMAT
from training import NanGuard, Runtime, adam, infinite_batches, optimizer_step


class AEStage:
    """The AE stage's networks, optimizers, data and step; run by training.run_stage."""

    kind, format = "ae", CHECKPOINT_FORMAT

    def __init__(self, cfg: Config, runtime: Runtime, pairs: Pairs, grid_pairs: Pairs, lpips=None):
        self.cfg, self.rt = cfg, runtime
        nfc, size = cfg.NFC, cfg.IM_SIZE_AE
        self.nbr_cls = self.classes(cfg, len(pairs))
        self.switch_every = max(1, self.nbr_cls * cfg.SUBSET_PASSES // cfg.BATCH_SIZE_AE)
        self.style_encoder = runtime.compiled(runtime.prepare(StyleEncoder(nfc, size)))
        self.content_encoder = runtime.compiled(runtime.prepare(ContentEncoder(nfc, size)))
        self.decoder = runtime.compiled(runtime.prepare(Decoder(nfc, size)))
        self.head = runtime.prepare(InstanceClassifier(nfc * 8, self.nbr_cls))
        self.club = runtime.prepare(L.CLUB(nfc * 14, nfc * 14, cfg.MI_HIDDEN)) if cfg.W_MI > 0 else None
        self.opt = {"style": adam(self.style_encoder.parameters(), cfg.LR_AE, cfg.BETAS, runtime.device),
                    "content": adam(self.content_encoder.parameters(), cfg.LR_AE, cfg.BETAS, runtime.device),
                    "decoder": adam(self.decoder.parameters(), cfg.LR_AE, cfg.BETAS, runtime.device),
                    "head": adam(self.head.parameters(), cfg.LR_AE, cfg.BETAS, runtime.device)}
        if self.club is not None:
            self.opt["club"] = adam(self.club.parameters(), cfg.LR_AE, cfg.BETAS, runtime.device)
        self.reconstruction = L.Reconstruction(cfg.W_REC_MSE, cfg.W_REC_L1, cfg.W_REC_LPIPS, lpips, cfg.LPIPS_SIZE)
        self.reconstruction_b = L.Reconstruction(cfg.W_REC_MSE, cfg.W_REC_L1_B, cfg.W_REC_LPIPS, lpips, cfg.LPIPS_SIZE)
        self.ss_data = SelfSupervisedDataset(pairs, size, self.nbr_cls, seed=cfg.SEED)
        self.paired_data = PairedDataset(pairs, size)
        n_sets = len(pairs.sketches[0])
        self.set_weights = sketch_set_weights(n_sets, cfg.SKETCH_SET_WEIGHTS)  # step B
        # step A reads the last sketch set only, as the reference (its 3rd), unless SS_SKETCH_SETS=all
        self.ss_set_weights = self.set_weights if cfg.SS_SKETCH_SETS == "all" else only_last_set(n_sets)
        self.grid = fixed_batch(grid_pairs, cfg.GRID_N, size)
        self.skipped_files = 0

    # --- the scaffold's interface ------------------------------------------------------------
    def networks(self) -> dict[str, torch.nn.Module]:
        nets = {"style_encoder": self.style_encoder, "content_encoder": self.content_encoder,
                "decoder": self.decoder, "head": self.head}
        return nets | ({"club": self.club} if self.club is not None else {})

    def arch(self) -> dict:
        return self.arch_of(self.cfg)

    @staticmethod
    def arch_of(cfg: Config) -> dict:
        """What a checkpoint must match to resume (training.check_arch); train.py checks it before writing."""
        return {"preset": cfg.DATA_NAME, "nfc": cfg.NFC, "im_size": cfg.IM_SIZE_AE, "mi_estimator": cfg.W_MI > 0}

    @staticmethod
    def classes(cfg: Config, n_pairs: int) -> int:
        """Images per self-supervised subset, the classes of the head: NBR_CLS, or all pairs if fewer."""
        return min(cfg.NBR_CLS, n_pairs)

    def state_dict(self) -> dict:
        return {"networks": {k: n.state_dict() for k, n in self.networks().items()},
                "optimizers": {k: o.state_dict() for k, o in self.opt.items()},
                "subset": self.ss_data.subset, "nbr_cls": self.nbr_cls,  # for readers; resume derives it
                "arch": self.arch()}

    def load_state_dict(self, state: dict) -> None:
        for k, net in self.networks().items():
            net.load_state_dict(state["networks"][k])
        for k, opt in self.opt.items():
            opt.load_state_dict(state["optimizers"][k])

    def restart_data(self, iteration: int) -> None:
        """Data iterators positioned at `iteration`: everything follows from the iteration number."""
        # step(it) switches subsets at its start when it % switch_every == 0 (it > 0), so the
        # subset in use before step(iteration) is the one of iteration - 1
        subset = max(iteration - 1, 0) // self.switch_every
        self.ss_data.set_subset(subset)
        self.ss_batches = self._ss_batches(iteration - subset * self.switch_every)
        self.paired_batches = infinite_batches(self.paired_data, self.cfg.BATCH_SIZE_AE, self.cfg, self.rt,
                                               self.set_weights, RandomStream.AE_PAIRED, start=iteration)

    def _ss_batches(self, start: int):
        stream = mix_seed(RandomStream.AE_SS, self.ss_data.subset)  # a fresh order for every subset
        return infinite_batches(self.ss_data, self.cfg.BATCH_SIZE_AE, self.cfg, self.rt, self.ss_set_weights,
                                stream, start)

    def items_per_step(self) -> int:
        return 2 * self.cfg.BATCH_SIZE_AE * self.rt.world_size  # steps A and B each see one batch

    def log_extras(self) -> dict:
        return {"subset": self.ss_data.subset, "lr_style": self.opt["style"].param_groups[0]["lr"],
                "skipped_files": self.skipped_files}

    def evaluate(self, it: int) -> dict:
        return {}

    # --- one iteration -----------------------------------------------------------------------
    def step(self, it: int, guard: NanGuard) -> dict[str, torch.Tensor]:
        if it > 0 and it % self.switch_every == 0:
            self._switch_subset()
        logs = self._step_a(it, guard)
        logs.update(self._step_b(it, guard))
        return logs

    def _switch_subset(self) -> None:
        """Next subset: new classes, so a fresh head and head optimizer; lower lr (reference)."""
        self.ss_data.next_subset()
        self.ss_batches = self._ss_batches(0)
        self.head.reset_parameters()
        self.opt["head"] = adam(self.head.parameters(), self.cfg.LR_AE, self.cfg.BETAS, self.rt.device)
        for name in ("style", "decoder"):
            for group in self.opt[name].param_groups:
                group["lr"] = self.cfg.LR_AE_AFTER_SWITCH

    def _batch(self, batches) -> dict[str, torch.Tensor]:
        batch = next(batches)
        self.skipped_files += int(batch["skipped"].sum())  # a CPU tensor: no device sync
        return {k: (to_float(self.rt.to_device(v)) if v.dtype == torch.uint8 else self.rt.to_device(v))
                for k, v in batch.items() if k != "skipped"}

    def _step_a(self, it: int, guard: NanGuard) -> dict[str, torch.Tensor]:
        """Self-supervised step on the current subset."""
        cfg, size = self.cfg, self.cfg.IM_SIZE_AE
        batch = self._batch(self.ss_batches)
        g = iteration_generator(cfg.SEED, RandomStream.AE_AUG_A, it, self.rt.rank)
        x, sketch, thick = paired_crop_flip([batch["image"], batch["sketch"], batch["sketch_bold"]], size, g)
        x_aug = style_view(batch["style_src"], size, g)
        variants = sketch_variants(sketch, thick, g)
        n, scales = x.shape[0], 3
        style_perms = [L.derangement(n, g, self.rt.device) for _ in range(scales)]
        content_perms = [[L.derangement(n, g, self.rt.device) for _ in range(scales)] for _ in variants]
        pick = int(torch.randint(4, (1,), generator=g))  # which sketch (original or variant) to decode

        with self.rt.autocast():
            v_aug, v = self.style_encoder(x_aug), self.style_encoder(x)
            logits = [self.head(v_aug[2]), self.head(v[2])]
            c = self.content_encoder(sketch)
            c_variants = [self.content_encoder(s) for s in variants]
            fake = self.decoder(([c] + c_variants)[pick], v_aug)
        parts = {"cls": cfg.W_CLS * L.instance_classification(logits, batch["label"]),
                 "style": cfg.W_STYLE * L.style_consistency(v_aug, v, style_perms),
                 "content": cfg.W_CONTENT * L.content_consistency(c_variants, c, content_perms, cfg.CONTENT_MARGIN)}
        rec = self.reconstruction(fake, x)
        parts["rec_a"] = rec["total"]
        optimizer_step(sum(parts.values()), self._optimizers("style", "content", "decoder", "head"), self.rt, guard,
                       it, parts)
        return parts

    def _step_b(self, it: int, guard: NanGuard) -> dict[str, torch.Tensor]:
        """Plain autoencoder step on all pairs (+ grey-level and MI terms if weighted)."""
        cfg = self.cfg
        batch = self._batch(self.paired_batches)
        g = iteration_generator(cfg.SEED, RandomStream.AE_AUG_B, it, self.rt.rank)
        x, sketch = paired_crop_flip([batch["image"], batch["sketch"]], cfg.IM_SIZE_AE, g, flip=cfg.PAIRED_FLIP)
        with self.rt.autocast():
            v = self.style_encoder(x)
            c = self.content_encoder(sketch)
            fake = self.decoder(c, v)
            if cfg.W_GREY:
                perm = L.derangement(x.shape[0], g, self.rt.device)
                fake_swapped = self.decoder(c, [s[perm] for s in v])
        parts = {"rec_b": self.reconstruction_b(fake, x)["total"]}
        if cfg.W_GREY:
            parts["grey"] = cfg.W_GREY * L.grey_level(fake_swapped, x)
        content_vec, style_vec = L.pooled_content(c), torch.cat(v, dim=1)
        if self.club is not None:  # the paper's term is on the content encoder: the style side is a fixed target
            parts["mi"] = cfg.W_MI * self.club(content_vec, style_vec.detach())
        optimizer_step(sum(parts.values()), self._optimizers("style", "content", "decoder"), self.rt, guard, it,
                       parts)
        if self.club is not None:
            parts["club_nll"] = self._fit_club(content_vec, style_vec, it, guard)
        return parts

    def _fit_club(self, content_vec, style_vec, it: int, guard: NanGuard) -> torch.Tensor:
        """Fit CLUB's q(style | content) on detached features (its own optimizer and gradients)."""
        loss = self.club.learning_loss(content_vec, style_vec)
        optimizer_step(loss, self._optimizers("club"), self.rt, guard, it, {"club_nll": loss})
        return loss.detach()

    def _optimizers(self, *names: str) -> list[torch.optim.Optimizer]:
        """The named optimizers, looked up at each step: a subset switch replaces the head's."""
        return [self.opt[name] for name in names]

    # --- sample grid -------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self) -> tuple[torch.Tensor, int]:
        """Rows: style images, sketches, reconstructions, the sketches in the next image's style."""
        nets = [self.style_encoder, self.content_encoder, self.decoder]
        for net in nets:
            net.eval()
        x, sketch = self.rt.to_device(self.grid["image"]), self.rt.to_device(self.grid["sketch"])
        with self.rt.autocast():
            v, c = self.style_encoder(x), self.content_encoder(sketch)
            recon = self.decoder(c, v)
            swapped = self.decoder(c, [s.roll(1, dims=0) for s in v])
        for net in nets:
            net.train()
        rows = [x, sketch.expand(-1, 3, -1, -1), recon, swapped]
        return torch.cat([r.float() for r in rows]), x.shape[0]


def main(argv: list[str]) -> int:
    """Train the AE stage alone (same as train.py TRAIN_AE_ONLY=true)."""
    import train  # here, not at the top: train.py imports this module
    return train.main([*argv, "TRAIN_AE_ONLY=true"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
