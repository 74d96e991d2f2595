"""`python -m lpips`: the LPIPS metric over folders (see lpips/metric.py)."""
import sys

from lpips.metric import main

sys.exit(main())
