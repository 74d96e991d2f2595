"""Ablation of the content/style mutual-information term (CLUB) on the demo data.

    python evaluate/ablation_mi.py                    # W_MI=0 vs W_MI=0.1, demo preset AE stage
    python evaluate/ablation_mi.py --weights 0,0.1,1 --iterations 600 KEY=value ...

Trains the AE stage once per weight (same seed, same data order) and measures, on the held-out
demo set at the AE size:
- rec_mse: reconstruction error D(c(s), v(x)) vs x;
- swap_content_change: how much the output's structure moves when the style comes from another
  image: mean |z(grey(D(c(s), v(x)))) - z(grey(D(c(s), v(x')))|, z = per-image standardisation,
  so a global palette or brightness change does not count, only a change of the drawing;
- swap_colour_shift: how far the mean colour moves towards the other image's mean colour (1 = all
  the way), to show the swap does transfer style;
- heldout_mi: a CLUB estimate of I(content; style) with q fitted on half of the held-out
  features and evaluated on the other half (comparable across runs, unlike the training term).
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import losses as L  # noqa: E402
import train  # noqa: E402
from config import preset  # noqa: E402
from datasets import pair_folders  # noqa: E402
from fileio import CheckpointDir, load_checkpoint, write_json  # noqa: E402
from models import ContentEncoder, Decoder, StyleEncoder  # noqa: E402
from train_step_1_ae import fixed_batch  # noqa: E402


def load_ae(run_dir: Path):
    """(style encoder, content encoder, decoder) of a run's last AE checkpoint, eval mode."""
    ckpt = load_checkpoint(CheckpointDir(run_dir / "ae" / "checkpoints").last(), kind="ae")
    nfc, size = ckpt["state"]["arch"]["nfc"], ckpt["state"]["arch"]["im_size"]
    nets = StyleEncoder(nfc, size), ContentEncoder(nfc, size), Decoder(nfc, size)
    for net, key in zip(nets, ("style_encoder", "content_encoder", "decoder")):
        net.load_state_dict(ckpt["state"]["networks"][key])
        net.eval()
    return nets


def _standardised_grey(x: torch.Tensor) -> torch.Tensor:
    grey = x.mean(dim=1)
    return (grey - grey.mean(dim=(1, 2), keepdim=True)) / (grey.std(dim=(1, 2), keepdim=True) + 1e-6)


@torch.no_grad()
def measure(nets, x: torch.Tensor, sketch: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """The ablation's numbers for one trained AE on a held-out batch."""
    style_encoder, content_encoder, decoder = nets
    g = torch.Generator().manual_seed(seed)
    perm = L.derangement(x.shape[0], g)
    v, c = style_encoder(x), content_encoder(sketch)
    own = decoder(c, v)
    swapped = decoder(c, [s[perm] for s in v])
    colour = lambda t: t.mean(dim=(2, 3))  # noqa: E731
    start, target = colour(own), colour(x[perm])
    shift = ((colour(swapped) - start) * (target - start)).sum(1) / ((target - start) ** 2).sum(1).clamp_min(1e-6)
    return {"rec_mse": torch.mean((own - x) ** 2).item(),
            "swap_content_change": (_standardised_grey(own) - _standardised_grey(swapped)).abs().mean().item(),
            "swap_colour_shift": shift.mean().item(),
            "heldout_mi": heldout_club(L.pooled_content(c), torch.cat(v, dim=1))}


def heldout_club(content: torch.Tensor, style: torch.Tensor, steps: int = 500, seed: int = 0) -> float:
    """CLUB estimate with q fitted on the first half and evaluated on the second half."""
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="""\
Inputs: the built-in demo data (made on first use); extra KEY=value settings go to train.py.
Outputs: one AE run per weight under --out, a table on stdout and <out>/ablation_mi.json.
Example:
    python evaluate/ablation_mi.py --weights 0,0.1 --iterations 600""")
    parser.add_argument("--weights", default="0,0.1", help="comma-separated W_MI values")
    parser.add_argument("--iterations", type=int, default=None, help="AE iterations (default: the preset's)")
    parser.add_argument("--out", default="results/ablation_mi", help="folder for the runs and the JSON")
    parser.add_argument("--n-eval", type=int, default=200, help="held-out images to measure on")
    args, overrides = parser.parse_known_args(argv)
    out = Path(args.out)
    base = ["DATA_NAME=demo", "TRAIN_AE_ONLY=true", f"SAVE_FOLDER={out}", *overrides]
    if args.iterations is not None:
        base.append(f"ITERATION_AE={args.iterations}")
    cfg = preset("demo")
    results = {}
    for weight in (float(w) for w in args.weights.split(",")):
        name = f"w_mi_{weight:g}"
        if not CheckpointDir(out / name / "ae" / "checkpoints").last():
            if train.main([*base, f"W_MI={weight}", f"TRIAL_NAME={name}"]) != 0:
                return 1
        test = pair_folders(cfg.TEST_IMAGE_DIR, [cfg.TEST_SKETCH_DIR])
        nets = load_ae(out / name)
        batch = fixed_batch(test, args.n_eval, nets[0].im_size)
        results[name] = {"W_MI": weight, **measure(nets, batch["image"], batch["sketch"])}
    print(f"{'run':<12} {'rec_mse':>9} {'swap_content_change':>20} {'swap_colour_shift':>18} {'heldout_mi':>11}")
    for name, r in results.items():
        print(f"{name:<12} {r['rec_mse']:>9.4f} {r['swap_content_change']:>20.4f} {r['swap_colour_shift']:>18.3f} "
              f"{r['heldout_mi']:>11.3f}")
    write_json(out / "ablation_mi.json", {"command": " ".join(["python evaluate/ablation_mi.py", *argv]),
                                          "results": results})
    print(f"wrote {out / 'ablation_mi.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
