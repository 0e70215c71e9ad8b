"""evalcam: evaluate CAM-style explanation methods the way the Grad-CAM paper did."""

import time

__version__ = "0.1.0"
#: when evalcam was imported: the first run of a process counts its wall time from here (run/wall_seconds)
IMPORTED_AT = time.perf_counter()
