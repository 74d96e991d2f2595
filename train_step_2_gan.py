"""Stage 2: the GAN refinement. The frozen AE feeds a refine generator; patch discriminator; EMA.

Per iteration: the AE (eval mode, no gradients) turns (sketch, image) into its output and the
style vectors; the generator refines that to IM_SIZE_GAN. D: hinge loss on real images vs the
detached output. G: W_ADV * hinge + reconstruction (LPIPS, or L1 + MSE for small-data presets)
+ the grey-level loss under another image's style when W_GAN_GREY > 0. Sample grids and FID
use the EMA generator.

Run through train.py; `python train_step_2_gan.py KEY=value ...` trains this stage alone.
"""
from __future__ import annotations

import sys

from errors import quiet_start

if __name__ == "__main__":  # as train.py: Ctrl-C while the libraries load, a syntax error in config.py
    sys.excepthook = quiet_start

import torch

import losses as L
from config import Config
from datasets import (Pairs, PairedDataset, RandomStream, fixed_batch, iteration_generator, paired_crop_flip,
                      sketch_set_weights, to_float)
from fileio import CHECKPOINT_FORMAT, CheckpointError
from models import AE_NETWORKS, AutoEncoder, Discriminator, batch_norm_mode, build_generator, generator_name
from training import EMA, NanGuard, Runtime, adam, infinite_batches, optimizer_step


def check_autoencoder(ae: AutoEncoder, cfg: Config) -> None:
    """A trained AE (models.load_trained) fits this run's sizes, or CheckpointError in one line."""
    if (ae.nfc, ae.im_size) != (cfg.NFC, cfg.IM_SIZE_AE):
        raise CheckpointError(f"the AE checkpoint was trained with NFC={ae.nfc}, IM_SIZE_AE={ae.im_size}; "
                              f"this run has NFC={cfg.NFC}, IM_SIZE_AE={cfg.IM_SIZE_AE}")


class GANStage:
    """The GAN stage's networks, optimizers, data and step; run by training.run_stage."""

    kind, format = "gan", CHECKPOINT_FORMAT

    def __init__(self, cfg: Config, runtime: Runtime, pairs: Pairs, grid_pairs: Pairs, ae: AutoEncoder,
                 lpips=None, fid=None):
        self.cfg, self.rt = cfg, runtime
        check_autoencoder(ae, cfg)
        self.ae = runtime.prepare(ae.eval().requires_grad_(False))  # frozen
        self.generator = runtime.prepare(build_generator(cfg.GENERATOR, cfg.NFC, cfg.IM_SIZE_AE, cfg.IM_SIZE_GAN))
        self.discriminator = runtime.prepare(Discriminator(cfg.NFC, cfg.IM_SIZE_D))
        # copied before compiling (see Runtime.compiled)
        self.ema = EMA(self.generator, cfg.EMA_DECAY)
        runtime.compiled(self.generator)
        runtime.compiled(self.discriminator)
        self.opt = {"generator": adam(self.generator.parameters(), cfg.LR_GAN, cfg.BETAS, runtime.device),
                    "discriminator": adam(self.discriminator.parameters(), cfg.LR_GAN, cfg.BETAS, runtime.device)}
        self.reconstruction = L.Reconstruction(cfg.W_GAN_MSE, cfg.W_GAN_L1, cfg.W_GAN_LPIPS, lpips, cfg.LPIPS_SIZE)
        self.data = PairedDataset(pairs, cfg.IM_SIZE_GAN)
        self.set_weights = sketch_set_weights(len(pairs.sketches[0]), cfg.SKETCH_SET_WEIGHTS)
        self.grid = fixed_batch(grid_pairs, cfg.GRID_N, cfg.IM_SIZE_GAN)
        self.fid = fid  # callable(generate_fn) -> dict of metrics, or None
        self.skipped_files = 0

    # --- the scaffold's interface ------------------------------------------------------------
    def arch(self) -> dict:
        return self.arch_of(self.cfg)

    @staticmethod
    def arch_of(cfg: Config) -> dict:
        """What a checkpoint must match to resume (training.check_arch); train.py checks it before writing."""
        return {"preset": cfg.DATA_NAME, "generator": cfg.GENERATOR, "nfc": cfg.NFC, "im_size_ae": cfg.IM_SIZE_AE,
                "im_size_gan": cfg.IM_SIZE_GAN, "im_size_d": cfg.IM_SIZE_D}

    @staticmethod
    def upgrade_arch(saved: dict) -> dict:
        """A checkpoint from before GENERATOR was recorded: its preset named the generator."""
        return {**saved, "generator": generator_name(saved)} if "preset" in saved else saved

    def state_dict(self) -> dict:
        ae_nets = {name: getattr(self.ae, name).state_dict() for name in AE_NETWORKS}
        return {"networks": {"generator": self.generator.state_dict(),
                             "discriminator": self.discriminator.state_dict(),
                             "generator_ema": self.ema.state_dict(), **ae_nets},
                "optimizers": {k: o.state_dict() for k, o in self.opt.items()},
                "arch": self.arch()}

    def load_state_dict(self, state: dict) -> None:
        nets = state["networks"]
        self.generator.load_state_dict(nets["generator"])
        self.discriminator.load_state_dict(nets["discriminator"])
        self.ema.load_state_dict(nets["generator_ema"])
        for name in AE_NETWORKS:
            getattr(self.ae, name).load_state_dict(nets[name])
        for k, opt in self.opt.items():
            opt.load_state_dict(state["optimizers"][k])

    def restart_data(self, iteration: int) -> None:
        self.batches = infinite_batches(self.data, self.cfg.BATCH_SIZE_GAN, self.cfg, self.rt, self.set_weights,
                                        RandomStream.GAN, start=iteration)

    def items_per_step(self) -> int:
        return self.cfg.BATCH_SIZE_GAN * self.rt.world_size

    def log_extras(self) -> dict:
        return {"skipped_files": self.skipped_files}

    def evaluate(self, it: int) -> dict:
        return self.fid(self.generate) if self.fid is not None else {}

    # --- one iteration -----------------------------------------------------------------------
    def step(self, it: int, guard: NanGuard) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        batch = next(self.batches)
        self.skipped_files += int(batch["skipped"].sum())
        g = iteration_generator(cfg.SEED, RandomStream.GAN_AUG, it, self.rt.rank)
        image, sketch = (to_float(self.rt.to_device(batch[k])) for k in ("image", "sketch"))
        x, sketch = paired_crop_flip([image, sketch], cfg.IM_SIZE_GAN, g, flip=cfg.PAIRED_FLIP)

        with torch.no_grad(), self.rt.autocast():
            ae_image, style = self.ae(sketch, x)
        with self.rt.autocast():
            fake = self.generator(ae_image, style)
            real_logits, fake_logits = self.discriminator(x), self.discriminator(fake.detach())
        d_parts = {"d_loss": L.d_hinge(real_logits, fake_logits)}
        optimizer_step(d_parts["d_loss"], [self.opt["discriminator"]], self.rt, guard, it, d_parts)

        self.discriminator.requires_grad_(False)  # G's backward needs no D gradients
        with self.rt.autocast():
            g_parts = {"g_adv": cfg.W_ADV * L.g_hinge(self.discriminator(fake))}
            g_parts["g_rec"] = self.reconstruction(fake, x)["total"]
            if cfg.W_GAN_GREY:
                g_parts["g_grey"] = cfg.W_GAN_GREY * self._grey_term(sketch, x, g)
        optimizer_step(sum(g_parts.values()), [self.opt["generator"]], self.rt, guard, it, g_parts)
        self.discriminator.requires_grad_(True)
        self.ema.update(self.generator)
        return {**d_parts, **g_parts, "d_real": real_logits.detach().float().mean(),
                "d_fake": fake_logits.detach().float().mean()}

    def _grey_term(self, sketch, x, g) -> torch.Tensor:
        """Generate with another image's style; its grey image must still match x's."""
        perm = L.derangement(x.shape[0], g, self.rt.device)
        with torch.no_grad():
            ae_image, style = self.ae(sketch, x[perm])
        return L.grey_level(self.generator(ae_image, style), x)

    # --- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, sketch: torch.Tensor, style_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sketch, style image) in [-1, 1] on the device -> (AE output, EMA generator output); the
        EMA generator's BatchNorm uses running or batch statistics as SAMPLE_BN says."""
        with self.rt.autocast(), batch_norm_mode(self.ema.net, self.cfg.SAMPLE_BN):
            ae_image, style = self.ae(sketch, style_image)
            return ae_image.float(), self.ema.net(ae_image, style).float()

    @torch.no_grad()
    def sample_grid(self) -> tuple[torch.Tensor, int]:
        """Rows: sketches, style images, AE outputs, final outputs, outputs in the next image's style."""
        x, sketch = self.rt.to_device(self.grid["image"]), self.rt.to_device(self.grid["sketch"])
        ae_image, final = self.generate(sketch, x)
        _, mismatched = self.generate(sketch, x.roll(1, dims=0))
        size = self.cfg.IM_SIZE_GAN
        ae_image = torch.nn.functional.interpolate(ae_image, size=(size, size), mode="nearest")
        rows = [sketch.expand(-1, 3, -1, -1), x, ae_image, final, mismatched]
        return torch.cat(rows), x.shape[0]


def main(argv: list[str]) -> int:
    """Train the GAN stage alone (same as train.py TRAIN_GAN_ONLY=true)."""
    import train  # here, not at the top: train.py imports this module
    return train.main([*argv, "TRAIN_GAN_ONLY=true"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
