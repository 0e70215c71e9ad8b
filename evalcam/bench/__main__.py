"""``python -m evalcam.bench``: the same as ``python -m evalcam bench``."""

import sys

from evalcam.bench.cli import main

main(sys.argv[1:])
