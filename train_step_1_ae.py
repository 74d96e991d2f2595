"""Stage 1, the autoencoder, alone: `python train_step_1_ae.py KEY=value ...` = train.py TRAIN_AE_ONLY=true."""
import sys

from errors import quiet_start

if __name__ == "__main__":  # as train.py
    sys.excepthook = quiet_start

import train  # noqa: E402


def main(argv: list[str]) -> int:
    return train.main([*argv, "TRAIN_AE_ONLY=true"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
