"""Stage 2, the GAN refinement (stages.GANStage), alone:
`python train_step_2_gan.py PRETRAINED_AE_PATH=<run> KEY=value ...` is `python train.py TRAIN_GAN_ONLY=true PRETRAINED_AE_PATH=<run> KEY=value ...`."""
import sys

from errors import quiet_start

if __name__ == "__main__":  # as train.py: Ctrl-C while the libraries load, a syntax error in config.py
    sys.excepthook = quiet_start

import train  # noqa: E402


def main(argv: list[str]) -> int:
    return train.main([*argv, "TRAIN_GAN_ONLY=true"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
