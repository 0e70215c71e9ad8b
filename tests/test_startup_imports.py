"""What a run imports before it needs it: every sweep process pays these, whatever its metrics."""

from __future__ import annotations

import subprocess
import sys


def test_the_runner_imports_no_optional_heavy_package():
    heavy = ("scipy.sparse", "sklearn", "skimage", "matplotlib.pyplot")
    code = f"import sys, evalcam.runner\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
