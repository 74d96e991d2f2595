"""The two training stages, each a `training.Stage` that `training.run_stage` runs.

AEStage makes two optimizer steps per iteration (reference): A, self-supervised on a rotating subset of
NBR_CLS images (instance classification, style and content consistency, reconstruction from x~'s style);
B, plain autoencoder on all pairs (+ grey-level and MI terms when weighted). GANStage: the frozen AE feeds
a refine generator trained against a patch discriminator (hinge); its EMA copy samples and measures FID.
"""
from __future__ import annotations

import torch

import losses as L
from config import Config
from datasets import (Pairs, PairedDataset, RandomStream, SelfSupervisedDataset, fixed_batch, iteration_generator,
                      mix_seed, only_last_set, paired_crop_flip, sketch_set_weights, sketch_variants, style_view,
                      to_float)
from fileio import CheckpointError
from models import (AE_NETWORKS, AutoEncoder, ContentEncoder, Decoder, Discriminator, InstanceClassifier,
                    StyleEncoder, batch_norm_mode, build_generator)
from training import (EMA, NanGuard, Runtime, adam, infinite_batches, lr_factor, optimizer_step, set_lr,
                      setup_runtime)


def runtime_for(cfg: Config) -> Runtime:
    return setup_runtime(cfg.DEVICE, cfg.SEED, cfg.BF16, cfg.CHANNELS_LAST, cfg.COMPILE, cfg.SYNC_BN, cfg.DETERMINISTIC)


def batch_stream(cfg: Config, runtime: Runtime, dataset, batch_size: int, set_weights, stream: int, start: int):
    return infinite_batches(dataset, batch_size, cfg.DATALOADER_WORKERS, set_weights, cfg.SKETCH_SET_PER == "batch",
                            cfg.SEED, stream, runtime, start)


class AEStage:
    """The AE stage's networks, optimizers, data and step; run by training.run_stage."""

    kind = "ae"

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
        self.opt = {k: adam(net.parameters(), cfg.LR_AE, cfg.BETAS, runtime.device)
                    for k, net in self.networks().items()}
        self.reconstruction = L.Reconstruction(cfg.W_REC_MSE, cfg.W_REC_L1_A, cfg.W_REC_LPIPS, lpips, cfg.LPIPS_SIZE)
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
        """What a checkpoint must match to resume (training.check_arch)."""
        return {"preset": cfg.DATA_NAME, "nfc": cfg.NFC, "im_size": cfg.IM_SIZE_AE, "mi_estimator": cfg.W_MI > 0}

    @staticmethod
    def classes(cfg: Config, n_pairs: int) -> int:
        """Images per self-supervised subset (the head's classes): NBR_CLS, or all pairs if fewer."""
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
        """Data iterators positioned at `iteration` (everything follows from the iteration number)."""
        # step(it) switches subsets at its start, so the subset before step(iteration) is iteration - 1's
        subset = max(iteration - 1, 0) // self.switch_every
        self.ss_data.set_subset(subset)
        self.ss_batches = self._ss_batches(iteration - subset * self.switch_every)
        self.paired_batches = batch_stream(self.cfg, self.rt, self.paired_data, self.cfg.BATCH_SIZE_AE,
                                           self.set_weights, RandomStream.AE_PAIRED, start=iteration)

    def _ss_batches(self, start: int):
        stream = mix_seed(RandomStream.AE_SS, self.ss_data.subset)  # a fresh order for every subset
        return batch_stream(self.cfg, self.rt, self.ss_data, self.cfg.BATCH_SIZE_AE, self.ss_set_weights, stream, start)

    def items_per_step(self) -> int:
        return 2 * self.cfg.BATCH_SIZE_AE * self.rt.world_size  # steps A and B each see one batch

    def log_extras(self) -> dict:
        return {"subset": self.ss_data.subset, "lr_style": self.opt["style_encoder"].param_groups[0]["lr"],
                "skipped_files": self.skipped_files}

    def evaluate(self, it: int) -> dict:
        return {}

    # --- one iteration -----------------------------------------------------------------------
    def step(self, it: int, guard: NanGuard) -> dict[str, torch.Tensor]:
        if it > 0 and it % self.switch_every == 0:
            self._switch_subset()
        cfg, factor = self.cfg, lr_factor(it, self.cfg.ITERATION_AE, self.cfg.LR_DECAY_FROM)
        for name, opt in self.opt.items():  # style encoder and decoder slow down after the first switch (reference)
            switched = self.ss_data.subset > 0 and name in ("style_encoder", "decoder")
            set_lr(opt, factor * (cfg.LR_AE_AFTER_SWITCH if switched else cfg.LR_AE))
        logs = self._step_a(it, guard)
        logs.update(self._step_b(it, guard))
        return logs

    def _switch_subset(self) -> None:
        """New classes, so a fresh head and head optimizer (reference)."""
        self.ss_data.next_subset()
        self.ss_batches = self._ss_batches(0)
        self.head.reset_parameters()
        self.opt["head"] = adam(self.head.parameters(), self.cfg.LR_AE, self.cfg.BETAS, self.rt.device)

    def _batch(self, batches) -> dict[str, torch.Tensor]:
        batch = next(batches)
        self.skipped_files += int(batch["skipped"].sum())  # a CPU tensor: no device sync
        return {k: (to_float(self.rt.to_device(v)) if v.dtype == torch.uint8 else self.rt.to_device(v))
                for k, v in batch.items() if k != "skipped"}

    def _step_a(self, it: int, guard: NanGuard) -> dict[str, torch.Tensor]:
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
            logits = [self.head(v_aug.coarse), self.head(v.coarse)]
            c = self.content_encoder(sketch)
            c_variants = [self.content_encoder(s) for s in variants]
            fake = self.decoder(([c] + c_variants)[pick], v_aug)
        parts = {"cls": cfg.W_CLS * L.instance_classification(logits, batch["label"]),
                 "style": cfg.W_STYLE * L.style_consistency(v_aug, v, style_perms),
                 "content": cfg.W_CONTENT * L.content_consistency(c_variants, c, content_perms, cfg.CONTENT_MARGIN)}
        rec = self.reconstruction(fake, x)
        parts["rec_a"] = rec["total"]
        optimizers = self._optimizers("style_encoder", "content_encoder", "decoder", "head")
        optimizer_step(sum(parts.values()), optimizers, self.rt, guard, it, parts)
        return parts

    def _step_b(self, it: int, guard: NanGuard) -> dict[str, torch.Tensor]:
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
                fake_swapped = self.decoder(c, v.map(lambda s: s[perm]))
        parts = {"rec_b": self.reconstruction_b(fake, x)["total"]}
        if cfg.W_GREY:
            parts["grey"] = cfg.W_GREY * L.grey_level(fake_swapped, x)
        content_vec, style_vec = L.pooled_content(c), torch.cat(v, dim=1)
        if self.club is not None:  # the paper's term is on the content encoder: the style side is a fixed target
            parts["mi"] = cfg.W_MI * self.club(content_vec, style_vec.detach())
        optimizers = self._optimizers("style_encoder", "content_encoder", "decoder")
        optimizer_step(sum(parts.values()), optimizers, self.rt, guard, it, parts)
        if self.club is not None:
            parts["club_nll"] = self._fit_club(content_vec, style_vec, it, guard)
        return parts

    def _fit_club(self, content_vec, style_vec, it: int, guard: NanGuard) -> torch.Tensor:
        """Fit CLUB's q(style | content) on detached features (its own optimizer and gradients)."""
        loss = self.club.learning_loss(content_vec, style_vec)
        optimizer_step(loss, self._optimizers("club"), self.rt, guard, it, {"club_nll": loss})
        return loss.detach()

    def _optimizers(self, *names: str) -> list[torch.optim.Optimizer]:
        """Looked up at each step: a subset switch replaces the head's."""
        return [self.opt[name] for name in names]

    # --- sample grid -------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self) -> tuple[torch.Tensor, int]:
        """Rows: style images, sketches, reconstructions, the sketches in the previous column's style (roll 1)."""
        nets = [self.style_encoder, self.content_encoder, self.decoder]
        for net in nets:
            net.eval()
        x, sketch = self.rt.to_device(self.grid["image"]), self.rt.to_device(self.grid["sketch"])
        with self.rt.autocast():
            v, c = self.style_encoder(x), self.content_encoder(sketch)
            recon = self.decoder(c, v)
            swapped = self.decoder(c, v.map(lambda s: s.roll(1, dims=0)))
        for net in nets:
            net.train()
        rows = [x, sketch.expand(-1, 3, -1, -1), recon, swapped]
        return torch.cat([r.float() for r in rows]), x.shape[0]


def check_autoencoder(ae: AutoEncoder, cfg: Config) -> None:
    """CheckpointError unless a trained AE fits this run's sizes."""
    if (ae.nfc, ae.im_size) != (cfg.NFC, cfg.IM_SIZE_AE):
        raise CheckpointError(f"the AE checkpoint was trained with NFC={ae.nfc}, IM_SIZE_AE={ae.im_size}; "
                              f"this run has NFC={cfg.NFC}, IM_SIZE_AE={cfg.IM_SIZE_AE}")


class GANStage:
    """The GAN stage's networks, optimizers, data and step; run by training.run_stage."""

    kind = "gan"

    def __init__(self, cfg: Config, runtime: Runtime, pairs: Pairs, grid_pairs: Pairs, ae: AutoEncoder,
                 lpips=None, fid=None):
        self.cfg, self.rt = cfg, runtime
        check_autoencoder(ae, cfg)
        self.ae = runtime.prepare(ae.eval().requires_grad_(False))  # frozen
        self.generator = runtime.prepare(build_generator(cfg.GENERATOR, cfg.NFC, cfg.IM_SIZE_AE, cfg.IM_SIZE_GAN))
        self.discriminator = runtime.prepare(Discriminator(cfg.NFC, cfg.IM_SIZE_D))
        self.ema = EMA(self.generator, cfg.EMA_DECAY)  # copied before compiling (see Runtime.compiled)
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
        """What a checkpoint must match to resume (training.check_arch)."""
        return {"preset": cfg.DATA_NAME, "generator": cfg.GENERATOR, "nfc": cfg.NFC, "im_size_ae": cfg.IM_SIZE_AE,
                "im_size_gan": cfg.IM_SIZE_GAN, "im_size_d": cfg.IM_SIZE_D}

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
        self.batches = batch_stream(self.cfg, self.rt, self.data, self.cfg.BATCH_SIZE_GAN, self.set_weights,
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
        for opt in self.opt.values():
            set_lr(opt, cfg.LR_GAN * lr_factor(it, cfg.ITERATION_GAN, cfg.LR_DECAY_FROM))
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
        """(sketch, style image) in [-1, 1] on the device -> (AE output, EMA output); BatchNorm as SAMPLE_BN says."""
        with self.rt.autocast(), batch_norm_mode(self.ema.net, self.cfg.SAMPLE_BN):
            ae_image, style = self.ae(sketch, style_image)
            return ae_image.float(), self.ema.net(ae_image, style).float()

    @torch.no_grad()
    def sample_grid(self) -> tuple[torch.Tensor, int]:
        """Rows: sketches, style images, AE outputs, final outputs, outputs in the previous column's style (roll 1)."""
        x, sketch = self.rt.to_device(self.grid["image"]), self.rt.to_device(self.grid["sketch"])
        ae_image, final = self.generate(sketch, x)
        _, mismatched = self.generate(sketch, x.roll(1, dims=0))
        size = self.cfg.IM_SIZE_GAN
        ae_image = torch.nn.functional.interpolate(ae_image, size=(size, size), mode="nearest")
        rows = [sketch.expand(-1, 3, -1, -1), x, ae_image, final, mismatched]
        return torch.cat(rows), x.shape[0]
