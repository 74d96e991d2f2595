"""The AE stage: which parameters each step moves, the subset schedule, learning, checkpoints, resume."""

import pytest
import torch

import losses as L
from conftest import tiny_config
from fileio import CheckpointError, load_checkpoint
from models import ContentEncoder, Decoder, StyleEncoder
from datasets import fixed_batch
from train import loop_options
from stages import AEStage, runtime_for
from training import NanGuard, NonFiniteLoss, lr_factor, run_stage


def _stage(demo_root, demo_pairs, tmp_path, **overrides):
    cfg = tiny_config(demo_root, tmp_path, **overrides)
    runtime = runtime_for(cfg)
    stage = AEStage(cfg, runtime, demo_pairs, demo_pairs)
    stage.restart_data(0)
    return stage, cfg


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}


def test_step_a_moves_everything_and_step_b_leaves_the_head(demo_root, demo_pairs, tmp_path):
    stage, _ = _stage(demo_root, demo_pairs, tmp_path, W_MI=0.1)
    nets = stage.networks()
    before = {k: _params(n) for k, n in nets.items()}
    guard = NanGuard("stop", torch.device("cpu"))
    stage._step_a(0, guard)
    for name in ("style_encoder", "content_encoder", "decoder", "head"):
        unchanged = set(before[name]) - _changed(before[name], nets[name])
        assert not unchanged, f"step A left {name} parameters unchanged: {sorted(unchanged)[:5]}"
    assert not _changed(before["club"], nets["club"])  # CLUB is fitted in step B only

    mid = {k: _params(n) for k, n in nets.items()}
    logs = stage._step_b(0, guard)
    assert not _changed(mid["head"], nets["head"]), "step B must not step the classifier head"
    for name in ("style_encoder", "content_encoder", "decoder", "club"):
        assert _changed(mid[name], nets[name]), f"step B did not update {name}"
    assert {"rec_b", "mi", "club_nll"} <= set(logs)


def test_subset_switch_resets_head_and_lowers_lr(demo_root, demo_pairs, tmp_path):
    stage, cfg = _stage(demo_root, demo_pairs, tmp_path, LR_AE_AFTER_SWITCH=5e-5)
    assert stage.switch_every == 2  # NBR_CLS 8 * 1 pass // batch 4
    guard = NanGuard("stop", torch.device("cpu"))
    first_members = stage.ss_data.members.clone()
    for it in range(2):
        stage.step(it, guard)
    head_before = _params(stage.head)
    assert stage.opt["head"].state  # Adam moments exist
    stage.step(2, guard)  # switches before stepping
    assert stage.ss_data.subset == 1 and not torch.equal(stage.ss_data.members, first_members)
    lrs = {k: o.param_groups[0]["lr"] for k, o in stage.opt.items()}
    assert lrs == {"style_encoder": 5e-5, "decoder": 5e-5, "content_encoder": cfg.LR_AE, "head": cfg.LR_AE}
    assert len(stage.opt["head"].state) == len(list(stage.head.parameters()))  # one fresh step of state
    assert all(s["step"].item() == 1 for s in stage.opt["head"].state.values())
    assert _changed(head_before, stage.head)


def test_reconstruction_learns_on_a_fixed_batch(demo_pairs):
    """150 steps on 8 fixed demo images at 64 px (NFC 8): the reconstruction must beat, by far, the
    best output that ignores the sketch (each image's own mean colour), which is what a model that
    learnt style but not content would give. Measured: about 0.15x of that baseline; threshold 0.5x."""
    torch.manual_seed(0)
    batch = fixed_batch(demo_pairs, 8, 64)
    x, sketch = batch["image"], batch["sketch"]
    nets = [StyleEncoder(8, 64), ContentEncoder(8, 64), Decoder(8, 64)]
    opt = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=2e-3, betas=(0.5, 0.999))
    rec = L.Reconstruction(w_mse=1.0, w_l1=1.0, w_lpips=0.0)
    baseline = ((x - x.mean(dim=(2, 3), keepdim=True)) ** 2).mean().item()
    mse = []
    for _ in range(150):
        out = nets[2](nets[1](sketch), nets[0](x))
        loss = rec(out, x)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        mse.append(loss["mse"].item())
    assert sum(mse[-10:]) / 10 < 0.5 * baseline, (mse[0], mse[-1], baseline)
    assert mse[-1] < 0.1 * mse[0]


def test_learning_rates_fall_linearly_to_zero_after_lr_decay_from():
    assert [lr_factor(it, 10, 0.6) for it in range(10)] == [1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(it, 4, 1.0) for it in range(6)] == [1] * 6  # constant, also past the end
    assert lr_factor(0, 4, 0.0) == 1.0 and lr_factor(3, 4, 0.0) == 0.25


def test_the_stages_follow_the_schedule(demo_root, demo_pairs, tmp_path):
    stage, cfg = _stage(demo_root, demo_pairs, tmp_path, ITERATION_AE=4, LR_DECAY_FROM=0.5, LR_AE_AFTER_SWITCH=5e-5)
    guard = NanGuard("stop", torch.device("cpu"))
    for it in range(4):
        stage.step(it, guard)
        lrs = {k: o.param_groups[0]["lr"] for k, o in stage.opt.items()}
        factor = lr_factor(it, 4, 0.5)
        assert lrs["content_encoder"] == cfg.LR_AE * factor and lrs["head"] == cfg.LR_AE * factor
        assert lrs["style_encoder"] == (5e-5 if stage.ss_data.subset else cfg.LR_AE) * factor
    assert lrs["content_encoder"] == cfg.LR_AE * 0.5  # the last iteration of 4, decaying from 2


def test_checkpoint_round_trip(demo_root, demo_pairs, tmp_path):
    stage, cfg = _stage(demo_root, demo_pairs, tmp_path)
    stage.step(0, NanGuard("stop", torch.device("cpu")))
    torch.save(stage.state_dict(), tmp_path / "s.pt")
    other, _ = _stage(demo_root, demo_pairs, tmp_path, SEED=123)
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for name, net in stage.networks().items():
        for (k, a), b in zip(net.state_dict().items(), other.networks()[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k}"
    assert other.opt["style_encoder"].state_dict()["state"].keys() == stage.opt["style_encoder"].state_dict()["state"].keys()


def _train(demo_root, demo_pairs, tmp_path, total, resume, **overrides):
    stage, cfg = _stage(demo_root, demo_pairs, tmp_path, DETERMINISTIC=True, **overrides)
    result = run_stage(stage, loop_options(cfg, total), tmp_path / "ae", runtime_for(cfg), resume=resume)
    return stage, result


@pytest.mark.parametrize("decay_from", [1.0, 0.5])
def test_resume_continues_exactly(demo_root, demo_pairs, tmp_path, decay_from):
    """6 iterations straight == 3, stop, resume, 3 more (the subset switches at 2 and 4 included; with
    LR_DECAY_FROM=0.5 the rates fall over iterations 3..5)."""
    kw = dict(SAVE_MODEL_INTERVAL=3, W_MI=0.1, ITERATION_AE=6, LR_DECAY_FROM=decay_from)
    straight, _ = _train(demo_root, demo_pairs, tmp_path / "a", 6, resume=False, **kw)
    _, first = _train(demo_root, demo_pairs, tmp_path / "b", 3, resume=False, **kw)
    assert first.iteration == 3 and first.last_checkpoint.name == "ckpt_00000003.pt"
    resumed, second = _train(demo_root, demo_pairs, tmp_path / "b", 6, resume=True, **kw)
    assert second.iteration == 6
    for name, net in straight.networks().items():
        for (k, a), b in zip(net.state_dict().items(), resumed.networks()[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k} differs after resume"
    for name, opt in straight.opt.items():
        sa, sb = opt.state_dict()["state"], resumed.opt[name].state_dict()["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa), name
    ckpt = load_checkpoint(second.last_checkpoint, kind="ae")
    assert ckpt["iteration"] == 6 and ckpt["state"]["subset"] == 2 and ckpt["config"]["NFC"] == 8
    log = [r["iter"] for r in __import__("fileio").JsonlLog(tmp_path / "b" / "ae" / "log.jsonl").read()]
    assert log == sorted(set(log))  # no duplicated records after the resume


def test_nan_stops_naming_step_loss_and_checkpoint(demo_root, demo_pairs, tmp_path, monkeypatch):
    stage, cfg = _stage(demo_root, demo_pairs, tmp_path, LOG_INTERVAL=1)
    real = stage.reconstruction.forward

    def poisoned(fake, x):
        out = real(fake, x)
        if poisoned.calls == 2:  # step A's reconstruction, once per iteration -> iteration 2
            out["total"] = out["total"] * float("nan")
        poisoned.calls += 1
        return out
    poisoned.calls = 0
    monkeypatch.setattr(stage.reconstruction, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"loss 'rec_a' became NaN/Inf at iteration 2\. Last good checkpoint: .*ckpt_00000002\.pt"):
        run_stage(stage, loop_options(cfg, 4), tmp_path / "ae", runtime_for(cfg))


def test_nan_skip_policy_skips_the_update(demo_root, demo_pairs, tmp_path):
    stage, cfg = _stage(demo_root, demo_pairs, tmp_path, NAN_POLICY="skip")
    guard = NanGuard("skip", torch.device("cpu"))
    before = _params(stage.decoder)
    stage.reconstruction_b.w_mse = float("nan")
    parts = stage._step_b(0, guard)
    assert guard.skipped == 1 and not _changed(before, stage.decoder)
    assert not any(v.requires_grad for v in parts.values())  # a skipped step keeps no autograd graph alive
    stage.reconstruction_b.w_mse = 1.0
    stage._step_b(1, guard)
    assert _changed(before, stage.decoder)


def test_sample_grid_rows(demo_root, demo_pairs, tmp_path):
    stage, cfg = _stage(demo_root, demo_pairs, tmp_path)
    images, nrow = stage.sample_grid()
    assert nrow == cfg.GRID_N and images.shape == (4 * cfg.GRID_N, 3, 64, 64)
    assert torch.equal(images[:nrow], stage.grid["image"])  # first row: the style images
    assert all(n.training for n in stage.networks().values())  # back in training mode


def _poison_weights_at(stage, monkeypatch, iteration: int):
    """From `iteration` on the decoder's weights are NaN (what an infinite learning rate does)."""
    real = stage.step

    def step(it, guard):
        if it == iteration:
            with torch.no_grad():
                next(stage.decoder.parameters()).fill_(float("nan"))
        return real(it, guard)
    monkeypatch.setattr(stage, "step", step)


def test_skipping_stops_after_the_limit_and_keeps_the_good_checkpoint(demo_root, demo_pairs, tmp_path, monkeypatch):
    stage, cfg = _stage(demo_root, demo_pairs, tmp_path, NAN_POLICY="skip", NAN_SKIP_LIMIT=2, KEEP_CHECKPOINTS=1)
    _poison_weights_at(stage, monkeypatch, 2)  # from iteration 2 on: step A skipped at 2 and 3, the limit
    with pytest.raises(NonFiniteLoss, match=r"2 steps in a row skipped .* Last good checkpoint: .*ckpt_00000002\.pt"):
        run_stage(stage, loop_options(cfg, 20), tmp_path / "ae", runtime_for(cfg))
    checkpoints = sorted(p.name for p in (tmp_path / "ae" / "checkpoints").glob("ckpt_*.pt"))
    assert checkpoints == ["ckpt_00000002.pt"]
    assert load_checkpoint(tmp_path / "ae" / "checkpoints" / "ckpt_00000002.pt", kind="ae")["iteration"] == 2


def test_the_skip_limit_counts_each_update_on_its_own(demo_root, demo_pairs, tmp_path, monkeypatch):
    """Step A NaN at every iteration, step B fine: step B's good updates must not reset step A's count
    (it ran to the end with step A skipped 38 times of 40)."""
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    guard = NanGuard("skip", torch.device("cpu"), skip_limit=2)
    assert not guard.ok(0, {"d_loss": nan}) and guard.ok(0, {"g_adv": one, "g_rec": one})
    with pytest.raises(NonFiniteLoss, match="2 steps in a row skipped for NaN/Inf losses of the update of d_loss"):
        guard.ok(1, {"d_loss": nan})

    stage, cfg = _stage(demo_root, demo_pairs, tmp_path, NAN_POLICY="skip", NAN_SKIP_LIMIT=3)
    real = stage.reconstruction.forward
    monkeypatch.setattr(stage.reconstruction, "forward", lambda fake, x: {"total": real(fake, x)["total"] * nan})
    with pytest.raises(NonFiniteLoss, match=r"3 steps in a row .* update of cls, style, content, rec_a \(up to "
                                            r"iteration 2;"):
        run_stage(stage, loop_options(cfg, 20), tmp_path / "ae", runtime_for(cfg))


def test_non_finite_weights_are_never_saved_over_a_good_checkpoint(demo_root, demo_pairs, tmp_path, monkeypatch):
    stage, cfg = _stage(demo_root, demo_pairs, tmp_path, NAN_POLICY="skip", NAN_SKIP_LIMIT=1000, KEEP_CHECKPOINTS=1)
    _poison_weights_at(stage, monkeypatch, 2)
    with pytest.raises(CheckpointError, match=r"iteration 4: the weights hold NaN/Inf .* kept: .*ckpt_00000002\.pt"):
        run_stage(stage, loop_options(cfg, 20), tmp_path / "ae", runtime_for(cfg))
    assert sorted(p.name for p in (tmp_path / "ae" / "checkpoints").glob("ckpt_*.pt")) == ["ckpt_00000002.pt"]
