"""Stage 2, the GAN, alone: `python train_step_2_gan.py PRETRAINED_AE_PATH=<run> ...` = train.py TRAIN_GAN_ONLY=true."""
import sys

from errors import quiet_start

if __name__ == "__main__":  # as train.py
    sys.excepthook = quiet_start

import train  # noqa: E402


def main(argv: list[str]) -> int:
    return train.main([*argv, "TRAIN_GAN_ONLY=true"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
