"""`import xattr` alone reaches every subpackage the README uses (in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

# Each line is a README usage after a bare `import xattr`; run where nothing else imported them.
USES = """
import numpy as np
import xattr
assert xattr.metrics.get("nss", percentile=90)(np.eye(4), np.eye(4)) > 0
assert "pointing_game" in xattr.metrics.available()
assert xattr.metrics.paired_comparison([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]).mean_diff == 1.0
assert xattr.metrics.summarize([1.0, 3.0]).mean == 2.0
assert xattr.data.Sample.__name__ == "Sample"
assert callable(xattr.data.synthetic.object_mask) and callable(xattr.data.VQAHATDataset)
assert callable(xattr.images.load_image) and callable(xattr.toy.checkpoint)
"""


def test_bare_import_reaches_metrics_data_images_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-c", USES], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
